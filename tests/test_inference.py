"""The fast inference path: padded windows, batch and row threads, memory reuse, backend choice."""
import copy
import sys
import threading

import pytest
import timm
import torch

import tinyvit_backbone.inference as inference
from tinyvit_backbone import TinyViT
from tinyvit_backbone.inference import BatchParallel, fuse_for_inference, resolve_backend
from tinyvit_backbone.onnx_runtime import onnxruntime_available

from .test_backbone import _randomise_stats

SMALL = {"embed_dims": [16, 32, 48, 64], "depths": [1, 2, 1, 1], "num_heads": [1, 2, 2, 2],
         "window_sizes": [7, 5, 3, 2]}


@pytest.mark.parametrize("size", [(224, 224), (32, 48), (61, 13), (97, 130)])
def test_padded_windows_match_timm(size):
    """Single windows with padding, several windows with and without padding, and maps smaller
    than a window: the qkv of padded tokens is the zero token's, as in timm."""
    torch.manual_seed(0)
    model = _randomise_stats(timm.models.tiny_vit.TinyVit(num_classes=7, **SMALL)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fuse_for_inference(model)(x), expected, rtol=0, atol=1e-5)


def test_fusing_twice_or_inside_a_wrapper_changes_nothing():
    torch.manual_seed(0)
    model = _randomise_stats(TinyViT(arch=SMALL)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fused = fuse_for_inference(model)
        fuse_for_inference(torch.nn.Sequential(fused))  # unmarked wrapper of a fused model
        for a, b in zip(fused(x), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_batch_threads_give_the_same_outputs_and_keep_grad_mode():
    torch.manual_seed(0)
    backbone = fuse_for_inference(_randomise_stats(TinyViT(arch=SMALL)).eval())
    classifier = fuse_for_inference(timm.models.tiny_vit.TinyVit(num_classes=5, **SMALL).eval())
    x = torch.randn(19, 3, 40, 56)  # 3 slices of at most MAX_CHUNK images over 2 workers
    with torch.inference_mode():
        whole = backbone(x)
        split = BatchParallel(backbone, workers=2, mode="threads")(x)
        assert all(t.is_inference() for t in split)
    assert len(split) == len(whole)
    for a, b in zip(split, whole):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with torch.no_grad():
        logits = BatchParallel(classifier, workers=2, mode="threads")(x)
        torch.testing.assert_close(logits, classifier(x), rtol=0, atol=1e-6)
        assert not logits.requires_grad and not logits.is_inference()


@pytest.mark.parametrize("size", [(97, 130), (224, 160), (61, 13), (33, 200)])
def test_small_batches_split_rows_over_threads_and_match_timm(size, monkeypatch):
    """Batches smaller than the thread count split every layer's rows into bands: window rows
    for attention, rows with the rows their convolutions read above and below (strides 1 and
    2, odd heights, maps smaller than a window). Same outputs as the unfused model; the
    caller's input is not written to."""
    torch.manual_seed(0)
    reference = _randomise_stats(timm.models.tiny_vit.TinyVit(num_classes=7, **SMALL)).eval()
    backbone_ref = _randomise_stats(TinyViT(arch=SMALL, out_indices=(0, 1, 2, 3))).eval()
    classifier = BatchParallel(fuse_for_inference(copy.deepcopy(reference)), workers=2,
                               mode="threads")
    backbone = BatchParallel(fuse_for_inference(copy.deepcopy(backbone_ref)), workers=3,
                             mode="threads")
    bands = []
    real = inference._in_workers
    monkeypatch.setattr(inference, "_in_workers",
                        lambda fn, items, workers: (bands.append(len(items)), real(fn, items, workers))[1])
    x = torch.randn(2, 3, *size)
    before = x.clone()
    with torch.inference_mode():
        torch.testing.assert_close(classifier(x[:1]), reference(x[:1]), rtol=0, atol=1e-5)
        assert bands and max(bands) >= 2  # the rows were split over the threads
        bands.clear()
        for a, b in zip(backbone(x), backbone_ref(x)):  # 2 images, 3 threads: bands per image
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert bands
    assert torch.equal(x, before)


class _Recorder(torch.nn.Module):
    """Records whether each call ran inside a one-thread worker, a band split or OpenMP."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        worker = threading.current_thread().name.startswith("tinyvit-batch")
        self.calls.append("bands" if inference._local.__dict__.get("workers") else
                          "threads" if worker else "openmp")
        return x * 2


@pytest.mark.parametrize("faster", ["threads", "openmp"])
def test_auto_mode_measures_both_ways_and_keeps_the_faster(faster, monkeypatch):
    """``auto`` alternates the two modes (a warm-up call, then TRIALS timed calls each) and then
    runs the one with the lower median time per element, per regime; every RECHECK calls it
    measures again. The clock is scripted: each call of the slower mode takes 3 ticks, of the
    faster 1 (its warm-up call is slow, which must not count)."""
    module = _Recorder()
    auto = BatchParallel(module, workers=2)
    now = [0.0]
    monkeypatch.setattr(inference, "_clock", lambda: now[0])
    real_run = BatchParallel._run
    ran = []

    def run(self, x, mode, regime, workers):
        warm_up = mode not in ran
        ran.append(mode)
        now[0] += 1.0 if mode == faster and not warm_up else 3.0 if mode != faster else 100.0
        return real_run(self, x, mode, regime, workers)

    monkeypatch.setattr(BatchParallel, "_run", run)
    x = torch.ones(4, 3, 8, 8)
    trial_calls = inference.TRIAL_CALLS
    with torch.inference_mode():
        for _ in range(trial_calls):
            torch.testing.assert_close(auto(x), x * 2)
        assert auto.chosen == {"slices": faster}
        assert ran[:4] == ["threads", "openmp", "threads", "openmp"]  # alternated
        assert set(module.calls) == {"threads", "openmp"}  # workers of one thread, and OpenMP
        ran.clear()
        for _ in range(5):
            auto(x)
        assert set(ran) == {faster}
        assert "bands" not in auto.chosen  # a batch under the worker count is its own regime
        auto(x[:1])
        assert "bands" not in auto.chosen and "slices" in auto.chosen
        monkeypatch.setattr(inference, "RECHECK", 8)
        for _ in range(3):
            auto(x)
        assert "slices" not in auto.chosen  # measured again after RECHECK calls
        for _ in range(trial_calls):
            auto(x)
        assert auto.chosen["slices"] == faster


def test_batch_parallel_modes_give_the_same_outputs():
    torch.manual_seed(0)
    model = fuse_for_inference(_randomise_stats(TinyViT(arch=SMALL)).eval())
    x = torch.randn(5, 3, 48, 40)
    with torch.inference_mode():
        whole = model(x)
        auto = BatchParallel(model, workers=2)
        for mode in ("threads", "openmp"):
            for a, b in zip(BatchParallel(model, workers=2, mode=mode)(x), whole):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        for _ in range(inference.TRIAL_CALLS + 1):
            for a, b in zip(auto(x), whole):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert auto.chosen["slices"] in ("threads", "openmp")
    with pytest.raises(ValueError, match="mode must be one of auto, threads, openmp"):
        BatchParallel(model, mode="fast")


def test_reordered_weights_are_kept_per_shape_and_not_copied():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    fused = inference.FusedConv.of_conv(conv, gelu=True)
    with torch.inference_mode():
        for h in range(5, 5 + inference.PACKED_SHAPES + 2):
            x = torch.randn(1, 8, h, 7).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(fused(x), torch.nn.functional.gelu(conv(x)), rtol=0, atol=1e-5)
        assert len(fused._packed) == inference.PACKED_SHAPES  # the oldest shapes went
        copied = copy.deepcopy(fused)  # oneDNN's opaque tensors cannot be copied: redone
        assert copied._packed == {}
        torch.testing.assert_close(copied(x), fused(x), rtol=0, atol=0)


def test_base2_softmax_matches_and_falls_back_outside_its_range():
    torch.manual_seed(0)
    v = torch.randn(6, 9, 4)
    for scale in (1.0, 300.0, -300.0):  # in range; sums overflow; sums underflow
        logits = torch.randn(6, 9, 9) * 3 + scale
        expected = torch.softmax(logits.double(), -1) @ v.double()
        out = torch.empty(6, 9, 4)
        inference._softmax2_matmul(logits * inference.LOG2E, v, out)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_freed_memory_is_kept_through_glibc_mallopt(monkeypatch):
    calls = []

    class Libc:
        class mallopt:  # noqa: N801  (stands for the C function)
            def __new__(cls, param, value):
                calls.append((param, value))
                return 1

    monkeypatch.setattr(inference, "_retained", False)
    monkeypatch.setattr(inference.ctypes, "CDLL", lambda name: Libc)
    monkeypatch.setattr(inference.platform, "system", lambda: "Linux")
    monkeypatch.setattr(inference.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert inference.retain_freed_memory() and inference.retain_freed_memory()
    # mmap threshold 1 GiB, trim threshold 2 GiB, one arena; set once (idempotent)
    assert calls == [(-3, 1 << 30), (-1, 2 ** 31 - 1), (-8, 1)]
    monkeypatch.setattr(inference, "_retained", False)
    monkeypatch.setattr(inference.platform, "libc_ver", lambda: ("", ""))  # musl, macOS, ...
    assert inference.retain_freed_memory() is False and len(calls) == 3


def test_graph_recording_uses_plain_ops():
    torch.manual_seed(0)
    model = fuse_for_inference(_randomise_stats(TinyViT(arch=SMALL)).eval())
    seen = []
    block = model.stages[1].blocks[0]
    forward = block._attention
    block._attention = lambda *a: (seen.append(inference.exporting()), forward(*a))[1]
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64), check_trace=False)
        x = torch.randn(1, 3, 96, 80)  # another size: the recorded window arithmetic holds
        for a, b in zip(traced(x), model(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert seen[0] is True and seen[-1] is False  # recorded plain; eager again afterwards


def test_backend_choice(monkeypatch):
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"  # ahead of ONNX Runtime at every batch
    assert resolve_backend("auto", "cpu", tinyvit=False) == "torch"
    assert resolve_backend("auto", "cuda") == "torch"
    if onnxruntime_available():
        assert resolve_backend("onnxruntime", "cpu") == "onnxruntime"
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_backend("onnxruntime", "cuda")
    with pytest.raises(ValueError, match="TinyViT models only"):
        resolve_backend("onnxruntime", "cpu", tinyvit=False)
    with pytest.raises(ValueError, match="must be one of auto, torch, onnxruntime"):
        resolve_backend("tensorrt", "cpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match=r"not installed.*pip install 'tinyvit-transfer\[onnx\]'"):
        resolve_backend("onnxruntime", "cpu")


def test_plain_op_fallback_matches(monkeypatch):
    torch.manual_seed(0)
    model = _randomise_stats(timm.models.tiny_vit.TinyVit(num_classes=3, **SMALL)).eval()
    fused = fuse_for_inference(copy.deepcopy(model))
    monkeypatch.setattr(inference, "_ONEDNN", False)
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)


def test_autocast_runs_the_plain_ops_in_its_dtype():
    """Under CPU autocast the fused model follows autocast (plain ops in bfloat16), as the
    unfused one does, instead of the float32 oneDNN path."""
    torch.manual_seed(0)
    model = _randomise_stats(TinyViT(arch=SMALL)).eval()
    fused = BatchParallel(fuse_for_inference(copy.deepcopy(model)), workers=2)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = model(x), fused(x)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)
