"""The combined report of a multi-target fit (search/multi.py): report.json, report.md and a
self-contained report.html in --out, beside each target's own report in --out/<target>/.

Per target: a Pareto table of its budgets (latency against PESQ-WB; a row is on the front when
no other row of that target is both faster and better), with the bytes, RAM and how each
latency was had. Then the engine (serial or Ray, workers, nodes) and the task table: every
task's stage, machine, seconds and attempt (a retry after a worker died shows as attempt 2).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from hwcompress.search.html import esc, num, table
from hwcompress.search.report import _atomic_write, _fmt, pareto


def pareto_rows(budgets: list[dict]) -> list[dict]:
    """The rows with `pareto`: True where no other met row is faster and better (PESQ-WB)."""
    met = [i for i, r in enumerate(budgets) if r["budget_met"]]
    front = {met[j] for j in pareto([(budgets[i]["latency_ms"], budgets[i]["pesq_wb"]) for i in met])}
    return [{**r, "pareto": i in front} for i, r in enumerate(budgets)]


def stage_summary(tasks: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = defaultdict(list)
    for t in tasks:
        by[t["phase"]].append(t)
    rows = []
    for phase, ts in by.items():
        start = min(t["started"] for t in ts)
        end = max(t["started"] + t["seconds"] for t in ts)
        rows.append({"stage": phase, "tasks": len(ts), "task_seconds": sum(t["seconds"] for t in ts),
                     "longest_seconds": max(t["seconds"] for t in ts), "wall_seconds": end - start,
                     "retried": sum(t["attempt"] > 1 for t in ts), "failed": sum(bool(t["error"]) for t in ts)})
    return rows


def markdown(report: dict) -> str:
    e = report["engine"]
    lines = [f"# hwcompress fit: {report['model']} on {', '.join(report['targets'])}", ""]
    if report.get("command"):
        lines += [f"`{report['command']}`", ""]
    where = (f"{e['kind']}" + (f", {e['workers']} worker(s)" if e.get("workers") else "")
             + (f", cluster {e['address']}" if e.get("address") else "") + (f", Ray {e['ray_version']}" if e.get("ray_version") else "")
             + f", {len(e.get('nodes') or [])} node(s), {e.get('torch_threads_per_task')} torch thread(s) per task")
    lines += [f"Engine: {where}. Wall time {report['seconds']:.0f} s; the tasks' own time adds up to "
              f"{report['task_seconds']:.0f} s.", ""]
    for t in report["targets"]:
        pt = report["per_target"][t]
        lines += [f"## {t}", ""]
        if pt["error"]:
            lines += [f"Not fitted: {pt['error']}", ""]
            continue
        if pt.get("report"):
            lines += [f"Full report: [{pt['report']}]({pt['report']}) (also .md and .html beside it).", ""]
        rows = pareto_rows(pt["budgets"])
        if rows:
            r0 = rows[0]
            lines += [f"Runtime {r0['runtime']} {r0['runtime_version'] or ''}, {r0['threads']} thread(s); "
                      f"dense PESQ-WB {r0['dense_pesq_wb']:.3f}, noisy {r0['noisy_pesq_wb']:.3f}.", "",
                      "| budget ms | latency ms | how | met | Pareto | runtime B | .hwc B | peak RAM B | PESQ-WB | STOI | SI-SDR |",
                      "| ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in sorted(rows, key=lambda r: r["latency_ms"]):
                lines.append(f"| {r['budget_ms']:g} | {r['latency_ms']:.3f} | {r['latency_source']} | "
                             f"{'yes' if r['budget_met'] else 'NO'} | {'*' if r['pareto'] else ''} | {r['runtime_bytes']} | "
                             f"{r['hwc_bytes']} | {_fmt(r['peak_memory_bytes'])} | {r['pesq_wb']:.3f} | {r['stoi']:.3f} | "
                             f"{r['si_sdr']:.2f} |")
            lines.append("")
        for u in pt.get("unmet") or []:
            lines.append(f"- {u['budget_ms']:g} ms not fitted: {u['why']}")
        if pt.get("unmet"):
            lines.append("")
    lines += ["## Tasks", "", "| stage | tasks | task s | longest s | wall s | retried | failed |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in stage_summary(report["tasks"]):
        lines.append(f"| {s['stage']} | {s['tasks']} | {s['task_seconds']:.1f} | {s['longest_seconds']:.1f} | "
                     f"{s['wall_seconds']:.1f} | {s['retried']} | {s['failed']} |")
    lines += ["", "Every task (report.json `tasks`): name, stage, node, host, pid, start, seconds, attempt, error.", ""]
    return "\n".join(lines)


def html(report: dict) -> str:
    parts = [f"<h1>hwcompress fit: {esc(report['model'])} on {esc(', '.join(report['targets']))}</h1>"]
    if report.get("command"):
        parts.append(f"<p><code>{esc(report['command'])}</code></p>")
    e = report["engine"]
    parts.append(f"<p>Engine {esc(e['kind'])}, {len(e.get('nodes') or [])} node(s); wall {report['seconds']:.0f} s, "
                 f"task time {report['task_seconds']:.0f} s.</p>")
    for t in report["targets"]:
        pt = report["per_target"][t]
        parts.append(f"<h2>{esc(t)}</h2>")
        if pt["error"]:
            parts.append(f"<p>Not fitted: {esc(pt['error'])}</p>")
            continue
        if pt.get("report"):
            link = str(Path(pt["report"]).with_suffix(".html"))
            parts.append(f'<p><a href="{esc(link)}">{esc(link)}</a></p>')
        rows = sorted(pareto_rows(pt["budgets"]), key=lambda r: r["latency_ms"])
        parts.append(table(["budget ms", "latency ms", "how", "met", "Pareto", "runtime B", ".hwc B", "PESQ-WB", "STOI"],
                           [[f"{r['budget_ms']:g}", num(r["latency_ms"]), r["latency_source"],
                             "yes" if r["budget_met"] else "NO", "*" if r["pareto"] else "", r["runtime_bytes"],
                             r["hwc_bytes"], num(r["pesq_wb"]), num(r["stoi"])] for r in rows], tid=f"pareto-{t}"))
        for u in pt.get("unmet") or []:
            parts.append(f"<p>{u['budget_ms']:g} ms not fitted: {esc(u['why'])}</p>")
    parts.append("<h2>Tasks</h2>")
    parts.append(table(["task", "stage", "host", "seconds", "attempt", "error"],
                       [[t["name"], t["phase"], t["host"], num(t["seconds"], 1), t["attempt"], t["error"] or ""]
                        for t in report["tasks"]], tid="tasks"))
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>hwcompress fit</title>"
            f"<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}table{{border-collapse:collapse}}"
            f"td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>{body}</body></html>")


def write_multi_report(report: dict, out: Path) -> None:
    out = Path(out)
    for t in report["targets"]:
        pt = report["per_target"][t]
        pt["budgets"] = pareto_rows(pt.get("budgets") or [])
    _atomic_write(out / "report.json", json.dumps(report, indent=1, default=float))
    _atomic_write(out / "report.md", markdown(report))
    _atomic_write(out / "report.html", html(report))
    if report.get("command"):
        _atomic_write(out / "command.txt", report["command"] + "\n")
