"""Regenerate the paper's transfer tables from run outputs, published numbers beside ours.

Reads mmengine work_dirs of mmdet / mmseg runs (:mod:`.runs`), linear-probe / few-shot JSON
lines (:mod:`.probes`) and the benchmark report (:mod:`.bench_report`); writes Markdown, CSV,
LaTeX and PNG (:mod:`.make`). CLI: ``python tools/make_tables.py``.
"""
from .make import build_report, make_tables

__all__ = ["build_report", "make_tables"]
