"""Target registry: the hardware/runtime combinations a model can be compressed for.

Each target is one TOML file in the repo's top-level `targets/` folder (or the folder named by
the HWCOMPRESS_TARGETS environment variable). A file is validated strictly, because a typo in a
budget or a bandwidth silently changes which compressed model gets picked: unknown keys,
missing keys, wrong types, non-positive numbers, wrong units and provenance strings that do not
follow the convention are all rejected with a one-line TargetError naming the file and field.

Every number that feeds the latency model lives in the `[perf]` table as
`{ value = ..., unit = "...", provenance = "..." }`; provenance is one of
  "measured here" / "measured here: <how>"   - measured on this machine by a named script
  "public source: <named source>"            - a datasheet, vendor page, paper...
  "estimate: <reasoning>"                    - our own guess, with the reasoning
so a report can always say which latency predictions rest on measurements and which on guesses.
A microcontroller target may add a `[cycles]` table in the same form (CYCLE_UNITS, all or none):
the per-operator cycle figures profile/mcu.py prices an exported TFLite Micro file with.
The budgets are requirements rather than measurements; where they come from is given once in
`budget_provenance`, which follows the same convention.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hwcompress.errors import HwcError
from hwcompress.export import CAPABILITIES

#: Streaming hop of every model in the zoo; latency budgets are per hop.
HOP_MS = 10.0

ENV_VAR = "HWCOMPRESS_TARGETS"

#: the runtimes a target may name: the registered backends (export.REGISTRY)
RUNTIMES = tuple(CAPABILITIES)

#: the activation precisions each runtime's backend can be asked for, its default first: the
#: OpenVINO CPU plugin runs f32, bf16 (AVX512-BF16/AMX hosts) or f16 (AVX512-FP16, Armv8.2+);
#: the others run one (LiteRT/onnxruntime here: f32 with dynamically quantized int8 inputs to
#: integer-weight ops; TFLite Micro 16x8: int16). A target's `activations` lists the ones its
#: device has, default first; absent means the runtime's default only.
#: (each backend's `Capabilities.activations`)
RUNTIME_ACTIVATIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {name: caps.activations for name, caps in CAPABILITIES.items()})

# closed set so that "x86-64" or "arm64" typos are caught; extend when a new ISA is added
ARCHES = ("x86_64", "aarch64", "armv7m", "armv7em", "armv8m")

#: perf parameter -> required unit. The unit is checked, not just documented, because a
#: GiB/s-vs-GB/s or us-vs-ms slip would pass every other check and skew every prediction.
PERF_UNITS: Mapping[str, str] = MappingProxyType(
    {
        # attainable fp32 compute ceiling of this runtime at `threads` threads
        "peak_gflops_fp32": "GFLOP/s",
        # attainable int8 compute ceiling; absent means "no faster than fp32"
        "peak_gops_int8": "GOP/s",
        # sustained read bandwidth of the memory weights live in when they miss the cache
        # (DRAM on application processors, internal flash on microcontrollers)
        "dram_bandwidth_gbps": "GB/s",
        # capacity of the last cache level (or fast memory) weights can stay resident in
        "cache_bytes": "bytes",
        # read bandwidth for weights that fit in cache_bytes
        "cache_bandwidth_gbps": "GB/s",
        # fixed cost of one operator invocation in this runtime
        "op_overhead_us": "us",
    }
)
OPTIONAL_PERF = frozenset({"peak_gops_int8"})

#: per-op cycle figures of a microcontroller target (optional `[cycles]` table, same
#: value/unit/provenance form as `[perf]`): what profile/mcu.py prices each operator of the
#: exported TFLite Micro file with. All-or-none: a partial table would price some ops at zero.
CYCLE_UNITS: Mapping[str, str] = MappingProxyType(
    {
        "clock_mhz": "MHz",                     # core clock the cycle figures run at
        "op_dispatch": "cycles",                # interpreter cost of invoking one operator
        "mac_s8": "cycles/MAC",                 # int8 activations x int8 weights (CMSIS-NN s8 kernels)
        "mac_s16": "cycles/MAC",                # int16 activations x int8 weights (CMSIS-NN s16 kernels)
        "mac_f32": "cycles/MAC",                # float activations and weights (reference kernels)
        "flash_read": "cycles/byte",            # weights read from flash inside a MAC loop
        "decode": "cycles/weight",              # TFLM_DECODE, 2/3/4-bit indices: one weight unpacked per invoke
        "decode_generic": "cycles/weight",      # TFLM_DECODE, other index widths (generic loop)
        "element_int": "cycles/element",        # integer elementwise and requantizing ops
        "element_f32": "cycles/element",        # float elementwise arithmetic and comparisons
        "transcendental_f32": "cycles/element", # float EXP / LOG / TANH / LOGISTIC (libm)
        "activation_int16": "cycles/element",   # int16 TANH / LOGISTIC (table with interpolation)
        "copy": "cycles/element",               # data movement: concatenation, slices, transposes, reshapes
    }
)
INT_PERF = frozenset({"cache_bytes"})

_PROVENANCE_RE = re.compile(r"^(measured here(: \S.*)?|public source: \S.*|estimate: \S.*)$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# top-level key -> (python types accepted, required)
_TOP_LEVEL: Mapping[str, tuple[tuple[type, ...], bool]] = MappingProxyType(
    {
        "name": ((str,), True),
        "description": ((str,), True),
        "arch": ((str,), True),
        "cpu": ((str,), True),
        "runtime": ((str,), True),
        "runtime_version": ((str,), False),
        "threads": ((int,), True),
        "latency_budget_ms": ((int, float), True),
        "memory_budget_bytes": ((int,), True),
        "storage_budget_bytes": ((int,), True),
        "budget_provenance": ((str,), True),
        "emulation": ((str,), False),
        "activations": ((list,), False),
        "perf": ((dict,), True),
        "cycles": ((dict,), False),
    }
)


class TargetError(HwcError):
    """A target file is missing, malformed or names an unknown target."""


@dataclass(frozen=True)
class PerfParam:
    value: float | int
    unit: str
    provenance: str

    @property
    def kind(self) -> str:
        """'measured', 'public' or 'estimate': how much to trust the number."""
        if self.provenance.startswith("measured here"):
            return "measured"
        if self.provenance.startswith("public source:"):
            return "public"
        return "estimate"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "provenance": self.provenance}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    cpu: str
    runtime: str
    threads: int
    latency_budget_ms: float
    memory_budget_bytes: int
    storage_budget_bytes: int
    budget_provenance: str
    perf: Mapping[str, PerfParam]
    runtime_version: str | None = None
    emulation: str | None = None
    #: activation precisions the device runs, default first (RUNTIME_ACTIVATIONS)
    activations: tuple[str, ...] = ("f32",)
    cycles: Mapping[str, PerfParam] = field(default_factory=lambda: MappingProxyType({}))
    # where it was loaded from: useful in reports, irrelevant to equality
    source: Path | None = field(default=None, compare=False)

    def value(self, key: str, default: float | None = None) -> float:
        """The perf value `key`; `default` if the optional parameter is absent."""
        if key in self.perf:
            return self.perf[key].value
        if default is not None:
            return default
        if key not in PERF_UNITS:
            raise KeyError(f"unknown perf parameter {key!r}")
        raise KeyError(f"target {self.name!r} has no perf parameter {key!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view with every perf parameter's unit and provenance."""
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
            "cpu": self.cpu,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "threads": self.threads,
            "latency_budget_ms": self.latency_budget_ms,
            "memory_budget_bytes": self.memory_budget_bytes,
            "storage_budget_bytes": self.storage_budget_bytes,
            "budget_provenance": self.budget_provenance,
            "emulation": self.emulation,
            "activations": list(self.activations),
            "perf": {k: p.to_dict() for k, p in self.perf.items()},
        }
        if self.cycles:
            d["cycles"] = {k: p.to_dict() for k, p in self.cycles.items()}
        if self.source is not None:
            d["source"] = str(self.source)
        return d


