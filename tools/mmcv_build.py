"""How mmcv 2.1.0's compiled ops are built on this machine: CPU-only, or with CUDA ops.

tools/bootstrap.sh calls the subcommands below; every decision is a pure function here so the
CPU test suite (tests/test_env.py) checks it without a GPU or a compiler.

``plan`` (any Python 3, before torch is installed) prints the ops key that names the build and
goes into the environment's cache key:

* ``cpu``: mmcv's 77 C++ units (the default without an NVIDIA GPU, or with ``FORCE_CUDA=0``);
* ``cuda-sm_90`` (one ``sm_XY`` per entry of ``TORCH_CUDA_ARCH_LIST``, ``+ptx`` where PTX is
  embedded too): mmcv's 136 units, when ``nvidia-smi`` lists a GPU or ``FORCE_CUDA=1``. The
  archs come from ``TORCH_CUDA_ARCH_LIST`` when set, else from the GPUs listed, else
  :data:`DEFAULT_ARCHS`.

``cuda-wheel`` (the venv's Python, torch installed) builds the CUDA wheel, or reuses the one
already built with the same key, and prints its path. It never goes through pip's wheel cache:
pip keys a wheel built from an sdist by the sdist alone, so a CUDA build cached there would later
be installed by a CPU build on the same machine, and the CPU wheel by a CUDA one. The wheel lives
in ``<cache>/mmcv-2.1.0+<cuXYZ>.<archs>.torch<version>.<cpXY>.<patch digest>/`` instead.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MMCV_VERSION = "2.1.0"
# The sdist the patch below was reviewed against; pip refuses any other file (--require-hashes).
MMCV_SDIST_SHA256 = "d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f"
PATCH = Path(__file__).resolve().parent / "patches" / f"mmcv-{MMCV_VERSION}-cxx20.patch"

# Forced without a GPU to look at: sm_80 cubins also run on 8.6 / 8.9 (A10, L4, RTX 30/40),
# sm_90 on H100 / H200, and the embedded compute_90 PTX is JIT-compiled by newer GPUs.
DEFAULT_ARCHS = ("8.0", "9.0+PTX")
_ARCH = re.compile(r"^(\d+)\.(\d)(a?)(\+PTX)?$")

# Memory one parallel compile job may take on mmcv's units, with headroom over the peaks
# measured on this project's CUDA build (cc1plus 0.9 GiB, nvcc's cicc 3.2 GiB); MAX_JOBS keeps
# the sum inside the memory that is free.
JOB_MEMORY_GIB = {"cpu": 1.5, "cuda": 4.0}

# The CUDA headers torch's own headers include (ATen/cuda/CUDAContext.h and friends); a toolkit
# assembled from nvcc alone lacks them, the nvidia-* wheels torch depends on ship them.
LIBRARY_HEADERS = ("cusparse.h", "cublas_v2.h", "cusolverDn.h", "curand.h", "cufft.h")


class BuildError(Exception):
    """A build that cannot go on; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class OpsPlan:
    """What mmcv's ops are compiled for. ``archs`` are TORCH_CUDA_ARCH_LIST entries
    (``"9.0"``, ``"9.0+PTX"``); empty for a CPU-only build."""
    archs: tuple[str, ...] = ()
    reason: str = ""

    @property
    def cuda(self) -> bool:
        return bool(self.archs)

    @property
    def key(self) -> str:
        if not self.cuda:
            return "cpu"
        parts = []
        for arch in self.archs:
            major, minor, suffix, ptx = _ARCH.match(arch).groups()
            parts.append(f"sm_{major}{minor}{suffix}" + ("+ptx" if ptx else ""))
        return "cuda-" + "-".join(parts)

    @property
    def arch_list(self) -> str:
        return ";".join(self.archs)

    @classmethod
    def from_key(cls, key: str) -> OpsPlan:
        """Inverse of :attr:`key`."""
        if key == "cpu":
            return cls()
        if not key.startswith("cuda-"):
            raise BuildError(f"ops key {key!r} is neither 'cpu' nor 'cuda-sm_XY...'")
        archs = []
        for part in key[len("cuda-"):].split("-"):
            m = re.fullmatch(r"sm_(\d+)(\d)(a?)(\+ptx)?", part)
            if not m:
                raise BuildError(f"ops key {key!r}: {part!r} is not sm_XY")
            archs.append(f"{m[1]}.{m[2]}{m[3]}" + ("+PTX" if m[4] else ""))
        return cls(tuple(archs))


