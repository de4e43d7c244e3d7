"""The stand-in for mmcv's compiled ops equals mmcv's own CPU ops, and works where mmcv has none.

The equality tests call mmcv's Python ops (``mmcv.ops.nms``, ``mmcv.ops.roi_align``) twice: with
mmcv's compiled ``_ext`` and with the stand-in in its place, so the stand-in is held to the
exact entry-point contract mmcv uses. They need mmcv's compiled CPU ops and skip without them.
"""
import ast
import importlib
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tinyvit_backbone import mmcv_standin

ROOT = Path(__file__).resolve().parents[1]
COMPILED = importlib.util.find_spec("mmcv") is not None and importlib.util.find_spec("mmcv._ext") is not None
needs_compiled = pytest.mark.skipif(not COMPILED, reason="needs mmcv's compiled ops (mmcv, not "
                                                         "mmcv-lite) to compare with")

# A Python with mmcv's compiled ops hidden, as with mmcv-lite: importing mmcv._ext fails.
HIDE_EXT = textwrap.dedent("""
    import importlib.abc, sys
    class HideExt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mmcv._ext":
                raise ModuleNotFoundError("No module named 'mmcv._ext'", name=name)
    sys.meta_path.insert(0, HideExt())
""")


@pytest.fixture
def standin(monkeypatch):
    """Swap the stand-in into mmcv's nms and RoIAlign modules; returns a context switcher."""
    # the modules (mmcv.ops re-exports functions of the same names)
    nms_module = importlib.import_module("mmcv.ops.nms")
    roi_module = importlib.import_module("mmcv.ops.roi_align")
    real = nms_module.ext_module
    fake = mmcv_standin.build_module()

    def use(which):
        ext = fake if which == "standin" else real
        monkeypatch.setattr(nms_module, "ext_module", ext)
        monkeypatch.setattr(roi_module, "ext_module", ext)

    return use


def _boxes(g, n, scale=200.0):
    xy = torch.rand(n, 2, generator=g) * scale
    wh = 2 + torch.rand(n, 2, generator=g) * scale / 3
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


@needs_compiled
@pytest.mark.parametrize("offset", [0, 1])
def test_nms_keeps_the_same_boxes_as_mmcv(standin, offset):
    from mmcv.ops import batched_nms, nms

    g = torch.Generator().manual_seed(offset)
    for n, thr in ((0, 0.5), (1, 0.5), (30, 0.3), (500, 0.5), (2000, 0.7), (800, 0.0)):
        boxes, scores = _boxes(g, n)
        standin("mmcv")
        dets_ref, keep_ref = nms(boxes, scores, thr, offset=offset)
        standin("standin")
        dets, keep = nms(boxes, scores, thr, offset=offset)
        assert keep.dtype == keep_ref.dtype == torch.int64
        assert keep.tolist() == keep_ref.tolist(), (n, thr)
        assert torch.equal(dets, dets_ref)
    # per-class nms as the detectors call it (RPN levels, test-time classes)
    boxes, scores = _boxes(g, 600)
    idxs = torch.randint(0, 5, (600,), generator=g)
    cfg = dict(type="nms", iou_threshold=0.6, offset=offset)
    standin("mmcv")
    dets_ref, keep_ref = batched_nms(boxes, scores, idxs, cfg)
    standin("standin")
    dets, keep = batched_nms(boxes, scores, idxs, cfg)
    assert keep.tolist() == keep_ref.tolist() and torch.equal(dets, dets_ref)


def _rois(g, k, n, h, w, scale):
    """RoIs (batch index, x1, y1, x2, y2) in image pixels, many crossing the feature map's
    borders (negative corners, far corners past the map), some tiny."""
    extent = torch.tensor([w / scale, h / scale])
    x0 = torch.rand(k, 2, generator=g) * extent * 1.3 - extent * 0.2
    size = torch.rand(k, 2, generator=g) * extent * 0.8
    size[: k // 4] *= 0.05
    return torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), x0, x0 + size], 1)


@needs_compiled
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.25), ((14, 14), 0.125), ((3, 5), 1.0)])
def test_roi_align_matches_mmcv_forward_and_backward(standin, aligned, sampling_ratio,
                                                      output_size, scale):
    from mmcv.ops import roi_align

    g = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    n, c, h, w = 2, 5, 23, 31
    feats = torch.randn(n, c, h, w, generator=g)
    rois = _rois(g, 40, n, h, w, scale)
    upstream = torch.randn(len(rois), c, *output_size, generator=g)
    results = {}
    for which in ("mmcv", "standin"):
        standin(which)
        x = feats.clone().requires_grad_(True)
        out = roi_align(x, rois, output_size, scale, sampling_ratio, "avg", aligned)
        (out * upstream).sum().backward()
        results[which] = out.detach(), x.grad
    (out_ref, grad_ref), (out, grad) = results["mmcv"], results["standin"]
    assert out.shape == out_ref.shape == (len(rois), c, *output_size)
    assert float((out - out_ref).abs().max()) <= 1e-5
    assert float((grad - grad_ref).abs().max()) <= 1e-5
    assert float(grad_ref.abs().max()) > 0  # the rois do reach the features


def test_max_pooling_and_unprovided_ops_name_the_standin():
    ext = mmcv_standin.build_module()
    x, rois = torch.randn(1, 2, 8, 8), torch.tensor([[0.0, 1, 1, 6, 6]])
    out = x.new_zeros(1, 2, 2, 2)
    with pytest.raises(mmcv_standin.StandInNotImplemented, match="mmcv_standin.*pool_mode='max'"):
        ext.roi_align_forward(x, rois, out, out, out, aligned_height=2, aligned_width=2,
                              pool_mode=0)
    with pytest.raises(mmcv_standin.StandInNotImplemented) as err:
        ext.sigmoid_focal_loss_forward(x, x, x, x)
    message = str(err.value)
    assert "'sigmoid_focal_loss_forward' is not provided" in message
    assert "tinyvit_backbone.mmcv_standin" in message and "not mmcv-lite" in message
    assert ext.get_compiling_cuda_version().startswith("none: stand-in")


