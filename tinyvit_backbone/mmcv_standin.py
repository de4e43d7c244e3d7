"""A labelled stand-in for mmcv's compiled ops (``mmcv._ext``): nms and RoIAlign on torchvision's
kernels, for machines where no compiled mmcv matches torch.

mmcv ships its CUDA and C++ kernels in one extension module, ``mmcv._ext``, built for one torch
and one CUDA. ``mmcv-lite`` is the same Python code without it, and where no mmcv wheel exists for
the machine's torch, building one takes hours. The detectors of this project reach two of its
kernels: ``nms`` (RPN proposals, test-time ``batched_nms``) and ``roi_align_forward`` /
``roi_align_backward`` (the RoI extractors, mask targets). torchvision has both kernels, derived
from the same Detectron code, for CPU and CUDA. This module puts a module named ``mmcv._ext`` into
``sys.modules`` that answers those entry points with torchvision's kernels:

* ``nms(boxes, scores, iou_threshold, offset)``: ``torchvision::nms``; ``offset=1`` (the legacy
  pixel convention) becomes a shift of the boxes' far corners, which gives the same IoUs;
* ``roi_align_forward`` / ``roi_align_backward`` with ``pool_mode`` avg (mmcv's default and the
  only mode our configs use): ``torchvision::roi_align`` / ``torchvision::_roi_align_backward``,
  the same ``aligned``, ``sampling_ratio`` (0: adaptive) and ``spatial_scale``;
* ``get_compiler_version`` / ``get_compiling_cuda_version``: strings naming this stand-in.

Every other name that importing ``mmcv.ops`` asks for (mmcv's loader asserts each exists) is a
function that raises :class:`StandInNotImplemented`, naming this module and the fix. The tests
show that the stand-in equals mmcv's own compiled CPU ops on random inputs (identical nms keep
lists; RoIAlign forward and backward within 1e-5).

Which ops a process uses is decided once, before ``mmcv.ops`` is imported (:func:`plan`,
:func:`prepare`): a compiled ``mmcv._ext`` with CUDA kernels on a GPU, compiled CPU kernels on
the CPU, and this stand-in only where neither can run. A number measured on the stand-in measures
torchvision's kernels, never mmcv's: every report that uses it says so
(``proves_mmcv_kernels: false``).

    python -m tinyvit_backbone.mmcv_standin SCRIPT [ARGS ...]

runs SCRIPT (e.g. ``tools/train.py CONFIG --amp``) after :func:`prepare`, and prints on stderr
which ops it chose. Nothing imports this module implicitly: the plugin core stays light.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import runpy
import sys
import types

import torch

MODULE = "mmcv._ext"
LABEL = ("stand-in for mmcv's compiled ops (tinyvit_backbone.mmcv_standin): torchvision's nms "
         "and RoIAlign kernels, not mmcv's")
FIX = ("install an mmcv built with its ops for this torch (`make env-cuda` builds one), not "
       "mmcv-lite")

# The kinds of ops a process can use (``plan()["kind"]``).
COMPILED_CUDA = "compiled mmcv CUDA ops"
COMPILED_CPU = "compiled mmcv CPU ops"
STAND_IN = "stand-in (torchvision kernels)"
UNAVAILABLE = "unavailable"

# Every function mmcv 2.1.0's ops load from ``mmcv._ext`` (its ``ext_loader.load_ext`` calls);
# the tests check this list against the installed mmcv.
MMCV_EXT_NAMES = (
    'active_rotated_filter_backward', 'active_rotated_filter_forward',
    'assign_score_withk_backward', 'assign_score_withk_forward', 'ball_query_forward',
    'bbox_overlaps', 'bezier_align_backward', 'bezier_align_forward', 'bias_act',
    'border_align_backward', 'border_align_forward', 'box_iou_quadri', 'box_iou_rotated',
    'carafe_backward', 'carafe_forward', 'carafe_naive_backward', 'carafe_naive_forward',
    'chamfer_distance_backward', 'chamfer_distance_forward', 'contour_expand', 'convex_giou',
    'convex_iou', 'correlation_backward', 'correlation_forward', 'deform_conv_backward_input',
    'deform_conv_backward_parameters', 'deform_conv_forward', 'deform_roi_pool_backward',
    'deform_roi_pool_forward', 'diff_iou_rotated_sort_vertices_forward',
    'dynamic_point_to_voxel_backward', 'dynamic_point_to_voxel_forward',
    'dynamic_voxelize_forward', 'filtered_lrelu', 'filtered_lrelu_act_',
    'furthest_point_sampling_forward', 'furthest_point_sampling_with_dist_forward',
    'fused_bias_leakyrelu', 'fused_indice_conv_forward', 'gather_points_backward',
    'gather_points_forward', 'get_compiler_version', 'get_compiling_cuda_version',
    'get_indice_pairs_2d_backward', 'get_indice_pairs_2d_forward', 'get_indice_pairs_3d_backward',
    'get_indice_pairs_3d_forward', 'get_indice_pairs_4d_forward', 'group_points_backward',
    'group_points_forward', 'hard_voxelize_forward', 'indice_conv_backward',
    'indice_conv_forward', 'indice_maxpool_backward', 'indice_maxpool_forward',
    'iou3d_boxes_overlap_bev_forward', 'iou3d_nms3d_forward', 'iou3d_nms3d_normal_forward',
    'knn_forward', 'masked_col2im_forward', 'masked_im2col_forward', 'min_area_polygons',
    'modulated_deform_conv_backward', 'modulated_deform_conv_forward', 'ms_deform_attn_backward',
    'ms_deform_attn_forward', 'nms', 'nms_match', 'nms_quadri', 'nms_rotated', 'pixel_group',
    'points_in_boxes_all_forward', 'points_in_boxes_cpu_forward', 'points_in_boxes_part_forward',
    'points_in_polygons_forward', 'prroi_pool_backward', 'prroi_pool_coor_backward',
    'prroi_pool_forward', 'psamask_backward', 'psamask_forward', 'riroi_align_rotated_backward',
    'riroi_align_rotated_forward', 'roi_align_backward', 'roi_align_forward',
    'roi_align_rotated_backward', 'roi_align_rotated_forward', 'roi_pool_backward',
    'roi_pool_forward', 'roiaware_pool3d_backward', 'roiaware_pool3d_forward',
    'roipoint_pool3d_forward', 'rotated_feature_align_backward', 'rotated_feature_align_forward',
    'sigmoid_focal_loss_backward', 'sigmoid_focal_loss_forward', 'softmax_focal_loss_backward',
    'softmax_focal_loss_forward', 'softnms', 'stack_ball_query_forward',
    'stack_group_points_backward', 'stack_group_points_forward', 'sync_bn_backward_data',
    'sync_bn_backward_param', 'sync_bn_forward_mean', 'sync_bn_forward_output',
    'sync_bn_forward_var', 'three_interpolate_backward', 'three_interpolate_forward',
    'three_nn_forward', 'tin_shift_backward', 'tin_shift_forward', 'upfirdn2d',
)


class StandInNotImplemented(NotImplementedError):
    """An mmcv op this stand-in does not provide was called."""


# --------------------------------------------------------------------------- the entry points
def _kernels():
    """torchvision's C++ ops (registered in ``torch.ops`` when torchvision is imported)."""
    import torchvision  # noqa: F401
    return torch.ops.torchvision


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0
        ) -> torch.Tensor:
    """Indices (int64) of the boxes kept, by descending score: mmcv's ``nms`` contract."""
    if offset not in (0, 1):
        raise ValueError(f"{LABEL}: nms offset must be 0 or 1, got {offset}")
    if offset:  # widths and heights of (x2 - x1 + 1): shift the far corners by one pixel
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:4] + 1], dim=1)
    return _kernels().nms(boxes, scores, float(iou_threshold))


