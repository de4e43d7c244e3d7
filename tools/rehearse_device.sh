#!/usr/bin/env bash
# The GPU machine's proof rehearsed on this CPU, in one command (`make rehearse-device`):
#
#   tools/rehearse_device.sh [OUTDIR] [-- PYTEST_ARGS...]
#
# 1. the machine's image: a Python 3.12 venv holding tools/device_image.txt (torch 2.11,
#    torchvision 0.26, numpy 2.x, timm, onnxruntime, ...) from the package registry, built once
#    and kept in $TINYVIT_ENV_CACHE (default ~/.cache/tinyvit-transfer)/device-image-py312;
# 2. the bundle, as `make device-bundle` makes it (device-bundle/);
# 3. tools/device_check.sh OUTDIR on that image with the GPU hidden: the bundle installed with no
#    index into OUTDIR's site folder, env.json, the GPU check (its CUDA sections skip);
# 4. the test suite on that image, the bundle on PYTHONPATH and nothing else added: tests that
#    need mmcv's compiled ops or the pinned stack skip with their reason.
#
# OUTDIR defaults to results/rehearse_device. Python 3.12: $PYTHON312, else python3.12 on PATH,
# else pyenv's newest 3.12. Exit status: the first step that failed (the check's, then pytest's).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=results/rehearse_device
if [ $# -gt 0 ] && [ "$1" != "--" ]; then OUT=$1; shift; fi
[ "${1:-}" = "--" ] && shift
PYTEST_ARGS=("$@")
CACHE=${TINYVIT_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinyvit-transfer}
IMAGE="$CACHE/device-image-py312"
say() { echo "[rehearse] $*" >&2; }
die() { echo "error: $*" >&2; exit 2; }
T0=$(date +%s)

find_python312() {
  if [ -n "${PYTHON312:-}" ]; then echo "$PYTHON312"; return; fi
  if command -v python3.12 >/dev/null 2>&1; then command -v python3.12; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    local p
    p=$(ls -d "$(pyenv root)"/versions/3.12.*/bin/python 2>/dev/null | sort -V | tail -1)
    [ -n "$p" ] && { echo "$p"; return; }
  fi
  return 1
}

# 1. the image
KEY=$(sha256sum tools/device_image.txt | cut -c1-16)
if [ "$(cat "$IMAGE/.image-key" 2>/dev/null)" != "$KEY" ]; then
  PY312=$(find_python312) || die "Python 3.12 not found: set PYTHON312, or install it (pyenv install 3.12)"
  say "building the device image in $IMAGE from tools/device_image.txt (a large download, once)"
  [ -x "$IMAGE/bin/python" ] || "$PY312" -m venv "$IMAGE" || die "venv failed"
  "$IMAGE/bin/python" -m pip install -q --disable-pip-version-check -r tools/device_image.txt \
    || die "pip could not install tools/device_image.txt into $IMAGE"
  echo "$KEY" > "$IMAGE/.image-key"
fi
T1=$(date +%s)
say "image ready in $((T1 - T0)) s: $("$IMAGE/bin/python" -c 'import sys, torch, numpy; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")')"

# 2. the bundle
python3 tools/wheelhouse.py bundle device-bundle >/dev/null || die "the bundle could not be made"
T2=$(date +%s)
say "bundle made in $((T2 - T1)) s: $(python3 -c 'import json; m = json.load(open("device-bundle/MANIFEST.json")); print(len(m["wheels"]), "wheels,", m["mb"], "MB")')"

# 3. the device check, GPU hidden
mkdir -p "$OUT"
SITE="$OUT/site"
CUDA_VISIBLE_DEVICES= tools/device_check.sh "$OUT" --python "$IMAGE/bin/python" --target "$SITE" \
  --timeout 540
CHECK_RC=$?
T3=$(date +%s)
say "tools/device_check.sh: exit status $CHECK_RC in $((T3 - T2)) s"

# 4. the tests, on the image with the bundle alone
SITE=$(cd "$SITE" && pwd)
PYTHONPATH="$SITE:$ROOT" PATH="$SITE/bin:$PATH" "$IMAGE/bin/python" -m pytest -q -p no:cacheprovider \
  -ra --junitxml "$OUT/tests.xml" "${PYTEST_ARGS[@]}" 2>&1 | tee "$OUT/tests.txt"
TEST_RC=${PIPESTATUS[0]}
T4=$(date +%s)
say "tests: exit status $TEST_RC in $((T4 - T3)) s ($OUT/tests.txt)"
say "rehearsal done in $((T4 - T0)) s: image $((T1 - T0)) s, bundle $((T2 - T1)) s, device check $((T3 - T2)) s, tests $((T4 - T3)) s"
[ "$CHECK_RC" = 0 ] || exit "$CHECK_RC"
exit "$TEST_RC"
