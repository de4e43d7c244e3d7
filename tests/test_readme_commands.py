"""The READMEs' commands are the code's: every command in a code block (and every command-like
inline span) is checked against what it calls, without running it, and a few cheap ones run.

* project CLIs (console scripts, ``python -m MODULE``, ``python tools/X.py``, torchrun's
  script): the arguments are parsed by the command's own argparse parser: no unknown option, the
  subcommand exists, choices and types hold; dataset names and model-zoo names are looked up;
* ``make X``: the Makefile has target X; ``VAR=value`` prefixes: the project reads VAR;
* ``mim train|test mmdet|mmseg CONFIG``: mim's own options parse, and CONFIG loads with
  mmengine's Config (every config path named by any command does);
* shell scripts: present, executable, ``bash -n`` clean; options they are given appear in their
  ``--help``;
* paths into the source folders exist.

A block or command of a kind none of these covers fails the test: check it here, or list it in
``NOT_COMMANDS`` / ``MENTIONS`` with the reason.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.common import subprocess_env
from tests.cli_entry_points import ROOT, capture_parser, entry_points, walk

DOCS = ("README.md", "det_configs/README.md", "seg_configs/README.md", "docs/distill_store.md")
SOURCE_DIRS = ("tinyvit_backbone", "linear_probe", "reproduction", "tools", "bench", "tests",
               "docs", "det_configs", "seg_configs")
COMMAND_HEADS = ("python", "python3", "make", "mim", "torchrun", "pytest", "bash", "pip", "pip3")
ENV_ASSIGNMENT = re.compile(r"^[A-Z][A-Z0-9_]*=")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")  # CONFIG, PATH, DIR, W
ELLIPSIS = {"...", "…"}

# Blocks that are not shell commands, by their first line, with how they are checked instead.
NOT_COMMANDS = {
    "custom_imports = dict(": "an mmdet / mmseg config fragment: it must compile as Python",
    "tinyvit_backbone/     the plugin core": "the layout tree: each top-level folder it names "
                                             "must exist (tests/test_layout.py checks the rest)",
    "manifest.json ": "a logit store's files: each must be a name the store code writes",
}
# Inline spans that name a command in prose without being one.
MENTIONS = {
    "mim train / test / run": "names three mim commands",
}
# Commands cheap enough to run for real (seconds, no network, writes only into a scratch
# folder), with what their output must show.
RUN = {
    "python -m linear_probe datasets": "JSON listing the registry",
    "python -m tinyvit_backbone.weights list": "JSON listing the zoo",
    "python -m tinyvit_backbone.embedded.scenes": "writes data/embedded/scenes/scenes.json",
    "python -m tinyvit_backbone.config_overlay det_configs/cascade_tinyvit21m.py --iters 20 "
    "--arch 5m": "writes the config the next command of its chain trains",
}


# ------------------------------------------------------------------------------ extraction
@dataclass
class Command:
    doc: str
    line: int
    text: str
    tokens: list[str]
    inline: bool
    earlier: list[Command] = field(default_factory=list)  # earlier commands of its && chain
    error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """(first line number, block text, fence language) of the fenced and indented blocks; an
    indented block starts after a blank line (indented lines right after text continue a list
    item)."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
                end += 1
            out.append((i + 2, "\n".join(lines[i + 1:end]), fence.group(2)))
            i = end + 1
            continue
        if line.startswith("    ") and line.strip() and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            block = [b[4:] for b in lines[i:end]]
            while block and not block[-1].strip():
                block.pop()
            out.append((i + 1, "\n".join(block), "indented"))
            i = end
            continue
        i += 1
    return out


def without_blocks(text: str) -> str:
    """``text`` with every code block's lines blanked (line numbers kept)."""
    lines = text.split("\n")
    for start, block, lang in code_blocks(text):
        first = start - 1 if lang == "indented" else start - 2
        count = block.count("\n") + 1 + (0 if lang == "indented" else 2)
        for k in range(first, min(first + count, len(lines))):
            lines[k] = ""
    return "\n".join(lines)


def split_commands(block: str, doc: str, first_line: int, inline: bool = False) -> list[Command]:
    """Shell commands of a block: ``\\`` continuations joined, comments dropped, ``&&`` / ``;``
    chains split, ``[optional]`` brackets opened, ``...`` placeholders dropped."""
    out = []
    logical, start = "", None
    for k, raw in enumerate(block.split("\n")):
        if start is None:
            start = first_line + k
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        out += _chain(logical, doc, start, inline)
        logical, start = "", None
    if logical.strip():
        out += _chain(logical, doc, start, inline)
    return out


