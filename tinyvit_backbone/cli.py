"""The one command-line convention of every tool in the project.

* Sibling subcommands (``python -m linear_probe sweep``, ``... distill save-logits``), built
  with :func:`subcommands` and run by :func:`run_commands`.
* The same runtime flags everywhere (:func:`add_runtime_flags`): ``--device``, ``--amp/--no-amp``,
  ``--workers``, ``--progress/--no-progress``.
* One JSON result per run on stdout (:func:`emit_json`), logs on stderr.
* Bad input: one ``error: <what is wrong and how to fix it>`` line on stderr and exit status 2;
  Ctrl-C: exit status 130 with what a rerun does.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def add_runtime_flags(parser: argparse.ArgumentParser, *, workers: int | None | bool = 0,
                      amp_help: str = "mixed precision (default: on for CUDA, off for CPU)"
                      ) -> argparse._ArgumentGroup:
    """Add the runtime group. ``workers=None`` means the tool picks per machine; ``False``
    leaves ``--workers`` out for a tool that loads no data through a DataLoader."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU; torchrun: cuda:LOCAL_RANK), cpu, cuda "
                        "or cuda:N (default auto)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=amp_help)
    if workers is not False:
        g.add_argument("--workers", type=int, default=workers,
                       help="DataLoader worker processes (default: "
                            + ("chosen per machine" if workers is None else str(workers)) + ")")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on a terminal, a line every few percent otherwise "
                        "(default on)")
    return g


class _Subcommands(argparse._SubParsersAction):
    """Subparsers whose own ``--help`` opens with the line the command list shows for them,
    unless they are given a description of their own."""

    def add_parser(self, name, **kwargs):
        text = kwargs.get("help")
        if text and kwargs.get("description") is None:
            kwargs["description"] = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
        return super().add_parser(name, **kwargs)


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The subparsers every tool uses: ``dest='command'``, required."""
    return parser.add_subparsers(dest="command", required=True, metavar="command",
                                 action=_Subcommands,
                                 help="the job to run; COMMAND --help lists its options")


def emit_json(result: Any, stream=None) -> None:
    """Print the run's one JSON result, strict JSON (an undefined number is ``null``)."""
    from .files import dumps_json

    stream = sys.stdout if stream is None else stream
    stream.write(dumps_json(result, indent=2, default=str) + "\n")
    stream.flush()


def error(message: str) -> int:
    """Print ``error: message`` on stderr; returns the bad-input exit status."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def run_commands(
    parser: argparse.ArgumentParser,
    commands: Mapping[str, Callable[[argparse.Namespace], Any]],
    argv: Sequence[str] | None = None,
    *,
    errors: tuple[type[BaseException], ...] = (ValueError, OSError),
    interrupted: str = "interrupted: rerun the same command to resume",
    emit: Callable[[argparse.Namespace, Any], bool] | None = None,
    finally_: Callable[[], None] | None = None,
    exit_code: Callable[[argparse.Namespace, Any], int] | None = None,
) -> int:
    """Parse ``argv``, run ``commands[args.command]`` and print its result as JSON.

    ``errors`` are the exception types whose messages are meant for the user (they say what to
    fix); anything else is a bug and propagates with its traceback. ``emit(args, result)``
    returns whether this process prints (e.g. rank 0 only); a result of None prints nothing.
    ``exit_code(args, result)`` turns a result into the exit status (default 0).
    """
    args = parser.parse_args(argv)
    try:
        result = commands[args.command](args)
    except errors as err:
        return error(str(err))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        if finally_ is not None:
            finally_()
    if result is not None and (emit is None or emit(args, result)):
        emit_json(result)
    return exit_code(args, result) if exit_code is not None else 0
