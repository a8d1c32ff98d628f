"""Measured profile tables: a sweep of model shapes timed on the device, and the latency
model fitted to it.

`hwcompress profile --sweep --target NAME` exports a spread of zoo architectures (CRN, LSTM
and GRU maskers at several widths, random weights: speed does not depend on the values) to
the target's runtime in fp32 and int8, times each streaming hop on this machine and stores
every row with its per-kind shape features in profiles/<target>.json, with provenance (CPU,
runtime version, threads, date, command).

The fitted model is a per-precision non-negative least-squares fit of
    ms = c0 + c1 * weight layers + c2 * conv MACs + c3 * recurrent MACs + c4 * linear MACs
         + c5 * weight bytes + c6 * weight bytes beyond the last-level cache
i.e. the roofline's terms (dispatch overhead, compute per layer kind, weight traffic, the
cache cliff) with coefficients measured instead of taken from peak figures. Non-negative,
because every term is a cost; a fit that wanted a negative coefficient would be fitting
noise. The sweep's own points and a held-out set (benchmarks/latency_model.py) show how
well it predicts.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwcompress.errors import HwcError
from hwcompress.targets import Target

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
FEATURES = ("const", "layers", "conv_macs", "deconv_macs", "lstm_macs", "gru_macs", "linear_macs",
            "weight_bytes", "weight_bytes_over_cache")
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
    return specs


#: every shape quantity stored with a sweep row; FEATURES is the subset the fit uses, so a
#: later choice of features can be re-fitted from stored rows without re-measuring
RAW_FEATURES = ("const", "layers", "conv_macs", "deconv_macs", "lstm_macs", "gru_macs", "linear_macs",
                "weight_bytes", "weight_bytes_over_cache")
_KINDS = {"conv_macs": ("Conv2d",), "deconv_macs": ("ConvTranspose2d",), "lstm_macs": ("LSTM",),
          "gru_macs": ("GRU",), "linear_macs": ("Linear",)}


def features(model: Any, weight_bits: int, cache_bytes: int) -> dict[str, float]:
    from hwcompress.models.cost import layer_costs

    rows = layer_costs(model)
    wb = sum(r["params"] for r in rows) * weight_bits / 8
    f = {"const": 1.0, "layers": float(len(rows))}
    for key, names in _KINDS.items():
        f[key] = float(sum(r["macs_per_frame"] for r in rows if r["kind"] in names))
    f["weight_bytes"] = wb
    f["weight_bytes_over_cache"] = max(0.0, wb - cache_bytes)
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
    f = features(model, weight_bits, table["cache_bytes"])
    return float(sum(c * f[k] for k, c in fit.items()))


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


def _measure_spec(arch: str, config: dict, backend: str, weights: str, threads: int, runs: int,
                  repeats: int = 3) -> tuple[dict, Any]:
    """Export once, time in `repeats` fresh processes; `median_ms` is the median of their
    medians (one process that a burst of host load hit does not move it), `repeat_ms` all of them."""
    import torch

    from hwcompress.export import get_backend
    from hwcompress.models import zoo
    from hwcompress.profile.measure import measure_artifact

    torch.manual_seed(0)
    model = zoo.build(arch, config).eval()
    with tempfile.TemporaryDirectory(prefix="hwc-sweep-") as tmp:
        path = get_backend(backend).export(model, Path(tmp), "stream", weights=weights)
        runs_ = [measure_artifact(backend, path, threads, runs=runs, warmup=30, top=0) for _ in range(max(1, repeats))]
    medians = [r["median_ms"] for r in runs_]
    m = {**runs_[int(np.argsort(medians)[len(medians) // 2])], "median_ms": float(np.median(medians)),
         "repeat_ms": medians}
    return m, model


def sweep(target: Target, runs: int = 200, specs: list[tuple[str, str, dict]] | None = None, repeats: int = 3,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Time every sweep model on this machine and fit the table (see module docstring)."""
    from hwcompress.profile.measure import RUNTIME_BACKENDS, host_arch, host_cpu, runtime_version
    from hwcompress.progress import progress_bar

    if target.arch != host_arch():
        raise HwcError(f"--sweep measures this machine: target {target.name} is {target.arch}, this machine is "
                       f"{host_arch()} (run the sweep on the device itself)")
    if target.runtime not in RUNTIME_BACKENDS:
        raise HwcError(f"target {target.name}: runtime {target.runtime!r} has no local backend to sweep")
    backend = RUNTIME_BACKENDS[target.runtime]
    specs = specs or sweep_specs()
    cache = int(target.value("cache_bytes"))
    rows = []
    with progress_bar() as bar:
        task = bar.add_task(f"sweep {target.name}", total=2 * len(specs))
        for weights, bits in (("fp32", 32), ("int8", 8)):
            for label, arch, config in specs:
                m, model = _measure_spec(arch, config, backend, weights, target.threads, runs, repeats)
                rows.append({"model": label, "arch": arch, "config": config, "weights": weights,
                             "params": int(sum(p.numel() for p in model.parameters())),
                             "features": features(model, bits, cache), "measured_ms": m["median_ms"],
                             "p90_ms": m["p90_ms"], "repeat_ms": m["repeat_ms"],
                             "runtime_ms": m.get("runtime_median_ms")})
                bar.advance(task)
    fits = {w: fit_coefficients([r for r in rows if r["weights"] == w]) for w in ("fp32", "int8")}
    for r in rows:
        f = fits[r["weights"]]
        r["fitted_ms"] = float(sum(f[k] * r["features"][k] for k in FEATURES))
    return {
        "format": TABLE_FORMAT, "target": target.name, "runtime": target.runtime, "backend": backend,
        "runtime_version": runtime_version(backend), "threads": target.threads, "cache_bytes": cache,
        "provenance": (f"measured here: hwcompress profile --sweep --target {target.name}; {len(specs)} models x "
                       f"fp32/int8, median of {runs} streaming hops in each of {repeats} fresh subprocesses, median of those, on {host_cpu()} "
                       f"({platform.machine()}), {datetime.date.today().isoformat()}"),
        "features": list(FEATURES), "fits": fits, "rows": rows,
    }


def write_table(table: dict) -> Path:
    out = profiles_dir() / f"{table['target']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(out)
    return out