def parse_arch_list(text: str) -> tuple[str, ...]:
    """``"8.0;9.0+PTX"`` or ``"8.0 9.0"`` -> ``("8.0", "9.0+PTX")``, in the order given.
    Named archs (``Hopper``) are refused: the key must say which cubins the wheel holds."""
    archs = tuple(a for a in re.split(r"[;\s]+", text.strip()) if a)
    bad = [a for a in archs if not _ARCH.match(a)]
    if bad or not archs:
        raise BuildError(f"TORCH_CUDA_ARCH_LIST={text!r}: expected compute capabilities such as "
                         "'9.0' or '8.0;9.0+PTX' (see `nvidia-smi --query-gpu=compute_cap "
                         "--format=csv`)")
    return archs


def listed_gpu_archs(run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                     env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Compute capabilities of the NVIDIA GPUs that ``nvidia-smi`` lists, sorted and unique;
    empty without a driver. Asked before torch exists (the answer keys the environment).
    An empty ``CUDA_VISIBLE_DEVICES`` hides them, as it does from torch."""
    env = os.environ if env is None else env
    if env.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return ()
    try:
        out = run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                  capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    caps = {line.strip() for line in out.stdout.splitlines() if _ARCH.match(line.strip())}
    return tuple(sorted(caps, key=lambda a: tuple(int(x) for x in a.split("."))))


def plan_ops(env: Mapping[str, str], gpu_archs: Sequence[str]) -> OpsPlan:
    """CUDA ops when ``FORCE_CUDA=1`` or a GPU is listed (unless ``FORCE_CUDA=0``)."""
    force = env.get("FORCE_CUDA", "").strip()
    if force not in ("", "0", "1"):
        raise BuildError(f"FORCE_CUDA={force!r}: use 1 (build CUDA ops) or 0 (CPU ops only)")
    if force == "0":
        return OpsPlan(reason="FORCE_CUDA=0")
    if force != "1" and not gpu_archs:
        return OpsPlan(reason="no NVIDIA GPU listed by nvidia-smi")
    why = "FORCE_CUDA=1" if force == "1" else f"GPU(s) of compute capability {', '.join(gpu_archs)}"
    if env.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return OpsPlan(parse_arch_list(env["TORCH_CUDA_ARCH_LIST"]),
                       f"{why}; archs from TORCH_CUDA_ARCH_LIST")
    if gpu_archs:
        return OpsPlan(tuple(gpu_archs), f"{why}; archs of the GPUs listed")
    return OpsPlan(DEFAULT_ARCHS, f"{why}, no GPU listed; default archs {';'.join(DEFAULT_ARCHS)}")


def check_torch_agrees(plan: OpsPlan, env: Mapping[str, str], torch_cuda: str | None,
                       torch_sees_gpu: bool) -> None:
    """The plan was made from nvidia-smi before torch existed; refuse one that torch contradicts."""
    if plan.cuda and torch_cuda is None:
        raise BuildError("CUDA ops were asked for, but the installed torch is a CPU-only build; "
                         "install a CUDA build of torch, or set FORCE_CUDA=0")
    if not plan.cuda and torch_sees_gpu and env.get("FORCE_CUDA", "").strip() != "0":
        raise BuildError("torch sees a GPU that nvidia-smi did not list; rerun with FORCE_CUDA=1 "
                         "(CUDA ops) or FORCE_CUDA=0 (CPU ops only)")


def choose_max_jobs(cores: int, mem_available_bytes: int, cuda: bool) -> int:
    """Parallel compiler jobs: one per core, as many as the free memory holds, at least one."""
    per_job = JOB_MEMORY_GIB["cuda" if cuda else "cpu"] * 2**30
    return max(1, min(cores, int(mem_available_bytes // per_job)))


def machine_cores_and_memory() -> tuple[int, int]:
    """Usable cores (CPU affinity) and MemAvailable from /proc/meminfo, in bytes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return cores, mem or 4 * 2**30


# -- the CUDA toolkit ------------------------------------------------------------------------

@dataclass(frozen=True)
class Toolkit:
    home: Path
    version: str   # "13.0"
    source: str    # where it was found, for the log


def nvcc_release(nvcc: Path) -> str | None:
    """``"13.0"`` from ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+\.\d+)", out.stdout)
    return m[1] if m else None


def standard_locations(torch_cuda: str) -> list[str]:
    """Where CUDA installers put toolkits on Linux, the one of torch's version first."""
    return [f"/usr/local/cuda-{torch_cuda}", "/usr/local/cuda", "/opt/cuda"]


def find_toolkit(torch_cuda: str, env: Mapping[str, str],
                 which: Callable[[str], str | None] = shutil.which,
                 release: Callable[[Path], str | None] = nvcc_release,
                 locations: Sequence[str] | None = None) -> Toolkit | None:
    """The CUDA toolkit whose nvcc has torch's CUDA major.minor: ``CUDA_HOME`` (or
    ``CUDA_PATH``) alone when set, else the standard locations, else nvcc on ``PATH``.
    None when there is no toolkit at all (the caller then installs pip's nvcc wheels); a
    toolkit of another version is an error naming both versions."""
    explicit = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if explicit:
        candidates = [(Path(explicit), "CUDA_HOME")]
    else:
        locations = standard_locations(torch_cuda) if locations is None else locations
        candidates = [(Path(d), d) for d in locations]
        on_path = which("nvcc")
        if on_path:
            candidates.append((Path(on_path).resolve().parent.parent, "nvcc on PATH"))
    mismatched = []
    for home, source in candidates:
        nvcc = home / "bin" / "nvcc"
        # a toolkit has its runtime headers beside nvcc (a PATH entry may be a wrapper script)
        if not (nvcc.is_file() and (home / "include" / "cuda_runtime.h").is_file()):
            if source == "CUDA_HOME":
                raise BuildError(f"CUDA_HOME={explicit} is not a CUDA toolkit (no bin/nvcc and "
                                 "include/cuda_runtime.h there); point it at one, or unset it")
            continue
        version = release(nvcc)
        if version == torch_cuda:
            return Toolkit(home, version, source)
        mismatched.append(f"{home} ({source}) has CUDA {version or 'of unknown version'}")
    if mismatched:
        raise BuildError(
            f"torch was built with CUDA {torch_cuda}, but " + "; ".join(mismatched) + ". "
            f"mmcv's CUDA ops must be compiled by the same CUDA {torch_cuda}: install that toolkit "
            f"and set CUDA_HOME to it, or set TINYVIT_CUDA_TOOLKIT=pip to compile with pip's "
            f"nvidia-cuda-nvcc {torch_cuda} wheels")
    return None


def pip_toolkit_requirements(torch_cuda: str) -> list[str]:
    """The nvidia-* wheels that make a toolkit for ``torch_cuda`` together with the
    nvidia-cuda-runtime torch already installed: nvcc, its front end (crt), NVVM and CCCL."""
    major = int(torch_cuda.split(".")[0])
    if major < 13:
        raise BuildError(f"pip's nvcc wheels are only supported here for CUDA >= 13 (torch has "
                         f"CUDA {torch_cuda}); install the CUDA {torch_cuda} toolkit and set "
                         "CUDA_HOME")
    return [f"{name}=={torch_cuda}.*" for name in
            ("nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-cuda-cccl")]


def complete_pip_toolkit(root: Path) -> Toolkit:
    """Make ``site-packages/nvidia/cuXY`` (the wheels' shared folder) usable as CUDA_HOME:
    nvcc.profile looks for headers under ``targets/<arch>-linux``, torch's extension builder
    links ``-lcudart`` from ``lib64``; the wheels ship neither link nor ``libcudart.so``."""
    nvcc = root / "bin" / "nvcc"
    if not nvcc.is_file():
        raise BuildError(f"pip's nvidia-cuda-nvcc wheel left no {nvcc}; reinstall it")
    target = root / "targets" / f"{os.uname().machine}-linux"
    target.mkdir(parents=True, exist_ok=True)
    for name, dest in (("include", "../../include"), ("lib", "../../lib")):
        if not (target / name).exists():
            (target / name).symlink_to(dest)
    if not (root / "lib64").exists():
        (root / "lib64").symlink_to("lib")
    cudart = sorted((root / "lib").glob("libcudart.so.*"))
    if not (root / "lib" / "libcudart.so").exists():
        if not cudart:
            raise BuildError(f"no libcudart.so.* in {root / 'lib'}: reinstall nvidia-cuda-runtime")
        (root / "lib" / "libcudart.so").symlink_to(cudart[0].name)
    version = nvcc_release(nvcc)
    if version is None:
        raise BuildError(f"{nvcc} --version did not say its release")
    return Toolkit(root, version, "pip's nvidia-* wheels")


def wheel_headers_dir(site_packages: Sequence[Path], torch_cuda: str) -> Path | None:
    """``site-packages/nvidia/cu13/include``: the library headers of the nvidia-* wheels."""
    major = torch_cuda.split(".")[0]
    for sp in site_packages:
        inc = Path(sp) / "nvidia" / f"cu{major}" / "include"
        if (inc / LIBRARY_HEADERS[0]).is_file():
            return inc
    return None


def missing_headers(toolkit: Toolkit) -> list[str]:
    return [h for h in LIBRARY_HEADERS if not (toolkit.home / "include" / h).is_file()]


# -- the wheel --------------------------------------------------------------------------------

def wheel_dir_name(plan: OpsPlan, torch_version: str, torch_cuda: str, python_tag: str,
                   patch_digest: str) -> str:
    """Everything the compiled wheel depends on: ops and archs, torch (its C++ ABI), CUDA,
    the interpreter, and the patch applied to the sdist."""
    cuda = "cu" + torch_cuda.replace(".", "")
    torch_base = torch_version.split("+")[0]
    archs = plan.key[len("cuda-"):]
    return f"mmcv-{MMCV_VERSION}+{cuda}.{archs}.torch{torch_base}.{python_tag}.{patch_digest}"


def cached_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("mmcv-*.whl")) if folder.is_dir() else []
    return wheels[0] if len(wheels) == 1 else None


