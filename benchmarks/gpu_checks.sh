#!/usr/bin/env bash
# The GPU checks of bnlab in one call, for a lent CUDA machine that has torch and Triton
# of its own (bnlab is used from src/, without installing its dependencies):
#   1. the Triton kernel tests on the GPU (tests/kernels/test_triton_bn.py),
#   2. benchmarks/bench_gpu.py (ours vs cuDNN/ATen, fraction of the copy bandwidth),
#   3. the d2l recipe end to end on the GPU, 10 epochs (benchmarks/bench_d2l_recipe.py),
#   4. time to 90% test accuracy on the GPU over seeds 0-2 (skip: TARGET_LIMIT=0),
#   5. `bnlab d2l --device cuda`, the main job, packed as $OUT/d2l_cuda.tgz (skip: D2L_CLI_LIMIT=0).
# Each step has its own time limit and log; a failing step does not stop the others.
#
#   OUT=/tmp/gpu BNLAB_DATA_DIR=/path/to/fashion-mnist bash benchmarks/gpu_checks.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-25}" "$OUT/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

step pytest_gpu "${PYTEST_LIMIT:-150}" $PY -m pytest -q -p no:cacheprovider -n 4 \
  tests/kernels/test_triton_bn.py tests/test_textbook.py -k "triton or cuda or Triton"
TAIL=40 step bench_gpu "${BENCH_LIMIT:-240}" $PY benchmarks/bench_gpu.py --out "$OUT"
TAIL=12 step d2l_gpu "${D2L_LIMIT:-240}" $PY benchmarks/bench_d2l_recipe.py --device cuda \
  --epochs 10 --out "$OUT"
if [ "${TARGET_LIMIT:-240}" -gt 0 ]; then
  TAIL=14 step d2l_target_gpu "${TARGET_LIMIT:-240}" $PY benchmarks/bench_d2l_recipe.py \
    --device cuda --target-acc 0.90 --epochs 10 --seeds 0 1 2 --out "$OUT"
fi
if [ "${D2L_CLI_LIMIT:-240}" -gt 0 ]; then
  TAIL=14 step d2l_cli_gpu "${D2L_CLI_LIMIT:-240}" $PY -m bnlab d2l --device cuda \
    --out "$OUT/d2l_tmp"
  tar czf "$OUT/d2l_cuda.tgz" -C "$OUT" d2l_tmp && rm -rf "$OUT/d2l_tmp"
fi
ls -la "$OUT"
