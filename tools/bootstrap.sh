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
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
DEFINING=(tools/bootstrap.sh tools/constraints.txt tools/cxx20 tools/mmcv_build.py
          tools/patches/mmcv-2.1.0-cxx20.patch pyproject.toml)
OPS=$("$PYTHON" tools/mmcv_build.py plan)
HASH=$( { cat "${DEFINING[@]}"; echo "mmcv-ops=$OPS"; } | sha256sum | cut -c1-16)
STAMP_NAME=.tinyvit-env-stamp
C=(-c "$ROOT/tools/constraints.txt")
WHEEL_CACHE=${TINYVIT_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinyvit-transfer}/wheels

log() { printf '[bootstrap] %s\n' "$*" >&2; }

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

editable_here() {
  "$PY" - "$ROOT" <<'PYEOF' 2>/dev/null
import os, sys
import tinyvit_backbone, linear_probe
root = os.path.realpath(sys.argv[1])
ok = all(os.path.realpath(m.__file__).startswith(root + os.sep) for m in (tinyvit_backbone, linear_probe))
sys.exit(0 if ok else 1)
PYEOF
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
if [ ! -x "$PY" ]; then
  log "creating virtual environment in $TARGET"
  "$PYTHON" -m venv "$TARGET"
fi

log "installing torch (pinned by tools/constraints.txt)"
"${PIP[@]}" install "${C[@]}" torch torchvision
"${PIP[@]}" install "${C[@]}" 'setuptools<81' wheel ninja 'numpy<2'

MARKER="$TARGET/.tinyvit-mmcv-ops"
INSTALLED=$("$PY" tools/mmcv_build.py installed --marker "$MARKER" 2>/dev/null)
if [ "$INSTALLED" != "$OPS" ]; then
  "$PY" tools/mmcv_build.py check-torch --ops "$OPS"
  REINSTALL=()
  if "$PY" -m pip show -q mmcv >/dev/null 2>&1; then
    log "replacing the installed mmcv ($INSTALLED ops) by a $OPS build"
    REINSTALL=(--force-reinstall --no-deps)
  fi
  rm -f "$MARKER"
  if [ "$OPS" = cpu ]; then
    log "building mmcv 2.1.0 with its CPU ops (about 13 minutes on 2 cores; cached by pip afterwards)"
    CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 CXX="$ROOT/tools/cxx20" MMCV_WITH_OPS=1 \
      MAX_JOBS=${MAX_JOBS:-$("$PY" tools/mmcv_build.py max-jobs --ops cpu)} \
      PATH="$TARGET/bin:$PATH" "${PIP[@]}" install "${C[@]}" --no-build-isolation "${REINSTALL[@]}" \
      mmcv==2.1.0
  else
    WHEEL=$(PATH="$TARGET/bin:$PATH" "$PY" tools/mmcv_build.py cuda-wheel --ops "$OPS" \
      --cache "$WHEEL_CACHE" --constraints "$ROOT/tools/constraints.txt")
    "${PIP[@]}" install "${C[@]}" "${REINSTALL[@]}" "$WHEEL"
    echo "$OPS" > "$MARKER.tmp" && mv "$MARKER.tmp" "$MARKER"
  fi
fi

log "installing openmim without opendatalab (see the header of this script)"
"${PIP[@]}" install "${C[@]}" --no-deps openmim==0.3.9
log "installing the project (editable) with its test, mim and onnx extras"
"${PIP[@]}" install "${C[@]}" --no-build-isolation -e '.[test,mim,onnx]'

# after the project's install, which brings any dependency a --no-deps mmcv swap left out
INSTALLED=$("$PY" tools/mmcv_build.py installed --marker "$MARKER")
if [ "$INSTALLED" = none ]; then
  log "error: mmcv 2.1.0 was installed but does not import (the reason is above)"
  exit 1
elif [ "$INSTALLED" != "$OPS" ]; then
  log "error: the mmcv installed has $INSTALLED ops, not $OPS: pip's wheel cache holds an mmcv" \
      "2.1.0 built elsewhere; run '$PY -m pip cache remove mmcv' and rerun $0"
  exit 1
fi

log "proving the environment"
"$PY" tools/check_env.py --ops "$OPS"
echo "$HASH" > "$TARGET/$STAMP_NAME.tmp" && mv "$TARGET/$STAMP_NAME.tmp" "$TARGET/$STAMP_NAME"
log "environment ready in $(( $(date +%s) - START )) s ($TARGET, key $HASH, mmcv ops $OPS)"
