#!/bin/bash
# DeepFilterNet3 compression benchmark (benchmarks/deepfilternet3_compress.md); run from the repository root
set -x
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one thread: a 2-core machine shared with other jobs
H="nice -n 5 .venv/bin/python -m hwcompress"
D=${OUT:-runs/dfn3}
mkdir -p $D
date
$H compress --model deepfilternet3 --sparsity 0.5 --codebook 16 --prune-steps 100 --cluster-steps 50 --batch 4 --out $D/u50k16.hwc --json > $D/u50k16.json 2> $D/u50k16.log
date
$H eval --model $D/u50k16.hwc --set test --limit 60 --workers 1 --markdown $D/u50k16-eval.md --json $D/u50k16-eval.json > /dev/null 2> $D/u50k16-eval.log
date
$H export --model $D/u50k16.hwc --format onnx --out $D/u50k16-onnx --json > $D/u50k16-export-fp32.json 2> $D/u50k16-export-fp32.log
$H export --model $D/u50k16.hwc --format onnx --weights int8 --out $D/u50k16-onnx --json > $D/u50k16-export-int8.json 2> $D/u50k16-export-int8.log
date
$H compress --model deepfilternet3 --structured --sparsity 0.5 --codebook 16 --prune-steps 100 --cluster-steps 50 --batch 4 --out $D/s50k16.hwc --json > $D/s50k16.json 2> $D/s50k16.log
date
$H eval --model $D/s50k16.hwc --set test --limit 60 --workers 1 --markdown $D/s50k16-eval.md --json $D/s50k16-eval.json > /dev/null 2> $D/s50k16-eval.log
date
$H export --model $D/s50k16.hwc --format onnx --out $D/s50k16-onnx --json > $D/s50k16-export-fp32.json 2> $D/s50k16-export-fp32.log
date
$H eval --model $D/u50k16-onnx/u50k16-stream-int8.onnx --set test --limit 60 --workers 1 --markdown $D/u50k16-int8-eval.md --json $D/u50k16-int8-eval.json > /dev/null 2> $D/u50k16-int8-eval.log
date
# clustering alone, and a lighter pruning
$H compress --model deepfilternet3 --sparsity 0 --codebook 16 --cluster-steps 50 --batch 4 --out $D/u0k16.hwc --json > $D/u0k16.json 2> $D/u0k16.log
$H eval --model $D/u0k16.hwc --set test --limit 60 --workers 1 --markdown $D/u0k16-eval.md --json $D/u0k16-eval.json > /dev/null 2> $D/u0k16-eval.log
$H compress --model deepfilternet3 --sparsity 0.25 --codebook 16 --prune-steps 100 --cluster-steps 50 --batch 4 --out $D/u25k16.hwc --json > $D/u25k16.json 2> $D/u25k16.log
$H eval --model $D/u25k16.hwc --set test --limit 60 --workers 1 --markdown $D/u25k16-eval.md --json $D/u25k16-eval.json > /dev/null 2> $D/u25k16-eval.log
date
echo done
