"""Side-by-side table of `hwcompress eval --json` results on the same mixtures: every metric's
mean, the PESQ-WB and DNSMOS OVRL difference to a reference row with a paired 95% BCa bootstrap
interval over mixtures, and the PESQ-WB gain per noise kind. Nothing is run here: it reads what
eval wrote, and refuses files scored on other mixtures.

    python benchmarks/eval_table.py REF.json NAME=OTHER.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bootstrap_ci as ci  # noqa: E402

METRICS = [("pesq_wb", "PESQ-WB", 3), ("stoi", "STOI", 3), ("si_sdr", "SI-SDR dB", 2), ("dnsmos_sig", "SIG", 2),
           ("dnsmos_bak", "BAK", 2), ("dnsmos_ovrl", "OVRL", 2)]


def load(arg: str) -> tuple[str, dict]:
    name, _, path = arg.rpartition("=")
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"{path}: not a readable eval JSON ({type(exc).__name__})")
    return name or Path(path).stem, result


def paired(rows_a: list[dict], rows_b: list[dict], key: str) -> tuple[float, float, float]:
    d = np.array([b[f"enhanced_{key}"] - a[f"enhanced_{key}"] for a, b in zip(rows_a, rows_b)], dtype=float)
    d = d[np.isfinite(d)]
    lo, hi = ci(d)
    return float(d.mean()), lo, hi


def table(entries: list[tuple[str, dict]]) -> str:
    ref_name, ref = entries[0]
    ids = [r["id"] for r in ref["rows"]]
    for name, e in entries[1:]:
        if [r["id"] for r in e["rows"]] != ids:
            sys.exit(f"{name}: scored on other mixtures than {ref_name}")
    mean = lambda e, k: float(np.nanmean([r[k] for r in e["rows"]]))  # noqa: E731
    head = ["model"] + [m[1] for m in METRICS] + ["PESQ-WB gain", f"PESQ-WB vs {ref_name} [95% CI]",
                                                   f"OVRL vs {ref_name} [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    noisy = ["noisy input"] + [f"{mean(ref, 'noisy_' + k):.{p}f}" for k, _, p in METRICS] + ["-", "-", "-"]
    lines.append("| " + " | ".join(noisy) + " |")
    for name, e in entries:
        cells = [name] + [f"{mean(e, 'enhanced_' + k):.{p}f}" for k, _, p in METRICS]
        cells.append(f"{mean(e, 'delta_pesq_wb'):+.3f}")
        for key in ("pesq_wb", "dnsmos_ovrl"):
            if e is ref:
                cells.append("-")
            else:
                d, lo, hi = paired(ref["rows"], e["rows"], key)
                cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    kinds = sorted({r["noise_kind"] for r in ref["rows"]})
    lines += ["", "PESQ-WB gain over the noisy input per noise kind (mixtures):", "",
              "| noise kind | n | " + " | ".join(n for n, _ in entries) + " |",
              "| --- | ---: |" + " ---: |" * len(entries)]
    for k in kinds:
        n = sum(r["noise_kind"] == k for r in ref["rows"])
        vals = [np.mean([r["delta_pesq_wb"] for r in e["rows"] if r["noise_kind"] == k]) for _, e in entries]
        lines.append(f"| {k} | {n} | " + " | ".join(f"{v:+.3f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="eval JSONs, the reference first; NAME=PATH names a row")
    args = ap.parse_args()
    print(table([load(a) for a in args.results]), end="")


if __name__ == "__main__":
    main()
