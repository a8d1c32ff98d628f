"""`Measurement`: one exported artifact timed on one machine, the profile stage's result that
the search consumes (calibration, floor, allocation probes, the verified figure) and caches.

Made by `measure.measure_artifact` (this machine, a fresh subprocess) and by
`remote.measure_tflite` / `pool.DevicePool.measure` (a device over SSH); turned into a dict
only at the JSON edge (`to_json`: the fit's caches and reports, `hwcompress profile --json`)
and read back with `from_json`. Imports nothing heavy, so a device runner's caller can use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# the keys a JSON reader may rely on even when their value is unknown (null)
_ALWAYS = ("peak_memory_bytes", "peak_memory_method")


@dataclass(frozen=True)
class Measurement:
    """Per-hop streaming latency (ms) of one artifact and what its run cost, measured, with how.

    Latency: `median_ms` is the figure a fit compares with its budget; `p90_ms`, `mean_ms`,
    `min_ms`, `max_ms` over `runs` timed hops after `warmup` untimed ones; `harness` says what
    one timed call includes. RAM: `peak_memory_bytes` is what loading and running the artifact
    added to a fresh process (`peak_memory_method` says how it was read; None where the machine
    reports none). `host` is the machine that timed it (cpu, arch, load averages before and
    after); `device` names a pool host ({host, machine, cpu, platform}) where one timed it.
    `layers*`: the runtime profiler's per-op times, where it has one. `quiet`: in a parallel
    run, the other processes' CPU use before the timing (hostlock.settled). `round_medians_ms`:
    where the figure is the slowest of several rounds, every round's median."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    host: dict[str, Any]
    peak_memory_bytes: int | None = None
    peak_memory_method: str | None = None
    latency_source: str = "measured"
    load_seconds: float | None = None
    harness: str | None = None
    activations: str | None = None
    process_peak_rss_bytes: int | None = None
    # OpenVINO's own timing of the same hops (InferRequest.latency), and the Python call's share
    runtime_median_ms: float | None = None
    runtime_p90_ms: float | None = None
    runtime_method: str | None = None
    harness_overhead_ms: float | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    layers_total_ms: float | None = None
    layers_count: int = 0
    layers_source: str | None = None
    # a device over SSH: where, which runtime, and how its runner timed
    device: dict[str, Any] | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    threads: int | None = None
    how: str | None = None
    warning: str | None = None
    quiet: dict[str, Any] | None = None
    #: several fresh-process rounds timed as one figure: each round's median (this record is the
    #: slowest round's, the figure that holds in every mode the rounds saw)
    round_medians_ms: list[float] | None = None
    #: keys a newer runner reported that this version does not name (kept, written back as they came)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The flat dict of the JSON edge: unknown (None) fields left out, except the RAM keys."""
        d = asdict(self)
        extra = d.pop("extra")
        return {**{k: v for k, v in d.items() if v is not None or k in _ALWAYS}, **extra}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Measurement":
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k not in names})

    def with_(self, **changes: Any) -> "Measurement":
        """A copy with `changes` (a frozen record is not edited in place)."""
        return replace(self, **changes)