def _chain(line: str, doc: str, lineno: int, inline: bool) -> list[Command]:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as err:  # reported by the command's test, not at collection
        return [Command(doc, lineno, line.strip(), [], inline, error=f"not a shell line: {err}")]
    chain, current = [], []
    for token in tokens + ["&&"]:
        if token in ("&&", ";", "||"):
            if current:
                chain.append(current)
            current = []
            continue
        token = token.lstrip("[").rstrip("]") if token.startswith("[") or token.endswith("]") \
            else token
        if token and token not in ELLIPSIS:
            current.append(token)
    out: list[Command] = []
    for tokens in chain:
        out.append(Command(doc, lineno, " ".join(tokens), tokens, inline, list(out)))
    return out


def inline_spans(text: str) -> list[tuple[int, str]]:
    prose = without_blocks(text)
    spans = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        span = " ".join(match.group(1).split())
        spans.append((prose.count("\n", 0, match.start()) + 1, span))
    return spans


def _is_command_span(span: str) -> bool:
    tokens = span.split()
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return False
    head = tokens[0]
    return (_is_python(head) or head in COMMAND_HEADS or head.startswith("tinyvit-")
            or head.endswith(".sh") or head.startswith(("tools/", "./tools/")) and len(tokens) > 1)


def _is_python(head: str) -> bool:
    return head in ("python", "python3") or head.endswith(("/python", "/python3"))


def readme_commands() -> tuple[list[Command], list[tuple[str, int, str, str]]]:
    """(commands, non-command blocks as (doc, line, first line, text))."""
    commands, others = [], []
    for doc in DOCS:
        path = ROOT / doc
        if not path.is_file():
            continue
        text = path.read_text()
        for line, block, lang in code_blocks(text):
            if lang not in ("indented", "", "sh", "bash", "shell", "console"):
                continue  # bibtex, python, text: not commands
            first = block.lstrip("\n").split("\n")[0].strip()
            if any(first.startswith(prefix) for prefix in NOT_COMMANDS):
                others.append((doc, line, first, block))
                continue
            commands += split_commands(block, doc, line)
        for line, span in inline_spans(text):
            if span in MENTIONS or not _is_command_span(span):
                continue
            commands += split_commands(span, doc, line, inline=True)
    return commands, others


def source_paths() -> list[tuple[str, int, str]]:
    """Inline spans that are paths into the source folders."""
    pattern = re.compile(rf"^(?:{'|'.join(SOURCE_DIRS)})/[\w./*{{}},-]*$")
    out = []
    for doc in DOCS:
        if (ROOT / doc).is_file():
            out += [(doc, line, span) for line, span in inline_spans((ROOT / doc).read_text())
                    if pattern.match(span) and not any(c in span for c in "*{<")]
    return out


COMMANDS, OTHERS = readme_commands()


# ------------------------------------------------------------------------------ checkers
class NotChecked(AssertionError):
    pass


@functools.cache
def _entries():
    return {e.name: e for e in entry_points()}


@functools.cache
def _parser(name: str):
    parser = capture_parser(_entries()[name])
    assert parser is not None, f"{name} builds no argparse parser"

    def refuse(sub, message):
        raise AssertionError(f"{sub.prog}: {message}")

    for _, sub in walk(parser):  # argparse would print usage and exit the test run
        sub.error = functools.partial(refuse, sub)
    return parser


def _existing(rel: str, sandbox: Path | None) -> Path | None:
    for base in (ROOT, sandbox):
        if base is not None and (base / rel).exists():
            return base / rel
    return None


@functools.cache
def _load_config(path: str) -> None:
    from mmengine.config import Config
    Config.fromfile(path)


def _check_config(rel: str, cmd: Command, sandbox) -> None:
    found = _existing(rel, sandbox(cmd) if cmd.earlier else None)
    assert found, f"{cmd.id}: config {rel} does not exist"
    _load_config(str(found))


def _check_source_paths(cmd: Command, tokens: list[str]) -> None:
    for token in tokens:
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        if value.split("/")[0] in SOURCE_DIRS and "/" in value and not PLACEHOLDER.match(value):
            assert (ROOT / value).exists(), f"{cmd.id}: {value} does not exist"


