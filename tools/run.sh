#!/usr/bin/env bash
# Set up and run the main job on the embedded default: build the offline corpus (once,
# cached), evaluate the shipped pretrained model on the real-speech test split, and
# enhance one unseen noisy recording. Results land in runs/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
OUT=${OUT:-runs/main}
mkdir -p "$OUT"
hwcompress data build
hwcompress eval --model default --set test --json "$OUT/eval.json" --markdown "$OUT/eval.md"
hwcompress enhance "$(hwcompress data path)/mix/test/0000_noisy.wav" "$OUT/enhanced_0000.wav"
echo "results in $OUT/"
