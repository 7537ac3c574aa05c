#!/usr/bin/env bash
# Copies the part of ../shared/data that GPU runs need into .gpu/data (git-ignored), so that the device
# tool can carry it (../shared does not travel). On the GPU machine: export RTPOSE_DATA=$PWD/.gpu/data.
#   bash scripts/prepare_gpu_data.sh          # everything the GPU tests read (~39 MB)
#   bash scripts/prepare_gpu_data.sh --video  # the video benchmark's share only (~5 MB): leaves room for
#                                             # the PyAV wheel (35 MB) within the 64 MiB carry
set -euo pipefail
cd "$(dirname "$0")/.."
src="${RTPOSE_DATA:-$(cd .. && pwd)/shared/data}"
dst=.gpu/data
rm -rf "$dst"
mkdir -p "$dst/coco/annotations" "$dst/video" "$dst/models"
cp "$src/MANIFEST.md" "$dst/"
cp "$src/video/openpose_video.avi" "$dst/video/"
cp -r "$src/models/rtmdet_nano_person_mmdeploy" "$dst/models/"
if [ "${1:-}" != "--video" ]; then
  cp -r "$src/coco/val2017" "$dst/coco/"
  cp "$src/coco/annotations/person_keypoints_val2017_subset.json" "$dst/coco/annotations/"
  for m in movenet_singlepose_lightning_int8 human-pose-estimation-0001_FP16-INT8; do
    cp -r "$src/models/$m" "$dst/models/"
  done
  mkdir -p "$dst/models/rtmpose_official_arch"
  cp "$src/models/rtmpose_official_arch/"rtmpose-t_{random_official_format.pth,input.npy,simcc_x.npy,simcc_y.npy} \
    "$dst/models/rtmpose_official_arch/"
fi
du -sh "$dst"
