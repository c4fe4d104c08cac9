#!/usr/bin/env bash
# Install allnc from this checkout into an existing Python that already has torch and
# torchvision (the GPU machine's image), with no network and without touching that torch:
# whatever else the package needs and the Python lacks comes from wheels in .whl/
# (omegaconf, its antlr4 runtime, and setuptools/wheel for the build).
#
#   PYTHON=python3 WHEELS=.whl bash scripts/device_install.sh
#
# Prepare the wheels on a machine with pip access (pure-Python wheels, any platform):
#   pip download --no-deps -d .whl omegaconf==2.3.0 setuptools==80.9.0 wheel==0.45.1
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3      # published as an sdist only
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"

if ! before=$("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)' 2>/dev/null); then
  echo "device_install: $PY has no torch/torchvision; install them first (this script never downloads them)" >&2
  exit 2
fi
if [ ! -d "$WHEELS" ]; then
  echo "device_install: no wheel folder $WHEELS; carry it with the checkout (see the top of this script)" >&2
  exit 2
fi
# --no-index: nothing is fetched; dependencies the Python has already (torch, numpy, ...) are kept
"$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-cache-dir --disable-pip-version-check -e . 2>&1 \
  | grep -v -i "warning: location" || true
"$PY" -c 'import allnc' || { echo "device_install: the install failed (see pip's message above)" >&2; exit 1; }
after=$("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')
if [ "$before" != "$after" ]; then
  echo "device_install: torch/torchvision changed ($before -> $after); this must not happen" >&2
  exit 1
fi
echo "device_install: allnc $("$PY" -c 'import allnc; print(allnc.__version__)') installed offline from $(pwd); torch/torchvision $after untouched"