def targets_dir() -> Path:
    """The registry folder: $HWCOMPRESS_TARGETS if set, else the repo's `targets/`."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "targets"


def _short(v: Any) -> str:
    # repr keeps the message on one line even if a value holds a newline
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", dict: "table"}
    if types == (int, float):
        return "number"
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_type(path: Path, key: str, v: Any, types: tuple[type, ...]) -> None:
    # bool is a subclass of int in Python, but `threads = true` is a mistake, not 1
    if isinstance(v, bool) or not isinstance(v, types):
        raise TargetError(f"{path}: {key}: expected {_type_name(types)}, got {_short(v)}")


def _check_positive(path: Path, key: str, v: float) -> None:
    if not math.isfinite(v) or v <= 0:
        raise TargetError(f"{path}: {key}: must be a positive finite number, got {_short(v)}")


def _check_provenance(path: Path, key: str, v: str) -> None:
    if not _PROVENANCE_RE.match(v):
        raise TargetError(
            f"{path}: {key}: must be 'measured here[: <how>]', "
            f"'public source: <named source>' or 'estimate: <reasoning>', got {_short(v)}"
        )


def _check_keys(path: Path, where: str, got: Mapping[str, Any], allowed: set[str] | frozenset[str],
                required: set[str] | frozenset[str]) -> None:
    prefix = f"{where}." if where else ""
    unknown = sorted(set(got) - set(allowed))
    if unknown:
        raise TargetError(
            f"{path}: {prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})"
        )
    missing = sorted(set(required) - set(got))
    if missing:
        raise TargetError(f"{path}: {prefix}{missing[0]}: missing required key")


def _parse_perf(path: Path, raw: Mapping[str, Any], table: str = "perf",
                units: Mapping[str, str] = PERF_UNITS, optional: frozenset[str] = OPTIONAL_PERF) -> dict[str, PerfParam]:
    _check_keys(path, table, raw, frozenset(units), frozenset(units) - optional)
    perf: dict[str, PerfParam] = {}
    # keep the canonical order so listings are stable regardless of file order
    for key in (k for k in units if k in raw):
        where = f"{table}.{key}"
        entry = raw[key]
        if not isinstance(entry, dict):
            raise TargetError(
                f"{path}: {where}: expected a table "
                f"{{ value = ..., unit = \"{units[key]}\", provenance = \"...\" }}, got {_short(entry)}"
            )
        _check_keys(path, where, entry, {"value", "unit", "provenance"}, {"value", "unit", "provenance"})
        value, unit, prov = entry["value"], entry["unit"], entry["provenance"]
        _check_type(path, f"{where}.value", value, (int,) if key in INT_PERF else (int, float))
        _check_positive(path, f"{where}.value", value)
        _check_type(path, f"{where}.unit", unit, (str,))
        if unit != units[key]:
            raise TargetError(f"{path}: {where}.unit: must be {units[key]!r}, got {_short(unit)}")
        _check_type(path, f"{where}.provenance", prov, (str,))
        _check_provenance(path, f"{where}.provenance", prov)
        perf[key] = PerfParam(value=value if key in INT_PERF else float(value), unit=unit, provenance=prov)
    return perf


def _parse(path: Path, raw: Mapping[str, Any]) -> Target:
    required = frozenset(k for k, (_, req) in _TOP_LEVEL.items() if req)
    _check_keys(path, "", raw, frozenset(_TOP_LEVEL), required)
    for key, v in raw.items():
        _check_type(path, key, v, _TOP_LEVEL[key][0])
        if isinstance(v, str) and not v.strip():
            raise TargetError(f"{path}: {key}: must not be empty")

    name = raw["name"]
    if not _NAME_RE.match(name):
        raise TargetError(f"{path}: name: must be lowercase letters, digits and '-', got {_short(name)}")
    # the file stem is how users address a target, so a different `name` inside would make
    # `load_target(x).name != x` and confuse every report
    if name != path.stem:
        raise TargetError(f"{path}: name: {name!r} does not match the file name {path.name!r}")
    if raw["runtime"] not in RUNTIMES:
        raise TargetError(f"{path}: runtime: must be one of {', '.join(RUNTIMES)}, got {_short(raw['runtime'])}")
    if raw["arch"] not in ARCHES:
        raise TargetError(f"{path}: arch: must be one of {', '.join(ARCHES)}, got {_short(raw['arch'])}")
    if raw["threads"] < 1:
        raise TargetError(f"{path}: threads: must be >= 1, got {raw['threads']}")
    for key in ("latency_budget_ms", "memory_budget_bytes", "storage_budget_bytes"):
        _check_positive(path, key, raw[key])
    _check_provenance(path, "budget_provenance", raw["budget_provenance"])
    offered = RUNTIME_ACTIVATIONS[raw["runtime"]]
    activations = tuple(raw.get("activations", offered[:1]))
    if not activations or len(set(activations)) != len(activations) or any(a not in offered for a in activations):
        raise TargetError(f"{path}: activations: must list distinct precisions {raw['runtime']} runs "
                          f"({', '.join(offered)}), default first; got {_short(raw.get('activations'))}")

    return Target(
        name=name,
        description=raw["description"],
        arch=raw["arch"],
        cpu=raw["cpu"],
        runtime=raw["runtime"],
        runtime_version=raw.get("runtime_version"),
        threads=raw["threads"],
        latency_budget_ms=float(raw["latency_budget_ms"]),
        memory_budget_bytes=raw["memory_budget_bytes"],
        storage_budget_bytes=raw["storage_budget_bytes"],
        budget_provenance=raw["budget_provenance"],
        emulation=raw.get("emulation"),
        activations=activations,
        perf=MappingProxyType(_parse_perf(path, raw["perf"])),
        cycles=MappingProxyType(_parse_perf(path, raw["cycles"], "cycles", CYCLE_UNITS, frozenset())
                                if "cycles" in raw else {}),
        source=path,
    )


def load_target_file(path: str | os.PathLike[str]) -> Target:
    """Load and validate one target TOML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetError(f"{p}: target file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"{p}: cannot read target file: {e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{p}: invalid TOML: {e}") from None
    return _parse(p, raw)


def _known_names(directory: Path) -> list[str]:
    return sorted(f.stem for f in directory.glob("*.toml")) if directory.is_dir() else []


def _require_dir(directory: Path) -> None:
    if not directory.is_dir():
        hint = f" (from ${ENV_VAR})" if os.environ.get(ENV_VAR) else ""
        raise TargetError(f"{directory}: targets directory does not exist{hint}")


def list_targets(directory: str | os.PathLike[str] | None = None) -> list[Target]:
    """Every target in the registry, sorted by name. One bad file fails the whole listing,
    so a broken registry is noticed instead of a target silently disappearing."""
    d = Path(directory) if directory is not None else targets_dir()
    _require_dir(d)
    return [load_target_file(f) for f in sorted(d.glob("*.toml"))]


def load_target(name_or_path: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None) -> Target:
    """A registered target by name (e.g. "raspberrypi4"), or any target TOML file by path."""
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, Path) or s.endswith(".toml") or os.sep in s or "/" in s:
        return load_target_file(s)
    d = Path(directory) if directory is not None else targets_dir()
    _require_dir(d)
    path = d / f"{s}.toml"
    if not path.is_file():
        known = _known_names(d)
        raise TargetError(
            f"unknown target {s!r}; known targets: {', '.join(known) if known else '(none)'} (in {d})"
        )
    return load_target_file(path)
