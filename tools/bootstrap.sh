#!/usr/bin/env bash
# Build (or reuse) the project's virtual environment at .venv.
#
# Idempotent: the environment is keyed on the hash of the files that define it (this script,
# tools/constraints.txt, tools/cxx20, tools/mmcv_build.py, the mmcv patch, pyproject.toml) and
# on the ops key of the mmcv it holds (`cpu`, or `cuda-sm_90`: CUDA ops and for which archs);
# when the stamp in .venv matches, the run only re-checks that the editable install points at
# this checkout, which takes seconds.
#
# With TINYVIT_ENV_CACHE set (CI sets it), the environment lives in
# $TINYVIT_ENV_CACHE/venv-<hash> and .venv is a link to it, so a fresh clone on a machine
# that already built the same environment reuses it.
#
# Why the steps are as they are (all measured on Debian + Python 3.11, 2 cores):
# - torch/torchvision are pinned through tools/constraints.txt on *every* pip call: openmim's
#   dependency chain (opendatalab -> openxlab) carries strict pins that made pip downgrade torch.
#   openmim is therefore installed without its dependencies; the ones `mim train/test/run` use
#   come from the project's `mim` extra (only `mim download` needs opendatalab).
# - mmcv 2.1.0 has no wheel for torch 2.14: it is built from the sdist with its C++ ops, without
#   build isolation (it imports torch and pkg_resources at build time), with ninja.
#   * CPU ops (no NVIDIA GPU, or FORCE_CUDA=0): pip builds the sdist through tools/cxx20, a
#     compiler wrapper that lifts mmcv's forced -std=c++17 to the C++20 that ATen's headers
#     demand; GPUs are hidden from that build, so the wheel pip caches is always the CPU one and
#     later CPU builds on the same machine skip the 13-minute compile.
#   * CUDA ops (nvidia-smi lists a GPU, or FORCE_CUDA=1; archs from TORCH_CUDA_ARCH_LIST, the
#     GPUs, or a default): tools/mmcv_build.py finds an nvcc of torch's CUDA version (or installs
#     pip's), patches the sdist's setup.py to C++20 for g++ and nvcc
#     (tools/patches/mmcv-2.1.0-cxx20.patch), and builds the wheel outside pip's cache, which
#     keys wheels by sdist alone, into $WHEEL_CACHE under a name that carries CUDA version,
#     archs, torch, Python and patch. (The CPU route stays pip's own build of the unpatched
#     sdist, so the CPU wheel pip has cached keeps serving it.)
#
# Other sources and stacks (see the README's "Offline install and the GPU proof"):
# - TINYVIT_WHEELHOUSE=DIR: every pip call, here and in the programs this script starts, installs
#   from DIR alone (PIP_NO_INDEX=1, PIP_FIND_LINKS=DIR); `make wheelhouse` fills DIR on a
#   connected machine. An mmcv wheel in DIR (built there with its ops) is installed as it is;
#   otherwise mmcv's sdist from DIR is compiled here.
# - TINYVIT_SYSTEM_TORCH=1 (`make env-system`): bring your own torch. The venv sees $PYTHON's
#   packages (--system-site-packages, plus a .pth file naming the site-packages of $PYTHON when
#   it is a venv itself) and pins that interpreter's torch, torchvision, timm and
#   numpy in a generated constraints file, so no pip call replaces them; everything else is
#   installed into the venv. The environment's key includes their versions.
# - TINYVIT_MMCV=lite: mmcv-lite 2.1.0 (mmcv's Python code without the compiled ops, nothing to
#   compile) instead of a build with ops; the tests that need the ops then skip.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
DEFINING=(tools/bootstrap.sh tools/constraints.txt tools/cxx20 tools/mmcv_build.py
          tools/patches/mmcv-2.1.0-cxx20.patch pyproject.toml)
STAMP_NAME=.tinyvit-env-stamp
WHEEL_CACHE=${TINYVIT_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinyvit-transfer}/wheels

log() { printf '[bootstrap] %s\n' "$*" >&2; }
fail() { log "error: $*"; exit 1; }

if [ -n "${TINYVIT_WHEELHOUSE:-}" ]; then
  OFFLINE=$("$PYTHON" tools/wheelhouse.py offline-env "$TINYVIT_WHEELHOUSE")
  eval "$OFFLINE"
  log "installing from the wheelhouse $PIP_FIND_LINKS alone (no package index)"
fi

case "${TINYVIT_MMCV:-full}" in
  full) OPS=$("$PYTHON" tools/mmcv_build.py plan) ;;
  lite) OPS=lite; log "mmcv: mmcv-lite 2.1.0, no compiled ops (TINYVIT_MMCV=lite)" ;;
  *) fail "TINYVIT_MMCV=${TINYVIT_MMCV}: use full (mmcv 2.1.0 with its ops, the default) or lite" ;;
esac

