"""Latency model validation: predicted vs measured per-hop latency on every backend this
machine can run, for models the profile tables never saw.

    python benchmarks/latency_model.py [--targets x86-openvino,generic-onnx,x86-litert] [--sweep]

--sweep rebuilds profiles/<target>.json (the sweep of `hwcompress profile --sweep`), timing
the sweep's models and the held-out ones in the same interleaved rounds. Each held-out
model is exported in fp32 and int8, timed here (the median over rounds of the median of
--runs hops, a fresh process per round) and predicted twice: by the profile table and by
the roofline from the target's perf parameters. Two held-out sets: *fresh* (random prunings
of the shipped model as `fit` produces them, and other architectures; fixed before it was
first measured) and *seen* (the earlier set, read while the features were chosen).
Writes benchmarks/latency_model.md and the measurements to benchmarks/latency_model.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np

from hwcompress.profile.latency_model import predict_latency
from hwcompress.profile.table import (load_table, profiles_dir, pruned_default_specs, refit, sweep_specs,
                                      table_from_timings, time_specs, write_table)
from hwcompress.search.sensitivity import atomic_json
from hwcompress.targets import load_target

from _reading import write_keeping_reading  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [16, 32, 64, 128, 256]


def held_out_seen() -> list[tuple[str, str, dict]]:
    """The first held-out set: its rows were read while the features were developed, so its
    score is not an unbiased one (kept to show the change)."""
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


def held_out_fresh() -> list[tuple[str, str, dict]]:
    """Fixed before its first measurement, never used to choose anything: 12 random prunings
    of the shipped model (another seed than the sweep's) and four other architectures."""
    return pruned_default_specs(12, seed=2) + [
        ("gru-h160x160x160", "rnn", {"cell": "gru", "hidden": [160, 160, 160]}),
        ("lstm-h640", "rnn", {"cell": "lstm", "hidden": [640]}),
        ("crn-gru-c0.75-h512", "crn", {"channels": [12, 24, 48, 96, 192], "hidden": [512], "cell": "gru"}),
        ("gcrn-c0.5-h384x384", "gcrn", {"channels": [8, 16, 32, 64, 128], "hidden": [384, 384]}),
    ]


SETS = {"fresh": held_out_fresh, "seen": held_out_seen}


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

    command = (f"python benchmarks/latency_model.py --targets {args.targets}" + (" --sweep" if args.sweep else "")
               + (" --refit" if args.refit else "") + (" --reuse" if args.reuse else "")
               + f" --runs {args.runs} --repeats {args.repeats}")
    lines = ["# Latency model: predicted vs measured", "", f"Command: `{command}`", "",
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

    held = [(set_name, spec) for set_name, make in SETS.items() for spec in make()]
    held_specs = [spec for _, spec in held]
    for name in args.targets.split(","):
        target = load_target(name)
        backend = RUNTIME_BACKENDS[target.runtime]
        get_backend(backend)
        keys = {(label, w): f"{name}/{label}/{w}" for _, (label, _, _) in held for w in ("fp32", "int8")}
        timed_now = not (args.reuse and all(k in stored for k in keys.values()))
        timed: list[dict] = []
        if args.sweep or (timed_now and load_table(target) is None):
            # the sweep and the held-out models in the same interleaved rounds: a slow hour
            # of the host then moves the table and the measurements it is judged on alike
            print(f"sweeping {name} with the held-out models ...", file=sys.stderr, flush=True)
            specs = sweep_specs()
            sweep_labels = {label for label, _, _ in specs}
            assert not sweep_labels & {label for label, _, _ in held_specs}, "a held-out model is in the sweep"
            timed = time_specs(specs + held_specs, backend, target.threads, args.runs, args.repeats)
            write_table(table_from_timings(target, [t for t in timed if t["model"] in sweep_labels], args.runs,
                                           args.repeats, command=f"{command} (sweep and held-out models timed in "
                                                                 "the same rounds)"))
        elif args.refit:
            write_table(refit(json.loads((profiles_dir() / f"{name}.json").read_text())))
        elif timed_now:  # held-out artifacts alone, in interleaved rounds (see table.time_specs)
            timed = time_specs(held_specs, backend, target.threads, args.runs, args.repeats)
        for t in timed:
            if (t["model"], t["weights"]) in keys:  # the held-out rows (a sweep's rows are in the table)
                measured_store[keys[t["model"], t["weights"]]] = t["repeat_ms"]
        table = load_table(target)
        lines += [f"## {name}: {backend} {runtime_version(backend)}, {target.threads} thread(s)", "",
                  f"Table: {table['provenance']}.", "",
                  "| held-out set | model | weights | params | measured ms | spread | table ms | error | roofline ms | error |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        errs: dict[str, list[float]] = {k: [] for k in SETS}
        errs_roof, spreads = [], []
        for set_name, (label, arch, config) in held:
            model = zoo.build(arch, config).eval()
            for weights, bits in (("fp32", 32), ("int8", 8)):
                repeat_ms = measured_store[keys[label, weights]]
                pred = predict_latency(model, target, bits)
                roof = pred.roofline_ms
                tab = pred.latency_ms if pred.latency_model == "profile table" else float("nan")
                measured = float(np.median(repeat_ms))
                spread = (max(repeat_ms) - min(repeat_ms)) / measured
                et, er = tab / measured - 1, roof / measured - 1
                errs[set_name].append(et)
                errs_roof.append(er)
                spreads.append(spread)
                lines.append(f"| {set_name} | {label} | {weights} | {sum(p.numel() for p in model.parameters())} | "
                             f"{measured:.3f} | {100 * spread:.0f}% | {tab:.3f} | {100 * et:+.1f}% | {roof:.3f} | "
                             f"{100 * er:+.1f}% |")
                print(lines[-1], file=sys.stderr, flush=True)
        if timed_now:
            commands[name] = f"Command: `{command}` ({date.today().isoformat()})"
        lines += ["", f"Held-out rows timed by: {commands.get(name, 'an earlier run')}.", ""]
        for set_name, e in errs.items():
            a = np.abs(e)
            lines.append(f"- {set_name} held-out: table within +/-10%: **{100 * np.mean(a <= 0.10):.0f}%** of {len(a)} "
                         f"predictions (median |error| {100 * np.median(a):.1f}%, within +/-15%: "
                         f"{100 * np.mean(a <= 0.15):.0f}%, worst {100 * a.max():.0f}%)")
        ar = np.abs(errs_roof)
        lines += [f"- roofline within +/-10%: {100 * np.mean(ar <= 0.10):.0f}% (median |error| {100 * np.median(ar):.1f}%)",
                  f"- measurement spread: median {100 * np.median(spreads):.0f}%, "
                  f"{100 * np.mean(np.array(spreads) > 0.10):.0f}% of rows above 10%", ""]
        summary.append((name, {k: (float(np.mean(np.abs(e) <= 0.10)), len(e)) for k, e in errs.items()},
                        float(np.mean(ar <= 0.10))))
    lines += ["## Summary", "", "| target | fresh held-out within +/-10% | seen held-out within +/-10% | predictions "
              "| roofline within +/-10% |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, by_set, wr in summary:
        lines.append(f"| {name} | {100 * by_set['fresh'][0]:.0f}% | {100 * by_set['seen'][0]:.0f}% | "
                     f"{by_set['fresh'][1]} + {by_set['seen'][1]} | {100 * wr:.0f}% |")
    lines.append("")
    for set_name in SETS:
        n = sum(by_set[set_name][1] for _, by_set, _ in summary)
        share = sum(by_set[set_name][0] * by_set[set_name][1] for _, by_set, _ in summary) / max(1, n)
        lines += [f"All backends, {set_name} held-out: {100 * share:.0f}% of {n} predictions within +/-10% "
                  "(goal: 90%).", ""]
    write_keeping_reading(args.table, "\n".join(lines) + "\n")
    atomic_json(store_path, {"commands": commands, "measured_ms": measured_store})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
