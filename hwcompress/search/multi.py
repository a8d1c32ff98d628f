"""`hwcompress fit` over several targets and budgets at once, as tasks on an engine
(search/engine.py: serial here, or Ray with `--workers N` / `--ray-address ADDR`).

Stages, each a set of independent tasks (the next starts when the last one's tasks are done):
  analysis  what depends on the model and corpus only, made once for every target: the
            pruning sensitivity of each group and the codebook sensitivity of each layer (one
            task each), and the dense model's quality on the test split; and per target its
            calibration and feasibility (the dense and most pruned models exported and, where
            the target can be measured, timed)
  plan      per target: the per-layer codebook sizes (the joint check runs on the target's
            integer grids) from the shared sensitivities
  budgets   per (target, budget): allocate -> compress -> export -> verify -> quality, exactly
            what a one-target fit does for that budget (search/fit.py fit_budget)

Layout under --out: one target keeps a one-target fit's layout (report.* in --out); several
targets put each target's fit in --out/<target>/ (its own report.json/.md/.html) with the shared
analysis in --out/sensitivity/ and --out/baseline-quality.json, and a combined report (a Pareto
table per target, the engine, every task's record) in --out/report.json/.md/.html.

Results equal a serial run's for the same settings: every task starts from the same cached
state (each budget from the target's calibration, search/fit.py prepare), scores and
clustering are deterministic, and torch runs each task with --torch-threads threads; measured
targets differ only as far as their timings do (timings hold the machine alone: hostlock).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from hwcompress.errors import HwcError
from hwcompress.search import sensitivity as sens
from hwcompress.search.engine import Call, Outcome, RayEngine, SerialEngine
from hwcompress.search.fit import (BudgetResult, FitConfig, Fitter, assemble, baseline_quality, fit_budget, plan,
                                   prepare, sensitivity_items)
from hwcompress.targets import load_target
from hwcompress.workdir import OutputLock, check_writable

MULTI_SCHEMA = 1


def _log(prefix: str) -> Callable[[str], None]:
    return lambda m: print(f"[{prefix}] {m}", file=sys.stderr, flush=True)


def _data(cfg: FitConfig) -> Path:
    from hwcompress.data.corpus import ensure_default_corpus

    return Path(cfg.data) if cfg.data is not None else ensure_default_corpus()


def _model(cfg: FitConfig, model: torch.nn.Module | None) -> torch.nn.Module:
    from hwcompress.models.io import load_model

    return (model if model is not None else load_model(cfg.model, cfg.model_weights)).eval()


# ---------------------------------------------------------------- tasks (module level: Ray pickles them by name)


def _pool(spec: dict | None, target: str) -> Any:
    """The device pool for `target` (profile/pool.py), rebuilt in each task from its spec (a task
    may run in another process or machine); None when no pool is given or none of its hosts
    serves the target (then the target is timed here or predicted, as without a pool)."""
    if not spec:
        return None
    from hwcompress.profile.pool import build_pool

    pool = build_pool(**spec, log=_log("pool"))
    return pool if pool is not None and pool.serves(load_target(target)) else None


def _prepare(cfg: FitConfig, log: Callable[[str], None], model: torch.nn.Module | None, pool: dict | None) -> Fitter:
    return prepare(cfg, log, model, strict=False, pool=_pool(pool, cfg.target))


def task_prepare(cfg: FitConfig, model: torch.nn.Module | None, pool: dict | None = None) -> dict:
    f = _prepare(cfg, _log(f"{cfg.target}"), model, pool)
    return {"unreachable": {f"{b:g}": why for b, why in f.unreachable.items()}, "measurable": f.measurable,
            "floor_ms": f.floor_ms, "floor_how": f.floor_how}


def task_baseline(cfg: FitConfig, model: torch.nn.Module | None) -> dict:
    f = Fitter(cfg, _log("dense quality"), model)
    f.data = _data(cfg)
    return baseline_quality(f)


def _sensitivity(cfg: FitConfig, model: torch.nn.Module | None) -> tuple[torch.nn.Module, list[dict], Path]:
    """The dense model on the fit's torch device (--device), its validation items, the cache folder."""
    from hwcompress.device import placed, resolve_device

    net = placed(_model(cfg, model), resolve_device(cfg.device))
    return net, sensitivity_items(net, _data(cfg), cfg), Path(cfg.shared or cfg.out) / "sensitivity"


def task_structured(cfg: FitConfig, model: torch.nn.Module | None, group: str, base: float | None) -> dict:
    net, items, folder = _sensitivity(cfg, model)
    sens.structured_part(net, items, folder / "structured.json", group, base=base)
    return {"group": group}


