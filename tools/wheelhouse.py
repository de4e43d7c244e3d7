"""Folders of wheels for machines without a network: prepare on a connected machine, install on
the offline one. Every download and build is pip's own (`pip download` / `pip wheel`).

`download DEST` fills a wheelhouse with every wheel `tools/bootstrap.sh` installs (torch,
the OpenMMLab stack, the project's dependencies and extras), for a target Python version and
platform, plus mmcv 2.1.0 as asked (`--mmcv`): its sdist, which the offline machine compiles;
a CPU or CUDA wheel built here (`tools/mmcv_build.py`); mmcv-lite; or nothing.
`TINYVIT_WHEELHOUSE=DEST make env` then installs from it with no network.

`bundle DEST` makes the smaller folder `tools/device_check.sh` carries to a GPU machine whose
image already holds torch, torchvision, numpy and timm: the pinned wheels of
`tools/device_bundle.txt`, checked against a size limit.

`offline-env DIR` prints the `export` lines that make every pip call of a shell script (and
of the programs it starts) install from `DIR` alone: `PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "tools" / "constraints.txt"
BUNDLE_SPEC = ROOT / "tools" / "device_bundle.txt"
MMCV = "mmcv==2.1.0"
# What tools/bootstrap.sh installs besides the project's own requirements (keep the two in step;
# tests/test_wheelhouse.py checks that every package bootstrap names is here).
BOOTSTRAP_PACKAGES = ("torch", "torchvision", "setuptools<81", "wheel", "ninja", "numpy<2")
BOOTSTRAP_NO_DEPS = ("openmim==0.3.9",)
PROJECT_EXTRAS = ("test", "mim", "onnx")
MMCV_MODES = ("sdist", "cpu", "cuda", "lite", "none")
OPS_FILE = "mmcv-ops.txt"  # beside an mmcv wheel: which ops it was compiled with
MANIFEST = "MANIFEST.json"
DEFAULT_BUNDLE_MB = 60.0
DEVICE_PLATFORM = "manylinux_2_28_x86_64"
DEVICE_PYTHON = "3.12"

_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


class WheelhouseError(Exception):
    """Bad input or a failed step; the message says what is wrong and how to fix it."""


def platform_tags(platform: str) -> list[str]:
    """Every platform tag a machine of ``platform`` installs, newest first.

    ``pip download --platform manylinux_2_28_x86_64`` takes that tag literally, yet such a
    machine also runs wheels tagged for any older glibc (``manylinux_2_17``, ``manylinux2014``):
    pip expands this only for the machine it runs on, so the list is spelled out here."""
    m = _MANYLINUX.match(platform)
    legacy = next((name for name in _LEGACY if platform.startswith(name + "_")), None)
    if legacy:
        major, minor = _LEGACY[legacy]
        arch = platform[len(legacy) + 1:]
    elif m:
        major, minor, arch = int(m[1]), int(m[2]), m[3]
    else:
        return [platform]
    if major != 2:
        raise WheelhouseError(f"platform {platform!r}: only glibc 2.x manylinux tags are known")
    tags = []
    for glibc in range(minor, 4, -1):
        tags.append(f"manylinux_2_{glibc}_{arch}")
        tags += [f"{name}_{arch}" for name, ver in _LEGACY.items() if ver == (2, glibc)]
    return tags


def project_requirements(pyproject: Path = ROOT / "pyproject.toml",
                         extras: Sequence[str] = PROJECT_EXTRAS) -> list[str]:
    """The project's dependencies and those of ``extras``, as pyproject.toml states them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip carries the same parser
        from pip._vendor import tomli as tomllib
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise WheelhouseError(f"{pyproject} has no extra {extra!r} (it has {sorted(optional)})")
        reqs += [r for r in optional[extra] if r not in reqs]
    return reqs


