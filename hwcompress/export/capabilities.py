"""What one deployment backend is and can do, declared once per backend and readable without
its runtime (see `hwcompress.export` for the registry and how to add a backend).

A `Capabilities` is plain data: no runtime, converter or torch is imported to build or read it,
so the CLI, the target loader, the profiler and the fit ask it what a runtime does instead of
comparing runtime names. Functions it names ("module:function") are imported only when called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Capabilities:
    #: canonical name (a target TOML's `runtime`, `--backend`, the report's "runtime")
    name: str
    #: module implementing the backend: it exposes `BACKEND` (the `export.Backend` protocol) and
    #: may import the runtime at its top, as it is imported only by `export.get_backend`
    module: str
    #: the import that must work before `module` is loaded (its first dotted part is the runtime's
    #: module, whose `__version__` is the fallback release string)
    runtime: str
    #: the pip distribution of the runtime (its release is the reported runtime_version)
    distribution: str
    #: hwcompress extra that installs the runtime; None: a core dependency
    extra: str | None
    #: file suffix of the artifact `export` writes
    suffix: str
    #: what the artifact is called in messages
    artifact_kind: str
    #: suffixes of the files the artifact loads beside it (an OpenVINO IR's weights: .bin)
    companion_suffixes: tuple[str, ...] = ()
    #: other names accepted for it (`--backend`, `export --format`)
    aliases: tuple[str, ...] = ()
    #: "module:function(path) -> bool" telling a file of `suffix` written for this backend from
    #: one of the backend registered first with that suffix (both write .tflite: tflite-micro's
    #: is 16x8 / LUT-decoded); None: the suffix alone names this backend
    claims_file: str | None = None
    #: export modes: "stream" (T=1) and "whole" (a whole utterance per call)
    modes: tuple[str, ...] = ("stream", "whole")
    #: whether a whole-utterance graph takes a dynamic T (else T is fixed at export)
    dynamic_whole: bool = True
    #: weight formats `export` writes (`export.WEIGHTS`)
    weights: tuple[str, ...] = ("fp32", "int8")
    #: the weight format used when none is asked for
    default_weights: str = "fp32"
    #: the layer kinds stored at 4 bits under int4/mixed (the rest keep int8)
    int4_kinds: tuple[str, ...] = ()
    #: what it offers the layer kinds outside `int4_kinds`, for the message refusing 4 bits there
    #: ("{kind}" is the layer kind)
    not_int4: str = "it offers {kind} int8 or fp32"
    #: whether its int8/int4 export stores a weight lying on a symmetric integer grid with the
    #: grid's step as its scales, i.e. exactly (the fit holds codebooks on these grids for it)
    grid_exact: bool = False
    #: layer kinds its quantized export computes in float (weights still stored narrow)
    float_kinds_when_quantized: tuple[str, ...] = ()
    #: activation precisions its sessions run, default first (`precision=` of `Backend.load`)
    activations: tuple[str, ...] = ("f32",)
    #: "module:function(path, model) -> {layer: width}" reading the stored widths back from a file
    layer_widths: str | None = None
    #: weight formats whose files the fit reads per-layer widths back from (`layer_widths`)
    widths_read_back: tuple[str, ...] = ()
    #: "module:function(path, session, frames, runs, threads, tmp, warmup) -> (per_run, kinds)":
    #: per-node ms of each profiled hop from the runtime's own profiler; None: none exposed
    layer_profiler: str | None = None
    #: where those per-node times come from, for the report ("{runs}": the profiled hops)
    layer_profiler_source: str = ""
    #: a microcontroller runtime: a fully integer file calibrated on audio, weights kept in flash,
    #: RAM = the interpreter's arena (measured in it), latency priced per operator from the target's
    #: [cycles] table, clustered layers stored as LUT indices; no attached device times it
    microcontroller: bool = False
    #: its artifact runs under a target's user-mode emulator (profile/emulate.py, `fit --emulate`)
    emulated: bool = False

    def install_hint(self) -> str:
        return f"pip install 'hwcompress[{self.extra}]'" if self.extra else f"pip install {self.distribution}"

    @property
    def runtime_module(self) -> str:
        return self.runtime.split(".")[0]


def resolve(ref: str) -> Callable[..., Any]:
    """The function a "module:function" capability names, imported now."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
