"""Every command-line entry point of the project, found rather than listed, and its argparse
parser, obtained without running the command.

Entry points: the console scripts of pyproject.toml's ``[project.scripts]``; every module of the
packages that has an ``if __name__ == "__main__":`` block (``python -m MODULE``, a package by its
``__main__.py``); every ``tools/*.py`` and ``bench/*.py`` script that has one. A new CLI is
therefore checked as soon as it exists.

:func:`capture_parser` runs the entry point with ``ArgumentParser.parse_known_args`` replaced by
a function that raises, so the parser it built comes back before any work is done.
"""
from __future__ import annotations

import argparse
import importlib
import runpy
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored copy of the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tinyvit_backbone", "linear_probe", "reproduction")
SCRIPT_FOLDERS = ("tools", "bench")
MAIN_GUARD = ('if __name__ == "__main__":', "if __name__ == '__main__':")


@dataclass(frozen=True)
class EntryPoint:
    """``kind``: 'console' (``target`` = 'module:function'), 'module' (``target`` = the module
    ``python -m`` runs) or 'script' (``target`` = the path from the checkout's root)."""

    name: str
    kind: str
    target: str


def _has_main_guard(path: Path) -> bool:
    text = path.read_text()
    return any(guard in text for guard in MAIN_GUARD)


def console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"].get("scripts", {})


def entry_points() -> list[EntryPoint]:
    out = [EntryPoint(name, "console", target) for name, target in console_scripts().items()]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _has_main_guard(path):
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                module = module.removesuffix(".__main__")
                out.append(EntryPoint(f"python -m {module}", "module", module))
    for folder in SCRIPT_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            if _has_main_guard(path):
                rel = path.relative_to(ROOT).as_posix()
                out.append(EntryPoint(rel, "script", rel))
    return out


class _Captured(BaseException):
    # BaseException: an entry point's own ``except Exception`` must not swallow it
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def _runner(entry: EntryPoint) -> Callable[[], object]:
    if entry.kind == "console":
        module, func = entry.target.split(":")
        return lambda: getattr(importlib.import_module(module), func)()
    if entry.kind == "module":
        return lambda: runpy.run_module(entry.target, run_name="__main__", alter_sys=True)
    return lambda: runpy.run_path(str(ROOT / entry.target), run_name="__main__")


def capture_parser(entry: EntryPoint) -> argparse.ArgumentParser | None:
    """The parser ``entry`` parses its command line with (None if it parses none)."""
    def refuse(self, args=None, namespace=None):
        raise _Captured(self)

    original, saved_argv = argparse.ArgumentParser.parse_known_args, sys.argv
    argparse.ArgumentParser.parse_known_args = refuse
    sys.argv = [entry.name]
    try:
        with warnings.catch_warnings():
            # runpy warns that a module it re-runs as __main__ was imported before
            warnings.simplefilter("ignore", RuntimeWarning)
            _runner(entry)()
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
        sys.argv = saved_argv
    return None


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(subcommand path, parser)`` for the parser and every subcommand's, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + (name,))


def subparsers_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None