def task_codebook(cfg: FitConfig, model: torch.nn.Module | None, layer: str) -> dict:
    net, items, folder = _sensitivity(cfg, model)
    sens.codebook_part(net, items, folder / "codebooks.json", layer)
    return {"layer": layer}


def task_codebook_base(cfg: FitConfig, model: torch.nn.Module | None) -> dict:
    net, items, folder = _sensitivity(cfg, model)
    store = sens.codebook_header(net, items, folder / "codebooks.json")
    return {"base": store["base"]}


def task_plan(cfg: FitConfig, model: torch.nn.Module | None, pool: dict | None = None) -> dict:
    f = _prepare(cfg, _log(f"{cfg.target}"), model, pool)
    return {"ks": plan(f).ks}


def task_budget(cfg: FitConfig, model: torch.nn.Module | None, budget: float, pool: dict | None = None) -> BudgetResult:
    log = _log(f"{cfg.target} {budget:g} ms")
    f = _prepare(cfg, log, model, pool)
    if budget in f.unreachable:
        raise HwcError(f.unreachable[budget])
    p = plan(f)
    return fit_budget(f, p, budget, baseline_quality(f))


# ---------------------------------------------------------------- the run


def fit_many(cfg: FitConfig, targets: list[str], engine: str = "serial", workers: int | None = None,
             address: str | None = None, log: Callable[[str], None] = _log("fit"),
             model: torch.nn.Module | None = None, pool: dict | None = None) -> dict:
    """Fit `cfg`'s model to every target in `targets` and every budget in cfg.budgets_ms, each
    (target, budget) a task. engine "serial": in this process; "ray": `workers` task slots on a
    local Ray runtime, or the cluster at `address`. `pool`: build_pool's arguments (host, port,
    identity, remote_python, pool_file) of a device pool timing the targets its hosts serve.
    Returns the combined report (written to cfg.out)."""
    if not targets:
        raise HwcError("--target names no target")
    if len(set(targets)) != len(targets):
        raise HwcError(f"--target lists a target twice: {','.join(targets)}")
    for t in targets:  # every name checked before any work: one line for an unknown one
        load_target(t)
    out = Path(cfg.out)
    check_writable(out, "dir")
    # stdout is for the results (--json): Ray forwards its workers' and raylets' lines to the
    # driver's stdout, so during the run everything printed goes to stderr, beside our logs
    with OutputLock(out, inside=True), contextlib.redirect_stdout(sys.stderr):
        from hwcompress.device import resolve_device

        # Ray hides GPUs from a task that asks for none: a CUDA fit's tasks ask for one each
        gpus = 1 if engine == "ray" and resolve_device(cfg.device).type == "cuda" else 0
        eng = (RayEngine(out, workers=workers, address=address, task_cpus=cfg.torch_threads or 1, task_gpus=gpus,
                         log=log)
               if engine == "ray" else SerialEngine(cfg.torch_threads, out / ".tasks" / "serial"))
        try:
            return _run(cfg, targets, eng, log, model, pool)
        finally:
            eng.close()