def _check_values(cmd: Command, args) -> None:
    """The values the parser cannot judge: dataset names, model-zoo names, archs."""
    from linear_probe.registry import resolve_datasets
    from tinyvit_backbone import zoo

    datasets = [d for d in getattr(args, "dataset", None) or []
                if not d.startswith("imagefolder:") and not PLACEHOLDER.match(d)]
    if getattr(args, "command", None) == "download":
        from linear_probe.downloads import DENSE_DATASETS  # instructions only, no registry entry
        datasets = [d for d in datasets if d not in DENSE_DATASETS]
    if datasets:
        resolve_datasets(datasets)  # raises with the known names
    for dest in ("weights", "init", "teacher_checkpoint", "backbone_checkpoint", "src", "specs"):
        values = getattr(args, dest, None)
        for value in [values] if isinstance(values, str) else values or []:
            spec = value.split("=", 1)[1] if "=" in value else value
            if re.fullmatch(r"[A-Za-z0-9_-]+", spec) and not PLACEHOLDER.match(spec):
                assert zoo.get(spec) is not None, \
                    f"{cmd.id}: {spec!r} is not in the model zoo (python -m " \
                    "tinyvit_backbone.weights list)"
    for dest in ("arch", "seed_arch"):
        value = getattr(args, dest, None)
        if isinstance(value, str) and not PLACEHOLDER.match(value):
            assert value in ("5m", "11m", "21m") or value.endswith(".json"), \
                f"{cmd.id}: --arch {value!r} is neither 5m, 11m, 21m nor an arch JSON file"


@functools.cache
def _default_outputs() -> frozenset[str]:
    """The files the project's commands append their records to by default (--output)."""
    out = set()
    for name in _entries():
        for _, sub in walk(_parser(name)):
            out.update(a.default for a in sub._actions
                       if "--output" in a.option_strings and isinstance(a.default, str))
    return frozenset(out)


def _check_inputs(cmd: Command, parsed) -> None:
    """Record files a command reads (make_tables' --results) must be ones a command writes:
    a default --output, or an --output given by a README command."""
    given = {c.tokens[i + 1] for c in COMMANDS for i, t in enumerate(c.tokens[:-1])
             if t == "--output"}
    for value in getattr(parsed, "results", None) or []:
        if not PLACEHOLDER.match(value):
            assert value in _default_outputs() | given, \
                f"{cmd.id}: no command writes {value} (the probes write " \
                f"{sorted(_default_outputs())} unless --output says otherwise)"


def check_project_cli(cmd: Command, name: str, args: list[str], sandbox) -> None:
    if cmd.inline and not args:
        return  # a program named in prose
    parser = _parser(name)
    try:
        parsed, unknown = parser.parse_known_args(args)
    except AssertionError as err:
        if cmd.inline and "arguments are required" in str(err):
            return  # prose names a command without all of its arguments
        raise
    assert not unknown, f"{cmd.id}: {name} does not know {unknown}"
    _check_source_paths(cmd, args)
    _check_values(cmd, parsed)
    _check_inputs(cmd, parsed)
    config = getattr(parsed, "config", None)
    if isinstance(config, str) and config.endswith(".py") and not PLACEHOLDER.match(config):
        _check_config(config, cmd, sandbox)
    if name == "python -m tinyvit_backbone.mmcv_standin":
        check_python(cmd, [parsed.script, *parsed.args], sandbox)


def check_python(cmd: Command, args: list[str], sandbox) -> None:
    if args[:1] == ["-m"]:
        name = f"python -m {args[1]}"
        if name not in _entries():
            if args[1] == "pytest":
                return check_pytest(cmd, args[2:])
            if args[1] == "pip":
                return check_pip(cmd, args[2:])
            raise NotChecked(f"{cmd.id}: python -m {args[1]} is not a CLI of the project")
        return check_project_cli(cmd, name, args[2:], sandbox)
    script = args[0]
    assert (ROOT / script).is_file(), f"{cmd.id}: {script} does not exist"
    if script not in _entries():
        raise NotChecked(f"{cmd.id}: {script} is not a CLI of the project")
    check_project_cli(cmd, script, args[1:], sandbox)


