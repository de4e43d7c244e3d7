"""The files a config's dataloaders read, checked before a run starts.

Without COCO, a run fails only once its dataset is built: after mmengine's Runner has created the
work dir and logged some 900 lines of environment and config, in a ``FileNotFoundError``
traceback from pycocotools. :func:`data_problem` reads the same paths from the config the way
mmengine's ``BaseDataset`` joins them (``data_root`` + ``ann_file``, ``data_root`` + each
``data_prefix`` folder, plus a ``CocoMetric``'s own ``ann_file``) and says what is missing
and how to get it, before anything is built or written.

Only local paths are checked: a dataset read through a storage backend (``backend_args``) or a
URL is left to its reader. The module imports nothing of torch, mmdet or mmseg.

``tools/train.py`` checks a run's train and val files before it builds the Runner;
:func:`install_runner_check` (installed with the plugin's run hooks) makes every
``Runner.from_cfg`` check the val and test files, which covers ``mim train`` and ``mim test``.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from .config_task import model_type

TRAIN_LOADERS = ("train_dataloader", "val_dataloader")
WRAPPERS = ("dataset", "datasets")
# `python -m linear_probe download --dataset NAME --data-root ROOT` prints the source and layout
# of these sets; FOLDER is where it expects them under ROOT (the configs' data_root ends in it).
DENSE_SETS = {"CocoDataset": ("coco", "coco"),
              "ADE20KDataset": ("ade20k", os.path.join("ade", "ADEChallengeData2016"))}
SCENES_COMMAND = "python -m tinyvit_backbone.embedded.scenes"


def _local(path) -> bool:
    return isinstance(path, str) and bool(path) and "://" not in path


def _join(root, rel) -> str | None:
    if not _local(rel):
        return None
    if os.path.isabs(rel) or not _local(root):
        return rel
    return os.path.join(root, rel)


def _datasets(node) -> Iterable[Mapping]:
    """The datasets a dataset config reads, through Concat / Repeat / ClassBalanced wrappers."""
    if not isinstance(node, Mapping):
        return
    inner = [node[k] for k in WRAPPERS if k in node]
    if not inner:
        yield node
        return
    for item in inner:
        for one in (item if isinstance(item, (list, tuple)) else [item]):
            yield from _datasets(one)


def dataset_paths(dataset: Mapping) -> list[str]:
    """The local files and folders a dataset config needs, as mmengine's BaseDataset joins
    them (``data_root`` + ``ann_file``, ``data_root`` + every ``data_prefix`` value)."""
    if dataset.get("backend_args"):
        return []
    root = dataset.get("data_root")
    paths = [_join(root, dataset.get("ann_file"))]
    prefix = dataset.get("data_prefix") or {}
    if isinstance(prefix, Mapping):
        paths += [_join(root, value) for value in prefix.values()]
    return [os.path.normpath(p) for p in paths if p]


def _evaluator_paths(evaluator) -> list[str]:
    out = []
    for one in (evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]):
        if isinstance(one, Mapping) and _local(one.get("ann_file")) and not one.get("backend_args"):
            out.append(os.path.normpath(one["ann_file"]))
    return out


def missing_data(cfg: Mapping, loaders: Sequence[str] = TRAIN_LOADERS) -> list[tuple[str, str]]:
    """``[(dataset type, missing path)]`` for the ``loaders`` of a config (mmengine ``Config``
    or its dict), each path once, in the config's order. A loader's evaluator
    (``val_dataloader`` -> ``val_evaluator``) is checked with it."""
    seen, out = set(), []
    for key in loaders:
        loader = cfg.get(key)
        if not isinstance(loader, Mapping):
            continue
        found = [(model_type(ds), p) for ds in _datasets(loader.get("dataset"))
                 for p in dataset_paths(ds)]
        evaluator = cfg.get(key.replace("_dataloader", "_evaluator"))
        found += [("evaluator", p) for p in _evaluator_paths(evaluator)]
        for kind, path in found:
            if path not in seen and not os.path.exists(path):
                seen.add(path)
                out.append((kind, path))
    return out


def _how_to_get(datasets: list[Mapping], paths: list[str]) -> str:
    hints = []
    for ds in datasets:
        name, folder = DENSE_SETS.get(model_type(ds), (None, None))
        root = os.path.normpath(ds.get("data_root") or ".")
        if name is None or not root.endswith(folder):
            continue
        parent = root[:-len(folder)].rstrip(os.sep) or "."
        hint = (f"`python -m linear_probe download --dataset {name} --data-root {parent}` "
                "prints where to get it and the layout to unpack it into")
        if hint not in hints:
            hints.append(hint)
    if any("embedded" in p and "scenes" in p for p in paths):
        hints.append(f"`{SCENES_COMMAND}` writes the embedded scenes")
    if not hints:
        return "put the dataset there, or point the config's data_root / ann_file at it"
    return "; ".join(hints)


def data_problem(cfg: Mapping, loaders: Sequence[str] = TRAIN_LOADERS,
                 config: str | None = None) -> str | None:
    """None when every local file the ``loaders`` need exists, else one message naming each
    missing path and the command or download that provides it."""
    missing = missing_data(cfg, loaders)
    if not missing:
        return None
    datasets = [ds for key in loaders if isinstance(cfg.get(key), Mapping)
                for ds in _datasets(cfg[key].get("dataset"))]
    paths = [p for _, p in missing]
    where = f" {config}" if config else " the config"
    listing = "\n".join(f"    {p}" for p in paths)
    return (f"the dataset of{where} is not in place (paths relative to {os.getcwd()}); "
            f"missing:\n{listing}\nTo get it: {_how_to_get(datasets, paths)}. Nothing was started.")


class DatasetNotInPlaceError(FileNotFoundError):
    """The files a config's dataloaders read are missing; the message says how to get them."""


# The scripts `mim train` / `mim test` run (mmdet's and mmseg's tools/train.py, test.py) print
# any exception with its traceback; their user needs only the message.
SCRIPTS = ("train.py", "test.py")


def install_runner_check() -> None:
    """Check the dataloaders' files whenever mmengine's ``Runner.from_cfg`` builds a Runner
    (what ``mim train`` and ``mim test`` do), before it creates the work dir or logs the config:
    under a ``train.py`` script the train and val files, otherwise the val and test files (a
    Runner built to test never reads the train set). Idempotent; does nothing unless mmengine's
    runner is loaded already."""
    runner_module = sys.modules.get("mmengine.runner")
    if runner_module is None:
        return
    runner_cls = runner_module.Runner
    original = runner_cls.__dict__["from_cfg"].__func__
    if getattr(original, "_checks_data", False):
        return

    def from_cfg(cls, cfg):
        script = os.path.basename(sys.argv[0]) if sys.argv else ""
        loaders = TRAIN_LOADERS if script == "train.py" else ("val_dataloader", "test_dataloader")
        problem = data_problem(cfg, loaders, config=getattr(cfg, "filename", None))
        if problem is not None:
            if script in SCRIPTS:
                print(f"error: {problem}", file=sys.stderr, flush=True)
                raise SystemExit(2)
            raise DatasetNotInPlaceError(problem)
        return original(cls, cfg)

    from_cfg._checks_data = True
    from_cfg.__doc__ = original.__doc__
    runner_cls.from_cfg = classmethod(from_cfg)
