"""Reproduce the paper's transfer tables: published numbers beside ours.

This is the one package that reads the outputs of every other part of the project: mmengine
work dirs of the detectors and segmenters (:mod:`.runs`), linear-probe and few-shot records
(:mod:`.probes`, with the schema of :mod:`linear_probe.results`) and the benchmark report
(:mod:`.bench_report`). It depends on ``tinyvit_backbone`` and ``linear_probe`` and neither of
them depends on it, which is why it is a package of its own: the tables can import the result
schema from where the results are written, without a circle.

* :mod:`.published` — every published number of the paper's Tables 4, 5 and 6 and of the
  ablations, each with its source;
* :mod:`.tables` / :mod:`.make` — the tables in the paper's layouts and the wider suite's, in
  Markdown, CSV, LaTeX and PNG (CLI: ``tools/make_tables.py``);
* :mod:`.reproduce` — one command per paper table (``tools/reproduce.py table5|table6``);
* :mod:`.demo` — the whole pipeline in miniature on the embedded data (``make demo``).
"""
