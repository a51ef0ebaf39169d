#!/usr/bin/env bash
# The installed package, as a user gets it: builds the sdist and, from it, the wheel
# (python -m build), installs the wheel (not editable) into a fresh venv with torch
# pinned by constraints.txt, and checks there that the wheel's prebuilt kernels load
# (no compile: nothing but batch norm's autograd node, built against the installed torch,
# lands in a fresh XDG_CACHE_HOME/bnlab; no warning), that the node builds, and that
# `bnlab check` passes. Run by .ci/run before the test suite; usable alone: .ci/wheel_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv}
work=$(mktemp -d)
# Removing the venv (torch: ~1 GB of small files) took over a minute on the busy CI
# machine: done in the background, the tests need not wait for it.
trap '(rm -rf "$work" >/dev/null 2>&1 &)' EXIT
step() { printf '.ci/wheel_check: %s (%ss)\n' "$1" "$SECONDS"; }

# The build front end lives in the project's venv (made by `make venv`); the build
# itself runs in isolated environments with setuptools from the registry.
[ -x "$VENV/bin/python" ] || make venv
"$VENV/bin/python" -m pip install --quiet -c constraints.txt build >"$work/pip.log" 2>&1 || {
  cat "$work/pip.log" >&2
  exit 1
}
rm -rf dist
"$VENV/bin/python" -m build --outdir dist . >"$work/build.log" 2>&1 || {
  tail -n 40 "$work/build.log" >&2
  exit 1
}
grep '^bnlab: built the kernels' "$work/build.log" || true
ls dist
wheel=$(ls dist/bnlab-*.whl)
case "$wheel" in
  *-py3-none-linux_*.whl | *-py3-none-macosx_*.whl) ;;
  *) echo ".ci/wheel_check: expected a py3-none-<platform> wheel, got $wheel" >&2; exit 1 ;;
esac
step "built the sdist and the wheel"

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-compile -c constraints.txt "$repo/$wheel" \
  >"$work/install.log" 2>&1 || {
  tail -n 40 "$work/install.log" >&2
  exit 1
}
step "installed the wheel into a fresh venv"

# Outside the checkout, so that `import bnlab` finds the installed package, not ./src.
mkdir "$work/cache"
cd "$work"
export XDG_CACHE_HOME="$work/cache"
"$work/venv/bin/python" -W error - <<'PY'
import bnlab
from bnlab import kernels

assert "site-packages" in bnlab.__file__, bnlab.__file__
assert kernels.available(), kernels.status()  # -W error: a compile or fallback warning fails
info = kernels.library_info()
print(f"bnlab {bnlab.__file__}: CPU kernels {info['origin']} {info['level']} ({info['path']})")
assert info["origin"] == "prebuilt", info
PY
"$work/venv/bin/bnlab" check
# Batch norm's C++ autograd node is compiled at first use against the installed torch
# (node-*/, expected); the kernels' library must not be (the wheel carries it).
compiled=$(find "$work/cache/bnlab/fast_bn" -mindepth 1 -maxdepth 1 ! -name 'node-*' 2>/dev/null || true)
if [ -n "$compiled" ]; then
  echo ".ci/wheel_check: the installed package compiled its kernels:" >&2
  find "$work/cache/bnlab/fast_bn" >&2
  exit 1
fi
"$work/venv/bin/python" - <<'PY'
import torch

from bnlab import kernels

assert kernels.train_node(torch.empty(kernels.MIN_NUMEL)) is not None, kernels.node_status()
print(f"bnlab: batch norm's C++ autograd node {kernels.node_status()}")
PY
step "the wheel's prebuilt kernels load (no compile), the BN node builds, bnlab check passes"