def _avg_pool_only(pool_mode: int) -> None:
    if pool_mode != 1:  # mmcv: 0 = max, 1 = avg; torchvision's RoIAlign averages
        raise StandInNotImplemented(
            f"{LABEL}: RoIAlign with pool_mode='max' has no torchvision kernel; use "
            f"pool_mode='avg' (mmcv's default), or {FIX}")


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                      argmax_y: torch.Tensor, argmax_x: torch.Tensor, aligned_height: int = 7,
                      aligned_width: int = 7, spatial_scale: float = 1.0, sampling_ratio: int = 0,
                      pool_mode: int = 1, aligned: bool = True) -> None:
    """mmcv's in-place contract: ``output`` (rois, C, aligned_height, aligned_width) is filled;
    ``rois`` are (batch index, x1, y1, x2, y2) rows."""
    _avg_pool_only(pool_mode)
    pooled = _kernels().roi_align(input, rois.to(input.dtype), float(spatial_scale),
                                  int(aligned_height), int(aligned_width), int(sampling_ratio),
                                  bool(aligned))
    output.copy_(pooled)


def roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax_y: torch.Tensor,
                       argmax_x: torch.Tensor, grad_input: torch.Tensor, aligned_height: int = 7,
                       aligned_width: int = 7, spatial_scale: float = 1.0,
                       sampling_ratio: int = 0, pool_mode: int = 1, aligned: bool = True) -> None:
    """mmcv's in-place contract: the input's gradient is added into ``grad_input`` (N, C, H, W)."""
    _avg_pool_only(pool_mode)
    n, c, h, w = grad_input.shape
    grad = _kernels()._roi_align_backward(
        grad_output, rois.to(grad_output.dtype), float(spatial_scale), int(aligned_height),
        int(aligned_width), n, c, h, w, int(sampling_ratio), bool(aligned))
    grad_input.add_(grad.to(grad_input.dtype))


