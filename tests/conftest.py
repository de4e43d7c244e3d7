"""Keep every test CPU-only, single-threaded and seeded, and gate the slow ones.

Slow tests (real training loops, torchrun) run with ``--runslow`` or when ``CI`` is set to a
true value, which is how `.ci/run` calls the README's test command.
"""
import os
import random

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


def pytest_collection_modifyitems(config, items):
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
