"""The environment the bootstrap promises: compiled mmcv ops on CPU, both registries, the
pinned torch, and mmengine resume under torch's weights_only loading."""
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.requires_pinned_stack
def test_torch_is_the_pinned_version():
    pinned = [line.split("==")[1].strip() for line in (ROOT / "tools/constraints.txt").read_text().splitlines()
              if line.startswith("torch==")]
    assert torch.__version__.split("+")[0] == pinned[0]


@pytest.mark.requires_mmcv_ops
def test_mmcv_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    feats = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = RoIAlign((1, 1), spatial_scale=1.0, sampling_ratio=1, aligned=True)(
        feats, torch.tensor([[0, 0, 0, 4, 4.0]]))
    # the centre sample of a 4x4 ramp 0..15 is its mean
    assert out.item() == pytest.approx(7.5)


@pytest.mark.requires_mmcv_ops
def test_registries_build_tinyvit():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    import tinyvit_backbone  # noqa: F401  (registers)

    for registry in (DET, SEG):
        model = registry.build(dict(type="TinyViT", arch="5m", out_indices=(3,)))
        assert model(torch.zeros(1, 3, 64, 64))[0].shape == (1, 320, 2, 2)


@pytest.mark.requires_mmcv_ops
@pytest.mark.requires_pinned_stack
def test_check_env_script_passes():
    out = subprocess.run([sys.executable, str(ROOT / "tools/check_env.py")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ran on CPU" in out.stdout


def _toy_runner(work_dir, max_iters, resume):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import TensorDataset

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, y, mode="loss"):
            out = self.fc(x)
            return dict(loss=nn.functional.cross_entropy(out, y)) if mode == "loss" else out

    def collate(batch):
        return dict(x=torch.stack([b[0] for b in batch]), y=torch.stack([b[1] for b in batch]))

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    return Runner(
        model=Toy(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=data, batch_size=4, collate_fn=collate,
                              sampler=dict(type="DefaultSampler", shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)),
        param_scheduler=dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=4),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
        resume=resume, randomness=dict(seed=0))


def test_mmengine_resume_works_with_weights_only_loading(tmp_path):
    import mmengine.runner  # noqa: F401  (a running mmengine, as in a training process)
    from mmengine.registry import DefaultScope

    from tinyvit_backbone.registration import register_all

    register_all()  # what `import tinyvit_backbone` runs there: registers the safe globals
    # mmengine's own registries, whatever scope an earlier test left current
    with DefaultScope.overwrite_default_scope("mmengine"):
        _toy_runner(tmp_path, max_iters=2, resume=False).train()
        runner = _toy_runner(tmp_path, max_iters=4, resume=True)
        runner.train()
    assert runner.iter == 4
    # the message hub's history survived the round trip
    assert runner.message_hub.get_scalar("train/loss").data[0].size >= 3


def test_safe_getattr_refuses_anything_but_history_buffer_methods(tmp_path):
    from collections import OrderedDict

    from mmengine.logging.history_buffer import HistoryBuffer

    import tinyvit_backbone  # noqa: F401

    class Reach:
        def __init__(self, owner, name):
            self.owner, self.name = owner, name

        def __reduce__(self):
            return (getattr, (self.owner, self.name))

    ok = tmp_path / "ok.pt"
    torch.save({"m": Reach(HistoryBuffer, "mean")}, ok)
    assert torch.load(ok, weights_only=True)["m"] is HistoryBuffer.mean
    for owner, name in [(OrderedDict, "fromkeys"), (HistoryBuffer, "__init__")]:
        path = tmp_path / "evil.pt"
        torch.save({"x": Reach(owner, name)}, path)
        with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
            torch.load(path, weights_only=True)


# ----------------------------------------------------------------------------- mmcv build plan
# tools/mmcv_build.py decides how bootstrap builds mmcv's ops; everything below runs without a
# GPU or a compiler (the CUDA build itself is proven by `make env-cuda`, see the README).

