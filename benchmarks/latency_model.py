"""Latency model validation: predicted vs measured per-hop latency on every backend this
machine can run, for models the profile tables never saw.

    python benchmarks/latency_model.py [--targets x86-openvino,generic-onnx,x86-litert] [--sweep]

--sweep first rebuilds profiles/<target>.json (`hwcompress profile --sweep`). Then each
held-out model (other widths than the sweep, GRU/GCRN variants, and structurally pruned
shapes of the default CRN as `fit` produces them) is exported in fp32 and int8, timed here
(median of 300 hops in a fresh process) and predicted twice: by the profile table and by
the roofline from the target's perf parameters. Writes benchmarks/latency_model.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

from hwcompress.profile.latency_model import predict_latency
from hwcompress.profile.table import load_table, profiles_dir, refit, sweep, time_specs, write_table
from hwcompress.targets import load_target

from _reading import write_keeping_reading  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [16, 32, 64, 128, 256]


def held_out() -> list[tuple[str, str, dict]]:
    return [
        ("crn-c0.75-h384x384", "crn", {"channels": [12, 24, 48, 96, 192], "hidden": [384, 384]}),
        ("crn-c0.75-h768x768", "crn", {"channels": [12, 24, 48, 96, 192], "hidden": [768, 768]}),
        ("crn-c0.375-h192", "crn", {"channels": [6, 12, 24, 48, 96], "hidden": [192]}),
        ("crn-c0.5-h1024", "crn", {"channels": [8, 16, 32, 64, 128], "hidden": [1024]}),
        # shapes fit leaves when it prunes the default: second LSTM halved, then more
        ("default-rnn1/2", "crn", {"channels": DEFAULT, "hidden": [1024, 512], "proj_channels": 128}),
        ("default-rnn/2,/4", "crn", {"channels": DEFAULT, "hidden": [512, 256], "proj_channels": 128,
                                     "dec_channels": [96, 48, 24, 12]}),
        ("default-enc3/4", "crn", {"channels": [16, 32, 48, 96, 192], "hidden": [768, 768]}),
        ("lstm-h384x384", "rnn", {"cell": "lstm", "hidden": [384, 384]}),
        ("lstm-h768", "rnn", {"cell": "lstm", "hidden": [768]}),
        ("gru-h1024", "rnn", {"cell": "gru", "hidden": [1024]}),
        ("gru-h128x128", "rnn", {"cell": "gru", "hidden": [128, 128]}),
        ("gcrn-c0.5-h512", "gcrn", {"channels": [8, 16, 32, 64, 128], "hidden": [512]}),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="x86-openvino,generic-onnx,x86-litert")
    p.add_argument("--sweep", action="store_true", help="rebuild the profile tables first")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement (median of their medians)")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "latency_model.md")
    p.add_argument("--refit", action="store_true",
                   help="fit the stored profile tables' rows again with the current features (no timing)")
    p.add_argument("--reuse", action="store_true",
                   help="predict again for the held-out measurements stored in the .json next to --table (no timing)")
    args = p.parse_args(argv)
    from hwcompress.export import get_backend
    from hwcompress.profile.measure import RUNTIME_BACKENDS, host_cpu, runtime_version

    lines = ["# Latency model: predicted vs measured", "",
             f"Command: `python benchmarks/latency_model.py --targets {args.targets}"
             + (" --sweep" if args.sweep else "") + (" --refit" if args.refit else "")
             + (" --reuse" if args.reuse else "") + f" --runs {args.runs} --repeats {args.repeats}`", "",
             f"Machine: {host_cpu()}. Every measured figure is the median over interleaved rounds (`--repeats` of "
             "the command that timed it, given under each target; each round times every model once, in a fresh "
             "process: the median of `--runs` streaming hops of the exported artifact on this machine, with the "
             "target's runtime and threads); *spread* is "
             "(max - min) / median of the rounds: the measurement's own "
             "repeatability, against which a prediction error can be read. "
             "Predictions: *table* = the target's measured profile table (profiles/<target>.json, fitted to a "
             "sweep of other shapes), *roofline* = the target's perf parameters alone. Held-out models only.", ""]
    summary = []
    store_path = args.table.with_suffix(".json")
    # measurements of other targets from earlier runs stay in the store next to this run's
    store = json.loads(store_path.read_text()) if store_path.is_file() else {}
    stored = store.get("measured_ms", {})
    measured_store: dict[str, list[float]] = dict(stored)
    commands: dict[str, str] = store.get("commands", {})
    from hwcompress.models import zoo

    for name in args.targets.split(","):
        target = load_target(name)
        backend = RUNTIME_BACKENDS[target.runtime]
        get_backend(backend)
        if args.sweep or load_table(target) is None:
            print(f"sweeping {name} ...", file=sys.stderr, flush=True)
            write_table(sweep(target, runs=args.runs, repeats=args.repeats))
        elif args.refit:
            write_table(refit(json.loads((profiles_dir() / f"{name}.json").read_text())))
        table = load_table(target)
        lines += [f"## {name}: {backend} {runtime_version(backend)}, {target.threads} thread(s)", "",
                  f"Table: {table['provenance']}.", "",
                  "| model | weights | params | measured ms | spread | table ms | error | roofline ms | error |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        errs_table, errs_roof, spreads = [], [], []
        keys = {(label, w): f"{name}/{label}/{w}" for label, _, _ in held_out() for w in ("fp32", "int8")}
        timed_now = not (args.reuse and all(k in stored for k in keys.values()))
        if timed_now:  # all held-out artifacts in interleaved rounds (see table.time_specs)
            for t in time_specs(held_out(), backend, target.threads, args.runs, args.repeats):
                measured_store[keys[t["model"], t["weights"]]] = t["repeat_ms"]
        for label, arch, config in held_out():
            model = zoo.build(arch, config).eval()
            for weights, bits in (("fp32", 32), ("int8", 8)):
                repeat_ms = measured_store[keys[label, weights]]
                pred = predict_latency(model, target, bits)
                roof = pred["roofline_ms"]
                tab = pred["latency_ms"] if pred["latency_model"] == "profile table" else float("nan")
                measured = float(np.median(repeat_ms))
                spread = (max(repeat_ms) - min(repeat_ms)) / measured
                et, er = tab / measured - 1, roof / measured - 1
                errs_table.append(et)
                errs_roof.append(er)
                spreads.append(spread)
                lines.append(f"| {label} | {weights} | {sum(p.numel() for p in model.parameters())} | {measured:.3f} | "
                             f"{100 * spread:.0f}% | {tab:.3f} | {100 * et:+.1f}% | {roof:.3f} | {100 * er:+.1f}% |")
                print(lines[-1], file=sys.stderr, flush=True)
        if timed_now:
            commands[name] = f"{lines[2]} ({date.today().isoformat()})"
        lines += ["", f"Held-out rows timed by: {commands.get(name, 'an earlier run')}."]
        within = float(np.mean(np.abs(errs_table) <= 0.10))
        within_roof = float(np.mean(np.abs(errs_roof) <= 0.10))
        lines += ["", f"Within +/-10%: table **{100 * within:.0f}%** of {len(errs_table)} predictions "
                      f"(median |error| {100 * np.median(np.abs(errs_table)):.1f}%); roofline {100 * within_roof:.0f}% "
                      f"(median |error| {100 * np.median(np.abs(errs_roof)):.1f}%). Measurement spread: median "
                      f"{100 * np.median(spreads):.0f}%, {100 * np.mean(np.array(spreads) > 0.10):.0f}% of rows above 10%.", ""]
        summary.append((name, within, len(errs_table), within_roof))
    lines += ["## Summary", "", "| target | within +/-10% (table) | predictions | within +/-10% (roofline) |",
              "| --- | ---: | ---: | ---: |"]
    for name, w, n, wr in summary:
        lines.append(f"| {name} | {100 * w:.0f}% | {n} | {100 * wr:.0f}% |")
    allp = sum(w * n for _, w, n, _ in summary) / max(1, sum(n for _, _, n, _ in summary))
    lines += ["", f"All backends: {100 * allp:.0f}% of predictions within +/-10% (goal: 90%)."]
    write_keeping_reading(args.table, "\n".join(lines) + "\n")
    store_path.write_text(json.dumps({"commands": commands, "measured_ms": measured_store}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