def get_compiler_version() -> str:
    return "none: " + LABEL


def get_compiling_cuda_version() -> str:
    return "none: " + LABEL


IMPLEMENTED = {f.__name__: f for f in (nms, roi_align_forward, roi_align_backward,
                                       get_compiler_version, get_compiling_cuda_version)}


def _not_implemented(name: str):
    def missing(*args, **kwargs):
        raise StandInNotImplemented(
            f"mmcv op {name!r} is not provided by the {LABEL}: it implements only "
            f"{', '.join(sorted(IMPLEMENTED))}; {FIX}")
    missing.__name__ = name
    return missing


class _Loader(importlib.abc.Loader):
    """The stand-in's loader: ``find_spec`` / ``pkgutil.find_loader('mmcv._ext')`` (mmengine's
    ``mmcv_full_available``) see a loadable module, as they do a compiled one."""

    def __init__(self, module: types.ModuleType):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        pass


def build_module() -> types.ModuleType:
    """A fresh ``mmcv._ext`` stand-in with every name of :data:`MMCV_EXT_NAMES`."""
    module = types.ModuleType(MODULE, __doc__.split("\n")[0])
    for name in MMCV_EXT_NAMES:
        setattr(module, name, IMPLEMENTED.get(name) or _not_implemented(name))
    module.__standin__ = LABEL
    module.__loader__ = _Loader(module)
    module.__spec__ = importlib.machinery.ModuleSpec(MODULE, module.__loader__, origin=__name__)
    return module


# --------------------------------------------------------------------------- which ops run
def in_use() -> str | None:
    """The kind of ``mmcv._ext`` loaded in this process now (None: none loaded yet)."""
    ext = sys.modules.get(MODULE)
    if ext is None:
        return None
    if getattr(ext, "__standin__", None):
        return STAND_IN
    return COMPILED_CUDA if _has_cuda_kernels(ext) else COMPILED_CPU


def _has_cuda_kernels(ext) -> bool:
    return ext.get_compiling_cuda_version() not in ("not available", "")


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _torchvision_ops() -> str | None:
    """torchvision's version when its C++ ops (nms, roi_align) load, else None."""
    if not _findable("torchvision"):
        return None
    try:
        import torchvision
        from torchvision.extension import _has_ops
    except Exception:  # a torchvision that does not match torch fails in many ways
        return None
    return torchvision.__version__ if _has_ops() else None


