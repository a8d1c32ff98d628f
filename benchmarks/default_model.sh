#!/usr/bin/env bash
# Reproduce the shipped default model (hwcompress/pretrained/default.pt, issue 14) and its
# figures in benchmarks/default_model.md: nsnet2-wide (NSNet2, Microsoft, CC-BY 4.0, widened
# x2 by Net2Net) trained for 5 epochs on 3000 pooled mixtures of corpus v2 with half
# DeepFilterNet3's outputs, half the clean speech as target (benchmarks/nsnet2_wide.sh, W=0.5;
# about 45 minutes on 2 cores, resumable), the epoch with the best validation loss kept, then
# averaged weight by weight with its start (WiSE-FT, alpha 0.5, chosen before any test score),
# scored on the first 60 real-speech test mixtures and predicted on the Pi 4.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/default-wide}
W=0.5 RUN="$RUN" bash benchmarks/nsnet2_wide.sh --epochs 5
hwcompress wise-ft --model "$RUN/model.pt" --start nsnet2-wide --alpha 0.5 --out "$RUN/model-wise.pt"
hwcompress eval --model "$RUN/model-wise.pt" --set test --limit 60 --workers 1 --json "$RUN/eval-test60.json"
hwcompress predict --target raspberrypi4 --model "$RUN/model-wise.pt"
