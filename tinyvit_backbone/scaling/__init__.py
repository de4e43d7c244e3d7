"""Progressive model shrinking (TinyViT, Wu et al. 2022): derive smaller TinyViTs from a seed
by a constrained local search over embedding dims, depths and window sizes.

    from tinyvit_backbone.scaling import Constraints, CostModel, DeviceThroughput, search
    result = search("21m", [Constraints(max_params=11e6), Constraints(max_params=5.4e6)],
                    cost=CostModel(throughput_fn=DeviceThroughput(batch_size=64)),
                    proxy=TrainingProxy(steps=100))

Modules: ``space`` (architectures and contraction steps), ``measure`` (params / MACs from
:mod:`tinyvit_backbone.complexity`, measured throughput), ``proxy`` (short training on the embedded digits, a
zero-cost score), ``search`` (the rounds), ``report`` (architecture JSON, CSV / Markdown tables).
The CLI is ``python -m tinyvit_backbone.scaling {measure,search,report}``.
"""
from ..device import select_device
from .measure import CostModel, DeviceThroughput, count_macs, count_params
from .proxy import ProxyScore, SnipProxy, TrainingProxy
from .report import load_result, write_arch, write_outputs
from .search import Candidate, Constraints, SearchError, SearchResult, search
from .space import SearchSpace, arch_key, canonical

__all__ = ["Candidate", "Constraints", "CostModel", "DeviceThroughput", "ProxyScore",
           "SearchError", "SearchResult", "SearchSpace", "SnipProxy", "TrainingProxy",
           "arch_key", "canonical", "count_macs", "count_params", "load_result", "search",
           "select_device", "write_arch", "write_outputs"]
