#!/usr/bin/env bash
# Set up and run the main job on the embedded default: fit the shipped pretrained model to
# the Raspberry Pi 4 target's 8 ms budget (the offline corpus is built once, cached), then
# enhance one unseen noisy recording with the fitted model: the first real-speech test
# mixture lasting 4 s or more (`hwcompress data example`). Results land in runs/main/
# (report.md / report.json / report.html, model.hwc, export/, noisy_<id>.wav and
# enhanced_<id>.wav). Resumes if interrupted. Everything runs from the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
HWC_EXTRAS=${HWC_EXTRAS:-openvino,tflite,dev} bash tools/setup.sh
# qemu-aarch64 + the cached arm64 root for the emulated functional check of the .tflite
bash tools/setup_arm.sh
export PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv"
OUT=${OUT:-runs/main}
hwcompress data build
hwcompress fit --target raspberrypi4 --budget-ms 8 --out "$OUT"
noisy=$(hwcompress data example --min-seconds 4)
id=$(basename "$noisy" _noisy.wav)
cp "$noisy" "$OUT/noisy_$id.wav.tmp" && mv "$OUT/noisy_$id.wav.tmp" "$OUT/noisy_$id.wav"  # atomic
hwcompress enhance --model "$OUT/model.hwc" "$noisy" "$OUT/enhanced_$id.wav"
echo "results in $OUT/ (report.md)"
