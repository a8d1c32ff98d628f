#!/usr/bin/env bash
# Set up and run the main job on the embedded default: fit the shipped pretrained model to
# the Raspberry Pi 4 target's 8 ms budget (the offline corpus is built once, cached), then
# enhance one unseen noisy recording with the fitted model. Results land in runs/main/
# (report.md / report.json / report.html, model.hwc, export/). Resumes if interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
HWC_EXTRAS=${HWC_EXTRAS:-openvino,tflite,dev} bash tools/setup.sh
# qemu-aarch64 + the cached arm64 root for the emulated functional check of the .tflite
bash tools/setup_arm.sh
OUT=${OUT:-runs/main}
hwcompress data build
hwcompress fit --target raspberrypi4 --budget-ms 8 --out "$OUT"
hwcompress enhance --model "$OUT/model.hwc" "$(hwcompress data path)/mix/test/0000_noisy.wav" "$OUT/enhanced_0000.wav"
echo "results in $OUT/ (report.md)"