SYSTEM=""
case "${TINYVIT_SYSTEM_TORCH:-0}" in
  0|"") ;;
  1)
    # name==version of the interpreter's own stack; these constraints keep every pip call off it
    SYSTEM=$("$PYTHON" - <<'PYEOF'
import importlib.metadata as md
import sys
missing = []
for name in ("torch", "torchvision", "timm", "numpy"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"TINYVIT_SYSTEM_TORCH=1 keeps the torch stack of {sys.executable}, which lacks "
             f"{', '.join(missing)}: set PYTHON to the interpreter that has torch, torchvision, "
             "timm and numpy (or install them there first)")
PYEOF
) || exit 1
    log "bring-your-own torch: keeping $(echo $SYSTEM) of $PYTHON"
    SYSTEM="$SYSTEM
from $("$PYTHON" -c 'import sys; print(sys.executable)')" ;;
  *) fail "TINYVIT_SYSTEM_TORCH=${TINYVIT_SYSTEM_TORCH}: use 1 (keep the interpreter's torch) or 0" ;;
esac
HASH=$( { cat "${DEFINING[@]}"; echo "mmcv-ops=$OPS"; echo "system=$SYSTEM"; } | sha256sum | cut -c1-16)

if [ -n "${TINYVIT_ENV_CACHE:-}" ]; then
  TARGET="$TINYVIT_ENV_CACHE/venv-$HASH"
  mkdir -p "$TINYVIT_ENV_CACHE"
  if [ -e .venv ] && [ ! -L .venv ]; then
    log "TINYVIT_ENV_CACHE is set but .venv is a real folder; using it as it is"
    TARGET="$ROOT/.venv"
  else
    ln -sfn "$TARGET" .venv
  fi
else
  TARGET="$ROOT/.venv"
fi
PY="$TARGET/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --no-input)
if [ -n "$SYSTEM" ]; then
  # the pins of tools/constraints.txt, less the stack the interpreter brings
  CONSTRAINTS="$TARGET/.tinyvit-system-constraints.txt"
  C=(-c "$CONSTRAINTS")
else
  C=(-c "$ROOT/tools/constraints.txt")
fi

# Where the environment imports the project from, asked from / with -I: neither the current
# folder nor PYTHONPATH may answer for it (both would name this checkout whatever the editable
# install's own path entry or finder says, and console scripts follow the latter).
editable_here() {
  (cd / && "$PY" -I "$ROOT/tools/check_env.py" --editable-at "$ROOT") >/dev/null 2>&1
}

if [ -f "$TARGET/$STAMP_NAME" ] && [ "$(cat "$TARGET/$STAMP_NAME")" = "$HASH" ]; then
  if ! editable_here; then
    log "environment up to date; pointing its editable install at $ROOT"
    "${PIP[@]}" install -q "${C[@]}" --no-deps --no-build-isolation -e .
  fi
  log "environment up to date ($TARGET, key $HASH)"
  exit 0
fi

START=$(date +%s)
rm -f "$TARGET/$STAMP_NAME"
if [ -x "$PY" ] && [ "$(grep -s '^include-system-site-packages' "$TARGET/pyvenv.cfg" | tr -d ' ')" != "include-system-site-packages=$([ -n "$SYSTEM" ] && echo true || echo false)" ]; then
  log "the venv in $TARGET was made for the other torch source; making it anew"
  rm -rf "$TARGET"
fi
if [ ! -x "$PY" ]; then
  log "creating virtual environment in $TARGET"
  if [ -n "$SYSTEM" ]; then
    "$PYTHON" -m venv --system-site-packages "$TARGET"
    # --system-site-packages shows the base installation only; when $PYTHON is itself a venv
    # (vendor images often are), its own site-packages are added through a .pth file
    "$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' \
      > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_tinyvit_interpreter_site.pth"
  else
    "$PYTHON" -m venv "$TARGET"
  fi
fi

if [ -n "$SYSTEM" ]; then
  { echo "$SYSTEM" | grep '=='; grep -E '^(mmcv|mmdet|mmsegmentation|mmengine|setuptools)\b' tools/constraints.txt; } \
    > "$CONSTRAINTS.tmp" && mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"
  log "keeping the interpreter's torch stack (pins in $CONSTRAINTS)"
  "${PIP[@]}" install "${C[@]}" 'setuptools<81' wheel ninja
else
  log "installing torch (pinned by tools/constraints.txt)"
  "${PIP[@]}" install "${C[@]}" torch torchvision
  "${PIP[@]}" install "${C[@]}" 'setuptools<81' wheel ninja 'numpy<2'
fi

