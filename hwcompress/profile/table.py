"""Measured profile tables: a sweep of model shapes timed on the device, and the latency
model fitted to it.

`hwcompress profile --sweep --target NAME` exports a spread of zoo architectures (CRN, LSTM
and GRU maskers at several widths, and random structured prunings of the shipped model as
`fit` produces them; random weights: speed does not depend on the values) to the target's
runtime in fp32 and int8, times each streaming hop on this machine and stores
every row with its per-kind shape features in profiles/<target>.json, with provenance (CPU,
runtime version, threads, date, command).

The fitted model is a per-precision non-negative least-squares fit of
    ms = c0 + c1 * weight layers + c2 * Conv2d MACs + c3 * ConvTranspose2d MACs
         + c4 * LSTM MACs + c5 * GRU MACs + c6 * Linear MACs
         + c7 * weight bytes + sum over knots k of c_k * weight bytes beyond k x last-level cache
i.e. the roofline's terms (dispatch overhead, compute per layer kind, weight traffic, the
cache cliff) with coefficients measured instead of taken from peak figures. Kinds are
separate because runtimes treat them differently (onnxruntime's dynamic quantization has
an int8 LSTM kernel but runs GRU in fp32; the fp32 fits here cost a ConvTranspose2d MAC at
3-6x a Conv2d MAC on all three runtimes). Non-negative, because every term is a cost; a fit that wanted a
negative coefficient would be fitting noise. Each sweep point is the median of several
interleaved timing rounds (`time_specs`), since one process's median moves by several
percent with host load. The
sweep's own points and a held-out set (benchmarks/latency_model.py) show how
well it predicts.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hwcompress.errors import HwcError
from hwcompress.targets import Target

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
TABLE_FORMAT = 2
BASE_CHANNELS = [16, 32, 64, 128, 256]


def profiles_dir() -> Path:
    return Path(os.environ.get("HWCOMPRESS_PROFILES", PROFILES_DIR))


def sweep_specs() -> list[tuple[str, str, dict]]:
    """(label, arch, config) of the sweep: widths from 4k to 19M parameters, dense between
    3M and 19M where the pruned shapes `fit` tries live (a fit is only as good as the
    shapes around the point it predicts)."""
    specs = []
    for scale in (0.25, 0.5, 1.0):
        channels = [max(2, int(c * scale)) for c in BASE_CHANNELS]
        for hidden in ([128], [256, 256], [512, 512], [1024, 1024]):
            specs.append((f"crn-c{scale:g}-h{'x'.join(map(str, hidden))}", "crn", {"channels": channels, "hidden": hidden}))
    # between the grid points above: mid widths, unequal recurrent layers, and the default's
    # encoder with pruned projections / decoders as structural pruning leaves them
    for channels, hidden, extra in (
        ([12, 24, 48, 96, 192], [256, 256], {}),
        ([12, 24, 48, 96, 192], [1024], {}),
        ([16, 32, 64, 96, 192], [512, 1024], {}),
        (BASE_CHANNELS, [768, 384], {"proj_channels": 128}),
        (BASE_CHANNELS, [256, 256], {"proj_channels": 64, "dec_channels": [64, 32, 16, 8]}),
        (BASE_CHANNELS, [1024, 256], {"proj_channels": 192, "dec_channels": [128, 64, 32, 16]}),
        ([16, 24, 48, 64, 128], [768, 768], {}),
    ):
        label = f"crn-{'-'.join(map(str, channels))}-h{'x'.join(map(str, hidden))}" + (
            f"-p{extra['proj_channels']}" if "proj_channels" in extra else "") + ("-d" if "dec_channels" in extra else "")
        specs.append((label, "crn", {"channels": channels, "hidden": hidden, **extra}))
    for hidden in ([128], [256, 256], [512, 512], [1024], [192], [768, 768]):
        specs.append((f"lstm-h{'x'.join(map(str, hidden))}", "rnn", {"cell": "lstm", "hidden": hidden}))
    for hidden in ([256], [512, 512], [384], [1024, 1024]):
        specs.append((f"gru-h{'x'.join(map(str, hidden))}", "rnn", {"cell": "gru", "hidden": hidden}))
    specs.append(("gcrn-c0.5-h256", "gcrn", {"channels": [8, 16, 16, 32, 64], "hidden": [256]}))
    specs.append(("gcrn-c0.25-h128", "gcrn", {"channels": [4, 8, 16, 32, 64], "hidden": [128]}))
    specs.append(("gcrn-c0.75-h768", "gcrn", {"channels": [12, 24, 48, 96, 192], "hidden": [768]}))
    # small stacks (tens of microseconds: the fixed per-layer cost dominates) and a CRN with
    # GRU cells, so the recurrent kinds are not only seen in one setting each
    specs.append(("gru-h192x192", "rnn", {"cell": "gru", "hidden": [192, 192]}))
    specs.append(("lstm-h96x96x96", "rnn", {"cell": "lstm", "hidden": [96, 96, 96]}))
    specs.append(("crn-gru-c0.5-h384x384", "crn", {"channels": [8, 16, 32, 64, 128], "hidden": [384, 384],
                                                    "cell": "gru"}))
    # what `fit` actually predicts: the shipped model with its groups pruned independently
    return specs + pruned_default_specs(12, seed=1)


#: the shipped model's architecture (hwcompress/pretrained/default.pt)
DEFAULT_CRN = {"channels": BASE_CHANNELS, "hidden": [1024, 1024]}
#: structured sparsities fit's search allocates per group
PRUNE_LEVELS = (0.0, 0.25, 0.5, 0.75)


def pruned_default_specs(n: int, seed: int) -> list[tuple[str, str, dict]]:
    """`n` shapes `fit` can produce from the shipped CRN: each prunable group (encoder
    stages, recurrent layers, bottleneck projection, decoder stages) keeps a fraction drawn
    independently from 1 - PRUNE_LEVELS, as shrink leaves it (a smaller dense model).
    Seeded, so the sweep (seed 1) and the latency benchmark's held-out set (another seed)
    are disjoint samples of the same space."""
    rng = np.random.default_rng(seed)
    base_dec = BASE_CHANNELS[-2::-1]

    def kept(width: int) -> int:
        return max(1, round(width * (1 - float(rng.choice(PRUNE_LEVELS)))))

    specs = []
    for i in range(n):
        channels = [kept(c) for c in BASE_CHANNELS]
        config = {"channels": channels, "hidden": [kept(h) for h in DEFAULT_CRN["hidden"]],
                  "proj_channels": kept(BASE_CHANNELS[-1]), "dec_channels": [kept(c) for c in base_dec]}
        specs.append((f"pruned-default-s{seed}.{i}", "crn", config))
    return specs


_KINDS = {"conv_macs": ("Conv2d", "Conv1d"), "deconv_macs": ("ConvTranspose2d", "ConvTranspose1d"), "lstm_macs": ("LSTM",),
          "gru_macs": ("GRU",), "linear_macs": ("Linear",)}
#: fractions of the last-level cache where the cost per weight byte may step up. A streaming
#: model reads every weight once per hop; measured here (onnxruntime, fp32) the effective read
#: bandwidth falls gradually from ~55 GB/s at 14 MB of weights to ~36 GB/s at 31 MB, well
#: before the 32 MiB L3 is full (other data, the VM's neighbours), so one cliff at the cache
#: size mispredicted the 25-45 MB models by 25-45%. Hinges at several fractions let the
#: non-negative fit draw that convex curve.
CACHE_KNOTS = (0.125, 0.375, 0.75, 1.5)


def _knot_key(frac: float) -> str:
    return f"weight_bytes_over_{frac:g}_cache"


FEATURES = ("const", "layers", *_KINDS, "weight_bytes", *(_knot_key(frac) for frac in CACHE_KNOTS))


def features(model: Any, weight_bits: int, cache_bytes: int, float_kinds: tuple[str, ...] = ()) -> dict[str, float]:
    """Shape features of `model` with `weight_bits` weights; `float_kinds` are layer kinds the
    backend leaves in fp32 when it quantizes (export.FLOAT_KINDS_WHEN_QUANTIZED)."""
    from hwcompress.models.cost import layer_costs

    rows = layer_costs(model)
    wb = sum(r["params"] * (32 if r["kind"] in float_kinds else weight_bits) / 8 for r in rows)
    f = {"const": 1.0, "layers": float(len(rows))}
    for key, names in _KINDS.items():
        f[key] = float(sum(r["macs_per_frame"] for r in rows if r["kind"] in names))
    f["weight_bytes"] = wb
    for frac in CACHE_KNOTS:
        f[_knot_key(frac)] = max(0.0, wb - frac * cache_bytes)
    return f


def _scale(key: str) -> float:
    # NNLS on raw MACs (1e7) next to a constant (1) is badly conditioned: fit in ms per unit
    return 1.0 if key in ("const", "layers") else 1e6


def fit_coefficients(rows: list[dict], keys: tuple[str, ...] | list[str] = FEATURES) -> dict[str, float]:
    from scipy.optimize import nnls

    a = np.array([[r["features"][k] / _scale(k) for k in keys] for r in rows])
    y = np.array([r["measured_ms"] for r in rows])
    # relative error matters (a 0.1 ms miss is nothing at 5 ms, everything at 0.2 ms): weight by 1/y
    coef, _ = nnls(a / y[:, None], np.ones_like(y))
    return {k: float(c / _scale(k)) for k, c in zip(keys, coef)}


def predict_from_table(table: dict, model: Any, weight_bits: int) -> float | None:
    fit = table.get("fits", {}).get("int8" if weight_bits <= 8 else "fp32")
    if not fit:
        return None
    f = features(model, weight_bits, table["cache_bytes"], _float_kinds(table.get("backend"), weight_bits))
    return float(sum(c * f[k] for k, c in fit.items()))


def _float_kinds(backend: str | None, weight_bits: int) -> tuple[str, ...]:
    from hwcompress.export import FLOAT_KINDS_WHEN_QUANTIZED

    return FLOAT_KINDS_WHEN_QUANTIZED.get(backend or "", ()) if weight_bits < 32 else ()


def load_table(target: Target) -> dict | None:
    path = profiles_dir() / f"{target.name}.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HwcError(f"{path}: unreadable profile table ({exc})") from None
    if table.get("format") != TABLE_FORMAT or table.get("runtime") != target.runtime:
        return None
    return table


def time_specs(specs: list[tuple[str, str, dict]], backend: str, threads: int, runs: int, repeats: int = 3,
               weights: tuple[str, ...] = ("fp32", "int8"), pool: Any = None, target: Target | None = None) -> list[dict]:
    """Export every (spec, weights) once, then time them in `repeats` interleaved rounds,
    each artifact in a fresh process per round. Returns one dict per artifact with
    `repeat_ms` (one median per round) and `median_ms` (their median).

    With a device `pool` (profile/pool.py) each round's artifacts are timed on the pool's hosts
    serving `target`, one at a time per host and the hosts at once; `repeat_hosts` names the
    host of each round's figure.

    Interleaved, not back to back: on this shared 2-vCPU host the slow periods last
    seconds to tens of seconds, so back-to-back repeats of one model land in the same
    period (measured: 0.43 / 0.78 / 0.79 / 0.81 / 0.47 ms for one OpenVINO IR), while a
    round across all models spreads each period over many models and the median of the
    rounds drops it."""
    import torch

    from hwcompress.export import get_backend
    from hwcompress.models import zoo
    from hwcompress.profile.measure import measure_artifact
    from hwcompress.progress import progress_bar

    items = [(label, arch, config, w) for w in weights for label, arch, config in specs]
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hwc-sweep-") as tmp, progress_bar() as bar:
        task = bar.add_task(f"export {len(items)} {backend} artifacts", total=len(items))
        for i, (label, arch, config, w) in enumerate(items):
            torch.manual_seed(0)
            model = zoo.build(arch, config).eval()
            path = get_backend(backend).export(model, Path(tmp) / str(i), "stream", weights=w)
            out.append({"model": label, "arch": arch, "config": config, "weights": w, "net": model, "path": path,
                        "repeat_ms": [], "runtime_repeat_ms": [], **({"repeat_hosts": []} if pool else {})})
            bar.advance(task)
        task = bar.add_task(f"time {len(items)} artifacts x {repeats} rounds", total=len(items) * repeats)
        for _ in range(max(1, repeats)):
            if pool is not None:
                timed = pool.parallel(target, [
                    functools.partial(pool.measure, target, item["path"], runs, 30, f"{item['model']} {item['weights']}")
                    for item in out], progress=lambda: bar.advance(task))
                for item, m in zip(out, timed):
                    item["repeat_ms"].append(m.median_ms)
                    item["repeat_hosts"].append(m.device["host"])
                    item["runtime_version"] = f"{m.runtime} {m.runtime_version}"
                continue
            for item in out:
                m = measure_artifact(backend, item["path"], threads, runs=runs, warmup=30, top=0)
                item["repeat_ms"].append(m.median_ms)
                if m.runtime_median_ms is not None:
                    item["runtime_repeat_ms"].append(m.runtime_median_ms)
                bar.advance(task)
    for item in out:
        item["median_ms"] = float(np.median(item["repeat_ms"]))
        item["runtime_ms"] = float(np.median(item["runtime_repeat_ms"])) if item["runtime_repeat_ms"] else None
        del item["path"]
    return out


def sweep_backend(target: Target) -> str:
    """The local backend that times `target`'s runtime, or a one-line error when this
    machine cannot stand in for the target."""
    from hwcompress.profile.measure import RUNTIME_BACKENDS, host_arch

    if target.arch != host_arch():
        raise HwcError(f"--sweep measures this machine: target {target.name} is {target.arch}, this machine is "
                       f"{host_arch()} (run the sweep on the device itself)")
    if target.runtime not in RUNTIME_BACKENDS:
        raise HwcError(f"target {target.name}: runtime {target.runtime!r} has no local backend to sweep")
    return RUNTIME_BACKENDS[target.runtime]


def sweep(target: Target, runs: int = 200, specs: list[tuple[str, str, dict]] | None = None,
          repeats: int = 3, pool: Any = None) -> dict:
    """Time every sweep model on this machine, or on the hosts of a device `pool` serving
    `target`, and fit the table (see module docstring)."""
    if pool is None:
        backend = sweep_backend(target)
    else:
        from hwcompress.profile.remote import DEVICE_RUNTIME

        pool.probe(target)  # a LiteRT target some host serves and is up, before the exports
        backend = DEVICE_RUNTIME
    specs = specs or sweep_specs()
    timings = time_specs(specs, backend, target.threads, runs, repeats, pool=pool, target=target)
    if pool is None:
        return table_from_timings(target, timings, runs, repeats)
    used = {h for t in timings for h in t["repeat_hosts"]}
    hosts = [r for r in pool.state()["hosts"] if r["host"] in used]
    where = ("on pool hosts " + ", ".join(f"{r['host']} ({r['cpu']}, {r['machine']})" for r in hosts)
             + " over SSH with the device runner (each row's repeat_hosts names the host of each round)")
    return table_from_timings(target, timings, runs, repeats, where=where,
                              runtime=next((t.get("runtime_version") for t in timings), None))


def table_from_timings(target: Target, timings: list[dict], runs: int, repeats: int,
                       command: str | None = None, where: str | None = None, runtime: str | None = None) -> dict:
    """The profile table of `timings` (time_specs' results), fitted. Split from sweep so a
    benchmark can time the sweep and its held-out models in the same rounds. `where` and
    `runtime` (name and version) describe a sweep timed elsewhere than here (a device pool)."""
    from hwcompress.profile.measure import RUNTIME_BACKENDS, host_cpu, runtime_version

    backend = RUNTIME_BACKENDS[target.runtime]
    rows = []
    for t in timings:
        net = t.pop("net")
        t.pop("runtime_version", None)
        rows.append({**t, "params": int(sum(p.numel() for p in net.parameters())), "measured_ms": t.pop("median_ms")})
    how = "the device runner on the host" if where else "one fresh process per model per round"
    return refit({
        "format": TABLE_FORMAT, "target": target.name, "runtime": target.runtime, "backend": backend,
        "runtime_version": runtime or runtime_version(backend), "threads": target.threads,
        "cache_bytes": int(target.value("cache_bytes")),
        "provenance": (f"measured {'on devices' if where else 'here'}: "
                       f"{command or f'hwcompress profile --sweep --target {target.name}'}; "
                       f"{len({t['model'] for t in timings})} models x "
                       f"fp32/int8, each the median of {repeats} interleaved rounds ({how}, median of {runs} "
                       f"streaming hops), {where or f'on {host_cpu()} ({platform.machine()})'}, "
                       f"{datetime.date.today().isoformat()}"),
        "rows": rows,
    })


def refit(table: dict) -> dict:
    """Recompute every row's features from its stored architecture and fit the coefficients
    again: a new feature set is tried on measured rows without timing anything again."""
    from hwcompress.models import zoo

    for r in table["rows"]:
        bits = 8 if r["weights"] == "int8" else 32
        model = zoo.build(r["arch"], r["config"])
        r["features"] = features(model, bits, table["cache_bytes"], _float_kinds(table.get("backend"), bits))
    fits = {w: fit_coefficients([r for r in table["rows"] if r["weights"] == w]) for w in ("fp32", "int8")}
    for r in table["rows"]:
        f = fits[r["weights"]]
        r["fitted_ms"] = float(sum(f[k] * r["features"][k] for k in FEATURES))
    return {**table, "format": TABLE_FORMAT, "features": list(FEATURES), "fits": fits}


def write_table(table: dict) -> Path:
    out = profiles_dir() / f"{table['target']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(out)
    return out