def check_torchrun(cmd: Command, args: list[str], sandbox) -> None:
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(args)
    script_args = list(parsed.training_script_args)
    check_python(cmd, (["-m"] if parsed.module else []) + [parsed.training_script] + script_args,
                 sandbox)


@functools.cache
def _make_targets() -> frozenset[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\- ]+):(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return frozenset(targets)


def check_make(cmd: Command, args: list[str]) -> None:
    goals = [a for a in args if not a.startswith("-") and "=" not in a]
    assert goals or not cmd.inline, f"{cmd.id}: no target"
    for goal in goals:
        assert goal in _make_targets(), f"{cmd.id}: the Makefile has no target {goal!r}"


def check_mim(cmd: Command, args: list[str], sandbox) -> None:
    sub = args[0] if args else None
    if cmd.inline and len(args) < 3:  # mim, or one of its commands, named in prose
        assert sub is None or importlib.util.find_spec("mim") is None or \
            importlib.util.find_spec(f"mim.commands.{sub}"), f"{cmd.id}: mim has no {sub!r}"
        return
    assert sub in ("train", "test", "run"), f"{cmd.id}: mim {sub} is not checked"
    assert len(args) >= 3, f"{cmd.id}: mim {sub} needs a package and a config"
    package, target = args[1], args[2]
    assert package in ("mmdet", "mmseg"), f"{cmd.id}: package {package!r}"
    try:
        module = importlib.import_module(f"mim.commands.{sub}")
    except ImportError:
        module = None  # mim is the `mim` extra; the config is still checked
    if module is not None:
        module.cli.make_context(f"mim {sub}", list(args[1:]))  # click: refuses bad options
    if sub in ("train", "test"):
        _check_config(target, cmd, sandbox)


def check_pytest(cmd: Command, args: list[str]) -> None:
    registered = []

    class Recorder:
        def addoption(self, *names, **kwargs):
            registered.extend(names)

    import tests.conftest as conftest
    conftest.pytest_addoption(Recorder())
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=")[0] in registered, \
                f"{cmd.id}: {arg} is not an option tests/conftest.py adds"


def check_pip(cmd: Command, args: list[str]) -> None:
    """pip's own option parser judges the options (an install from a wheel folder, say)."""
    from pip._internal.commands import commands_dict, create_command

    assert args and args[0] in commands_dict, f"{cmd.id}: pip has no command {args[:1]}"
    parser = create_command(args[0]).parser

    def refuse(message):
        raise AssertionError(f"{cmd.id}: pip {args[0]}: {message}")

    parser.error = refuse
    parser.parse_args(args[1:])
    _check_source_paths(cmd, args[1:])


def check_shell_script(cmd: Command, script: str, args: list[str], direct: bool) -> None:
    path = ROOT / script.removeprefix("./")
    assert path.is_file(), f"{cmd.id}: {script} does not exist"
    if direct:
        assert os.access(path, os.X_OK), f"{cmd.id}: {script} is not executable"
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{cmd.id}: {syntax.stderr}"
    options = [a.split("=")[0] for a in args if a.startswith("-")]
    if options:
        assert "--help" in path.read_text(), \
            f"{cmd.id}: {script} is given options but has no --help to check them against"
        usage = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=60)
        assert usage.returncode == 0, f"{cmd.id}: {script} --help failed: {usage.stderr}"
        for option in options:
            assert option in usage.stdout + usage.stderr, \
                f"{cmd.id}: {script} --help does not mention {option}"


