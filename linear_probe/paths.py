"""Where the probes read and write by default; each can be moved by an environment variable."""
from __future__ import annotations

import os


def default_data_root() -> str:
    """Datasets: ``$TINYVIT_DATA`` or ``./data``."""
    return os.environ.get("TINYVIT_DATA", "data")


def default_cache_dir() -> str:
    """Feature cache: ``$TINYVIT_CACHE`` or ``./work_dirs/features``."""
    return os.environ.get("TINYVIT_CACHE", os.path.join("work_dirs", "features"))


def default_work_dir() -> str:
    """Resumable runs' state: ``$TINYVIT_WORK_DIR`` or ``./work_dirs/probe``."""
    return os.environ.get("TINYVIT_WORK_DIR", os.path.join("work_dirs", "probe"))
