"""Cost figures of an architecture: parameters and MACs from the project's one counter
(:mod:`tinyvit_backbone.complexity`), throughput measured on a device."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ..backbone import build_timm_tinyvit
from ..complexity import METHOD as COMPLEXITY_METHOD
from ..complexity import count_macs, count_params
from ..device import select_device
from ..progress import progress_bar

ThroughputFn = Callable[[dict], float]
"""``arch -> images per second``; the search takes any such callable (tests pass a stub)."""


@dataclass
class DeviceThroughput:
    """Measured inference throughput (images/s) of an architecture on a device.

    A random-weight classifier in eval mode runs ``warmup`` batches, then ``repeat`` timed
    batches of ``batch_size`` x 3 x ``resolution`` x ``resolution``; the result is
    ``batch_size / median seconds``. On CUDA the forward runs under fp16 autocast when ``amp``
    (as throughput is reported in the paper: V100, mixed precision) and the clock waits for the
    device. ``progress`` shows a bar over the batches (a CPU takes minutes for the 21M model at
    batch 64); it is not a setting of the measurement.
    """

    batch_size: int = 64
    resolution: int = 224
    device: str | None = None
    warmup: int = 2
    repeat: int = 5
    amp: bool = True
    num_classes: int = 1000
    progress: bool | None = field(default=False, compare=False)

    def __post_init__(self):
        if self.batch_size < 1 or self.resolution < 32 or self.repeat < 1 or self.warmup < 0:
            raise ValueError(f"throughput: batch_size >= 1, resolution >= 32, repeat >= 1 and "
                             f"warmup >= 0 needed, got {self.settings()}")

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("progress")
        device = select_device(self.device)
        d["device"] = str(device)
        d["amp"] = bool(self.amp and device.type == "cuda")  # autocast is used on CUDA only
        return d

    def __call__(self, arch: dict) -> float:
        device = select_device(self.device)
        model = build_timm_tinyvit(arch, num_classes=self.num_classes).eval().to(device)
        x = torch.randn(self.batch_size, 3, self.resolution, self.resolution, device=device)
        use_amp = self.amp and device.type == "cuda"

        def forward():
            with torch.inference_mode(), torch.autocast(device.type, torch.float16,
                                                         enabled=use_amp):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        times = []
        with progress_bar(total=self.warmup + self.repeat, unit="batch", enabled=self.progress,
                          desc=f"img/s, batch {self.batch_size} at {self.resolution} px") as bar:
            for _ in range(self.warmup):
                forward()
                bar.update()
            for _ in range(self.repeat):
                start = time.perf_counter()
                forward()
                times.append(time.perf_counter() - start)
                bar.update()
        return self.batch_size / statistics.median(times)


@dataclass
class CostModel:
    """Params, MACs and throughput of architectures, each measured once per architecture.

    ``throughput_fn`` is any ``arch -> img/s`` callable (``DeviceThroughput`` in the CLI, a stub
    in tests); ``None`` means throughput is not measured (and no throughput limit can be set).
    """

    resolution: int = 224
    num_classes: int = 1000
    throughput_fn: ThroughputFn | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def _cached(self, kind: str, arch: dict, fn: Callable[[], float]):
        key = (kind, repr(sorted(arch.items())))
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def params(self, arch: dict) -> int:
        return self._cached("params", arch, lambda: count_params(arch, self.num_classes))

    def macs(self, arch: dict) -> int:
        return self._cached("macs", arch,
                            lambda: count_macs(arch, self.resolution, self.num_classes))

    def throughput(self, arch: dict) -> float | None:
        if self.throughput_fn is None:
            return None
        return self._cached("throughput", arch, lambda: float(self.throughput_fn(arch)))

    def settings(self) -> dict:
        fn = self.throughput_fn
        if fn is None:
            throughput = None
        elif hasattr(fn, "settings"):
            throughput = fn.settings()
        else:
            throughput = dict(callable=getattr(fn, "__qualname__", repr(fn)))
        return dict(resolution=self.resolution, num_classes=self.num_classes,
                    counter=COMPLEXITY_METHOD,
                    throughput=throughput)