def check(cmd: Command, sandbox) -> None:
    assert cmd.error is None, f"{cmd.id}: {cmd.error}"
    tokens = list(cmd.tokens)
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        var = tokens.pop(0).split("=")[0]
        assert _project_reads(var), f"{cmd.id}: nothing in the project reads {var}"
    if not tokens:
        return
    head, args = tokens[0], tokens[1:]
    if cmd.text in RUN:
        run_command(cmd, sandbox(cmd, force=True))
    if _is_python(head):
        return check_python(cmd, args, sandbox)
    if head.startswith("tinyvit-"):
        assert head in _entries(), f"{cmd.id}: {head} is not a console script of pyproject.toml"
        return check_project_cli(cmd, head, args, sandbox)
    if head == "make":
        return check_make(cmd, args)
    if head == "mim":
        return check_mim(cmd, args, sandbox)
    if head == "torchrun":
        return check_torchrun(cmd, args, sandbox)
    if head == "pytest":
        return check_pytest(cmd, args)
    if head in ("pip", "pip3") or head.endswith(("/pip", "/pip3")):
        return check_pip(cmd, args)
    if head == "bash" and args and args[0].endswith(".sh"):
        return check_shell_script(cmd, args[0], args[1:], direct=False)
    if head.endswith(".sh"):
        return check_shell_script(cmd, head, args, direct=True)
    if head.removeprefix("./").split("/")[0] in SOURCE_DIRS and head.endswith(".py"):
        path = ROOT / head.removeprefix("./")
        assert path.is_file(), f"{cmd.id}: {head} does not exist"
        assert os.access(path, os.X_OK) and path.read_text().startswith("#!"), \
            f"{cmd.id}: {head} is run directly but is not executable: write `python {head}`"
        return check_python(cmd, [head.removeprefix("./"), *args], sandbox)
    raise NotChecked(f"{cmd.id}: a README command of a kind this test does not check: check it "
                     "here or list it in MENTIONS / NOT_COMMANDS with the reason")


@functools.cache
def _project_reads(var: str) -> bool:
    files = [ROOT / "Makefile", *ROOT.glob(".ci/*"),
             *(f for d in SOURCE_DIRS for f in (ROOT / d).rglob("*") if f.suffix != ".md")]
    return any(var in f.read_text(errors="replace") for f in files
               if f.is_file() and f.resolve() != Path(__file__).resolve())


# ------------------------------------------------------------------------------ running
_RAN: dict[tuple[str, str], subprocess.CompletedProcess] = {}