def target_args(python_version: str | None, platforms: Sequence[str]) -> list[str]:
    """pip's options that pick wheels for another machine (none: this machine)."""
    args = []
    if python_version:
        if not re.fullmatch(r"3\.\d+", python_version):
            raise WheelhouseError(f"python version {python_version!r}: expected such as 3.12")
        args += ["--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        for tag in platform_tags(platform):
            args += ["--platform", tag]
    return args


def download_command(dest: Path, requirements: Sequence[str], *, python_version: str | None = None,
                     platforms: Sequence[str] = (), constraints: Path | None = CONSTRAINTS,
                     index_url: str | None = None, no_deps: bool = False) -> list[str]:
    """The ``pip download`` of ``requirements`` (wheels only) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "download",
           "--only-binary=:all:", "-d", str(dest)]
    cmd += target_args(python_version, platforms)
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    if index_url:
        cmd += ["--index-url", index_url]
    if no_deps:
        cmd.append("--no-deps")
    return cmd + list(requirements)


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> None:
    print(f"[wheelhouse] {what}", file=sys.stderr, flush=True)
    # pip reports on stdout; this tool keeps stdout for its JSON result
    if subprocess.run(list(cmd), env=env, stdout=sys.stderr).returncode != 0:
        raise WheelhouseError(f"{what} failed: `{shlex.join(cmd[2:])}` (pip's reason is above)")


def _same_interpreter(python_version: str | None, platforms: Sequence[str], what: str) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if (python_version and python_version != here) or platforms:
        raise WheelhouseError(
            f"{what} is built by this interpreter (Python {here}, this machine's platform), so "
            "it cannot be built for another one: leave PYTHON_VERSION and PLATFORM unset, run "
            "this on a machine like the target, or use --mmcv sdist (the offline machine "
            "compiles it)")


def fetch_mmcv(dest: Path, mode: str, *, python_version: str | None, platforms: Sequence[str],
               index_url: str | None) -> str | None:
    """Put mmcv into ``dest`` as ``mode`` says; returns the ops key of a built wheel."""
    sys.path.insert(0, str(ROOT / "tools"))
    import mmcv_build

    if mode == "none":
        return None
    if mode == "lite":
        _run(download_command(dest, ["mmcv-lite==2.1.0"], python_version=python_version,
                              platforms=platforms, constraints=None, index_url=index_url,
                              no_deps=True), "downloading mmcv-lite 2.1.0")
        return None
    if mode == "sdist":
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "mmcv.txt"
            req.write_text(f"{MMCV} --hash=sha256:{mmcv_build.MMCV_SDIST_SHA256}\n")
            # pip reads the sdist's metadata through its setup.py, in an isolated build
            # environment (this interpreter need not have setuptools and wheel), whose setuptools
            # must still have the pkg_resources that setup.py imports
            build = Path(tmp) / "build-constraints.txt"
            build.write_text("setuptools<81\n")
            cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input",
                   "download", "--no-deps", "--no-binary", "mmcv", "--require-hashes",
                   "-r", str(req), "-d", str(dest)]
            if index_url:
                cmd += ["--index-url", index_url]
            _run(cmd, "downloading the mmcv 2.1.0 sdist (compiled on the offline machine)",
                 env=dict(os.environ, PIP_CONSTRAINT=str(build)))
        return None
    _same_interpreter(python_version, platforms, f"mmcv's {mode.upper()} wheel")
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as err:
        raise WheelhouseError(f"building mmcv's {mode} wheel needs torch: run `make env` "
                              "first (the Makefile then runs this with .venv/bin/python)") from err
    if mode == "cpu":
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="", FORCE_CUDA="0", MMCV_WITH_OPS="1",
                       CXX=str(ROOT / "tools" / "cxx20"),
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
            env.setdefault("MAX_JOBS", str(mmcv_build.choose_max_jobs(
                *mmcv_build.machine_cores_and_memory(), cuda=False)))
            # pip's wheel cache holds this build when `make env` made it: then nothing compiles
            _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input",
                  "wheel", "--no-deps", "--no-build-isolation", "-c", str(CONSTRAINTS),
                  "-w", tmp, MMCV], "building mmcv 2.1.0 with its CPU ops (pip wheel)", env=env)
            wheel = next(Path(tmp).glob("mmcv-2.1.0-*.whl"))
            os.replace(wheel, dest / wheel.name)
        key = "cpu"
    else:
        plan = mmcv_build.plan_ops(dict(os.environ, FORCE_CUDA="1"),
                                   mmcv_build.listed_gpu_archs())
        cache = Path(os.environ.get("TINYVIT_ENV_CACHE")
                     or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                     / "tinyvit-transfer") / "wheels"
        try:
            wheel = mmcv_build.build_cuda_wheel(plan, cache, CONSTRAINTS)
        except mmcv_build.BuildError as err:
            raise WheelhouseError(str(err)) from err
        shutil.copy2(wheel, dest / wheel.name)
        key = plan.key
    (dest / OPS_FILE).write_text(key + "\n")
    return key


def download(dest: Path, *, python_version: str | None, platforms: Sequence[str],
             requirements: Sequence[str] | None, mmcv: str, index_url: str | None) -> dict:
    """Fill ``dest`` (created, or added to) with the environment's wheels."""
    if mmcv not in MMCV_MODES:
        raise WheelhouseError(f"--mmcv {mmcv!r}: choose one of {', '.join(MMCV_MODES)}")
    dest.mkdir(parents=True, exist_ok=True)
    if requirements is None:
        reqs = list(BOOTSTRAP_PACKAGES) + [r for r in project_requirements()
                                          if r not in BOOTSTRAP_PACKAGES]
        no_deps = list(BOOTSTRAP_NO_DEPS)
        constraints = CONSTRAINTS
    else:
        reqs, no_deps, constraints = list(requirements), [], None
    _run(download_command(dest, reqs, python_version=python_version, platforms=platforms,
                          constraints=constraints, index_url=index_url),
         f"downloading {' '.join(reqs)} and their dependencies into {dest}")
    if no_deps:
        _run(download_command(dest, no_deps, python_version=python_version, platforms=platforms,
                              constraints=constraints, index_url=index_url, no_deps=True),
             f"downloading {' '.join(no_deps)} without its dependencies")
    ops = fetch_mmcv(dest, mmcv, python_version=python_version, platforms=platforms,
                     index_url=index_url) if requirements is None else None
    files = sorted(p for p in dest.iterdir() if p.suffix == ".whl" or p.name.endswith(".tar.gz"))
    return {"wheelhouse": str(dest), "files": len(files), "mmcv": mmcv, "mmcv_ops": ops,
            "mb": round(sum(p.stat().st_size for p in files) / 1e6, 1)}


def offline_env(folder: Path) -> dict[str, str]:
    """The environment that turns every pip call into ``--no-index --find-links folder``."""
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise WheelhouseError(f"TINYVIT_WHEELHOUSE={folder}: no such folder; make it on a "
                              "connected machine with `make wheelhouse WHEELHOUSE=...` and copy it")
    if not any(p.suffix == ".whl" for p in folder.iterdir()):
        raise WheelhouseError(f"TINYVIT_WHEELHOUSE={folder} holds no wheel (*.whl): is it the "
                              "folder `make wheelhouse` filled?")
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder)}