def build_env(base: Mapping[str, str], plan: OpsPlan, toolkit: Toolkit, headers: Path | None,
              max_jobs: int, venv_bin: Path) -> dict[str, str]:
    """The environment of the CUDA build. CPATH reaches g++ and nvcc alike (nvcc preprocesses
    with the host compiler) and comes after the toolkit's own ``-I``: it only fills in the
    headers the toolkit lacks."""
    env = dict(base)
    env.update(MMCV_WITH_OPS="1", FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=plan.arch_list,
               CUDA_HOME=str(toolkit.home), MAX_JOBS=str(max_jobs),
               PATH=os.pathsep.join([str(venv_bin), str(toolkit.home / "bin"), base.get("PATH", "")]))
    env.pop("CUDA_PATH", None)
    if headers is not None:
        env["CPATH"] = os.pathsep.join(p for p in (base.get("CPATH", ""), str(headers)) if p)
    return env


def _log(msg: str) -> None:
    print(f"[bootstrap] {msg}", file=sys.stderr, flush=True)


def _pip(*args: str, env: Mapping[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    if subprocess.run(cmd, env=env).returncode != 0:
        raise BuildError(f"`{' '.join(cmd[2:])}` failed (its output is above)")


def apply_patch(src: Path, patch: Path = PATCH) -> None:
    """Apply ``patch`` to the unpacked sdist with patch(1), all hunks or nothing."""
    tool = shutil.which("patch")
    if tool is None:
        raise BuildError("patch(1) is needed to patch mmcv's setup.py: apt-get install patch")
    for dry in (True, False):
        cmd = [tool, "-p1", "--forward", "--batch", "--input", str(patch)] + (["--dry-run"] if dry else [])
        out = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
        if out.returncode != 0:
            raise BuildError(f"{patch.name} does not apply to {src}:\n{out.stdout}{out.stderr}")


def build_cuda_wheel(plan: OpsPlan, cache: Path, constraints: Path) -> Path:
    """Build (or reuse) the CUDA wheel of mmcv for ``plan``; returns the wheel's path."""
    import sysconfig

    import torch

    torch_cuda = torch.version.cuda
    check_torch_agrees(plan, os.environ, torch_cuda, torch.cuda.is_available())
    patch_digest = hashlib.sha256(PATCH.read_bytes()).hexdigest()[:12]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    final = cache / wheel_dir_name(plan, torch.__version__, torch_cuda, tag, patch_digest)
    hit = cached_wheel(final)
    if hit:
        _log(f"reusing the CUDA build of mmcv in {final}")
        return hit

    purelib = Path(sysconfig.get_paths()["purelib"])
    # the venv's own first (pip's nvcc goes there), then every other site folder on the path:
    # a bring-your-own torch has its nvidia-* wheels in the interpreter's
    site = [purelib] + [Path(p) for p in sys.path
                        if p.endswith(("site-packages", "dist-packages")) and Path(p) != purelib]
    if os.environ.get("TINYVIT_CUDA_TOOLKIT") == "pip":
        toolkit = None
    else:
        toolkit = find_toolkit(torch_cuda, os.environ)
    if toolkit is None:
        reqs = pip_toolkit_requirements(torch_cuda)
        _log(f"no CUDA {torch_cuda} toolkit here: installing {' '.join(reqs)}")
        _pip("install", "-c", str(constraints), *reqs)
        toolkit = complete_pip_toolkit(site[0] / "nvidia" / f"cu{torch_cuda.split('.')[0]}")
    missing = missing_headers(toolkit)
    headers = wheel_headers_dir(site, torch_cuda) if missing else None
    if missing and headers is None:
        raise BuildError(f"the toolkit at {toolkit.home} lacks {', '.join(missing)} and no "
                         "nvidia-* wheel provides them: reinstall torch (its nvidia-* dependencies "
                         "ship them), or use a full CUDA toolkit")
    cores, mem = machine_cores_and_memory()
    jobs = int(os.environ.get("MAX_JOBS") or choose_max_jobs(cores, mem, cuda=True))
    _log(f"building mmcv {MMCV_VERSION} with CUDA ops ({plan.key}): nvcc {toolkit.version} "
         f"from {toolkit.home} ({toolkit.source}), TORCH_CUDA_ARCH_LIST={plan.arch_list}, "
         f"MAX_JOBS={jobs}" + (f", {', '.join(missing)} from {headers}" if headers else ""))

    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        req = work / "mmcv-sdist.txt"
        req.write_text(f"mmcv=={MMCV_VERSION} --hash=sha256:{MMCV_SDIST_SHA256}\n")
        _pip("download", "--no-deps", "--no-binary", "mmcv", "--no-build-isolation",
             "--require-hashes", "-r", str(req), "-d", str(work / "sdist"))
        sdist = next((work / "sdist").glob(f"mmcv-{MMCV_VERSION}.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src", filter="data")
        src = work / "src" / f"mmcv-{MMCV_VERSION}"
        apply_patch(src)
        env = build_env(os.environ, plan, toolkit, headers, jobs, Path(sys.executable).parent)
        out = work / "wheel"
        # -v streams ninja's [n/136] progress; --no-cache-dir keeps the wheel out of pip's cache
        _pip("wheel", "-v", "--no-deps", "--no-build-isolation", "--no-cache-dir",
             "-c", str(constraints), "-w", str(out), str(src), env=env)
        if cached_wheel(out) is None:
            raise BuildError(f"pip wheel left no single mmcv wheel in {out}")
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cached_wheel(final)


def installed_ops_key(marker: Path) -> str:
    """The ops key of the mmcv installed in this interpreter: ``none`` (absent, not 2.1.0, or
    its ops do not load), ``cpu``, or the CUDA key bootstrap recorded in ``marker`` when it
    installed a CUDA wheel (the archs cannot be read back from the library)."""
    try:
        import mmcv
        from mmcv.ops import get_compiling_cuda_version
    except ModuleNotFoundError as err:
        if err.name != "mmcv":
            print(f"mmcv does not import: {err}", file=sys.stderr)
        return "none"
    except Exception as err:  # a broken build or a missing library: build it again
        print(f"mmcv does not import: {type(err).__name__}: {err}", file=sys.stderr)
        return "none"
    if mmcv.__version__ != MMCV_VERSION:
        return "none"
    if get_compiling_cuda_version() == "not available":
        return "cpu"
    return marker.read_text().strip() if marker.is_file() else "cuda-unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                help="the step to run; COMMAND --help lists its options")
    ops_help = "the ops key that plan printed (cpu | cuda-sm_XY...)"
    sub.add_parser("plan", help="print the ops key (cpu | cuda-sm_XY...) for this machine")
    p = sub.add_parser("max-jobs", help="print MAX_JOBS for this machine")
    p.add_argument("--ops", required=True, help=ops_help)
    p = sub.add_parser("check-torch", help="refuse a plan that the installed torch contradicts")
    p.add_argument("--ops", required=True, help=ops_help)
    p = sub.add_parser("installed", help="print the ops key of the installed mmcv")
    p.add_argument("--marker", type=Path, required=True,
                   help="file in which bootstrap recorded the CUDA ops key it installed")
    p = sub.add_parser("cuda-wheel", help="build or reuse the CUDA wheel; print its path")
    p.add_argument("--ops", required=True, help=ops_help)
    p.add_argument("--cache", type=Path, required=True,
                   help="folder holding one built wheel per key (ops, torch, Python, patch)")
    p.add_argument("--constraints", type=Path, required=True,
                   help="pip constraints file for the build's requirements")
    args = parser.parse_args(argv)
    try:
        if args.command == "plan":
            plan = plan_ops(os.environ, listed_gpu_archs())
            _log(f"mmcv ops: {plan.key} ({plan.reason})")
            print(plan.key)
        elif args.command == "max-jobs":
            cores, mem = machine_cores_and_memory()
            print(choose_max_jobs(cores, mem, OpsPlan.from_key(args.ops).cuda))
        elif args.command == "check-torch":
            import torch
            check_torch_agrees(OpsPlan.from_key(args.ops), os.environ, torch.version.cuda,
                               torch.cuda.is_available())
        elif args.command == "installed":
            print(installed_ops_key(args.marker))
        else:
            print(build_cuda_wheel(OpsPlan.from_key(args.ops), args.cache, args.constraints))
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
