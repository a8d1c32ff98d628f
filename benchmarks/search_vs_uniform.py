"""Per-layer search vs uniform settings at equal budgets, side by side in one run.

Both arms go through the same `hwcompress fit` stages (same sensitivity cache, same
fine-tuning steps, same export and evaluation); only the allocation differs:
  search   per-group structured ratios from the greedy budgeted allocation, per-layer K
  uniform  one structured ratio for every group (the smallest that meets the budget), K=16

    python benchmarks/search_vs_uniform.py [--target raspberrypi4] [--budgets 4,2] [--eval-items 100]

writes benchmarks/search_vs_uniform.md (and the two fit runs under runs/bench-search-vs-uniform/).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from hwcompress.search.fit import FitConfig, fit

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="raspberrypi4")
    p.add_argument("--budgets", default="4,2")
    p.add_argument("--model", default="default")
    p.add_argument("--eval-items", type=int, default=100)
    p.add_argument("--prune-steps", type=int, default=120)
    p.add_argument("--cluster-steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-search-vs-uniform")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "search_vs_uniform.md")
    args = p.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    reports = {}
    for arm in ("search", "uniform"):
        out = args.out / arm
        if arm == "uniform" and (args.out / "search" / "sensitivity").exists():
            # the same measurements serve both arms: copy the caches instead of re-measuring
            out.mkdir(parents=True, exist_ok=True)
            for name in ("sensitivity", "calibration.json", "floor.json", "baseline-quality.json"):
                src = args.out / "search" / name
                if src.is_dir():
                    shutil.copytree(src, out / name, dirs_exist_ok=True)
                elif src.exists():
                    shutil.copy2(src, out / name)
        cfg = FitConfig(target=args.target, out=out, budgets_ms=budgets, model=args.model, allocation=arm,
                        eval_items=args.eval_items, prune_steps=args.prune_steps, cluster_steps=args.cluster_steps)
        reports[arm] = fit(cfg)
    lines = [
        "# Per-layer search vs uniform settings at equal budget",
        "",
        f"Command: `python benchmarks/search_vs_uniform.py --target {args.target} --budgets {args.budgets} "
        f"--eval-items {args.eval_items} --prune-steps {args.prune_steps} --cluster-steps {args.cluster_steps}`",
        "",
        f"Model `{args.model}` on target `{args.target}`; both arms run the same fit stages (same sensitivity "
        f"measurements, {args.prune_steps} pruning + {args.cluster_steps} centroid fine-tuning steps, same export); "
        "only the allocation differs. search: per-group structured ratios from the budgeted greedy allocation, "
        "per-layer K; uniform: one ratio for all groups (the smallest meeting the budget), K = 16 everywhere. "
        f"Quality: real-speech test split, first {args.eval_items} mixtures.",
        "",
        "| budget ms | arm | latency ms | source | runtime B | .hwc B | PESQ-WB | STOI | SI-SDR dB | params |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_budget: dict[float, dict[str, dict]] = {}
    for arm, rep in reports.items():
        for r in rep["results"]:
            by_budget.setdefault(r["budget_ms"], {})[arm] = r
    for budget in sorted(by_budget, reverse=True):
        for arm in ("search", "uniform"):
            r = by_budget[budget][arm]
            q = r["quality"]["compressed"]
            params = sum(layer["params"] for layer in r["layers"])
            lines.append(f"| {budget:g} | {arm} | {r['latency_ms']:.3f} | {r['latency_source']} | "
                         f"{r['runtime_artifact_bytes']} | {r['size_bytes']} | {q['pesq_wb']:.3f} | {q['stoi']:.4f} | "
                         f"{q['si_sdr']:.2f} | {params} |")
        s, u = by_budget[budget]["search"], by_budget[budget]["uniform"]
        qs, qu = s["quality"]["compressed"], u["quality"]["compressed"]
        lines.append(f"| {budget:g} | **search - uniform** | {s['latency_ms'] - u['latency_ms']:+.3f} | | "
                     f"{s['runtime_artifact_bytes'] / u['runtime_artifact_bytes']:.2f}x | {s['size_bytes'] / u['size_bytes']:.2f}x | "
                     f"{qs['pesq_wb'] - qu['pesq_wb']:+.3f} | {qs['stoi'] - qu['stoi']:+.4f} | {qs['si_sdr'] - qu['si_sdr']:+.2f} | |")
    q0 = reports["search"]["results"][0]["quality"]
    lines += ["", f"Dense model on the same mixtures: PESQ-WB {q0['baseline']['pesq_wb']:.3f}, STOI {q0['baseline']['stoi']:.4f}, "
              f"SI-SDR {q0['baseline']['si_sdr']:.2f} dB; noisy input {q0['noisy']['pesq_wb']:.3f} / {q0['noisy']['stoi']:.4f} / "
              f"{q0['noisy']['si_sdr']:.2f} dB.", ""]
    for budget in sorted(by_budget, reverse=True):
        for arm in ("search", "uniform"):
            ratios = by_budget[budget][arm]["allocation"]["ratios"]
            ks = {layer["name"]: layer["k"] for layer in by_budget[budget][arm]["layers"]}
            lines.append(f"- {budget:g} ms, {arm}: ratios " + ", ".join(f"{g} {r:.3g}" for g, r in ratios.items() if r)
                         + "; K " + ", ".join(f"{n} {k}" for n, k in ks.items()))
    args.table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
