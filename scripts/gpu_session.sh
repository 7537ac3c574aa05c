#!/usr/bin/env bash
# One device-tool command per step, for the H100 (nothing survives between commands, so each step is
# whole). Carry [".whl", ".gpu"]: wheels the machine lacks (pycocotools, PyAV) and the data of
# scripts/prepare_gpu_data.sh. Logs and results go to $OUT.
#
#   bash scripts/gpu_session.sh tests      # every gpu-marked test (four groups at once)
#   bash scripts/gpu_session.sh diag       # does a compiled engine load in fresh processes (variants)
#   bash scripts/gpu_session.sh bench      # rtpose bench --preset gpu (pose, detector, staged + public pipeline)
#   bash scripts/gpu_session.sh precision  # fp16/bf16 vs fp32 with the real models (three processes at once)
#   bash scripts/gpu_session.sh video      # 8 streams of the street video, det-interval 1 and 5, + baseline
#   bash scripts/gpu_session.sh server     # model server vs models in every worker, on one host, 8 streams
#   bash scripts/gpu_session.sh profile    # torch.profiler over TopDown.predict_batch (kernels, syncs)
set -uo pipefail
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT" /tmp/site
python -m pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH="/tmp/site:$PWD/src" RTPOSE_DATA="$PWD/.gpu/data" RTPOSE_OFFLINE_DIR="$PWD/.gpu/data/models"
export RTPOSE_CACHE="${RTPOSE_CACHE:-/tmp/rtpose-cache}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
PYTEST=(python -m pytest -q -m gpu -p no:cacheprovider -rfE --durations=8)

case "${1:-}" in
  diag)
    timeout 300 python scripts/gpu_diag_load.py > "$OUT/diag.log" 2>&1
    grep DIAG "$OUT/diag.log"
    ;;
  tests)
    timeout 540 "${PYTEST[@]}" tests/postprocess tests/preprocess tests/models tests/engines/test_torch_engine.py \
      tests/engines/test_engine_factory.py > "$OUT/tests_a.log" 2>&1 &
    timeout 540 "${PYTEST[@]}" tests/engines/test_compiled.py tests/cli tests/video > "$OUT/tests_b.log" 2>&1 &
    timeout 540 "${PYTEST[@]}" tests/pipelines/test_gpu_path.py > "$OUT/tests_c.log" 2>&1 &
    timeout 540 "${PYTEST[@]}" tests/pipelines tests/benchmarks --ignore=tests/pipelines/test_gpu_path.py \
      > "$OUT/tests_d.log" 2>&1 &
    wait
    tail -n 25 "$OUT"/tests_*.log
    ;;
  bench)
    timeout 560 python -m rtpose bench --preset gpu --sections pose,detector,pipeline,topdown --out "$OUT/bench" > "$OUT/bench.log" 2>&1
    tail -n 60 "$OUT/bench.log"
    ;;
  precision)
    check() {  # name, then the options of that process
      local name=$1; shift
      timeout 560 python -m rtpose.benchmarks.precision_check --device cuda "$@" \
        --out "$OUT/precision_$name.json" > "$OUT/precision_$name.log" 2>&1
    }
    check detector --checks detector &
    check movenet --checks pose --models movenet-lightning &
    check openpose --checks pose --models openpose-lite &
    wait
    tail -n 12 "$OUT"/precision_*.log
    ;;
  video)
    # PyAV must be among the carried wheels (35 MB): prepare the data with
    # `scripts/prepare_gpu_data.sh --video` to fit the carry. Steady state over 1,500 frames per stream
    # (shorter windows include the workers' first CUDA-graph captures); baseline in the first command.
    args=(--device cuda --backend compiled --precision fp16 --pose rtmpose-m --pose-weights random --streams 8
          --warmup 40 --skip quality memory)
    timeout 300 python -m rtpose.benchmarks.video_bench "${args[@]}" --frames 1500 --baseline --workers 8 \
      --mps on --det-interval 1 5 --out "$OUT/video_a.json" > "$OUT/video_a.log" 2>&1
    timeout 100 python -m rtpose.benchmarks.video_bench "${args[@]}" --frames 300 --workers 1 --det-interval 1 \
      --out "$OUT/video_b.json" > "$OUT/video_b.log" 2>&1
    timeout 150 python -m rtpose.benchmarks.video_bench "${args[@]}" --frames 1500 --workers 8 --mps off \
      --det-interval 1 5 --out "$OUT/video_c.json" > "$OUT/video_c.log" 2>&1
    grep -h '^{' "$OUT"/video_*.log
    ;;
  server)
    # Same-host A/B (hosts differ by up to 43%): rows alternate, each within what is left of ~9.5 minutes.
    # RTPOSE_SERVER_STEP=N in the environment sets the most requests per server step (default: half).
    args=(--device cuda --backend compiled --precision fp16 --pose rtmpose-m --pose-weights random --streams 8
          --warmup 40 --skip quality memory --frames 1500 --workers 8 --mps on)
    # the first row builds the engines in its warm-up (the server alone first), outside the timed part
    start=$SECONDS
    for row in "5 on" "5 off" "1 on" "1 off"; do
      set -- $row
      left=$((570 - (SECONDS - start)))
      [ "$left" -lt 45 ] && { echo "no time left for --det-interval $1 --model-server $2"; continue; }
      timeout "$left" python -m rtpose.benchmarks.video_bench "${args[@]}" --det-interval "$1" --model-server "$2" \
        --out "$OUT/server_i$1_$2.json" > "$OUT/server_i$1_$2.log" 2>&1
    done
    grep -h '^{' "$OUT"/server_i*.log
    ;;
  profile)
    timeout 420 python scripts/profile_topdown.py --device cuda --backend compiled --precision fp16 2>&1 | tail -45
    ;;
  *)
    echo "usage: $0 tests|diag|bench|precision|video|server|profile" >&2
    exit 2
    ;;
esac
