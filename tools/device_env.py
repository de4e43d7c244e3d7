"""Write what a machine offers the project as one JSON file (`tools/device_check.sh` writes
OUTDIR/env.json with it): Python, torch and its CUDA, the GPUs, nvcc, the versions of the
packages the project uses, which mmcv ops can run, ONNX Runtime's execution providers, and the
requirements `pip check` finds unmet.

    python tools/device_env.py --out OUTDIR/env.json [--bundle DIR] [--install WHERE]

mmcv's ops are one of `compiled-cuda` (a real mmcv built with CUDA ops), `compiled-cpu`
(a real mmcv with CPU ops only) or `none` (mmcv-lite or no mmcv: the GPU check's detection
sections then use its labelled stand-in, whose numbers prove nothing about mmcv's kernels).
Runs before anything of the project may import, so it needs only the standard library (and
reports whatever else is missing instead of failing on it).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("torch", "torchvision", "numpy", "timm", "mmengine", "mmcv", "mmcv-lite", "mmdet",
            "mmsegmentation", "onnxruntime", "onnx", "pycocotools", "opencv-python-headless",
            "opencv-python", "setuptools")
# pip check reports these as unmet though another distribution provides the same module
PROVIDED_BY = {"opencv-python": ("opencv-python-headless", "opencv-contrib-python",
                                 "opencv-contrib-python-headless")}


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def torch_facts() -> dict:
    try:
        import torch
    except Exception as err:  # a broken torch is a fact to report, not a crash
        return {"torch_error": f"{type(err).__name__}: {err}"}
    facts = {"torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
             "gpus": [], "cudnn": None}
    if facts["cuda_available"]:
        facts["gpus"] = [dict(name=torch.cuda.get_device_name(i),
                              capability=".".join(map(str, torch.cuda.get_device_capability(i))),
                              memory_gib=round(torch.cuda.get_device_properties(i).total_memory
                                               / 2**30, 1))
                         for i in range(torch.cuda.device_count())]
        facts["cudnn"] = torch.backends.cudnn.version()
    return facts


def mmcv_ops() -> dict:
    """Which mmcv ops exist, found without importing mmcv.ops (which fails without them)."""
    if importlib.util.find_spec("mmcv") is None:
        return {"mmcv_ops": "none", "mmcv_ops_note": "mmcv is not installed"}
    if importlib.util.find_spec("mmcv._ext") is None:
        return {"mmcv_ops": "none",
                "mmcv_ops_note": "no compiled ops (mmcv._ext) in this mmcv: the detection "
                                 "sections use the labelled stand-in"}
    try:
        import mmcv._ext as ext
        compiled = ext.get_compiling_cuda_version()
    except Exception as err:
        return {"mmcv_ops": "none", "mmcv_ops_note": f"mmcv._ext does not load: "
                                                     f"{type(err).__name__}: {err}"}
    if compiled == "not available":
        return {"mmcv_ops": "compiled-cpu", "mmcv_ops_note": "mmcv built with CPU ops only"}
    return {"mmcv_ops": "compiled-cuda", "mmcv_ops_note": f"mmcv compiled with CUDA {compiled}"}


def onnxruntime_providers() -> list[str] | None:
    try:
        import onnxruntime
    except Exception:
        return None
    return onnxruntime.get_available_providers()


def nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc"
                                    if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+\.\d+)", out.stdout)
    return m[1] if m else None


def unmet_requirements() -> list[str]:
    """``pip check``'s complaints, less those another installed distribution answers."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True,
                             text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [f"pip check did not run: {err}"]
    unmet = []
    for line in out.stdout.splitlines():
        m = re.search(r"requires ([A-Za-z0-9_.-]+), which is not installed", line)
        if m and any(_version(alt) for alt in PROVIDED_BY.get(m[1].lower(), ())):
            continue
        if line.strip() and not line.startswith("No broken requirements"):
            unmet.append(line.strip())
    return unmet


def collect(bundle: Path | None, install: str | None) -> dict:
    env = {"python": platform.python_version(), "executable": sys.executable,
           "platform": platform.platform(), "install": install}
    env.update(torch_facts())
    env["nvcc"] = nvcc_version()
    env["packages"] = {name: _version(name) for name in PACKAGES}
    env.update(mmcv_ops())
    env["onnxruntime_providers"] = onnxruntime_providers()
    if bundle is not None and (bundle / "MANIFEST.json").is_file():
        manifest = json.loads((bundle / "MANIFEST.json").read_text())
        env["bundle"] = {"folder": str(bundle), "mb": manifest.get("mb"),
                         "mmcv": manifest.get("mmcv"), "wheels": len(manifest.get("wheels", []))}
    env["unmet_requirements"] = unmet_requirements()
    return env


def write_json(path: Path, obj: dict) -> None:
    """Temporary file, then rename: a reader never sees half a file (the project's own atomic
    writer lives in a package that may not import yet here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tools/device_env.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="the bundle folder installed (its MANIFEST.json is summarised)")
    parser.add_argument("--install", default=None,
                        help="where the bundle was installed, as the report should say it")
    args = parser.parse_args(argv)
    env = collect(args.bundle, args.install)
    write_json(args.out, env)
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    print(f"python {env['python']}, torch {env['packages']['torch']} "
          f"(CUDA {env.get('torch_cuda')}), {gpus}, mmcv ops: {env['mmcv_ops']}; "
          f"{len(env['unmet_requirements'])} unmet requirement(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
