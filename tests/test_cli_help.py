"""Every command line of the project explains itself: each option and subcommand has a real help
text, defaults and choices are stated, descriptions are whole sentences, and no help carries
Sphinx markup. The entry points are discovered (tests/cli_entry_points.py), so a new one is
checked without being listed here."""
from __future__ import annotations

import argparse
import re

import pytest

from tests.cli_entry_points import capture_parser, entry_points, walk

SPHINX = re.compile(r":(?:[a-z]+:)?(?:class|func|meth|mod|attr|data|obj|exc|ref|doc|term):`|``")
SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
# "(default 3)", "default: the config's", "(default %(default)s)": what is left must say more
DEFAULT_CLAUSE = re.compile(r"\(?\s*default\b[^)]*\)?", re.IGNORECASE)

def _cases():
    for entry in entry_points():
        yield pytest.param(entry, id=entry.name)


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action)


def problems(parser: argparse.ArgumentParser, where: str, top: bool) -> list[str]:
    """What is wrong with one parser's own texts (not its subcommands')."""
    out = []
    if top and not (parser.description or "").strip():
        out.append(f"{where}: no description")
    texts = {"description": parser.description, "epilog": parser.epilog}
    texts.update({f"group {g.title!r}": g.description for g in parser._action_groups})
    for what, text in texts.items():
        match = SPHINX.search(text or "")
        if match:
            out.append(f"{where}: Sphinx markup in the {what}: "
                       f"...{text[max(0, match.start() - 40):match.end() + 40]!r}...")
    if parser.description and not SENTENCE_END.search(parser.description.rstrip()):
        out.append(f"{where}: the description stops mid-sentence: "
                   f"...{parser.description.rstrip()[-60:]!r}")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.metavar or action.dest
        if not (action.help or "").strip():
            out.append(f"{where} {name}: no help text")
            continue
        text = _help_text(parser, action)
        if SPHINX.search(text):
            out.append(f"{where} {name}: Sphinx markup in the help: {text!r}")
        if not re.search(r"[A-Za-z]{2,}", DEFAULT_CLAUSE.sub("", text)):
            out.append(f"{where} {name}: the help states only the default: {text!r}")
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            out += [f"{where} {sub}: subcommand without help" for sub in action.choices
                    if not (helps.get(sub) or "").strip()]
            continue
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text.lower()):
            out.append(f"{where} {name}: the default {action.default!r} is not stated: {text!r}")
        if action.choices is not None and action.metavar is not None:
            # argparse lists choices itself only without a metavar
            missing = [c for c in action.choices if str(c) not in text]
            if missing:
                out.append(f"{where} {name}: choices {missing} are not named in the help")
    try:
        rendered = parser.format_help()
    except (ValueError, TypeError, KeyError) as err:  # a bad %-format in a help
        out.append(f"{where}: --help fails: {err}")
    else:
        if SPHINX.search(rendered):
            out.append(f"{where}: Sphinx markup in --help")
    return out


@pytest.mark.parametrize("entry", _cases())
def test_every_option_of_every_cli_is_explained(entry):
    parser = capture_parser(entry)
    assert parser is not None, (f"{entry.name} parses no command line with argparse: give it "
                                "an ArgumentParser so its --help is checked")
    found = []
    for path, sub in walk(parser):
        found += problems(sub, " ".join((entry.name,) + path), top=not path)
    assert not found, "\n".join(found)


def test_entry_points_are_discovered():
    """The discovery finds the kinds of entry point it promises (a broken discovery would let
    every CLI escape the check above)."""
    names = {e.name for e in entry_points()}
    assert {"tinyvit-probe", "python -m linear_probe", "python -m tinyvit_backbone.distill",
            "python -m tinyvit_backbone.embedded.scenes", "tools/train.py",
            "bench/run_all.py"} <= names


def test_the_checks_catch_what_they_promise():
    """A parser with each kind of defect gets one complaint per defect."""
    parser = argparse.ArgumentParser(description="Does things, for example")
    parser.add_argument("--bare", type=int, default=3)
    parser.add_argument("--only-default", default=2, help="default %(default)s")
    parser.add_argument("--silent-default", default="x", help="what it is")
    parser.add_argument("--hidden-choices", choices=["a", "b"], metavar="C", help="one of a")
    parser.add_argument("--sphinx", help="see :func:`foo` and ``bar``")
    sub = parser.add_subparsers(dest="command", help="the job")
    sub.add_parser("quiet")
    found = problems(parser, "p", top=True)
    for expected in ("mid-sentence", "--bare: no help", "--only-default: the help states only",
                     "--silent-default: the default 'x'", "choices ['b']",
                     "--sphinx: Sphinx markup", "quiet: subcommand without help"):
        assert any(expected in line for line in found), (expected, found)
