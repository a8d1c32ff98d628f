#!/usr/bin/env bash
# Issue 14: the candidate continued on corpus v2 (more real speakers, voices and noise). Starts
# from the best weights of benchmarks/crn_dfn3.sh's run on corpus v1 ($FROM, its model.pt: epoch
# 7, valid 0.0578) with the same recipe (half DeepFilterNet3, half clean, augmented, 3000 pooled
# mixtures, now drawn from corpus v2) and a fresh Adam at 2.5e-4. Resumable: run it again after an
# interruption. Then score it:
#   python benchmarks/default_candidates.py --models default,crn-dfn3=$RUN/model.pt,nsnet2,deepfilternet3-native,rnnoise --fit default,crn-dfn3
set -euo pipefail
cd "$(dirname "$0")/.."
FROM=${FROM:-runs/crn-dfn3/model.pt}
RUN=${RUN:-runs/crn-dfn3-v2}
hwcompress data build
hwcompress train --model "$FROM" --out "$RUN" --epochs 60 --steps-per-epoch 150 --batch 8 --seconds 4 \
  --lr 2.5e-4 --patience 5 --teacher dfn3 --teacher-weight 0.5 --pool-items 3000 --pool-workers 2 --augment \
  --seed 0 --device cpu "$@"
