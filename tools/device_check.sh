#!/usr/bin/env bash
# The GPU proof in one command, on a machine with its own torch and no network (no `make env`).
#
#   tools/device_check.sh OUTDIR [--bundle DIR] [--target DIR | --into-env] [--python PY]
#                         [--only SECTION ...] [--timeout S]
#
#   OUTDIR        where env.json, report.json and log.txt go (created)
#   --bundle DIR  the folder `make device-bundle` made (default: device-bundle/ in this checkout)
#   --target DIR  install the bundle's wheels into DIR, put on PYTHONPATH (default:
#                 build/device-site/ in this checkout; reinstalled only when the bundle changed)
#   --into-env    install them into the interpreter's own environment instead
#   --python PY   the interpreter that has torch (default: python3)
#   --only S ...  run these sections of tools/gpu_check.py only (a rerun of the ones that failed)
#   --timeout S   hard limit for the check, in seconds (default 480); the check is told to start
#                 no section past S - 30 s, and `timeout` stops it at S whatever it does
#
# Steps: pip installs the bundle with --no-index --no-deps (nothing is fetched), env.json records
# the machine (tools/device_env.py), then tools/gpu_check.py writes report.json; everything said
# goes into log.txt as well. Exit status: the check's (0 all sections ok or skipped, 1 one
# failed), 124 when the time limit stopped it, 2 for bad arguments or a failed install.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; }
die() { echo "error: $*" >&2; exit 2; }

[ $# -ge 1 ] || { usage; die "OUTDIR is missing"; }
case "$1" in -h|--help) usage; exit 0 ;; -*) usage; die "the first argument is OUTDIR, not $1" ;; esac
OUT=$1; shift
BUNDLE="$ROOT/device-bundle"
TARGET="$ROOT/build/device-site"
INTO_ENV=0
PY=${PYTHON:-python3}
TIMEOUT=480
ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) [ $# -ge 2 ] || die "--bundle needs a folder"; BUNDLE=$2; shift 2 ;;
    --target) [ $# -ge 2 ] || die "--target needs a folder"; TARGET=$2; shift 2 ;;
    --into-env) INTO_ENV=1; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PY=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; TIMEOUT=$2; shift 2 ;;
    --only) shift
            while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do ONLY+=("$1"); shift; done
            [ ${#ONLY[@]} -gt 0 ] || die "--only needs at least one section name" ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument $1" ;;
  esac
done
case "$TIMEOUT" in ''|*[!0-9]*) die "--timeout $TIMEOUT: expected whole seconds, such as 480" ;; esac
[ "$TIMEOUT" -ge 60 ] || die "--timeout $TIMEOUT: at least 60 seconds"
command -v "$PY" >/dev/null 2>&1 || die "no interpreter $PY: pass --python with the one that has torch"
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch: pass --python with the one that has torch"
[ -f "$BUNDLE/MANIFEST.json" ] || die "$BUNDLE holds no MANIFEST.json: make it with \`make device-bundle\` on a connected machine and carry it along (or pass --bundle)"

mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
BUNDLE=$(cd "$BUNDLE" && pwd)
LOG="$OUT/log.txt"
: > "$LOG"
say() { echo "[device_check] $*" | tee -a "$LOG" >&2; }
START=$(date +%s)

# pip's own configuration (index URLs, find-links, constraints of this machine) stays out: the
# bundle alone is installed, and nothing is fetched.
mapfile -t WHEELS < <("$PY" -c 'import json, sys; [print(w["file"]) for w in json.load(open(sys.argv[1]))["wheels"]]' "$BUNDLE/MANIFEST.json")
PIP=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT
     PIP_CONFIG_FILE=/dev/null "$PY" -m pip --disable-pip-version-check --no-input)
INSTALL_ARGS=(install --no-index --no-deps --find-links "$BUNDLE")
for w in "${WHEELS[@]}"; do INSTALL_ARGS+=("$BUNDLE/$w"); done
if [ "$INTO_ENV" = 1 ]; then
  say "installing ${#WHEELS[@]} wheels of $BUNDLE into $PY's environment (no index)"
  "${PIP[@]}" "${INSTALL_ARGS[@]}" >>"$LOG" 2>&1 || die "pip could not install the bundle (see $LOG)"
  WHERE="the interpreter's environment"
else
  mkdir -p "$TARGET" || die "cannot create $TARGET"
  TARGET=$(cd "$TARGET" && pwd)
  STAMP="$TARGET/.bundle-manifest.json"
  if cmp -s "$BUNDLE/MANIFEST.json" "$STAMP"; then
    say "the bundle is already installed in $TARGET"
  else
    say "installing ${#WHEELS[@]} wheels of $BUNDLE into $TARGET (no index)"
    rm -rf "$TARGET" && mkdir -p "$TARGET"
    "${PIP[@]}" "${INSTALL_ARGS[@]}" --target "$TARGET" >>"$LOG" 2>&1 \
      || die "pip could not install the bundle into $TARGET (see $LOG)"
    cp "$BUNDLE/MANIFEST.json" "$STAMP"
  fi
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$TARGET/bin:$PATH"
  WHERE="$TARGET (on PYTHONPATH)"
fi
# the checkout itself is the project: no install, only the path
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
say "installed in $(( $(date +%s) - START )) s"

"$PY" "$ROOT/tools/device_env.py" --out "$OUT/env.json" --bundle "$BUNDLE" --install "$WHERE" \
  2>&1 | tee -a "$LOG" >&2

BUDGET=$(( TIMEOUT - 30 ))
CHECK=("$PY" "$ROOT/tools/gpu_check.py" --out "$OUT/report.json" --budget-s "$BUDGET")
[ ${#ONLY[@]} -gt 0 ] && CHECK+=(--only "${ONLY[@]}")
say "running ${CHECK[*]} (stopped after $TIMEOUT s)"
timeout -k 15 "$TIMEOUT" "${CHECK[@]}" 2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
  say "the check ran past $TIMEOUT s and was stopped; report.json holds the sections that finished (--only picks sections for a rerun)"
  RC=124
fi
say "done in $(( $(date +%s) - START )) s, exit status $RC: $OUT/report.json, $OUT/env.json, $LOG"
exit "$RC"
