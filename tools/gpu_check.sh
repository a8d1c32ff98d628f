#!/usr/bin/env bash
# One-command check of `--device` on a CUDA GPU: `hwcompress train` (and a resume of it) and a
# tiny `hwcompress fit` run with --device cuda, plus a training-step timing on the GPU and on
# the same machine's CPU side by side; device names, versions and timings go into a Markdown
# file to commit (benchmarks/gpu_check.md).
#
# 1. Here, once (needs the project's .venv and the tests' small corpus, ~/.cache/hwcompress-tests):
#        bash tools/gpu_check.sh pack
#    writes .gpu-check/ (git-ignored, about 25 MB): a trimmed copy of that corpus (train speech,
#    each training noise cut to 15 s, the fixed valid/test mixtures) and what the GPU image lacks
#    (wheels of soundfile, cffi, pycparser and pystoi for CPython 3.12, the pesq source).
# 2. On the device machine (the `run` tool, carry [".gpu-check"], timeout_s 600):
#        bash tools/gpu_check.sh
#    installs those into /tmp/hwc-site when they are missing, runs the checks and writes
#    benchmarks/gpu_check.md there and $OUT/gpu_check.md (what comes back): copy it to
#    benchmarks/gpu_check.md here and commit it. About 4 minutes on an H100 machine (estimated, not yet run there).
# 3. On a CPU, to check the script itself (tiny models; about 3 CPU-minutes: 6.3 min wall on a
#    2-core host loaded 8-9 by other work):
#        DEVICE=cpu bash tools/gpu_check.sh          # writes runs/gpu_check-cpu.md
#
# Settings (environment): DEVICE (cuda), PYTHON (.venv/bin/python if present, else python3), DATA
# (.gpu-check/corpus, else the tests' small corpus), REPORT (benchmarks/gpu_check.md; with
# DEVICE=cpu runs/gpu_check-cpu.md), TRAIN_MODEL / BENCH_MODEL (crn-small / crn; tiny-crn with
# DEVICE=cpu), TRAIN_STEPS (10; 3 with DEVICE=cpu), BENCH_STEPS (5 on the device, 2 on the CPU),
# FIT_MODEL (tiny-crn), FIT_TARGET (generic-onnx, measured on onnxruntime), FIT_BUDGET_MS (5),
# FIT_STEPS (prune steps 20, and half as many centroid fine-tuning steps), FIT_EVAL_ITEMS (3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PACK="$ROOT/.gpu-check"

if [ "${1:-}" = "pack" ]; then
    SRC="${SRC:-$HOME/.cache/hwcompress-tests/small-corpus-v2}"
    [ -f "$SRC/manifest.json" ] || { echo "error: $SRC: no corpus (run the tests once, or set SRC)" >&2; exit 2; }
    rm -rf "$PACK.partial"
    mkdir -p "$PACK.partial/whl"
    PYTHONPATH="$ROOT" "$PY" - "$SRC" "$PACK.partial/corpus" <<'EOF'
import shutil, sys
from pathlib import Path
import soundfile as sf
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
# what `train` and `fit` read: the manifest, the training speech and noise (sampled on the fly),
# the fixed valid (sensitivity, validation) and test (quality) mixtures
dst.mkdir(parents=True)
shutil.copy2(src / "manifest.json", dst / "manifest.json")
shutil.copytree(src / "clean" / "train", dst / "clean" / "train")
for name in ("valid", "test"):
    shutil.copytree(src / "mix" / name, dst / "mix" / name)
    shutil.copy2(src / "mix" / f"{name}.json", dst / "mix" / f"{name}.json")
(dst / "noise" / "train").mkdir(parents=True)
for wav in sorted((src / "noise" / "train").glob("*.wav")):
    audio, sr = sf.read(wav, dtype="int16")
    sf.write(dst / "noise" / "train" / wav.name, audio[: 15 * sr], sr, subtype="PCM_16")
