"""Tan & Wang's finding at this machine's scale, and an ablation of the pipeline's stages.

    python benchmarks/paper_reproduction.py [--eval-items 200] [--ablation-items 60] [--steps 60]

Part 1 (the claim): the large default CRN compressed ~11x into a .hwc (50% magnitude pruning
with 300 fine-tuning steps, K=16 per layer with 100 centroid steps) against a small CRN of about
the same size (`crn-compact`, 6.9 MB of fp32 weights) trained from scratch with the same recipe
for as many steps as the large model's training plus the compression fine-tuning. Inputs are the
runs that produce them (commands printed in the table); missing runs are started here.

Part 2 (ablation): the default model through each stage alone and in combination, with short
fine-tuning (--steps pruning steps + a third as many centroid steps), scored on the first
--ablation-items test mixtures: quantization only, pruning only, both without fine-tuning, the
full pipeline, group-lasso regularization + structured pruning, the same without the
regularization, and the dense model fine-tuned for the same steps (the control: how much of a
change is fine-tuning alone).

Writes benchmarks/paper_reproduction.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

from _reading import write_keeping_reading  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "paper"
HEADLINE = ["--sparsity", "0.5", "--codebook", "16", "--prune-steps", "300", "--cluster-steps", "100"]
SMALL_TRAIN = ["--model", "crn-compact", "--epochs", "12", "--steps-per-epoch", "150", "--batch", "8", "--seconds", "4",
               "--lr", "1e-3", "--patience", "4", "--seed", "0"]
METRICS = ("pesq_wb", "stoi", "estoi", "si_sdr")


def hwc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hwcompress", *args], check=True)


def scores(model, data: Path, items: int | None, cache: Path) -> dict:
    from hwcompress.evaluate import evaluate

    if cache.exists():
        got = json.loads(cache.read_text())
        if got.get("n") == (items or got.get("n")):
            return got
    r = evaluate(model, data, "test", limit=items)
    mean = r["summary"]["overall"]["mean"]
    out = {"n": r["n"], "noisy": {m: mean[f"noisy_{m}"] for m in METRICS}, "enhanced": {m: mean[f"enhanced_{m}"] for m in METRICS}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    return out


def row(name: str, s: dict, size: int, params: int, note: str) -> str:
    e = s["enhanced"]
    return (f"| {name} | {size} | {params} | {e['pesq_wb']:.3f} | {e['stoi']:.4f} | {e['estoi']:.4f} | {e['si_sdr']:.2f} | {note} |")


def claim_rows(args, data: Path, dense) -> list[str]:
    from hwcompress.models.cost import count_params
    from hwcompress.models.io import load_model

    large_hwc = RUNS / "large-50pct-k16.hwc"
    if not large_hwc.exists():
        hwc("compress", "--model", "default", *HEADLINE, "--out", str(large_hwc))
    small_pt = RUNS / "small" / "model.pt"
    if not small_pt.exists():
        hwc("train", *SMALL_TRAIN, "--out", str(RUNS / "small"))

    large = load_model(str(large_hwc))
    small = load_model(str(small_pt))
    n = args.eval_items
    s_dense = scores(dense, data, n, RUNS / f"eval-dense-{n}.json")
    s_large = scores(large, data, n, RUNS / f"eval-large-hwc-{n}.json")
    s_small = scores(small, data, n, RUNS / f"eval-small-{n}.json")
    hist = json.loads((RUNS / "small" / "history.json").read_text())

    lines = [f"Real-speech test split (June, fr-CA, unseen), {s_dense['n']} mixtures. Noisy input: "
             f"PESQ-WB {s_dense['noisy']['pesq_wb']:.3f}, STOI {s_dense['noisy']['stoi']:.4f}, "
             f"ESTOI {s_dense['noisy']['estoi']:.4f}, SI-SDR {s_dense['noisy']['si_sdr']:.2f} dB.", "",
             "| model | bytes | params | PESQ-WB | STOI | ESTOI | SI-SDR dB | how |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
             row("large dense (default)", s_dense, 4 * count_params(dense), count_params(dense),
                 "fp32 weights; 9 epochs x 150 steps (benchmarks/default_model.md)"),
             row("**large compressed (.hwc)**", s_large, large_hwc.stat().st_size, count_params(large),
                 f"`hwcompress compress --model default {' '.join(HEADLINE)}`: bytes of the .hwc file"),
             row("small from scratch (crn-compact)", s_small, 4 * count_params(small), count_params(small),
                 f"fp32 weights; `hwcompress train {' '.join(SMALL_TRAIN)}` ({len(hist)} epochs run)"),
             ""]
    d = {m: s_large["enhanced"][m] - s_small["enhanced"][m] for m in METRICS}
    lines.append(f"Compressed large minus small from scratch, at {large_hwc.stat().st_size / (4 * count_params(small)):.2f}x "
                 f"the small model's bytes: PESQ-WB {d['pesq_wb']:+.3f}, STOI {d['stoi']:+.4f}, "
                 f"ESTOI {d['estoi']:+.4f}, SI-SDR {d['si_sdr']:+.2f} dB.")
    lines.append("")

    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval-items", type=int, default=200)
    p.add_argument("--ablation-items", type=int, default=60)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=4, help="ablation fine-tuning batch (mixtures)")
    p.add_argument("--seconds", type=float, default=2.0, help="ablation fine-tuning crop length")
    p.add_argument("--skip-claim", action="store_true", help="only the ablation (part 1 needs its long runs)")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "paper_reproduction.md")
    args = p.parse_args(argv)

    from hwcompress.compress.pipeline import CompressConfig, compress
    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.models.cost import count_params
    from hwcompress.models.io import load_model
    from hwcompress.train import TrainConfig, train

    data = ensure_default_corpus()
    RUNS.mkdir(parents=True, exist_ok=True)
    dense = load_model("default")
    lines = ["# Paper reproduction: compressed large model vs small model trained from scratch", "",
             "Command: `python benchmarks/paper_reproduction.py "
             f"--eval-items {args.eval_items} --ablation-items {args.ablation_items} --steps {args.steps} "
             f"--batch {args.batch} --seconds {args.seconds}`", ""]
    if not args.skip_claim:
        lines += claim_rows(args, data, dense)
    # ---------------------------------------------------------------- ablation
    m = args.ablation_items
    steps, csteps = args.steps, max(1, args.steps // 3)
    variants = [
        ("quantization only: K=16, no fine-tuning", dict(sparsity=0.0, codebook=16, prune_steps=0, cluster_steps=0)),
        ("pruning only: 50% magnitude, no fine-tuning, K=256", dict(sparsity=0.5, codebook=256, prune_steps=0, cluster_steps=0)),
        ("pruning + quantization, no fine-tuning", dict(sparsity=0.5, codebook=16, prune_steps=0, cluster_steps=0)),
        (f"full pipeline: prune with {steps} FT steps, K=16 with {csteps} centroid steps",
         dict(sparsity=0.5, codebook=16, prune_steps=steps, cluster_steps=csteps)),
        (f"group lasso ({steps} steps) + 50% structured + FT + K=16 + FT",
         dict(sparsity=0.5, codebook=16, structured=True, regularize_steps=steps, group_lasso=1e-5,
              prune_steps=steps, cluster_steps=csteps)),
        ("same, without the regularization", dict(sparsity=0.5, codebook=16, structured=True, prune_steps=steps,
                                                  cluster_steps=csteps)),
    ]
    lines += [f"## Ablation (first {m} test mixtures; short fine-tuning: {steps} pruning / regularization steps, "
              f"{csteps} centroid steps, batch {args.batch} x {args.seconds:g} s)", "",
              "| variant | .hwc bytes | params | PESQ-WB | STOI | ESTOI | SI-SDR dB | vs dense PESQ / STOI |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = scores(dense, data, m, RUNS / f"eval-dense-{m}.json")
    lines.append(row("dense (reference)", base, 4 * count_params(dense), count_params(dense), "-"))
    for i, (name, kw) in enumerate(variants):
        out = RUNS / "ablation" / f"v{i}.hwc"
        if not out.exists():
            cfg = CompressConfig(**{"batch": args.batch, "seconds": args.seconds, "lr": 1e-4, **kw})
            compress(copy.deepcopy(dense), cfg, data, out)
        net = load_model(str(out))
        s = scores(net, data, m, RUNS / "ablation" / f"eval-v{i}-{m}.json")
        dp, ds = s["enhanced"]["pesq_wb"] - base["enhanced"]["pesq_wb"], s["enhanced"]["stoi"] - base["enhanced"]["stoi"]
        lines.append(row(name, s, out.stat().st_size, count_params(net), f"{dp:+.3f} / {ds:+.4f}"))
        args.table.write_text("\n".join(lines) + "\n")  # progress survives an interrupted run
    ctrl = RUNS / "ablation" / "control"
    if not (ctrl / "model.pt").exists():
        net = copy.deepcopy(dense)
        tcfg = TrainConfig(epochs=1, steps_per_epoch=steps + csteps, batch=args.batch, seconds=args.seconds, lr=1e-4,
                           patience=10**6,
                           seed=0, valid_items=8)
        train(net, data, ctrl, tcfg, resume=False)
    net = load_model(str(ctrl / "model.pt"))
    s = scores(net, data, m, RUNS / "ablation" / f"eval-control-{m}.json")
    dp, ds = s["enhanced"]["pesq_wb"] - base["enhanced"]["pesq_wb"], s["enhanced"]["stoi"] - base["enhanced"]["stoi"]
    lines.append(row(f"control: dense fine-tuned {steps + csteps} steps, no compression", s, 4 * count_params(net),
                     count_params(net), f"{dp:+.3f} / {ds:+.4f}"))
    write_keeping_reading(args.table, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
