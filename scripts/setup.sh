#!/usr/bin/env bash
# One command for a fresh machine: a virtual environment with everything installed, then
#   bash scripts/setup.sh demo   the default demo (Fashion-MNIST-LT, IF 100, CPU)
#   bash scripts/setup.sh test   the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-demo}"
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# the package with its test extra (test mode: also the wandb and submitit extras, so their tests
# run), every dependency at the version pinned in ci-constraints.txt
# (the package itself only asks for ranges: torch >= 2.11, torchvision >= 0.26)
extras="test"
if [ "$mode" = test ]; then extras="test,wandb,submitit"; fi
"$VENV/bin/python" -m pip install -q -c ci-constraints.txt -e ".[$extras]"

case "$mode" in
  demo)
    # Fashion-MNIST: Debian's package where we can install it, torchvision's download otherwise
    root=/usr/share/datasets/fashion-mnist
    extra=()
    if [ ! -f "$root/train-images-idx3-ubyte.gz" ]; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
      fi
    fi
    if [ ! -f "$root/train-images-idx3-ubyte.gz" ]; then
      extra=(data.root=.data/fashion-mnist data.download=true)
    fi
    out="runs/demo-$(date +%Y%m%d-%H%M%S)"
    "$VENV/bin/allnc" train --config fmnist_lt_allnc_fast --out "$out" device=cpu "${extra[@]}"
    ;;
  test)
    "$VENV/bin/python" -m pytest -p no:cacheprovider tests
    ;;
  *)
    echo "usage: bash scripts/setup.sh [demo|test]" >&2; exit 2 ;;
esac