MARKER="$TARGET/.tinyvit-mmcv-ops"
INSTALLED=$("$PY" tools/mmcv_build.py installed --marker "$MARKER" 2>/dev/null)
if [ "$OPS" = lite ]; then
  if "$PY" -m pip show -q mmcv >/dev/null 2>&1; then
    log "replacing the installed mmcv ($INSTALLED ops) by mmcv-lite"
    "${PIP[@]}" uninstall -y mmcv
  fi
  rm -f "$MARKER"
  "${PIP[@]}" install "${C[@]}" --no-deps mmcv-lite==2.1.0
elif [ "$INSTALLED" != "$OPS" ]; then
  "$PY" tools/mmcv_build.py check-torch --ops "$OPS"
  REINSTALL=()
  if "$PY" -m pip show -q mmcv-lite >/dev/null 2>&1; then
    "${PIP[@]}" uninstall -y mmcv-lite
  fi
  if "$PY" -m pip show -q mmcv >/dev/null 2>&1; then
    log "replacing the installed mmcv ($INSTALLED ops) by a $OPS build"
    REINSTALL=(--force-reinstall --no-deps)
  fi
  rm -f "$MARKER"
  HOUSE_OPS=""
  if [ -n "${TINYVIT_WHEELHOUSE:-}" ]; then
    HOUSE_OPS=$("$PYTHON" tools/wheelhouse.py ops "$TINYVIT_WHEELHOUSE")
    if [ -n "$HOUSE_OPS" ] && [ "$HOUSE_OPS" != "$OPS" ]; then
      fail "the wheelhouse's mmcv wheel has $HOUSE_OPS ops, this machine asks for $OPS: set" \
           "FORCE_CUDA / TORCH_CUDA_ARCH_LIST here as they were for \`make wheelhouse\`, or" \
           "refill the wheelhouse with matching ones"
    fi
  fi
  if [ -n "$HOUSE_OPS" ]; then
    log "installing the wheelhouse's mmcv 2.1.0 wheel ($OPS ops)"
    "${PIP[@]}" install "${C[@]}" "${REINSTALL[@]}" mmcv==2.1.0
    [ "$OPS" = cpu ] || { echo "$OPS" > "$MARKER.tmp" && mv "$MARKER.tmp" "$MARKER"; }
  elif [ "$OPS" = cpu ]; then
    log "building mmcv 2.1.0 with its CPU ops (about 13 minutes on 2 cores; cached by pip afterwards)"
    CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 CXX="$ROOT/tools/cxx20" MMCV_WITH_OPS=1 \
      MAX_JOBS=${MAX_JOBS:-$("$PY" tools/mmcv_build.py max-jobs --ops cpu)} \
      PATH="$TARGET/bin:$PATH" "${PIP[@]}" install "${C[@]}" --no-build-isolation "${REINSTALL[@]}" \
      mmcv==2.1.0
  else
    WHEEL=$(PATH="$TARGET/bin:$PATH" "$PY" tools/mmcv_build.py cuda-wheel --ops "$OPS" \
      --cache "$WHEEL_CACHE" --constraints "${C[1]}")
    "${PIP[@]}" install "${C[@]}" "${REINSTALL[@]}" "$WHEEL"
    echo "$OPS" > "$MARKER.tmp" && mv "$MARKER.tmp" "$MARKER"
  fi
fi

log "installing openmim without opendatalab (see the header of this script)"
"${PIP[@]}" install "${C[@]}" --no-deps openmim==0.3.9
log "installing the project (editable) with its test, mim and onnx extras"
"${PIP[@]}" install "${C[@]}" --no-build-isolation -e '.[test,mim,onnx]'

# after the project's install, which brings any dependency a --no-deps mmcv swap left out
if [ "$OPS" = lite ]; then
  INSTALLED=$("$PY" tools/mmcv_build.py installed --marker "$MARKER" 2>/dev/null)
  [ "$INSTALLED" = none ] || fail "mmcv-lite was asked for, but an mmcv with $INSTALLED ops imports"
  INSTALLED=lite
else
  INSTALLED=$("$PY" tools/mmcv_build.py installed --marker "$MARKER")
fi
if [ "$OPS" = lite ]; then
  :
elif [ "$INSTALLED" = none ]; then
  fail "mmcv 2.1.0 was installed but does not import (the reason is above)"
elif [ "$INSTALLED" != "$OPS" ]; then
  fail "the mmcv installed has $INSTALLED ops, not $OPS: pip's wheel cache holds an mmcv" \
       "2.1.0 built elsewhere; run '$PY -m pip cache remove mmcv' and rerun $0"
fi

log "proving the environment"
if [ -n "$SYSTEM" ]; then
  "$PY" tools/check_env.py --ops "$OPS" --kept "$CONSTRAINTS"
else
  "$PY" tools/check_env.py --ops "$OPS"
fi
echo "$HASH" > "$TARGET/$STAMP_NAME.tmp" && mv "$TARGET/$STAMP_NAME.tmp" "$TARGET/$STAMP_NAME"
log "environment ready in $(( $(date +%s) - START )) s ($TARGET, key $HASH, mmcv ops $OPS)"
