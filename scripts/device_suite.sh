#!/usr/bin/env bash
# The device suite in one command (see benchmarks/device_suite.py for the stages):
#
#   bash scripts/device_suite.sh OUT [suite options]     on a GPU machine, from a checkout carrying
#                                                        .whl/ (wheels) and .data/cifar10-jpeg.tar.xz
#   bash scripts/device_suite.sh --tiny OUT [options]    CPU, tiny generated data (the test suite runs this)
#
# Environment: PYTHON (default python3), DEADLINE (seconds for the whole command, default 520),
# ALLNC_COMMIT (the commit, where the checkout has no .git), ARCHIVE, DATA_DIR, TARGET (the folder
# the package is installed into, default /tmp/allnc-site: see device_install.sh), RESUME (an
# earlier suite's resume.tar, default .data/resume.tar where it exists).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
PY="${PYTHON:-python3}"
DEADLINE="${DEADLINE:-520}"
tiny=0
if [ "${1:-}" = "--tiny" ]; then tiny=1; shift; fi
OUT="${1:?usage: bash scripts/device_suite.sh [--tiny] OUT [options]}"; shift
mkdir -p "$OUT"
log() { echo "[suite.sh $(( $(date +%s) - start ))s] $*" | tee -a "$OUT/suite.log"; }

if [ "$tiny" = 1 ]; then
  exec "$PY" benchmarks/device_suite.py --tiny --out "$OUT" "$@"
fi

log "install"
# the package goes into a folder of its own, on PYTHONPATH for everything this command starts:
# one way for every image, whether or not its environment is writable (a non-root user)
export TARGET="${TARGET:-/tmp/allnc-site}"
export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
if ! PYTHON="$PY" bash scripts/device_install.sh 2>&1 | tee -a "$OUT/suite.log"; then
  log "install failed; nothing else can run"; exit 1
fi
ARCHIVE="${ARCHIVE:-.data/cifar10-jpeg.tar.xz}"
DATA_DIR="${DATA_DIR:-.data/cifar10-jpeg}"
if [ ! -d "$DATA_DIR/train" ]; then
  log "unpacking $ARCHIVE"
  mkdir -p "$DATA_DIR"
  tar -xf "$ARCHIVE" -C "$DATA_DIR" || { log "cannot unpack $ARCHIVE"; exit 1; }
  # the archive may hold one top folder: point at the folder that has train/ and test/
  if [ ! -d "$DATA_DIR/train" ]; then
    inner=$(dirname "$(find "$DATA_DIR" -maxdepth 3 -type d -name train | head -1)")
    [ -d "$inner/train" ] || { log "no train/ folder in $ARCHIVE"; exit 1; }
    DATA_DIR="$inner"
  fi
else
  log "data already unpacked in $DATA_DIR"
fi
# an earlier suite's unfinished runs (its resume.tar, carried back in .data/) are continued
RESUME="${RESUME:-.data/resume.tar}"
resume=()
if [ -f "$RESUME" ]; then log "continuing the unfinished runs in $RESUME"; resume=(--resume-from "$RESUME"); fi
left=$(( DEADLINE - ($(date +%s) - start) ))
log "suite with $left s left"
exec "$PY" benchmarks/device_suite.py --out "$OUT" --data-root "$DATA_DIR" --cache-dir "$(dirname "$DATA_DIR")/cache" \
  --deadline "$left" "${resume[@]}" "$@"
