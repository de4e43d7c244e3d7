"""The layout holds: importing any non-detection module loads neither mmdet nor mmseg, the
plugin core imports light, and no package imports another in a circle."""
import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tinyvit_backbone", "linear_probe", "reproduction")
# Modules whose job is to drive mmdet / mmseg may import them; none does at import time today.
DETECTION_MODULES: frozenset[str] = frozenset()
PRODUCT = ("tinyvit_backbone", "linear_probe", "reproduction", "tools", "bench", "det_configs",
           "seg_configs", "docs", "README.md", "Makefile", "pyproject.toml")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_no_module_outside_detection_imports_mmdet_or_mmseg():
    """One fresh interpreter imports every module in turn and names the first that pulls
    mmdet or mmseg in (the attribution is exact: nothing had loaded them before it)."""
    code = f"""
import importlib, json, pkgutil, sys
heavy = ("mmdet", "mmseg")
names = []
for root in {PACKAGES!r}:
    names.append(root)
    names += [m.name for m in pkgutil.walk_packages(importlib.import_module(root).__path__,
                                                     root + ".")]
skip = {sorted(DETECTION_MODULES)!r}
for name in names:
    if name in skip:
        continue
    importlib.import_module(name)
    pulled = [m for m in heavy if m in sys.modules]
    if pulled:
        print(json.dumps(dict(first=name, pulled=pulled, count=len(names))))
        break
else:
    print(json.dumps(dict(first=None, count=len(names))))
"""
    result = json.loads(_run(code).strip().splitlines()[-1])
    assert result["first"] is None, f"{result['first']} imports {result['pulled']}"
    assert result["count"] > 40  # every module was visited


def test_the_plugin_core_imports_light():
    """``custom_imports=['tinyvit_backbone']`` registers without loading torch, timm, mmdet or
    mmseg; the backbone loads on first use."""
    code = """
import json, sys
import tinyvit_backbone
from mmengine.registry import MODELS
light = {m: m in sys.modules for m in ("torch", "timm", "mmdet", "mmseg")}
registered = "TinyViT" in MODELS.module_dict
tinyvit_backbone.TinyViT
print(json.dumps(dict(light=light, registered=registered, timm_after="timm" in sys.modules)))
"""
    result = json.loads(_run(code).strip().splitlines()[-1])
    assert not any(result["light"].values()), result["light"]
    assert result["registered"] and result["timm_after"]


def _modules() -> dict[str, Path]:
    mods = {}
    for root in PACKAGES:
        for path in (ROOT / root).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _package_of(name: str, mods: dict[str, Path]) -> str:
    return name if mods[name].name == "__init__.py" else name.rsplit(".", 1)[0]


def package_graph() -> dict[str, set[str]]:
    """package -> packages it imports (any import statement, inside functions too)."""
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        base = _package_of(name, mods)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                    module = ".".join(parts + ([node.module] if node.module else []))
                else:
                    module = node.module
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target in mods and _package_of(target, mods) != base:
                    edges[base].add(_package_of(target, mods))
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_package_imports_another_in_a_circle():
    edges = package_graph()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    # the direction the layout promises
    assert "reproduction" not in edges["linear_probe"]
    assert not edges["tinyvit_backbone"] & {"linear_probe", "reproduction"}


def test_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_product_names_no_machine_paths():
    """Docs, code and messages speak of the project alone: no absolute paths of a development
    machine."""
    offenders = []
    for entry in PRODUCT:
        path = ROOT / entry
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix not in (".py", ".md", ".yml", ".yaml", ".toml", ".sh", ".txt", "") \
                    or "__pycache__" in f.parts:
                continue
            text = f.read_text(errors="replace")
            # the top folders of development machines' absolute paths, assembled here so that
            # this file itself names none
            for needle in (f"/{top}/" for top in ("work", "root", "home")):
                if needle in text:
                    offenders.append(f"{f.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_the_run_hooks_come_with_the_import_under_a_train_script():
    """mmdet's and mmseg's train scripts load mmengine's runner before they read
    custom_imports: importing the package there installs the zoo's URL scheme and the
    checkpoint allow-list at once, for every model of the run."""
    code = """
import json
from mmengine.runner import CheckpointLoader
import tinyvit_backbone
from tinyvit_backbone.zoo import OFFICIAL_BASE_URLS
import torch.serialization as ser
from mmengine.logging.history_buffer import HistoryBuffer
print(json.dumps(dict(
    scheme=any(base.replace('.', '\\\\.') in p for p in CheckpointLoader._schemes
               for base in OFFICIAL_BASE_URLS),
    safe=HistoryBuffer in ser.get_safe_globals())))
"""
    assert json.loads(_run(code).strip().splitlines()[-1]) == dict(scheme=True, safe=True)