EOF
    PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    for pkg in soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 pystoi==0.4.1; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
            -d "$PACK.partial/whl" "$pkg"
    done
    # pesq publishes no wheel for CPython 3.12: its source, built there (numpy, cython and a C compiler are in the image)
    "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$PACK.partial/whl" pesq==0.0.4
    rm -rf "$PACK"
    mv "$PACK.partial" "$PACK"
    du -sh "$PACK" "$PACK"/*
    exit 0
fi

DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = cpu ]; then SMALL=tiny-crn; STEPS=3; REPORT="${REPORT:-runs/gpu_check-cpu.md}"; else SMALL=; STEPS=10; fi
REPORT="${REPORT:-benchmarks/gpu_check.md}"
TRAIN_MODEL="${TRAIN_MODEL:-${SMALL:-crn-small}}"
BENCH_MODEL="${BENCH_MODEL:-${SMALL:-crn}}"
TRAIN_STEPS="${TRAIN_STEPS:-$STEPS}"
BENCH_STEPS="${BENCH_STEPS:-5}"
FIT_MODEL="${FIT_MODEL:-tiny-crn}"
FIT_TARGET="${FIT_TARGET:-generic-onnx}"
FIT_BUDGET_MS="${FIT_BUDGET_MS:-5}"
FIT_STEPS="${FIT_STEPS:-20}"
FIT_EVAL_ITEMS="${FIT_EVAL_ITEMS:-3}"
if [ -z "${DATA:-}" ]; then
    if [ -f "$PACK/corpus/manifest.json" ]; then DATA="$PACK/corpus"; else DATA="$HOME/.cache/hwcompress-tests/small-corpus-v2"; fi
fi
[ -f "$DATA/manifest.json" ] || { echo "error: $DATA: no corpus; run 'bash tools/gpu_check.sh pack' here and carry .gpu-check" >&2; exit 2; }

export PYTHONPATH="$ROOT" PYTHONUNBUFFERED=1
if ! "$PY" -c "import soundfile, pesq, pystoi" 2>/dev/null; then
    [ -d "$PACK/whl" ] || { echo "error: soundfile, pesq or pystoi missing and no $PACK/whl: run 'bash tools/gpu_check.sh pack' here" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hwc-site "$PACK"/whl/*.whl
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --no-build-isolation --target /tmp/hwc-site "$PACK"/whl/pesq-*.tar.gz
    export PYTHONPATH="$ROOT:/tmp/hwc-site"
fi

WORK="$(mktemp -d /tmp/hwc-gpu-check.XXXXXX)"
LOG="$WORK/log.txt"
clean() { grep -v -e '━' -e '^\s*$' "$1" || true; }  # progress bars out of the logs
stamp() { date +%s.%N; }
run() {  # run NAME CMD...: stdout in $WORK/NAME.out, stderr in NAME.log, wall seconds in NAME.s; a failure shows its log
    local name=$1; shift
    echo "\$ $*" >> "$LOG"
    local t0; t0=$(stamp)
    if ! "$@" > "$WORK/$name.out" 2> "$WORK/$name.log"; then
        echo "gpu_check: '$name' failed; its output:" >&2
        clean "$WORK/$name.log" | tail -40 >&2
        tail -5 "$WORK/$name.out" >&2
        exit 1
    fi
    awk -v a="$t0" -v b="$(stamp)" 'BEGIN { printf "%.1f\n", b - a }' > "$WORK/$name.s"
    clean "$WORK/$name.log" >> "$LOG"
}
echo "gpu_check: DEVICE=$DEVICE, work in $WORK" >&2

# 1. train, then resume from the checkpoint written there (--device auto: the GPU where there is one)
TRAIN=(--model "$TRAIN_MODEL" --data "$DATA" --out "$WORK/train" --steps-per-epoch "$TRAIN_STEPS" --batch 8 --seconds 4)
run train "$PY" -m hwcompress train "${TRAIN[@]}" --epochs 1 --device "$DEVICE"
run train-resume "$PY" -m hwcompress train "${TRAIN[@]}" --epochs 2 --device auto

# 2. training step time, the device and this machine's CPU side by side (same process, same data)
run bench "$PY" - "$BENCH_MODEL" "$DEVICE" "$BENCH_STEPS" <<'EOF'
import json, statistics, sys, time
import torch
from hwcompress.device import describe, resolve_device
from hwcompress.models.io import load_model
from hwcompress.models.stft import stft
from hwcompress.train import initial_state, spectral_loss
name, device, steps = sys.argv[1], resolve_device(sys.argv[2]), int(sys.argv[3])
audio = 0.1 * torch.randn(8, 64000, generator=torch.Generator().manual_seed(0))
rows = []
for dev, n in ([(device, steps), (torch.device("cpu"), 2)] if device.type != "cpu" else [(device, steps)]):
    model = load_model(name).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x, times = audio.to(dev), []
    for i in range(2 + n):  # 2 warm-ups (kernel selection, allocator), then n timed steps
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        spec = stft(x)
        est, _ = model(spec, initial_state(model, 8, dev))
        loss = spectral_loss(est, spec)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= 2:
            times.append(time.perf_counter() - t)
    rows.append({"device": describe(dev), "threads": torch.get_num_threads(), "steps": n,
                 "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)})
print(json.dumps({"model": name, "params": sum(p.numel() for p in load_model(name).parameters()), "rows": rows}))
EOF

# 3. a tiny fit: sensitivity, allocation, compression fine-tuning and torch scoring on the device
run fit "$PY" -m hwcompress fit --target "$FIT_TARGET" --budget-ms "$FIT_BUDGET_MS" --model "$FIT_MODEL" --data "$DATA" \
    --out "$WORK/fit" --prune-steps "$FIT_STEPS" --cluster-steps "$((FIT_STEPS / 2))" --eval-items "$FIT_EVAL_ITEMS" \
    --measure-runs 50 --no-dnsmos \
    --device "$DEVICE" --json

mkdir -p "$(dirname "$REPORT")"
"$PY" - "$WORK" "$REPORT" "$DEVICE" "$PY" <<'EOF'
import json, os, platform, shutil, subprocess, sys
from pathlib import Path
import torch
work, report, device, py = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
sh = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip() if shutil.which(cmd[0]) else ""
secs = lambda name: float((work / f"{name}.s").read_text())
cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")), platform.processor())
gpu = sh("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")
commit = sh("git", "rev-parse", "--short", "HEAD") or "(no .git here)"
history = json.loads((work / "train" / "history.json").read_text())
fit = json.loads((work / "fit.out").read_text())
bench = json.loads((work / "bench.out").read_text())
lines = [
    "# GPU check of `--device` (tools/gpu_check.sh)", "",
    f"Produced by `DEVICE={device} bash tools/gpu_check.sh` at commit {commit}; every figure below was measured in that one run",
    "on one machine (wall times of whole commands include Python and torch start-up).", "",
    "| what | value |", "| --- | --- |",
    f"| host CPU | {cpu}, {os.cpu_count()} logical CPUs; load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())} |",
    f"| GPU (nvidia-smi) | {gpu or 'none'} |",
    f"| Python / torch | {platform.python_version()} / {torch.__version__} (CUDA {torch.version.cuda}) |",
    f"| torch device asked for | `--device {device}` |", "",
    "## train (and a resume with `--device auto`)", "",
    "| epoch | device (history.json) | train loss | valid loss | seconds since that command started |",
    "| --- | --- | --- | --- | --- |",
    *[f"| {h['epoch']} | {h['device']} | {h['train_loss']:.4f} | {h['valid_loss']:.4f} | {h['seconds']:.1f} |" for h in history],
    "", f"Whole commands: first epoch {secs('train'):.1f} s, resumed second epoch {secs('train-resume'):.1f} s (wall).", "",
    f"## training step, {bench['model']} ({bench['params']:,} parameters), batch 8 x 4 s", "",
    "Forward, spectral loss, backward, clipping and Adam step on fixed random audio, timed after 2 warm-up steps",
    "(CUDA synchronised around each step); the CPU row is the same machine's CPU with torch's default threads.", "",
    "| device | torch threads | timed steps | median ms/step | min ms/step |", "| --- | --- | --- | --- | --- |",
    *[f"| {r['device']} | {r['threads']} | {r['steps']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} |" for r in bench["rows"]],
    *([f"", f"CPU / device median step time: {bench['rows'][1]['median_ms'] / bench['rows'][0]['median_ms']:.1f}x."]
      if len(bench["rows"]) > 1 else []), "",
    f"## fit: {fit['model']} on {fit['target']}, budget {fit['results'][0]['budget_ms']:g} ms", "",
    "| what | value |", "| --- | --- |",
    f"| torch device (report.json `torch_device`) | {fit['torch_device']} |",
    f"| latency | {fit['latency_ms']:.3f} ms per hop, {fit['latency_source']} ({fit['runtime']} {fit['runtime_version']}, {fit['threads']} thread(s)) |",
    f"| budget met | {fit['budget_met']} |",
    f"| .hwc / runtime artifact | {fit['size_bytes']} B / {fit['runtime_artifact_bytes']} B |",
    f"| PESQ-WB noisy / dense / fitted ({fit['quality']['n']} test mixtures) | {fit['quality']['noisy']['pesq_wb']:.3f} / "
    f"{fit['quality']['baseline']['pesq_wb']:.3f} / {fit['quality']['compressed']['pesq_wb']:.3f} |",
    f"| fit run time (report.json `seconds`) | {fit['seconds']:.1f} s (command wall {secs('fit'):.1f} s) |", "",
    "## commands and their logs (progress bars removed)", "", "```", (work / "log.txt").read_text().rstrip(), "```", "",
]
text = "\n".join(lines).replace(py + " ", "python ")
report.write_text(text)
if os.environ.get("OUT"):
    (Path(os.environ["OUT"]) / "gpu_check.md").write_text(text)
print(text)
EOF
echo "gpu_check: wrote $REPORT${OUT:+ and $OUT/gpu_check.md}" >&2
