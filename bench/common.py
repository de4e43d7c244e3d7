"""What every benchmark under bench/ shares: a timer, the result record, machine info.

A benchmark module ``bench/bench_<area>.py`` exposes ``run(quick: bool) -> list[Figure]`` and
measures its baseline in the same run, on the same machine and threads. ``bench/run_all.py``
collects the figures into one JSON and one Markdown report.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class Figure:
    """One measured figure against its baseline, both measured in the same run.

    ``ratio`` is value / baseline_value; ``speedup`` is the ratio oriented so that > 1 means
    better than the baseline (for lower-is-better units such as seconds it is the inverse).
    ``goal`` is a minimum ``speedup`` (e.g. 1.0 = "at least as fast as the baseline",
    0.95 = "at most 5% slower").
    """

    bench: str
    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    higher_is_better: bool = True
    goal: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    @property
    def speedup(self) -> float:
        r = self.ratio
        return r if self.higher_is_better else (1.0 / r if r else float("nan"))

    @property
    def meets_goal(self) -> bool | None:
        return None if self.goal is None else bool(self.speedup >= self.goal)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ratio=self.ratio, speedup=self.speedup, meets_goal=self.meets_goal)
        return d


def time_call(fn: Callable[[], object], warmup: int = 1, repeat: int = 5,
              min_seconds: float = 0.0) -> float:
    """Median wall seconds of one ``fn()`` call over ``repeat`` timed calls (after ``warmup``);
    keeps repeating until ``min_seconds`` of timed work has accumulated."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeat or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_info() -> dict:
    import torch
    info = dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        env={k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
             if k in os.environ},
    )
    for mod in ("timm", "mmengine", "mmcv", "mmdet", "mmseg", "sklearn", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed or broken: report, do not fail the bench
            info[mod] = None
    return info


def subprocess_env(root, **extra: str) -> dict:
    """This process's environment for a Python subprocess that imports the checkout at
    ``root``: ``root`` first on ``PYTHONPATH``, what was there kept after it (packages
    installed with ``pip install --target`` live there), and ``extra`` variables on top."""
    paths = [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                           if p and p != str(root)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **extra)


def describe(fig: Figure) -> str:
    """One line per figure, as the runner and every benchmark's own ``__main__`` print it."""
    goal = "" if fig.goal is None else f" (goal {fig.goal}x: {'ok' if fig.meets_goal else 'MISSED'})"
    return (f"{fig.bench} | {fig.name}: {fig.value:.4g} {fig.unit} vs {fig.baseline_value:.4g} "
            f"[{fig.baseline}] -> {fig.speedup:.3f}x{goal}")


def build_parser(doc: str | None):
    """The parser of ``python bench/bench_<name>.py [--quick]``, described by the first paragraph
    of the benchmark's module docstring ``doc``."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0] or None)
    parser.add_argument("--quick", action="store_true",
                        help="the minute-long version")
    return parser


def main(run: Callable[..., list[Figure]], argv: list[str] | None = None, parser=None,
         options: Sequence[str] = ()) -> int:
    """``python bench/bench_<name>.py [--quick]``: run one benchmark and print its figures.
    ``parser``: :func:`build_parser`'s, extended by the benchmark (default: a new one);
    ``options``: the names of its extra arguments that ``run`` takes as keywords."""
    if parser is None:
        parser = build_parser(sys.modules[run.__module__].__doc__)
    args = parser.parse_args(argv)
    print(machine_info())
    for fig in run(quick=args.quick, **{name: getattr(args, name) for name in options}):
        print(describe(fig))
    return 0
