#!/usr/bin/env bash
# GPU checks of the compiled engines (`rtpose build`), for the H100 behind the device tool.
#
#   bash scripts/gpu_check_compiled.sh tests   # gpu-marked tests: fp32/fp16/bf16, CUDA graph buckets, padding
#   bash scripts/gpu_check_compiled.sh build   # build (max_autotune) the benchmark engines into the cache
#   bash scripts/gpu_check_compiled.sh bench   # the benchmark (engines come from the cache when built before)
#
# Each step fits in one 10-minute device command when run separately; the engine cache lives in
# .gpu/cache (git-ignored, so it stays on the warm machine between commands). Results go to $OUT
# (the device tool's return folder) or runs/.
set -euo pipefail
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export RTPOSE_CACHE="${RTPOSE_CACHE:-$PWD/.gpu/cache}"
PY="${PYTHON:-python}"
MODELS="${MODELS:-rtmpose-m rtmdet-nano}"
RESULTS="${OUT:-runs}/engine_bench"
EXTRA="${EXTRA:-}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

case "${1:-tests}" in
  tests)
    "$PY" -m pytest tests/engines/test_compiled.py -q -m gpu -p no:cacheprovider --durations=10
    ;;
  build)
    # shellcheck disable=SC2086
    "$PY" -m rtpose.benchmarks.engine_bench --build-only --models $MODELS $EXTRA
    ;;
  bench)
    # shellcheck disable=SC2086
    "$PY" -m rtpose.benchmarks.engine_bench --models $MODELS --ort --out "$RESULTS" $EXTRA
    ;;
  *)
    echo "usage: $0 tests|build|bench" >&2
    exit 2
    ;;
esac
