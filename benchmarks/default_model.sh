#!/usr/bin/env bash
# Reproduce the shipped default model (hwcompress/pretrained/default.pt) and its tables in
# benchmarks/default_model.md: train the full-size CRN preset on the offline corpus
# (about 105 minutes on 2 cores), then evaluate on the real-speech test set (June,
# fr-CA, never heard in training) and on held-out synthetic voices.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/default}
hwcompress data build
hwcompress train --model crn --out "$RUN" --epochs 20 --steps-per-epoch 150 --batch 8 --seconds 4 \
  --lr 1e-3 --patience 4 --max-minutes 105 --seed 0
hwcompress eval --model "$RUN/model.pt" --set test --json "$RUN/eval-test.json" --markdown "$RUN/eval-test.md"
hwcompress eval --model "$RUN/model.pt" --set test-synth --json "$RUN/eval-test-synth.json" --markdown "$RUN/eval-test-synth.md"
hwcompress predict --target raspberrypi4 --model "$RUN/model.pt"
