#!/usr/bin/env bash
# GPU checks of the top-down hot path (predict_batch on CUDA, GPU decode, compiled fp16), for the H100.
#
#   bash scripts/gpu_check_pipeline.sh build    # rtpose build: the engines the tests and the timing load
#   bash scripts/gpu_check_pipeline.sh tests    # gpu-marked tests of tests/pipelines (test_gpu_path, test_topdown)
#   bash scripts/gpu_check_pipeline.sh timing   # 1280x720 video frame, rtmdet-nano + rtmpose-m (random), fp16
#   bash scripts/gpu_check_pipeline.sh all      # the three in turn (may not fit one 10-minute command)
#
# RTPOSE_DATA must point at the data (models, coco, video). Engines are cached in .gpu/cache (git-ignored,
# kept on the warm machine between commands), so run `build` first, each step as its own command.
set -euo pipefail
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
: "${RTPOSE_DATA:?set RTPOSE_DATA to the data folder}"
export RTPOSE_OFFLINE_DIR="${RTPOSE_OFFLINE_DIR:-$RTPOSE_DATA/models}"
export RTPOSE_ENGINE_CACHE="${RTPOSE_ENGINE_CACHE:-$PWD/.gpu/cache}"
PY="${PYTHON:-python}"
RANDOM_T="$RTPOSE_DATA/models/rtmpose_official_arch/rtmpose-t_random_official_format.pth"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)
from rtpose.decode.gpu import gpu_decoder_name; print('GPU decoder:', gpu_decoder_name())"

build() {
  # max-batch values are the pipeline defaults (detector 16, pose 64): they are part of the engine key
  for precision in fp32 fp16; do
    RTPOSE_CACHE="$RTPOSE_ENGINE_CACHE" "$PY" -m rtpose build rtmdet-nano --precision "$precision" --max-batch 16
    RTPOSE_CACHE="$RTPOSE_ENGINE_CACHE" "$PY" -m rtpose build rtmpose-t --weights "$RANDOM_T" --precision "$precision"
  done
  RTPOSE_CACHE="$RTPOSE_ENGINE_CACHE" "$PY" -m rtpose build rtmpose-m --weights random --precision fp16
}

tests() {
  "$PY" -m pytest tests/pipelines/test_gpu_path.py tests/pipelines/test_topdown.py -q -m gpu -s \
    -p no:cacheprovider --durations=10
}

timing() {
  RTPOSE_CACHE="$RTPOSE_ENGINE_CACHE" "$PY" scripts/gpu_pipeline_timing.py --precision fp16 \
    --video "$RTPOSE_DATA/video/openpose_video.avi"
}

case "${1:-all}" in
  build) build ;;
  tests) tests ;;
  timing) timing ;;
  all) build; tests; timing ;;
  *) echo "usage: $0 build|tests|timing|all" >&2; exit 2 ;;
esac
