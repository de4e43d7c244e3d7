"""Keep every test CPU-only, single-threaded and seeded, and gate the slow ones.

Slow tests (real training loops, torchrun) run with ``--runslow`` or when ``CI`` is set to a
true value, which is how `.ci/run` calls the README's test command.

Two markers say what a test needs beyond the project's code, and skip it, with the reason,
where that is absent (the suite also runs on a machine's own torch with mmcv-lite, as the
README's device rehearsal does):

* ``requires_mmcv_ops``: mmcv's compiled ops (``mmcv._ext``), which mmdet's and mmseg's model
  packages import; mmcv-lite has none.
* ``requires_pinned_stack``: the environment ``make env`` builds with the pinned stack (torch
  2.14.1, numpy < 2): its stamp is in the venv, and it keeps no interpreter's own torch.
"""
import importlib.util
import os
import random
import sys
from pathlib import Path

# Before torch is imported anywhere: no GPU, one thread per op, deterministic kernels.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def mmcv_ops_missing() -> str | None:
    """Why mmcv's compiled ops are absent, or None; looked up without importing mmcv."""
    spec = importlib.util.find_spec("mmcv")
    if spec is None:
        return "needs mmcv's compiled ops (mmcv._ext): mmcv is not installed"
    if not any(next(Path(d).glob("_ext*"), None) for d in spec.submodule_search_locations or ()):
        return ("needs mmcv's compiled ops (mmcv._ext), which this mmcv lacks (mmcv-lite, or a "
                "build without ops): `make env` builds them")
    return None


def pinned_stack_missing() -> str | None:
    """Why this is not the environment ``make env`` builds with the pinned stack, or None."""
    prefix = Path(sys.prefix)
    if not (prefix / ".tinyvit-env-stamp").is_file():
        return ("checks the pinned stack of `make env`; this environment was not built by "
                "tools/bootstrap.sh")
    if (prefix / ".tinyvit-system-constraints.txt").is_file():
        return ("checks the pinned stack of `make env`; this environment keeps the interpreter's "
                "own torch (TINYVIT_SYSTEM_TORCH=1)")
    return None


def pytest_collection_modifyitems(config, items):
    missing = {"requires_mmcv_ops": mmcv_ops_missing(),
               "requires_pinned_stack": pinned_stack_missing()}
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
    if config.getoption("--runslow") or _truthy(os.environ.get("CI")):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (CI=true runs it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_environ():
    """Each test starts from the session's environment: code under test may set process-wide
    variables (tools/train.py sets LOCAL_RANK, as mmdet's train script does), which would
    change what a later test sees, e.g. the device ``auto`` picks."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
