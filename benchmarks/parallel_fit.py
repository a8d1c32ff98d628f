"""Wall time of a three-target, three-budget fit: serial vs `--workers 2` on this machine, side by
side in one run, and a scaling estimate for 8 and 32 workers from the measured task times.

    .venv/bin/python benchmarks/parallel_fit.py [--out runs/parallel_fit] [--model default] [--budgets 2,4,8]

Both runs fit the same model to raspberrypi4, x86-openvino and generic-onnx at --budgets (2, 4, 8 ms)
with the same (shortened) settings, into fresh folders, so neither reuses the other's caches:
  serial     no Ray; torch with its default threads (all cores), one task after another
  workers 2  a local Ray runtime with two task slots; each task one torch thread

The estimate for N workers replays the parallel run's measured tasks (their own seconds, on one
core each) through the same three stages: within a stage, the tasks go longest first to the
worker that frees up first (LPT list scheduling); a stage starts when the one before ends; the
driver's own time (loading, reports) is added as measured. It assumes N workers on N cores with
no shared-memory contention, so it is an upper bound on the speedup, and it says where the run
stops scaling: a stage can never be shorter than its longest task.

Writes benchmarks/parallel_fit.md (and .json) with the command.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _reading import write_keeping_reading  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
TARGETS = "raspberrypi4,x86-openvino,generic-onnx"
BUDGETS = "2,4,8"
SETTINGS = ["--prune-steps", "30", "--cluster-steps", "10", "--eval-items", "8", "--measure-runs", "100",
            "--no-dnsmos"]


def fit(out: Path, model: str, extra: list[str], budgets: str = BUDGETS) -> tuple[dict, float, str]:
    cmd = [sys.executable, "-m", "hwcompress", "fit", "--target", TARGETS, "--budget-ms", budgets, "--model", model,
           "--out", str(out), "--json", *SETTINGS, *extra]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - started
    (out.parent / f"{out.name}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout)
    # a target that failed (a runtime not installed) would leave its rows out of both tables unsaid
    failed = {t: pt["error"] for t, pt in report["per_target"].items() if pt.get("error")}
    if failed:
        sys.exit(f"{' '.join(cmd)}: target(s) failed, the comparison would be incomplete: {failed}")
    return report, wall, "hwcompress " + " ".join(cmd[3:])


def lpt(durations: list[float], workers: int) -> float:
    """Makespan of longest-first list scheduling of `durations` on `workers` workers."""
    free = [0.0] * workers
    heapq.heapify(free)
    for d in sorted(durations, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def estimate(report: dict, wall: float, workers: int) -> dict:
    tasks = report["tasks"]
    stages = {}
    for t in tasks:
        stages.setdefault(t["phase"], []).append(t["seconds"])
    spans = {}
    for phase, ts in stages.items():
        starts = [t["started"] for t in tasks if t["phase"] == phase]
        ends = [t["started"] + t["seconds"] for t in tasks if t["phase"] == phase]
        spans[phase] = max(ends) - min(starts)
    driver = wall - sum(spans.values())  # loading, items, reports: measured, not parallel
    makespans = {phase: lpt(ts, workers) for phase, ts in stages.items()}
    return {"workers": workers, "seconds": driver + sum(makespans.values()), "driver_seconds": driver,
            "stages": {p: {"tasks": len(stages[p]), "makespan": makespans[p], "longest": max(stages[p])}
                       for p in stages}}


def allocations(report: dict) -> dict:
    return {t: {f"{r['budget_ms']:g}": {g: v for g, v in r["ratios"].items() if v} for r in pt["budgets"]}
            for t, pt in report["per_target"].items() if not pt["error"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "parallel_fit")
    ap.add_argument("--model", default="default")
    ap.add_argument("--budgets", default=BUDGETS, help="--budget-ms of both fits (ms, comma-separated)")
    ap.add_argument("--measure-rounds", type=int, default=1,
                    help="--measure-rounds of both fits (fresh-process rounds per timing, the slowest kept)")
    ap.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "parallel_fit.md",
                    help="the Markdown written (its .json beside it); a hand-written reading section is kept")
    args = ap.parse_args()
    args.table = args.table.resolve()
    rounds = ["--measure-rounds", str(args.measure_rounds)] if args.measure_rounds != 1 else []
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    serial, serial_wall, serial_cmd = fit(args.out / "serial", args.model, rounds, args.budgets)
    parallel, parallel_wall, parallel_cmd = fit(args.out / "workers2", args.model, [*rounds, "--workers", "2"], args.budgets)
    est = {n: estimate(parallel, parallel_wall, n) for n in (2, 8, 32)}
    import ray
    import torch

    result = {
        "command": "python benchmarks/parallel_fit.py" + (f" --model {args.model}" if args.model != "default" else "")
                   + (f" --budgets {args.budgets}" if args.budgets != BUDGETS else "")
                   + (f" --measure-rounds {args.measure_rounds}" if rounds else "")
                   + (f" --table {args.table.relative_to(ROOT)}" if args.table != Path(ap.get_default("table")).resolve() else ""),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
        "serial": {"command": serial_cmd, "wall_seconds": serial_wall, "task_seconds": serial["task_seconds"],
                   "engine": serial["engine"]},
        "workers2": {"command": parallel_cmd, "wall_seconds": parallel_wall, "task_seconds": parallel["task_seconds"],
                     "engine": parallel["engine"]},
        "speedup": serial_wall / parallel_wall,
        "estimate": est,
        "allocations": {"serial": allocations(serial), "workers2": allocations(parallel)},
        "same_allocations": allocations(serial) == allocations(parallel),
        "rows": {name: {t: pt["budgets"] for t, pt in rep["per_target"].items()}
                 for name, rep in (("serial", serial), ("workers2", parallel))},
    }
    from hwcompress.search.multi_report import stage_summary

    result["stages"] = {"serial": stage_summary(serial["tasks"]), "workers2": stage_summary(parallel["tasks"])}
    args.table.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
    write_keeping_reading(args.table, markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Parallel fit: serial vs `--workers 2`, and a scaling estimate", "",
             f"Command: `{r['command']}` ({m['cores']} cores, {m['cpu']}, Python {m['python']}, torch {m['torch']}, "
             f"Ray {m['ray']}). Both runs in one invocation, one after the other, into fresh folders.", "",
             f"- serial: `{r['serial']['command']}`",
             f"- workers 2: `{r['workers2']['command']}`", "",
             "| run | wall s | tasks' own s | speedup |", "| --- | ---: | ---: | ---: |",
             f"| serial (torch default threads) | {r['serial']['wall_seconds']:.0f} | {r['serial']['task_seconds']:.0f} | 1.00x |",
             f"| --workers 2 (1 torch thread per task) | {r['workers2']['wall_seconds']:.0f} | "
             f"{r['workers2']['task_seconds']:.0f} | {r['speedup']:.2f}x |", "",
             "Stages (wall s of each stage; tasks' own s added up; the longest task):", "",
             "| run | stage | tasks | wall s | tasks' s | longest s |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in ("serial", "workers2"):
        for s in r["stages"][name]:
            lines.append(f"| {name} | {s['stage']} | {s['tasks']} | {s['wall_seconds']:.0f} | {s['task_seconds']:.0f} | "
                         f"{s['longest_seconds']:.0f} |")
    lines += ["", "Scaling estimate from the `--workers 2` run's measured tasks (LPT per stage, stages in sequence, "
              "the driver's measured time added; N workers on N cores, no contention: an upper bound):", "",
              "| workers | estimated wall s | speedup vs serial | analysis s | plan s | budgets s | longest budget task s |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, e in r["estimate"].items():
        st = e["stages"]
        lines.append(f"| {n} | {e['seconds']:.0f} | {r['serial']['wall_seconds'] / e['seconds']:.2f}x | "
                     f"{st.get('analysis', {}).get('makespan', 0):.0f} | {st.get('plan', {}).get('makespan', 0):.0f} | "
                     f"{st.get('budgets', {}).get('makespan', 0):.0f} | {st.get('budgets', {}).get('longest', 0):.0f} |")
    lines += ["", f"Same allocations (group ratios per target and budget) serially and in parallel: "
              f"{'yes' if r['same_allocations'] else 'no (see parallel_fit.json: measured targets allocate on timings)'}.",
              "", "Results per target (PESQ-WB of the fitted model; latency and how it was had):", "",
              "| target | budget ms | serial latency ms | workers-2 latency ms | how | serial PESQ-WB | workers-2 PESQ-WB |",
              "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for t, rows in r["rows"]["serial"].items():
        other = {x["budget_ms"]: x for x in r["rows"]["workers2"].get(t, [])}
        for x in rows:
            y = other.get(x["budget_ms"], {})
            lines.append(f"| {t} | {x['budget_ms']:g} | {x['latency_ms']:.3f} | {y.get('latency_ms', float('nan')):.3f} | "
                         f"{x['latency_source']} | {x['pesq_wb']:.3f} | {y.get('pesq_wb', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