def _load_tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


mb = _load_tool("mmcv_build")


@pytest.mark.parametrize("env, gpus, key", [
    ({}, (), "cpu"),
    ({}, ("8.6", "9.0"), "cuda-sm_86-sm_90"),
    ({"FORCE_CUDA": "1"}, (), "cuda-sm_80-sm_90+ptx"),  # the documented default
    ({"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}, (), "cuda-sm_90"),
    ({"TORCH_CUDA_ARCH_LIST": "8.0 9.0a+PTX"}, ("9.0",), "cuda-sm_80-sm_90a+ptx"),
    ({"FORCE_CUDA": "0"}, ("9.0",), "cpu"),
])
def test_ops_plan_follows_gpus_and_overrides(env, gpus, key):
    plan = mb.plan_ops(env, gpus)
    assert plan.key == key
    assert mb.OpsPlan.from_key(key).archs == plan.archs  # the key alone rebuilds the plan
    assert plan.reason


def test_ops_plan_rejects_bad_settings():
    with pytest.raises(mb.BuildError, match="FORCE_CUDA='yes'"):
        mb.plan_ops({"FORCE_CUDA": "yes"}, ())
    with pytest.raises(mb.BuildError, match="compute capabilities such as '9.0'"):
        mb.plan_ops({"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "Hopper"}, ())
    with pytest.raises(mb.BuildError, match="neither 'cpu'"):
        mb.OpsPlan.from_key("rocm")


def test_gpus_are_read_from_nvidia_smi():
    def smi(stdout, code=0):
        return lambda *a, **k: subprocess.CompletedProcess(a, code, stdout=stdout, stderr="")

    assert mb.listed_gpu_archs(smi("9.0\n8.6\n9.0\n"), env={}) == ("8.6", "9.0")
    assert mb.listed_gpu_archs(smi("10.0\n9.0\n"), env={}) == ("9.0", "10.0")  # numeric order
    assert mb.listed_gpu_archs(smi("", 9), env={}) == ()  # driver present, no GPU
    assert mb.listed_gpu_archs(smi("9.0\n"), env={"CUDA_VISIBLE_DEVICES": ""}) == ()

    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")
    assert mb.listed_gpu_archs(missing, env={}) == ()


def test_torch_must_agree_with_the_plan():
    cuda, cpu = mb.OpsPlan(("9.0",)), mb.OpsPlan()
    with pytest.raises(mb.BuildError, match="CPU-only build"):
        mb.check_torch_agrees(cuda, {}, None, False)
    with pytest.raises(mb.BuildError, match="FORCE_CUDA=1 .* or FORCE_CUDA=0"):
        mb.check_torch_agrees(cpu, {}, "13.0", True)
    mb.check_torch_agrees(cpu, {"FORCE_CUDA": "0"}, "13.0", True)  # asked for: fine
    mb.check_torch_agrees(cuda, {"FORCE_CUDA": "1"}, "13.0", False)  # forced without a GPU


def test_max_jobs_by_cores_and_memory():
    gib = 2**30
    assert mb.choose_max_jobs(2, 22 * gib, cuda=False) == 2  # this project's machines, as before
    assert mb.choose_max_jobs(2, 22 * gib, cuda=True) == 2
    assert mb.choose_max_jobs(16, 8 * gib, cuda=True) == 2  # memory-bound
    assert mb.choose_max_jobs(16, 8 * gib, cuda=False) == 5
    assert mb.choose_max_jobs(8, gib // 2, cuda=True) == 1  # never zero


def _fake_toolkit(root: Path, version: str, headers=("cuda_runtime.h",)) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "nvcc").write_text(version)
    (root / "include").mkdir()
    for h in headers:
        (root / "include" / h).write_text("")
    return root


def _release(nvcc: Path) -> str:
    return nvcc.read_text()


def test_toolkit_search_order_and_version_check(tmp_path):
    wanted = _fake_toolkit(tmp_path / "cuda-13.0", "13.0")
    old = _fake_toolkit(tmp_path / "cuda", "12.4")
    find = lambda env, which=lambda _: None, locs=(): mb.find_toolkit(  # noqa: E731
        "13.0", env, which=which, release=_release, locations=[str(p) for p in locs])

    assert find({}, locs=(old, wanted)).home == wanted  # the first of the right version
    assert find({}) is None  # nothing anywhere: bootstrap installs pip's nvcc
    # nvcc on PATH counts when it sits in a toolkit; a wrapper script elsewhere does not
    assert find({}, which=lambda _: str(wanted / "bin" / "nvcc")).source == "nvcc on PATH"
    wrapper = tmp_path / "usr" / "bin"
    wrapper.mkdir(parents=True)
    (wrapper / "nvcc").write_text("13.0")
    assert find({}, which=lambda _: str(wrapper / "nvcc")) is None

    with pytest.raises(mb.BuildError) as err:  # only other versions: say both, and the ways out
        find({}, locs=(old,))
    assert "torch was built with CUDA 13.0" in str(err.value) and "CUDA 12.4" in str(err.value)
    assert "TINYVIT_CUDA_TOOLKIT=pip" in str(err.value)
    with pytest.raises(mb.BuildError, match="CUDA 12.4"):  # CUDA_HOME is final, even if wrong
        find({"CUDA_HOME": str(old)}, locs=(wanted,))
    with pytest.raises(mb.BuildError, match="is not a CUDA toolkit"):
        find({"CUDA_HOME": str(tmp_path / "nowhere")})
    assert find({"CUDA_HOME": str(wanted)}).source == "CUDA_HOME"


def test_pip_toolkit_wheels_match_torch_cuda():
    reqs = mb.pip_toolkit_requirements("13.0")
    assert reqs[0] == "nvidia-cuda-nvcc==13.0.*" and all(r.endswith("==13.0.*") for r in reqs)
    with pytest.raises(mb.BuildError, match="CUDA >= 13"):
        mb.pip_toolkit_requirements("12.8")


def test_pip_toolkit_gets_the_links_torch_and_nvcc_expect(tmp_path, monkeypatch):
    root = _fake_toolkit(tmp_path / "nvidia" / "cu13", "13.0")
    (root / "lib").mkdir()
    (root / "lib" / "libcudart.so.13").write_text("")
    monkeypatch.setattr(mb, "nvcc_release", _release)
    toolkit = mb.complete_pip_toolkit(root)
    assert toolkit.version == "13.0"
    assert (root / "lib" / "libcudart.so").resolve() == (root / "lib" / "libcudart.so.13").resolve()
    assert (root / "lib64").resolve() == (root / "lib").resolve()
    target = root / "targets" / f"{os.uname().machine}-linux"
    assert (target / "include").resolve() == (root / "include").resolve()
    mb.complete_pip_toolkit(root)  # idempotent


def test_wheel_cache_name_keeps_builds_apart():
    """pip's wheel cache keys a wheel built from an sdist by the sdist alone; ours names every
    input that changes the compiled library."""
    name = lambda plan, torch="2.14.1+cu130", cuda="13.0", py="cp311", patch="abc": (  # noqa: E731
        mb.wheel_dir_name(plan, torch, cuda, py, patch))
    base = name(mb.OpsPlan(("9.0",)))
    assert base == "mmcv-2.1.0+cu130.sm_90.torch2.14.1.cp311.abc"
    others = {name(mb.OpsPlan(("8.0", "9.0+PTX"))), name(mb.OpsPlan(("9.0",)), torch="2.15.0"),
              name(mb.OpsPlan(("9.0",)), cuda="13.1"), name(mb.OpsPlan(("9.0",)), py="cp312"),
              name(mb.OpsPlan(("9.0",)), patch="def")}
    assert base not in others and len(others) == 5


def _original_setup_py(patch: Path) -> str:
    """A setup.py holding exactly the lines the patch expects (its context and removed lines)."""
    hunks, lines = [], []
    for line in patch.read_text().splitlines()[2:]:
        if line.startswith("@@"):
            if lines:
                hunks.append(lines)
            lines = []
        elif line[:1] in (" ", "-"):
            lines.append(line[1:])
    hunks.append(lines)
    return "\n# unrelated\n".join("\n".join(h) for h in hunks) + "\n"


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch(1) not installed")
def test_patch_lifts_both_compilers_to_cxx20(tmp_path):
    src = tmp_path / "mmcv-2.1.0"
    src.mkdir()
    (src / "setup.py").write_text(_original_setup_py(mb.PATCH))
    assert "-std=c++17" in (src / "setup.py").read_text()
    mb.apply_patch(src)
    text = (src / "setup.py").read_text()
    assert "-std=c++17" not in text
    assert "extra_compile_args['cxx'] = ['-std=c++20']" in text
    assert "extra_compile_args['nvcc'] += ['-std=c++20']" in text
    with pytest.raises(mb.BuildError, match="does not apply"):  # twice: refused, not doubled
        mb.apply_patch(src)


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch(1) not installed")
def test_cuda_wheel_is_built_outside_pips_cache_and_reused(tmp_path, monkeypatch):
    import tarfile

    toolkit = mb.Toolkit(_fake_toolkit(tmp_path / "cuda", "13.0"), "13.0", "test")
    monkeypatch.setattr(mb, "find_toolkit", lambda *a, **k: toolkit)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("MAX_JOBS", raising=False)
    calls = []

    def fake_pip(*args, env=None):
        calls.append((args, env))
        if args[0] == "download":
            dest = Path(args[args.index("-d") + 1])
            dest.mkdir(parents=True)
            setup = tmp_path / "mmcv-2.1.0" / "setup.py"
            setup.parent.mkdir(exist_ok=True)
            setup.write_text(_original_setup_py(mb.PATCH))
            with tarfile.open(dest / "mmcv-2.1.0.tar.gz", "w:gz") as tar:
                tar.add(setup.parent, arcname="mmcv-2.1.0")
        elif args[0] == "wheel":
            src = Path(args[-1])
            calls[-1] += ((src / "setup.py").read_text(),)
            out = Path(args[args.index("-w") + 1])
            out.mkdir()
            (out / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl").write_text("wheel")

    monkeypatch.setattr(mb, "_pip", fake_pip)
    cache = tmp_path / "wheels"
    wheel = mb.build_cuda_wheel(mb.OpsPlan(("9.0",)), cache, ROOT / "tools/constraints.txt")
    assert wheel.parent.parent == cache and ".sm_90." in wheel.parent.name
    assert [c[0][0] for c in calls] == ["download", "wheel"]
    download, (wheel_args, env, setup_seen) = calls[0][0], calls[1]
    assert "--require-hashes" in download
    assert "--no-cache-dir" in wheel_args  # never into pip's cache
    assert "-std=c++20" in setup_seen and "-std=c++17" not in setup_seen
    assert env["FORCE_CUDA"] == "1" and env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert env["CUDA_HOME"] == str(toolkit.home) and int(env["MAX_JOBS"]) >= 1
    # the fake toolkit lacks cusparse.h & co: the nvidia-* wheels' headers fill in (torch has them)
    assert env["CPATH"].endswith(os.path.join("nvidia", "cu13", "include"))
    assert [p.name for p in cache.iterdir()] == [wheel.parent.name]  # no build leftovers

    assert mb.build_cuda_wheel(mb.OpsPlan(("9.0",)), cache, ROOT / "tools/constraints.txt") == wheel
    assert len(calls) == 2  # reused: nothing downloaded or built
    other = mb.build_cuda_wheel(mb.OpsPlan(("8.0",)), cache, ROOT / "tools/constraints.txt")
    assert other != wheel and len(calls) == 4  # other archs: another build, another folder


def test_failed_cuda_build_leaves_nothing(tmp_path, monkeypatch):
    toolkit = mb.Toolkit(_fake_toolkit(tmp_path / "cuda", "13.0", mb.LIBRARY_HEADERS + ("cuda_runtime.h",)),
                         "13.0", "test")
    monkeypatch.setattr(mb, "find_toolkit", lambda *a, **k: toolkit)
    monkeypatch.setattr(torch.version, "cuda", "13.0")

    def failing_pip(*args, env=None):
        raise mb.BuildError("`pip download` failed")

    monkeypatch.setattr(mb, "_pip", failing_pip)
    cache = tmp_path / "wheels"
    with pytest.raises(mb.BuildError):
        mb.build_cuda_wheel(mb.OpsPlan(("9.0",)), cache, ROOT / "tools/constraints.txt")
    assert list(cache.iterdir()) == []


@pytest.mark.requires_mmcv_ops
def test_installed_ops_key_reads_this_environment(tmp_path):
    from mmcv.ops import get_compiling_cuda_version

    key = mb.installed_ops_key(tmp_path / "marker")
    if get_compiling_cuda_version() == "not available":
        assert key == "cpu"
    else:  # an environment built with CUDA ops: bootstrap's marker names the archs
        assert key.startswith("cuda")


def test_pip_cache_remedy_removes_a_stray_mmcv_wheel(tmp_path):
    """bootstrap's message for an mmcv of the wrong ops out of pip's cache says to run
    `pip cache remove mmcv`: that command drops the cached wheel, so the rerun compiles."""
    folder = tmp_path / "wheels" / "57" / "22"
    folder.mkdir(parents=True)
    stray = folder / "mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"
    stray.write_bytes(b"PK")
    out = subprocess.run([sys.executable, "-m", "pip", "cache", "remove", "mmcv"],
                         env=dict(os.environ, PIP_CACHE_DIR=str(tmp_path)), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not stray.exists()
    assert "pip cache remove mmcv" in (ROOT / "tools/bootstrap.sh").read_text()


@pytest.mark.requires_mmcv_ops
def test_check_env_refuses_cuda_ops_it_cannot_confirm():
    """`check_env.py --ops cuda-...` fails on an mmcv built without CUDA ops (this machine's),
    instead of passing the CPU checks alone."""
    from mmcv.ops import get_compiling_cuda_version

    if get_compiling_cuda_version() != "not available":
        pytest.skip("this environment has CUDA ops")
    out = subprocess.run([sys.executable, str(ROOT / "tools/check_env.py"), "--ops", "cuda-sm_90"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "compiled with CUDA 'not available'" in out.stderr


def test_kept_stack_is_checked_for_version_and_origin(tmp_path):
    """`check_env.py --kept` (bring-your-own torch) fails when pip replaced the interpreter's
    torch: another version, or one installed into the venv itself."""
    import importlib.metadata

    check_env = _load_tool("check_env")
    version = importlib.metadata.version("torch")
    kept = tmp_path / "constraints.txt"
    kept.write_text("torch==0.0.1\nmmdet==3.3.0\n")
    with pytest.raises(SystemExit, match=r"torch is .*, the interpreter brought 0.0.1"):
        check_env.check_kept(kept)
    kept.write_text(f"torch=={version}\nmmdet==3.3.0\n")
    where = Path(importlib.metadata.distribution("torch").locate_file("")).resolve()
    if Path(sys.prefix).resolve() in (where, *where.parents):  # an environment with its own torch
        with pytest.raises(SystemExit, match="installed into the venv"):
            check_env.check_kept(kept)
    else:  # a bring-your-own-torch environment
        assert check_env.check_kept(kept) == f"torch {version}"