def plan(device_type: str) -> dict:
    """Which ops the detectors of a process on ``device_type`` ('cuda' or 'cpu') will use, and
    why; loads a compiled ``mmcv._ext`` (to ask for its CUDA build) but installs nothing.

    ``kind`` is one of :data:`COMPILED_CUDA`, :data:`COMPILED_CPU`, :data:`STAND_IN`,
    :data:`UNAVAILABLE`; ``proves_mmcv_kernels`` is True only for compiled ops."""
    out = dict(device=device_type, mmcv=None, compiled_cuda=None, torch_cuda=torch.version.cuda,
               torchvision_ops=_torchvision_ops())
    if not _findable("mmcv"):
        return dict(out, kind=UNAVAILABLE, proves_mmcv_kernels=False,
                    reason="mmcv is not installed (neither mmcv nor mmcv-lite)")
    try:
        import mmcv
    except ImportError as err:  # e.g. mmengine missing
        return dict(out, kind=UNAVAILABLE, proves_mmcv_kernels=False,
                    reason=f"mmcv does not import ({err})")
    out["mmcv"] = mmcv.__version__
    reason = None
    if getattr(sys.modules.get(MODULE), "__standin__", None):
        reason = "the stand-in is installed in this process already"
    elif not _findable(MODULE):
        reason = f"mmcv {mmcv.__version__} has no compiled ops (mmcv-lite)"
    else:
        try:
            ext = importlib.import_module(MODULE)
        except ImportError as err:  # built for another torch or CUDA: undefined symbols
            reason = f"mmcv's compiled ops do not load with this torch ({err})"[:300]
        else:
            out["compiled_cuda"] = ext.get_compiling_cuda_version()
            if device_type != "cuda":
                return dict(out, kind=COMPILED_CPU, proves_mmcv_kernels=True,
                            reason="mmcv's compiled ops (CPU kernels)")
            if _has_cuda_kernels(ext):
                return dict(out, kind=COMPILED_CUDA, proves_mmcv_kernels=True,
                            reason=f"mmcv's compiled ops, built with CUDA {out['compiled_cuda']}")
            reason = "mmcv's compiled ops were built without CUDA kernels"
    if out["torchvision_ops"] is None:
        return dict(out, kind=UNAVAILABLE, proves_mmcv_kernels=False,
                    reason=f"{reason}, and torchvision's C++ ops (which the stand-in runs) do not "
                           "load; install the torchvision that matches torch, or " + FIX)
    return dict(out, kind=STAND_IN, proves_mmcv_kernels=False, label=LABEL,
                reason=f"{reason}: nms and RoIAlign run on torchvision "
                       f"{out['torchvision_ops']}'s kernels")


def install(force: bool = False) -> types.ModuleType:
    """Put the stand-in into ``sys.modules['mmcv._ext']`` (and ``mmcv._ext``) and return it.

    Refused once ``mmcv.ops`` is imported with other ops (its modules hold the ext they loaded);
    ``force`` replaces a compiled ``mmcv._ext`` that is loaded but not yet used by ``mmcv.ops``."""
    current = sys.modules.get(MODULE)
    if getattr(current, "__standin__", None):
        return current
    if "mmcv.ops" in sys.modules:
        raise RuntimeError(f"{LABEL}: mmcv.ops is imported already with mmcv's own ops; install "
                           "the stand-in before anything imports mmcv.ops (or mmdet / mmseg)")
    if current is not None and not force:
        raise RuntimeError(f"{LABEL}: a compiled mmcv._ext is loaded in this process; pass "
                           "force=True to replace it")
    import mmcv

    module = build_module()
    sys.modules[MODULE] = module
    mmcv._ext = module
    return module


def prepare(device_type: str) -> dict:
    """:func:`plan`, and the stand-in installed where the plan says so. Returns the plan."""
    chosen = plan(device_type)
    if chosen["kind"] == STAND_IN:
        install(force=True)
    return chosen


def describe(chosen: dict) -> str:
    """One log line: which mmcv ops this process uses, and what its numbers prove."""
    line = f"mmcv ops: {chosen['kind']} ({chosen['reason']})"
    if chosen["kind"] == STAND_IN:
        line += "; timings measure torchvision's kernels, not mmcv's"
    return line


def main(argv: list[str] | None = None) -> int:
    """``python -m tinyvit_backbone.mmcv_standin SCRIPT [ARGS ...]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tinyvit_backbone.mmcv_standin",
        description="Run SCRIPT with the mmcv ops this machine can run: mmcv's compiled ops "
                    "where they load (the CUDA ones on a GPU), else a labelled stand-in that "
                    "runs nms and RoIAlign on torchvision's kernels. The choice is printed on "
                    "stderr; numbers measured on the stand-in measure torchvision's kernels.")
    parser.add_argument("script", metavar="SCRIPT", help="the Python script to run, e.g. "
                        "tools/train.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="the script's own arguments, passed on unchanged")
    args = parser.parse_args(argv)
    chosen = prepare("cuda" if torch.cuda.is_available() else "cpu")
    print(describe(chosen), file=sys.stderr, flush=True)
    sys.argv = [args.script, *args.args]
    runpy.run_path(args.script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