def run_command(cmd: Command, folder: Path) -> subprocess.CompletedProcess:
    """Run a RUN command once in the scratch folder; checks what RUN promises of it."""
    key = (str(folder), cmd.text)  # a module fixture is made anew when tests interleave
    if key in _RAN:
        return _RAN[key]
    env = subprocess_env(ROOT, TORCH_HOME=str(folder / "torch"), HF_HUB_OFFLINE="1",
                         TINYVIT_DATA=str(folder / "data"), CUDA_VISIBLE_DEVICES="")
    assert _is_python(cmd.tokens[0]), cmd.id
    out = subprocess.run([sys.executable, *cmd.tokens[1:]], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{cmd.id} failed:\n{out.stderr[-3000:]}"
    if "JSON" in RUN[cmd.text]:
        assert json.loads(out.stdout), f"{cmd.id}: empty JSON result"
    if "scenes.json" in RUN[cmd.text]:
        assert (folder / "data/embedded/scenes/scenes.json").is_file()
    _RAN[key] = out
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder laid out like a checkout (the source folders linked in) for the commands that
    run, so that they read the checkout's configs and write only here."""
    folder = tmp_path_factory.mktemp("readme")
    for name in SOURCE_DIRS:
        os.symlink(ROOT / name, folder / name)
    return folder


@pytest.fixture
def sandbox(scratch):
    """``sandbox(cmd)``: the scratch folder after the RUN commands earlier in ``cmd``'s chain
    ran there (what they write is what ``cmd`` reads)."""
    def prepare(cmd: Command, force: bool = False) -> Path:
        for earlier in cmd.earlier:
            if earlier.text in RUN:
                run_command(earlier, scratch)
        return scratch
    return prepare


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command_matches_the_code(cmd, sandbox):
    check(cmd, sandbox)


@pytest.mark.parametrize("block", OTHERS, ids=[f"{d}:{n}: {f}" for d, n, f, _ in OTHERS])
def test_readme_non_command_blocks(block):
    doc, line, first, text = block
    if first.startswith("custom_imports"):
        compile(text, f"{doc}:{line}", "exec")
    elif first.startswith("manifest.json"):
        from tinyvit_backbone.distill.lock import LOCK_FILE
        from tinyvit_backbone.distill.manifest import EPOCH_FILE, MANIFEST
        written = {MANIFEST, LOCK_FILE, *(EPOCH_FILE.format(epoch=e) for e in range(2))}
        for name in re.findall(r"^(\S+)", text, re.MULTILINE):
            assert name in written, f"{doc}:{line}: the store writes no {name}"
    else:
        for name in re.findall(r"^(\S+)/", text, re.MULTILINE):
            assert (ROOT / name).is_dir(), f"{doc}:{line}: the layout names {name}/, missing"


@pytest.mark.parametrize("path", source_paths(), ids=[f"{d}:{n}: {p}" for d, n, p in
                                                       source_paths()])
def test_readme_paths_exist(path):
    doc, line, rel = path
    assert (ROOT / rel).exists(), f"{doc}:{line}: {rel} does not exist"


def _links() -> list[tuple[str, int, str]]:
    out = []
    for doc in DOCS:
        if (ROOT / doc).is_file():
            prose = without_blocks((ROOT / doc).read_text())
            for match in re.finditer(r"\]\(([^)\s]+)\)", prose):
                target = match.group(1).split("#")[0]
                if target and not re.match(r"^[a-z]+:", target):
                    out.append((doc, prose.count("\n", 0, match.start()) + 1, target))
    return out


@pytest.mark.parametrize("link", _links(), ids=[f"{d}:{n}: {t}" for d, n, t in _links()])
def test_readme_links_resolve(link):
    doc, line, target = link
    assert ((ROOT / doc).parent / target).exists(), f"{doc}:{line}: the link to {target} is broken"


def test_every_listed_exception_is_still_in_a_readme():
    """An entry of RUN / MENTIONS / NOT_COMMANDS whose text left the READMEs is stale."""
    texts = {c.text for c in COMMANDS}
    assert set(RUN) <= texts, sorted(set(RUN) - texts)
    spans = {s for doc in DOCS if (ROOT / doc).is_file()
             for _, s in inline_spans((ROOT / doc).read_text())}
    assert set(MENTIONS) <= spans, sorted(set(MENTIONS) - spans)
    firsts = {f for _, _, f, _ in OTHERS}
    assert all(any(f.startswith(p) for f in firsts) for p in NOT_COMMANDS)


def test_extraction_handles_continuations_chains_comments_and_placeholders():
    block = ("# a comment\n"
             "python tools/train.py det_configs/x.py [--resume [PATH]] \\\n"
             "    --embedded   # trailing\n"
             "python -m a b && mim train mmdet c.py --gpus 0\n"
             "tools/reproduce.py table5 --weights ROW=W ... --only linear")
    cmds = split_commands(block, "doc", 1)
    assert [c.tokens for c in cmds] == [
        ["python", "tools/train.py", "det_configs/x.py", "--resume", "PATH", "--embedded"],
        ["python", "-m", "a", "b"], ["mim", "train", "mmdet", "c.py", "--gpus", "0"],
        ["tools/reproduce.py", "table5", "--weights", "ROW=W", "--only", "linear"]]
    assert [c.line for c in cmds] == [2, 4, 4, 5]
    assert cmds[2].earlier == [cmds[1]] and not cmds[1].earlier
    text = "Text\n\n    make demo   # x\n    make test\n\nMore `make lint` and `x`.\n  - item\n    cont\n"
    assert [(n, b) for n, b, _ in code_blocks(text)] == [(3, "make demo   # x\nmake test")]
    assert ("make lint" in [s for _, s in inline_spans(text)]
            and "make demo   # x" not in [s for _, s in inline_spans(text)])


@pytest.mark.parametrize("text, message", [
    ("python -m linear_probe sweep --dataset digits --no-such-flag", "does not know"),
    ("python -m linear_probe nosuchcommand", "invalid choice"),
    ("python -m linear_probe episodes --dataset digits --protocol nope", "invalid choice"),
    ("python -m linear_probe kshot --dataset nosuchset", "nosuchset"),
    ("tinyvit-convert no_such_zoo_entry out.pth", "not in the model zoo"),
    ("make no-such-target", "no target"),
    ("python tools/train.py det_configs/no_such_config.py", "does not exist"),
    ("tools/reproduce.py table6", "not executable"),
    ("python tools/make_tables.py --results results/probe/*.jsonl --out t", "no command writes"),
    ("curl https://example.org", "does not check"),
    ("pip install --no-such-option x", "no such option"),
    ("FORCE_NOTHING=1 make test", "nothing in the project reads FORCE_NOTHING"),
])
def test_the_checks_refuse_a_drifted_command(text, message, sandbox):
    cmd = split_commands(text, "doc", 1)[0]
    with pytest.raises((AssertionError, ValueError)) as err:
        check(cmd, sandbox)
    assert message in str(err.value)


def test_make_targets_are_read_from_the_makefile():
    assert {"demo", "test", "env"} <= _make_targets()
    assert shutil.which("bash")
