#!/usr/bin/env bash
# Issue 14: the candidate new default. The shipped CRN (hwcompress/pretrained/default.pt as of
# 2026-11-25, file sha256 0fe5c2734d765a89..., model digest 2fbeb851102de1e0) trained on with
# DeepFilterNet3 distillation (half the loss against DeepFilterNet3's output in its C runtime, half
# against clean speech) on 3000 augmented pooled mixtures (speed, room, microphone). Resumable:
# run the same command again after an interruption; it stops by itself when the validation loss
# has not improved for 5 epochs (docs/training.md). Then score it:
#   python benchmarks/default_candidates.py --models default,crn-dfn3=$RUN/model.pt,nsnet2,deepfilternet3-native,rnnoise --fit default,crn-dfn3
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/crn-dfn3}
# corpus v1: what this run was trained on (its checkpoints predate the corpus check on resume)
hwcompress data build --corpus-version 1
hwcompress train --model default --data "$(hwcompress data path --corpus-version 1)" --out "$RUN" --epochs 60 --steps-per-epoch 150 --batch 8 --seconds 4 \
  --lr 5e-4 --patience 5 --teacher dfn3 --teacher-weight 0.5 --pool-items 3000 --pool-workers 2 --augment \
  --seed 0 --device cpu "$@"