def test_standin_runs_on_torchvision_alone():
    """No mmcv needed: the entry points against torchvision's own Python API."""
    import torchvision

    g = torch.Generator().manual_seed(0)
    boxes, scores = _boxes(g, 300)
    assert torch.equal(mmcv_standin.nms(boxes, scores, 0.5),
                       torchvision.ops.nms(boxes, scores, 0.5))
    feats, rois = torch.randn(2, 3, 12, 12, generator=g), _rois(g, 9, 2, 12, 12, 0.5)
    out = feats.new_zeros(9, 3, 4, 4)
    mmcv_standin.roi_align_forward(feats, rois, out, out, out, aligned_height=4, aligned_width=4,
                                   spatial_scale=0.5, sampling_ratio=0, pool_mode=1, aligned=True)
    assert torch.equal(out, torchvision.ops.roi_align(feats, rois, (4, 4), 0.5, 0, True))


@pytest.mark.skipif(importlib.util.find_spec("mmcv") is None, reason="needs mmcv or mmcv-lite")
def test_standin_has_every_name_mmcv_ops_loads():
    """Every name the installed mmcv's ops ask ``load_ext('_ext', [...])`` for (its loader
    asserts each one exists), read from mmcv's own sources."""
    ops = Path(importlib.util.find_spec("mmcv").submodule_search_locations[0]) / "ops"
    asked = set()
    for path in ops.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load_ext":
                asked |= set(ast.literal_eval(node.args[1]))
    assert len(asked) > 100
    assert asked <= set(mmcv_standin.MMCV_EXT_NAMES), sorted(asked - set(mmcv_standin.MMCV_EXT_NAMES))


def _python(code: str, *args, timeout=300) -> subprocess.CompletedProcess:
    from bench.common import subprocess_env
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=subprocess_env(ROOT), timeout=timeout)


@pytest.mark.skipif(importlib.util.find_spec("mmcv") is None, reason="needs mmcv or mmcv-lite")
def test_mmcv_ops_import_and_run_on_the_standin_without_compiled_ops():
    """As with mmcv-lite: the plan picks the stand-in, mmcv.ops imports (and mmdet with it) and
    its nms and RoIAlign run on torchvision's kernels."""
    run = _python(HIDE_EXT + textwrap.dedent("""
        import json, torch
        from tinyvit_backbone import mmcv_standin
        chosen = mmcv_standin.prepare("cpu")
        import mmcv.ops
        keep = mmcv.ops.nms(torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]),
                            torch.tensor([0.9, 0.8, 0.7]), 0.5)[1]
        pooled = mmcv.ops.RoIAlign((2, 2), 1.0)(torch.ones(1, 1, 8, 8),
                                                torch.tensor([[0., 1, 1, 5, 5]]))
        from mmengine.utils.dl_utils import mmcv_full_available  # what mmengine's Runner asks
        print(json.dumps(dict(plan=chosen, in_use=mmcv_standin.in_use(), keep=keep.tolist(),
                              pooled=pooled.flatten().tolist(), full=mmcv_full_available())))
    """))
    assert run.returncode == 0, run.stderr[-3000:]
    out = __import__("json").loads(run.stdout.strip().splitlines()[-1])
    assert out["plan"]["kind"] == mmcv_standin.STAND_IN == out["in_use"]
    assert out["plan"]["proves_mmcv_kernels"] is False
    assert "has no compiled ops (mmcv-lite)" in out["plan"]["reason"]
    assert out["keep"] == [0, 2] and out["pooled"] == [1.0] * 4
    assert out["full"] is True


@needs_compiled
def test_compiled_ops_are_preferred():
    cpu = mmcv_standin.plan("cpu")
    assert cpu["kind"] == mmcv_standin.COMPILED_CPU and cpu["proves_mmcv_kernels"] is True
    cuda = mmcv_standin.plan("cuda")
    if cuda["compiled_cuda"] in ("not available", ""):  # a CPU-only mmcv cannot run CUDA tensors
        assert cuda["kind"] == mmcv_standin.STAND_IN and cuda["proves_mmcv_kernels"] is False
        assert "built without CUDA kernels" in cuda["reason"]
    else:
        assert cuda["kind"] == mmcv_standin.COMPILED_CUDA


@needs_compiled
def test_install_is_refused_once_mmcv_ops_use_the_compiled_ones():
    import mmcv.ops  # noqa: F401

    if mmcv_standin.in_use() == mmcv_standin.STAND_IN:
        pytest.skip("the stand-in is installed in this process")
    with pytest.raises(RuntimeError, match="install the stand-in before anything imports mmcv.ops"):
        mmcv_standin.install(force=True)


@pytest.mark.skipif(importlib.util.find_spec("mmcv") is None, reason="needs mmcv or mmcv-lite")
def test_module_runs_a_script_with_the_ops_it_chose(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import sys\nfrom tinyvit_backbone import mmcv_standin\n"
                      "import mmcv.ops\nprint(mmcv_standin.in_use(), sys.argv[1:])\n"
                      "sys.exit(3)\n")
    run = _python(HIDE_EXT + "from tinyvit_backbone.mmcv_standin import main; main()",
                  str(script), "--flag", "x")
    assert run.returncode == 3, run.stderr[-3000:]
    assert run.stdout.strip() == f"{mmcv_standin.STAND_IN} ['--flag', 'x']"
    assert "mmcv ops: stand-in" in run.stderr and "not mmcv's" in run.stderr
