#!/usr/bin/env bash
# Install allnc from this checkout into an existing Python that already has torch and
# torchvision (the GPU machine's image), with no network and without touching that torch:
# whatever else the package needs and the Python lacks comes from wheels in .whl/
# (omegaconf, its antlr4 runtime, and setuptools/wheel for the build).
#
#   PYTHON=python3 WHEELS=.whl bash scripts/device_install.sh
#       into the Python's own environment (editable), where that environment is writable;
#   PYTHON=python3 WHEELS=.whl TARGET=/tmp/allnc-site bash scripts/device_install.sh
#       into the folder TARGET instead (a copy, not editable), leaving the environment as it
#       is: the way for a read-only or shared image. Run with PYTHONPATH=$TARGET afterwards.
#       Without TARGET, an environment that is not writable gets TARGET=/tmp/allnc-site.
#
# Prepare the wheels on a machine with pip access (pure-Python wheels, any platform):
#   pip download --no-deps -d .whl omegaconf==2.3.0 setuptools==80.9.0 wheel==0.45.1
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3      # published as an sdist only
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
PIP=("$PY" -m pip install -q --no-index --no-cache-dir --disable-pip-version-check)

if ! before=$("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)' 2>/dev/null); then
  echo "device_install: $PY has no torch/torchvision; install them first (this script never downloads them)" >&2
  exit 2
fi
if [ ! -d "$WHEELS" ]; then
  echo "device_install: no wheel folder $WHEELS; carry it with the checkout (see the top of this script)" >&2
  exit 2
fi
purelib=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -z "${TARGET:-}" ] && [ ! -w "$purelib" ]; then
  TARGET=/tmp/allnc-site
  echo "device_install: $purelib is not writable; installing into TARGET=$TARGET instead"
fi

if [ -z "${TARGET:-}" ]; then
  # --no-index: nothing is fetched; dependencies the Python has already (torch, numpy, ...) are kept
  if ! out=$("${PIP[@]}" --find-links "$WHEELS" -e . 2>&1); then
    echo "$out" | grep -v -i "warning: location" >&2
    echo "device_install: pip could not install allnc offline (its message is above): a dependency the image lacks" \
      "needs its wheel in $WHEELS/" >&2
    exit 1
  fi
  echo "$out" | grep -v -i "warning: location" || true
  where="the environment of $PY (editable)"
else
  # pip ignores what the environment holds when it installs into a folder, so every wheel goes
  # in without its dependencies, and the check below names any dependency still missing
  mkdir -p "$TARGET"
  shopt -s nullglob
  wheels=()
  for w in "$WHEELS"/*.whl; do  # setuptools and wheel only build the package: kept out of the folder
    case "$(basename "$w")" in setuptools-*|wheel-*) ;; *) wheels+=("$w") ;; esac
  done
  if [ "${#wheels[@]}" -gt 0 ]; then
    "${PIP[@]}" --no-deps --upgrade --target "$TARGET" "${wheels[@]}" 2>&1 | grep -v -i "warning: target directory" || true
  fi
  "${PIP[@]}" --find-links "$WHEELS" --no-deps --upgrade --target "$TARGET" . 2>&1 | grep -v -i "warning: target directory" || true
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
  where="$TARGET (run with PYTHONPATH=$TARGET)"
fi
# every requirement of the package (extras apart) present at a version it accepts
"$PY" - <<'EOF' || exit 1
import importlib.metadata as md
import sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
bad = []
for text in md.requires("allnc") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        bad.append(f"{req} (missing)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        bad.append(f"{req} (found {have})")
if bad:
    sys.exit("device_install: requirements not met: " + "; ".join(bad) + "; carry their wheels in .whl/")
EOF
"$PY" -c 'import allnc' || { echo "device_install: the install failed (see pip's message above)" >&2; exit 1; }
after=$("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')
if [ "$before" != "$after" ]; then
  echo "device_install: torch/torchvision changed ($before -> $after); this must not happen" >&2
  exit 1
fi
echo "device_install: allnc $("$PY" -c 'import allnc; print(allnc.__version__)') installed offline into $where; torch/torchvision $after untouched"
