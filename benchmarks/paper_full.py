"""Tan & Wang's claim at full strength (issue 14, point 5): a large model compressed to 20x and
40x fewer bytes than its fp32 weights against small models of the same bytes trained from scratch
for the same total number of steps, with and without the same distillation teacher.

    python benchmarks/paper_full.py --large runs/crn-dfn3/model.pt --large-steps 3450 \
        --ratios 20,40 --teacher dfn3 --teacher-weight 0.5 [--limit 200] [--prune-steps 300] \
        [--cluster-steps 100] [--codebook 16] [--data CORPUS] [--runs runs/paper_full]

For each ratio R:
- **compressed large**: the `--large` model through `compress` (magnitude pruning ramped over
  --prune-steps fine-tuning steps, then per-layer k-means codebooks of --codebook centroids
  with --cluster-steps centroid steps; fine-tuning distils to the dense large model). The
  sparsity is found first by bisection on quick compressions without fine-tuning, so that the
  `.hwc` file is at most fp32 bytes / R; the table gives the bytes of the fine-tuned file.
- **small from scratch**: the large model's architecture with every width scaled by one factor,
  chosen so that its fp32 weights are at most the same bytes, trained from random weights for
  --large-steps + prune + cluster steps (the large model's whole training plus its compression),
  batch 8 x 4 s (--batch, --seconds), Adam 1e-3 halved on plateaus, no early stop; its best-validation weights.
- **small from scratch, distilled**: the same, with `--teacher` at `--teacher-weight` (what the
  large model, if it was trained with that teacher, also had).

Every model is scored on the first --limit mixtures of the real-speech test split
(`hwcompress.evaluate`, PESQ-WB, STOI, SI-SDR, DNSMOS). The claim is tested per mixture:
compressed large minus small, paired, with 95% BCa bootstrap intervals over mixtures
(scipy.stats.bootstrap, 2000 resamples, seed 0). Every product is cached under --runs, so an
interrupted run resumes where it stopped. Writes benchmarks/paper_full.md and .json (a rerun keeps
the hand-written reading section).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _common import bootstrap_ci as ci  # benchmarks/, the script's own folder
from _reading import write_keeping_reading

ROOT = Path(__file__).resolve().parent.parent
METRICS = (("pesq_wb", "PESQ-WB", 3), ("stoi", "STOI", 4), ("si_sdr", "SI-SDR dB", 2), ("dnsmos_ovrl", "OVRL", 2))


def say(msg: str) -> None:
    print(msg, flush=True)


def hwc_bytes(model, sparsity: float, codebook: int, data: Path, out: Path, batch: int = 8, seconds: float = 4.0,
              **steps) -> int:
    from hwcompress.compress.pipeline import CompressConfig, compress

    if not out.is_file():
        cfg = CompressConfig(sparsity=sparsity, codebook=codebook, batch=batch, seconds=seconds, **steps)
        compress(copy.deepcopy(model), cfg, data, out, log=lambda m: None)
    return out.stat().st_size


def sparsity_for(model, target: int, codebook: int, data: Path, folder: Path) -> float:
    """The smallest sparsity (to 0.01) whose quick compression (no fine-tuning) fits `target` bytes."""
    lo, hi = 0.0, 0.99
    if hwc_bytes(model, hi, codebook, data, folder / f"probe-{hi:.2f}.hwc", prune_steps=0, cluster_steps=0) > target:
        raise SystemExit(f"even 99% sparsity with K={codebook} is over {target} bytes: use a smaller --codebook")
    while hi - lo > 0.01:
        mid = round((lo + hi) / 2, 3)
        size = hwc_bytes(model, mid, codebook, data, folder / f"probe-{mid:.3f}.hwc", prune_steps=0, cluster_steps=0)
        say(f"  sparsity {mid:.3f}: {size} bytes (target {target})")
        lo, hi = (lo, mid) if size <= target else (mid, hi)
    return hi


def scaled(model, target_bytes: int):
    """The large model's architecture with its widths scaled by one factor: the widest whose fp32
    weights fit `target_bytes`."""
    from hwcompress.models.cost import count_params
    from hwcompress.models.zoo import build

    arch, base = model.arch, dict(model.config)
    widths = [k for k in ("channels", "hidden") if k in base]

    def make(a: float):
        cfg = {k: v for k, v in base.items() if k not in ("proj_channels", "dec_channels")}
        for k in widths:
            cfg[k] = [max(2, int(round(w * a))) for w in base[k]]
        return build(arch, cfg)

    lo, hi = 0.01, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 4 * count_params(make(mid)) <= target_bytes else (lo, mid)
    return make(lo), lo


def scores(model_or_path, data: Path, limit: int, cache: Path, workers: int) -> dict:
    from hwcompress.evaluate import evaluate
    from hwcompress.models.io import load_model
    from hwcompress.search.sensitivity import atomic_json

    if cache.is_file():
        return json.loads(cache.read_text())
    model = load_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    r = evaluate(model, data, "test", limit=limit, workers=workers)
    atomic_json(cache, {"n": r["n"], "rows": r["rows"]})  # an interrupted run never leaves half a cache
    return json.loads(cache.read_text())


def per_mixture(s: dict, key: str) -> np.ndarray:
    return np.array([r[f"enhanced_{key}"] for r in s["rows"]], dtype=float)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large", required=True, help="the converged large model (.pt)")
    p.add_argument("--large-steps", type=int, required=True, help="optimizer steps the large model was trained for")
    p.add_argument("--ratios", default="20,40")
    p.add_argument("--teacher", default="", help="dfn3 or nsnet2: adds the distilled small-model rows")
    p.add_argument("--teacher-weight", type=float, default=0.5)
    p.add_argument("--pool-items", type=int, default=3000)
    p.add_argument("--augment", action="store_true", help="augment the small models' training (as the large one's)")
    p.add_argument("--codebook", type=int, default=16)
    p.add_argument("--prune-steps", type=int, default=300)
    p.add_argument("--cluster-steps", type=int, default=100)
    p.add_argument("--steps-per-epoch", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", type=Path, default=None, help="corpus folder (default: the default corpus)")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "paper_full")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "paper_full.md")
    args = p.parse_args(argv)

    import torch

    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.models.cost import count_params
    from hwcompress.models.io import load_model, save_model
    from hwcompress.train import TrainConfig, train

    torch.set_num_threads(max(1, args.workers))
    started = time.time()
    data = args.data or ensure_default_corpus()
    runs = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    large = load_model(args.large)
    dense_bytes = 4 * count_params(large)
    total_steps = args.large_steps + args.prune_steps + args.cluster_steps
    epochs = max(1, math.ceil(total_steps / args.steps_per_epoch))
    say(f"large: {count_params(large)} parameters, {dense_bytes} fp32 bytes; small models train {epochs} x "
        f"{args.steps_per_epoch} steps")
    entries = [{"name": "large dense", "bytes": dense_bytes, "params": count_params(large), "ratio": 1.0,
                "how": f"fp32 weights of {args.large}", "scores": scores(large, data, args.limit, runs / "eval-large.json", args.workers)}]
    for ratio in [float(r) for r in args.ratios.split(",")]:
        target = int(dense_bytes / ratio)
        folder = runs / f"x{ratio:g}"
        folder.mkdir(exist_ok=True)
        say(f"{ratio:g}x: at most {target} bytes")
        s = sparsity_for(large, target, args.codebook, data, folder)
        while True:  # fine-tuning moves the weights and so the entropy-coded size: over the target, prune more
            final = folder / f"large-s{s:.3f}-k{args.codebook}.hwc"
            size = hwc_bytes(large, s, args.codebook, data, final, args.batch, args.seconds,
                             prune_steps=args.prune_steps, cluster_steps=args.cluster_steps)
            if size <= target:
                break
            say(f"  fine-tuned at sparsity {s:.3f}: {size} bytes, over {target}")
            s = round(s + 0.01, 3)
        entries.append({"name": f"large compressed {ratio:g}x", "bytes": size, "params": count_params(large),
                        "ratio": dense_bytes / size, "group": ratio,
                        "how": f"`compress --sparsity {s:.3f} --codebook {args.codebook} --prune-steps {args.prune_steps} "
                               f"--cluster-steps {args.cluster_steps}`; .hwc bytes",
                        "scores": scores(final, data, args.limit, folder / "eval-large.json", args.workers)})
        rows = [("small from scratch", "", 0.0)]
        if args.teacher:
            rows.append((f"small from scratch, distilled from {args.teacher}", args.teacher, args.teacher_weight))
        for name, teacher, weight in rows:
            run = folder / ("small-" + (teacher or "clean"))
            if not (run / "model.pt").is_file() or not (run / "done").is_file():
                net, a = scaled(large, target)
                torch.manual_seed(0)
                cfg = TrainConfig(epochs=epochs, steps_per_epoch=args.steps_per_epoch, batch=args.batch, seconds=args.seconds, lr=1e-3,
                                  patience=10**6, seed=0, distill_from=teacher, distill_weight=weight if teacher else 0.5,
                                  pool_items=args.pool_items, augment=args.augment)
                train(net, data, run, cfg, resume=True, pool_workers=args.workers)
                (run / "done").write_text(json.dumps({"width_factor": a}))
            small = load_model(str(run / "model.pt"))
            a = json.loads((run / "done").read_text())["width_factor"]
            entries.append({"name": name, "bytes": 4 * count_params(small), "params": count_params(small),
                            "ratio": dense_bytes / (4 * count_params(small)), "group": ratio,
                            "how": f"widths x{a:.3f}, fp32; {epochs} x {args.steps_per_epoch} steps"
                                   + (f", loss {weight:g} x {teacher} + {1 - weight:g} x clean" if teacher else ""),
                            "scores": scores(run / "model.pt", data, args.limit, run / "eval.json", args.workers)})
        write(entries, args, time.time() - started)
    write(entries, args, time.time() - started)
    return 0


def write(entries: list[dict], args, seconds: float) -> None:
    noisy = {k: np.array([r[f"noisy_{k}"] for r in entries[0]["scores"]["rows"]], dtype=float) for k, _, _ in METRICS}
    n = len(entries[0]["scores"]["rows"])
    lines = ["# The paper's claim at full strength: compressed large vs small from scratch at 20x and 40x", "",
             f"Command: `python benchmarks/paper_full.py {' '.join(sys.argv[1:])}` ({seconds / 3600:.1f} h on "
             f"{platform.node() or 'this machine'}, CPU, torch threads {max(1, args.workers)}).", "",
             f"Real-speech test split, first {n} mixtures; mean scores (noisy input: "
             + ", ".join(f"{label} {noisy[k].mean():.{d}f}" for k, label, d in METRICS) + ").", "",
             "| model | bytes | vs fp32 large | params | " + " | ".join(label for _, label, _ in METRICS) + " | how |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in METRICS) + " | --- |"]
    for e in entries:
        vals = " | ".join(f"{per_mixture(e['scores'], k).mean():.{d}f}" for k, _, d in METRICS)
        lines.append(f"| {e['name']} | {e['bytes']} | {e['ratio']:.1f}x | {e['params']} | {vals} | {e['how']} |")
    lines += ["", "Compressed large minus each small model, paired per mixture [95% BCa bootstrap interval]:", "",
              "| ratio | against | " + " | ".join(label for _, label, _ in METRICS) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in METRICS) + " |"]
    out = []
    for large in [e for e in entries if e["name"].startswith("large compressed")]:
        for small in [e for e in entries if e.get("group") == large["group"] and e["name"].startswith("small")]:
            cells, record = [], {"ratio": large["group"], "against": small["name"]}
            for k, _, d in METRICS:
                delta = per_mixture(large["scores"], k) - per_mixture(small["scores"], k)
                lo, hi = ci(delta)
                cells.append(f"{delta.mean():+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]")
                record[k] = {"mean": delta.mean(), "ci95": [lo, hi]}
            lines.append(f"| {large['group']:g}x | {small['name']} | " + " | ".join(cells) + " |")
            out.append(record)
    write_keeping_reading(args.table, "\n".join(lines))
    write_keeping_reading(args.table.with_suffix(".json"), json.dumps(
        {"entries": [{k: v for k, v in e.items() if k != "scores"} for e in entries], "differences": out, "n": n},
        indent=1, default=float))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