def _run(cfg: FitConfig, targets: list[str], eng: SerialEngine | RayEngine, log: Callable[[str], None],
         model: torch.nn.Module | None, pool: dict | None) -> dict:
    started = time.time()
    out = Path(cfg.out)
    one = len(targets) == 1
    cfgs = {t: replace(cfg, target=t, out=out if one else out / t, shared=out) for t in targets}
    first = cfgs[targets[0]]
    records: list[dict] = []

    def run(calls: list[Call], stage: str) -> list[Outcome]:
        log(f"{stage}: {len(calls)} task(s) on {eng.kind}"
            + (f" ({eng.workers} worker(s))" if eng.kind == "ray" and eng.workers else ""))
        outcomes = eng.run(calls, log)
        records.extend(o.record.to_dict() for o in outcomes)
        return outcomes

    # analysis: the shared sensitivities, the dense quality, each target's calibration
    net, items, _ = _sensitivity(first, model)
    groups, layers = sens.structured_groups(net), sens.codebook_layers(net)
    base = float(sens.score_fn(items)(net))  # every group's intact score: computed once, not per task
    analysis = ([Call(f"calibrate {t}", "analysis", task_prepare, (cfgs[t], model, pool)) for t in targets]
                + [Call("dense quality", "analysis", task_baseline, (first, model)),
                   Call("codebook sensitivity base", "analysis", task_codebook_base, (first, model))]
                + [Call(f"pruning sensitivity {g}", "analysis", task_structured, (first, model, g, base)) for g in groups]
                + [Call(f"codebook sensitivity {lay}", "analysis", task_codebook, (first, model, lay)) for lay in layers])
    done = {c.name: o for c, o in zip(analysis, run(analysis, "analysis"))}
    failed = {t: done[f"calibrate {t}"].record.error for t in targets if done[f"calibrate {t}"].record.error}
    for what in ("dense quality", "codebook sensitivity base", *(f"pruning sensitivity {g}" for g in groups),
                 *(f"codebook sensitivity {lay}" for lay in layers)):
        if done[what].record.error:  # not a target's problem: the model or corpus is
            raise HwcError(done[what].record.error)
    unreachable = {t: {float(b): why for b, why in done[f"calibrate {t}"].result["unreachable"].items()}
                   for t in targets if t not in failed}

    # plan: per target, the codebooks on its grids
    planned = [t for t in targets if t not in failed]
    plans = [Call(f"codebooks {t}", "plan", task_plan, (cfgs[t], model, pool)) for t in planned]
    for c, o in zip(plans, run(plans, "plan")):
        if o.record.error:
            failed[c.args[0].target] = o.record.error

    # budgets: one task per (target, budget) the target can reach
    pairs = [(t, b) for t in targets if t not in failed for b in _budgets(cfgs[t])]
    calls = [Call(f"budget {t} {b:g}ms", "budgets", task_budget, (cfgs[t], model, b, pool))
             for t, b in pairs if b not in unreachable[t]]
    results: dict[tuple[str, float], Outcome] = {}
    for c, o in zip(calls, run(calls, "budgets")):
        results[(c.args[0].target, c.args[2])] = o

    # reports: each target's own, then the combined one
    per_target: dict[str, dict] = {}
    for t in targets:
        if t in failed:
            per_target[t] = {"error": failed[t], "report": None, "budgets": []}
            continue
        ok, unmet = [], []
        for b in _budgets(cfgs[t]):
            o = results.get((t, b))
            if o is None:
                unmet.append({"budget_ms": b, "why": unreachable[t][b]})
            elif o.record.error:
                unmet.append({"budget_ms": b, "why": o.record.error})
            else:
                ok.append(o.result)
        report_path = None
        if ok:
            from hwcompress.search.report import write_reports

            f = _prepare(cfgs[t], _log(t), model, pool)  # every stage cached: seconds
            rep = assemble(f, plan(f), ok, time.time() - started, write=False)
            rep.update(unmet=unmet, engine=eng.describe())
            if one:  # the run is this target's fit: its report holds the tasks too
                rep["tasks"] = records
            write_reports(rep, Path(cfgs[t].out), f.model, data=f.data, target=f.target)
            if one:
                return rep
            report_path = str(Path(t) / "report.json")
        per_target[t] = {"error": None, "report": report_path, "budgets": [_row(r.to_json()) for r in ok], "unmet": unmet}
    if one:  # one target, no budget reached: a one-target fit says so in one line
        raise HwcError(per_target[targets[0]].get("error") or "; ".join(u["why"] for u in per_target[targets[0]]["unmet"]))
    report = {
        "schema": MULTI_SCHEMA,
        "kind": "multi-target fit",
        "command": "hwcompress " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None,
        "model": cfg.model,
        "targets": targets,
        "budgets_ms": cfg.budgets_ms,
        "engine": eng.describe(),
        "seconds": time.time() - started,
        "task_seconds": sum(r["seconds"] for r in records),
        "per_target": per_target,
        "tasks": records,
    }
    from hwcompress.search.multi_report import write_multi_report

    write_multi_report(report, out)
    return report


def _budgets(cfg: FitConfig) -> list[float]:
    target = load_target(cfg.target)
    return sorted(set(cfg.budgets_ms or [target.latency_budget_ms]), reverse=True)


def _row(r: dict) -> dict:
    q = r["quality"]
    return {"budget_ms": r["budget_ms"], "latency_ms": r["latency_ms"], "latency_source": r["latency_source"],
            "device": r.get("device"), "runtime": r["runtime"], "runtime_version": r["runtime_version"],
            "threads": r["threads"], "budget_met": r["budget_met"], "runtime_bytes": r["runtime_artifact_bytes"],
            "hwc_bytes": r["size_bytes"], "peak_memory_bytes": r["peak_memory_bytes"],
            "pesq_wb": q["compressed"]["pesq_wb"], "stoi": q["compressed"]["stoi"], "si_sdr": q["compressed"]["si_sdr"],
            "dense_pesq_wb": q["baseline"]["pesq_wb"], "noisy_pesq_wb": q["noisy"]["pesq_wb"],
            "ratios": r["allocation"]["ratios"]}
