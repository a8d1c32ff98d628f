"""Roofline latency prediction per streaming hop from a target's performance parameters.

Each weight layer costs a fixed dispatch overhead plus the larger of its compute time
(2 x MACs at the target's peak for its precision) and its weight-read time. Weights are
read from cache when the whole model's weights fit in the last-level cache, otherwise
from DRAM: a streaming model touches every weight every hop, so a model larger than the
cache evicts itself and gets no reuse between hops. Figures are *predicted*, never
measured; profile tables (profiles/<target>.*) refine them where measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hwcompress.models.cost import layer_costs
from hwcompress.models.zoo import SEModel
from hwcompress.targets import Target


@dataclass(frozen=True)
class Prediction:
    """A per-hop latency *predicted* for a model on a target (never measured): what the profile
    stage hands the search and the CLI; `to_json()` at the JSON edge."""

    target: str
    runtime: str
    threads: int
    latency_ms: float
    roofline_ms: float
    #: "roofline" or "profile table" (a fit to this target's measured sweep, profile/table.py)
    latency_model: str
    latency_source: str = field(default="predicted", init=False)
    how: str
    weight_bytes: int
    macs_per_frame: int
    #: per weight layer: name, kind, params, macs_per_frame, weight_bits, compute_ms, memory_ms, ms, bound
    layers: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def predict_latency(model: SEModel, target: Target, weight_bits: dict[str, int] | int = 32,
                    use_table: bool = True) -> Prediction:
    """Predicted per-hop latency of `model` on `target`; `weight_bits` per layer name
    (32 = fp32 kernels, 8 = int8 weights) or one value for all. With a measured profile
    table for the target (profiles/<target>.json, `hwcompress profile --sweep`) and one
    precision for the whole model, the total comes from the table's fit; the per-layer
    rows stay the roofline's."""
    rows = layer_costs(model)
    bits = {r["name"]: weight_bits if isinstance(weight_bits, int) else weight_bits.get(r["name"], 32) for r in rows}
    total_weight_bytes = sum(r["params"] * bits[r["name"]] / 8 for r in rows)
    in_cache = total_weight_bytes <= target.value("cache_bytes")
    bandwidth = target.value("cache_bandwidth_gbps" if in_cache else "dram_bandwidth_gbps") * 1e9
    overhead_s = target.value("op_overhead_us") * 1e-6
    layers, total = [], 0.0
    for r in rows:
        int8 = bits[r["name"]] <= 8
        peak = (target.value("peak_gops_int8", target.value("peak_gflops_fp32")) if int8
                else target.value("peak_gflops_fp32")) * 1e9
        compute = 2 * r["macs_per_frame"] / peak
        memory = r["params"] * bits[r["name"]] / 8 / bandwidth
        seconds = overhead_s + max(compute, memory)
        total += seconds
        layers.append({**{k: r[k] for k in ("name", "kind", "params", "macs_per_frame")}, "weight_bits": bits[r["name"]],
                       "compute_ms": compute * 1e3, "memory_ms": memory * 1e3, "ms": seconds * 1e3,
                       "bound": "memory" if memory > compute else "compute"})
    how = ("roofline per layer: op overhead + max(2*MACs/peak, weight bytes/bandwidth); weights read from "
           f"{'cache' if in_cache else 'DRAM'} ({total_weight_bytes / 2**20:.1f} MiB of weights vs "
           f"{target.value('cache_bytes') / 2**20:.1f} MiB cache); parameters from {target.source}")
    roofline_ms = total * 1e3
    latency_ms, model_kind = roofline_ms, "roofline"
    if use_table and len(set(bits.values())) == 1:
        from hwcompress.profile.table import load_table, predict_from_table

        table = load_table(target)
        fitted = predict_from_table(table, model, next(iter(bits.values()))) if table else None
        if fitted is not None:
            latency_ms, model_kind = fitted, "profile table"
            how = (f"profile table profiles/{target.name}.json: per-kind MACs, layer count, weight bytes and the bytes past "
                   f"fractions of the cache, with coefficients fitted to {len(table['rows'])} measured sweep points ({table['provenance']})")
    return Prediction(target=target.name, runtime=target.runtime, threads=target.threads, latency_ms=latency_ms,
                      roofline_ms=roofline_ms, latency_model=model_kind, how=how,
                      weight_bytes=int(total_weight_bytes),
                      macs_per_frame=sum(r["macs_per_frame"] for r in rows), layers=layers)