def wheelhouse_ops(folder: Path) -> str | None:
    """The ops key of the mmcv wheel in a wheelhouse (``download --mmcv cpu|cuda``), else None."""
    marker = folder / OPS_FILE
    return marker.read_text().strip() if marker.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_requirements(spec: Path = BUNDLE_SPEC) -> list[str]:
    lines = (line.split("#")[0].strip() for line in spec.read_text().splitlines())
    return [line for line in lines if line]


def bundle(dest: Path, *, spec: Path = BUNDLE_SPEC, python_version: str = DEVICE_PYTHON,
           platforms: Sequence[str] = (DEVICE_PLATFORM,), max_mb: float = DEFAULT_BUNDLE_MB,
           mmcv_wheel: Path | None = None, index_url: str | None = None) -> dict:
    """Make ``dest`` anew: the wheels of ``spec`` (no dependencies resolved: the spec lists
    them all), an optional real mmcv wheel in place of mmcv-lite, ``MANIFEST.json`` with what
    ``tools/device_check.sh`` installs, and the size checked against ``max_mb``."""
    reqs = bundle_requirements(spec)
    if mmcv_wheel is not None:
        if not re.match(r"mmcv-2\.1\.0-.*\.whl$", mmcv_wheel.name) or not mmcv_wheel.is_file():
            raise WheelhouseError(f"--mmcv-wheel {mmcv_wheel}: expected an existing "
                                  "mmcv-2.1.0-*.whl (tools/mmcv_build.py cuda-wheel builds one)")
        reqs = [r for r in reqs if not r.startswith("mmcv-lite")]
    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _run(download_command(work, reqs, python_version=python_version, platforms=platforms,
                              constraints=None, index_url=index_url, no_deps=True),
             f"downloading the {len(reqs)} wheels of {spec.name}")
        if mmcv_wheel is not None:
            shutil.copy2(mmcv_wheel, work / mmcv_wheel.name)
        wheels = sorted(work.glob("*.whl"))
        sizes = {p.name: p.stat().st_size for p in wheels}
        total_mb = sum(sizes.values()) / 1e6
        manifest = {
            "python": python_version, "platforms": list(platforms), "spec": spec.name,
            "mmcv": mmcv_wheel.name if mmcv_wheel else "mmcv-lite (no compiled ops)",
            "mb": round(total_mb, 2), "max_mb": max_mb,
            "wheels": [{"file": name, "bytes": size, "sha256": _sha256(work / name)}
                       for name, size in sizes.items()],
        }
        if total_mb > max_mb:
            biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
            raise WheelhouseError(
                f"the bundle is {total_mb:.1f} MB, over the {max_mb:g} MB limit; largest: "
                + ", ".join(f"{n} ({s / 1e6:.1f} MB)" for n, s in biggest)
                + ": drop a wheel from the spec, or raise --max-mb if the carrier allows it")
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/wheelhouse.py",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                help="download, bundle, offline-env or ops (each has its own --help)")

    def target_options(p, python_default, platform_default):
        p.add_argument("--python-version", default=python_default,
                       help="the target machine's Python, such as 3.12 (default: "
                            + (python_default or "this interpreter's") + ")")
        p.add_argument("--platform", action="append", default=None,
                       help="the target machine's platform tag, such as manylinux_2_28_x86_64 "
                            "(older glibc tags are added); repeatable (default: "
                            + (platform_default or "this machine's") + ")")
        p.add_argument("--index-url", default=None,
                       help="the package index to download from (default: pip's configuration)")

    p = sub.add_parser("download", help="fill a wheelhouse with the environment's wheels")
    p.add_argument("dest", type=Path, help="the wheelhouse folder (created, or added to)")
    target_options(p, None, None)
    p.add_argument("--mmcv", default="sdist", choices=MMCV_MODES,
                   help="mmcv 2.1.0 as its sdist (compiled offline; default), a wheel built "
                        "here with CPU or CUDA ops (this interpreter must match the target; "
                        "CUDA archs from TORCH_CUDA_ARCH_LIST), mmcv-lite, or none")
    p.add_argument("-r", "--requirements", type=Path, default=None,
                   help="download these requirements (and their dependencies) instead of the "
                        "project's environment")
    p = sub.add_parser("bundle", help="make the folder tools/device_check.sh carries")
    p.add_argument("dest", type=Path, help="the bundle folder (replaced)")
    target_options(p, DEVICE_PYTHON, DEVICE_PLATFORM)
    p.add_argument("--spec", type=Path, default=BUNDLE_SPEC,
                   help="the pinned wheels to carry (default tools/device_bundle.txt)")
    p.add_argument("--mmcv-wheel", type=Path, default=None,
                   help="a real mmcv 2.1.0 wheel to carry instead of mmcv-lite")
    p.add_argument("--max-mb", type=float, default=DEFAULT_BUNDLE_MB,
                   help="refuse a bundle larger than this (default %(default)s MB)")
    p = sub.add_parser("offline-env", help="print the exports that make pip use DIR alone")
    p.add_argument("folder", type=Path, help="the wheelhouse every pip call is to install from")
    p = sub.add_parser("ops", help="print the ops key of a wheelhouse's mmcv wheel (or nothing)")
    p.add_argument("folder", type=Path, help="the wheelhouse whose mmcv wheel is looked at")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            reqs = None
            if args.requirements is not None:
                if not args.requirements.is_file():
                    raise WheelhouseError(f"--requirements {args.requirements}: no such file")
                reqs = ["-r", str(args.requirements)]
            result = download(args.dest, python_version=args.python_version,
                              platforms=args.platform or (), requirements=reqs, mmcv=args.mmcv,
                              index_url=args.index_url)
        elif args.command == "bundle":
            result = bundle(args.dest, spec=args.spec, python_version=args.python_version,
                            platforms=args.platform or (DEVICE_PLATFORM,), max_mb=args.max_mb,
                            mmcv_wheel=args.mmcv_wheel, index_url=args.index_url)
            result = {k: v for k, v in result.items() if k != "wheels"} | {
                "dest": str(args.dest), "wheels": len(result["wheels"])}
        elif args.command == "offline-env":
            for key, value in offline_env(args.folder).items():
                print(f"export {key}={shlex.quote(value)}")
            return 0
        else:
            ops = wheelhouse_ops(args.folder)
            if ops:
                print(ops)
            return 0
    except WheelhouseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
