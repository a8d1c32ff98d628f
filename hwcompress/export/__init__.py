"""Deployment backends: export a zoo model to a runtime artifact and run it.

One interface for every runtime, so profiling and parity checks do not care which
one is behind it:

    backend = get_backend("onnxruntime")            # or "openvino", "litert"
    path = backend.export(model, out_dir, mode="stream")
    session = backend.load(path, threads=1)
    out, state = session.run(spec_frame, state)      # numpy in, numpy out

Graph signature, the same in every runtime: inputs `spec` [1, T, 161, 2] float32 and
`state_0` ... `state_{n-1}` (the model's `state_shapes()` with batch 1 in front);
outputs `out` [1, T, 161, 2] and `state_out_0` ... in the same order. mode="stream"
fixes T=1; mode="whole" makes T dynamic where the runtime can (ONNX Runtime, OpenVINO)
and fixes it to `frames` for LiteRT, whose converter unrolls the recurrent layers.
Whole-utterance graphs take the initial state as inputs too: pass zeros (or `None`).

`weights="int8"` stores the weight layers as 8-bit integers in the form each runtime
executes natively (onnxruntime dynamic quantization, OpenVINO nncf int8 weight
compression, LiteRT dynamic-range quantization with ai-edge-quantizer): the artifact is
~4x smaller and memory-bound layers run faster. `weights="int4"` (OpenVINO: nncf INT4_ASYM,
groups of 128 input weights sharing a scale and zero point) halves that again; it
is what a layer clustered to K <= 16 can use at run time. On LiteRT, int4 stores the
FULLY_CONNECTED weights (every recurrent gate matmul and Linear) as 4-bit per-channel integers
and the convolutions as int8; onnxruntime int4 stores every constant-weight MatMul (the
recurrent cells exported as matmuls) as MatMulNBits (4-bit, blocks of up to 128) and the rest int8;
OpenVINO int4 stores the MatMul weights (the recurrent cells exported as matmuls, Linear) at 4
bits and the convolutions at 8, as its CPU plugin runs only MatMul weights compressed;
`weights="mixed"` (LiteRT, onnxruntime, OpenVINO) gives 4 bits only to the layers whose weights
lie on the symmetric 4-bit integer grid (a `.hwc` codebook held there: `compress --grid 4`, or
the fit) and 8 bits to the rest. `weights="fp32"` keeps float weights.

Exactness: on LiteRT, onnxruntime and OpenVINO (`GRID_EXACT_BACKENDS`) a weight matrix lying on
the integer grid of its stored width (`compress.cluster.grid_step`: every value q * step, q in
the width's range) is stored with that step as every channel's or block's scale (OpenVINO: one
f32 scale for the matrix, i4/i8 integers), so the file dequantizes to exactly the `.hwc`
values; other weights get the runtime's own rounding.

Backends and their capabilities: each backend is described once by a frozen
`capabilities.Capabilities` (name, aliases, runtime import and pip extra, artifact suffix, weight
formats, the layer kinds it runs at 4 bits and what it offers the others, grid exactness, kinds
computed in float, dynamic T, activation precisions, the per-node profiler, microcontroller or
not, ...) in a descriptor module `hwcompress/export/backends/<name>.py` that imports no runtime.
`capabilities(name)` reads it (one HwcError line for an unknown name); the tables below
(INT4_BACKENDS, INT4_KINDS, GRID_EXACT_BACKENDS, ...) are views derived from it, and the rest of
hwcompress asks the capabilities, not the runtime's name.

Adding a backend: (1) write its implementation module (`BACKEND`, with `export` and `load`, as
`onnx.py`), importing its runtime at will; (2) write `backends/<name>.py` declaring
`CAPABILITIES = Capabilities(name=..., module=<that module>, runtime=..., ...)`; (3) add that
descriptor's module path to `REGISTRY` below. Targets may then name it as `runtime`, `export
--format`, `profile` and `fit` use it, and an artifact with its suffix is recognized.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # sessions load without torch (see _graph)
    import torch

from hwcompress.errors import HwcError
from hwcompress.export.capabilities import Capabilities, resolve

MODES = ("stream", "whole")
WEIGHTS = ("fp32", "int8", "int4", "mixed")
#: bits per stored weight of each format (for size and latency predictions); mixed: 8, an upper
#: bound (which layers get 4 bits depends on the model's codebooks)
WEIGHT_BITS = {"fp32": 32, "int8": 8, "int4": 4, "mixed": 8}
#: the backends, one descriptor module each (`backends/<name>.py`, declaring `CAPABILITIES`);
#: the first registered with a suffix owns it (`ARTIFACT_SUFFIXES`), the others claim their files
REGISTRY: tuple[str, ...] = (
    "hwcompress.export.backends.onnxruntime",
    "hwcompress.export.backends.openvino",
    "hwcompress.export.backends.litert",
    "hwcompress.export.backends.tflite_micro",
)
#: canonical name -> its capabilities, in registry order (plain data: no runtime is imported)
CAPABILITIES: dict[str, Capabilities] = {
    c.name: c for c in (importlib.import_module(m).CAPABILITIES for m in REGISTRY)}
_ALIASES = {alias: c.name for c in CAPABILITIES.values() for alias in c.aliases}

# Views derived from the capabilities, for the code that reads them as tables:
#: backends with a native 4-bit weight path (OpenVINO: the CPU plugin's compressed FullyConnected
#: on every MatMul, the recurrent cells included; LiteRT: XNNPACK's dynamic-range int4
#: FULLY_CONNECTED kernels; onnxruntime: MatMulNBits)
INT4_BACKENDS = tuple(n for n, c in CAPABILITIES.items() if "int4" in c.weights)
#: backends that export per-layer 4/8-bit weights (`weights="mixed"`)
MIXED_BACKENDS = tuple(n for n, c in CAPABILITIES.items() if "mixed" in c.weights)
#: the layer kinds each backend stores at 4 bits under int4/mixed (the rest keep int8)
INT4_KINDS: dict[str, tuple[str, ...]] = {n: c.int4_kinds for n, c in CAPABILITIES.items() if c.int4_kinds}
#: what a backend offers the layer kinds outside INT4_KINDS, for the message refusing 4 bits there
_NOT_INT4 = {n: c.not_int4 for n, c in CAPABILITIES.items() if c.int4_kinds}
#: the search gives 4-bit runtime weights (`weights="mixed"`) to the layers it clusters to
#: K <= 16, holding their codebooks on the 4-bit grid (at most 14 nonzero values, q in
#: [-7, 7]: zero, which pruned weights need, is one code); `export` of a `.hwc` gives 4 bits to the layers whose
#: weights lie on that grid (`mixed_layers`), where the runtime reproduces them exactly
MIXED_MAX_K = 16
#: backends whose int8/int4 export stores a weight lying on a symmetric integer grid
#: (compress.cluster.grid_step) with the grid's step as its scales, i.e. exactly: onnxruntime
#: (quantize_dynamic overrides, MatMulNBits rewritten), LiteRT (scales and integers patched
#: into ai-edge-quantizer's file), OpenVINO (i4/i8 constants and an f32 step written into the IR:
#: `openvino.quantize`). The fit holds codebooks on these grids for them.
GRID_EXACT_BACKENDS = tuple(n for n, c in CAPABILITIES.items() if c.grid_exact)
#: layer kinds a backend's int8 export computes in float (onnxruntime: GRU, see its descriptor)
FLOAT_KINDS_WHEN_QUANTIZED: dict[str, tuple[str, ...]] = {
    n: c.float_kinds_when_quantized for n, c in CAPABILITIES.items() if c.float_kinds_when_quantized}
# canonical name -> (module implementing it, runtime import that must work, pip extra)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {n: (c.module, c.runtime, c.extra) for n, c in CAPABILITIES.items()}


@runtime_checkable
class Session(Protocol):
    """A loaded runtime artifact with the signature described in this module's docstring."""

    #: per-state shapes without the batch dimension, in input order (as `SEModel.state_shapes()`)
    state_shapes: list[tuple[int, ...]]
    #: fixed number of frames per call, or None when T is dynamic
    frames: int | None

    def run(
        self, spec: np.ndarray, state: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    #: file suffix of the artifact `export` returns (".onnx", ".xml", ".tflite")
    suffix: str

    def export(self, model: torch.nn.Module, out_dir: Path, mode: str = "stream", *,
               frames: int | None = None, stem: str | None = None, weights: str = "fp32") -> Path: ...

    def load(self, path: Path, threads: int = 1, precision: str | None = None) -> Session: ...


def backend_names() -> list[str]:
    return list(CAPABILITIES)


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in CAPABILITIES:
        known = ", ".join(sorted([*CAPABILITIES, *_ALIASES]))
        raise HwcError(f"unknown backend {name!r}: choose one of {known}")
    return key


def capabilities(name: str) -> Capabilities:
    """What the backend called `name` (or an alias) is and can do, without importing its
    runtime; a one-line HwcError for an unknown name."""
    return CAPABILITIES[canonical_name(name)]


def get_backend(name: str) -> Backend:
    """The backend called `name` (aliases: onnx, ort, ov, tflite, tflm), or a one-line HwcError
    telling how to install its runtime when that is missing."""
    caps = capabilities(name)
    try:
        importlib.import_module(caps.runtime)
    except ImportError:
        raise HwcError(f"backend {caps.name!r} needs the optional runtime {caps.runtime_module}: "
                       f"{caps.install_hint()}") from None
    return importlib.import_module(caps.module).BACKEND


#: file suffix of each backend's artifact -> the backend (the first registered with that suffix;
#: a later one claims its own files by content: `Capabilities.claims_file`)
ARTIFACT_SUFFIXES: dict[str, str] = {}
for _caps in CAPABILITIES.values():
    ARTIFACT_SUFFIXES.setdefault(_caps.suffix, _caps.name)
del _caps


#: what each backend's artifact is called in messages
ARTIFACT_KINDS = {n: c.artifact_kind for n, c in CAPABILITIES.items()}


def is_artifact(spec: str | Path) -> bool:
    """Whether a `--model` value names an exported runtime artifact (by suffix; an IR's .bin
    weights file counts, so a command can say to give the .xml instead)."""
    suffix = Path(str(spec)).suffix.lower()
    return suffix in ARTIFACT_SUFFIXES or any(suffix in c.companion_suffixes for c in CAPABILITIES.values())


def backend_for_artifact(path: Path) -> str:
    """The backend that runs an exported file, from its suffix (.onnx, .xml, .tflite) and, for a
    .tflite, its contents (a TFLite Micro file: int16 activations or TFLM_DECODE operators)."""
    suffix = Path(path).suffix.lower()
    key = ARTIFACT_SUFFIXES.get(suffix)
    if key is None:
        owner = next((c for c in CAPABILITIES.values() if suffix in c.companion_suffixes), None)
        if owner is not None:
            raise HwcError(f"{path}: the weights file of an {owner.artifact_kind}; give its {owner.suffix} "
                           f"({Path(path).with_suffix(owner.suffix).name}), which names this {suffix}")
        raise HwcError(f"{path}: not a runtime artifact (expected one of {', '.join(ARTIFACT_SUFFIXES)})")
    # one suffix, two runtimes (.tflite: LiteRT and TFLite Micro): a later backend with the same
    # suffix claims the files only it writes (tflite-micro: 16x8 and LUT-decoded weights)
    claimants = [c for c in CAPABILITIES.values() if c.suffix == suffix and c.name != key and c.claims_file]
    if claimants and Path(path).is_file():
        for c in claimants:
            if resolve(c.claims_file)(Path(path)):
                return c.name
    return key


def available_backends() -> list[str]:
    """Backends whose runtime imports here (the converter may still be missing for litert)."""
    out = []
    for key in _BACKENDS:
        try:
            get_backend(key)
        except HwcError:
            continue
        out.append(key)
    return out


def check_mode(mode: str, weights: str = "fp32", backend: str | None = None) -> None:
    if mode not in MODES:
        raise HwcError(f"unknown export mode {mode!r}: choose one of {', '.join(MODES)}")
    if weights not in WEIGHTS:
        raise HwcError(f"unknown weight format {weights!r}: choose one of {', '.join(WEIGHTS)}")
    if weights == "int4" and backend is not None and backend not in INT4_BACKENDS:
        raise HwcError(f"int4 weights: backend {backend!r} has no native 4-bit weight path here "
                       f"(only {', '.join(INT4_BACKENDS)}); use int8")
    if weights == "mixed" and backend is not None and backend not in MIXED_BACKENDS:
        raise HwcError(f"mixed weights: backend {backend!r} exports no per-layer 4/8-bit weights here "
                       f"(only {', '.join(MIXED_BACKENDS)}); use int8"
                       + (" or int4 (every layer)" if backend in INT4_BACKENDS else ""))


def distinct_weights(model: torch.nn.Module) -> dict[str, int]:
    """Per layer (models.cost.layer_paths), the most distinct nonzero values any of its weight
    matrices holds: the codebook size K of a clustered layer, thousands for a dense one. Zero is
    left out: a pruned weight is 0 on every symmetric integer grid, so it costs no codebook entry."""
    import torch

    from hwcompress.models.cost import layer_paths

    params = dict(model.named_parameters())
    out = {}
    for layer, path in layer_paths(model).items():
        counts = [int(torch.unique(p.detach()[p.detach() != 0]).numel()) for n, p in params.items()
                  if n.startswith(path + ".") and p.dim() >= 2]
        if counts:
            out[layer] = max(counts)
    return out


def layer_widths(backend: str, path: Path, model: torch.nn.Module) -> dict[str, str]:
    """Per layer, the weight width an exported file stores, read back from the file: LiteRT from
    the flatbuffer's tensor types, onnxruntime from its MatMulNBits nodes ("int4" for the layers
    they hold, "int8" for the rest), OpenVINO from the element types of the IR's weight constants;
    {} for other backends."""
    reader = capabilities(backend).layer_widths
    return resolve(reader)(Path(path), model) if reader else {}


def grid_bits(model: torch.nn.Module) -> dict[str, int]:
    """Per layer (models.cost.layer_paths), the narrowest runtime width (4 or 8) whose symmetric
    integer grid holds every weight matrix of the layer exactly (compress.cluster.grid_step);
    layers on no grid (dense, or clustered with free centroids) are left out."""
    from hwcompress.compress.cluster import GRID_Q, grid_step
    from hwcompress.models.cost import layer_paths

    params = dict(model.named_parameters())
    out = {}
    for layer, path in layer_paths(model).items():
        mats = [p for n, p in params.items() if n.startswith(path + ".") and p.dim() >= 2]
        bits = next((b for b in sorted(GRID_Q) if mats and all(grid_step(p, b) is not None for p in mats)), None)
        if bits is not None:
            out[layer] = bits
    return out


def default_weights(backend: str, model: torch.nn.Module) -> tuple[str, str]:
    """The weight format `export` uses for a `.hwc` when none is asked for, and why: on a backend
    that stores grid weights exactly (Capabilities.grid_exact) "mixed" when every layer with weight
    matrices lies on an integer grid (each layer then at the narrowest width holding it exactly:
    4 bits on the 4-bit grid, else 8); "fp32" when some layer does not (free centroids: int8
    would round them), naming those layers; the backend's plain default elsewhere."""
    from hwcompress.models.cost import layer_paths

    caps = capabilities(backend)
    plain = caps.default_weights
    if not caps.grid_exact:
        return plain, f"{backend} stores no codebook exactly at fewer bits"
    params = dict(model.named_parameters())
    weighted = [layer for layer, path in layer_paths(model).items()
                if any(n.startswith(path + ".") and p.dim() >= 2 for n, p in params.items())]
    bits = grid_bits(model)
    off = [layer for layer in weighted if layer not in bits]
    if off or not weighted:
        return "fp32", (f"layers {', '.join(off[:4])}{' ...' if len(off) > 4 else ''} are on no integer grid "
                        "(compress --grid 4|8 puts them there), so fp32 keeps every weight exact")
    four = [layer for layer in weighted if bits[layer] == 4]
    return "mixed", (f"every layer is on an integer grid ({len(four)} of {len(weighted)} on the 4-bit one), "
                     "so each is stored at the narrowest width its kind runs at here that holds it exactly")


def mixed_layers(model: torch.nn.Module) -> list[str]:
    """The layers `weights="mixed"` stores at 4 bits when not told: those whose weights lie on
    the 4-bit grid (`grid_bits`), which the runtime then holds exactly. A layer clustered to
    K <= 16 free centroids is on no such grid and stays 8-bit."""
    return [layer for layer, b in grid_bits(model).items() if b == 4]


def check_int4_layers(backend: str, model: torch.nn.Module, int4_layers: list[str]) -> None:
    """Refuse, in one line, 4-bit weights asked for a layer the backend does not run at 4 bits
    (its kind is not in INT4_KINDS), naming the layer, its kind and what the backend offers it;
    and a name that is no weight layer of `model`."""
    from hwcompress.models.cost import layer_costs

    kinds = {r["name"]: r["kind"] for r in layer_costs(model)}
    unknown = [layer for layer in int4_layers if layer not in kinds]
    if unknown:
        raise HwcError(f"4-bit layers {', '.join(unknown)}: no such weight layer (the model has {', '.join(kinds)})")
    caps = capabilities(backend)
    off = [layer for layer in int4_layers if kinds[layer] not in caps.int4_kinds]
    if off:
        kind = kinds[off[0]]
        raise HwcError(f"{caps.name} runs 4-bit weights only in {', '.join(caps.int4_kinds) or 'no'} layers, not in "
                       f"{kind} layers ({', '.join(x for x in off if kinds[x] == kind)}): "
                       + caps.not_int4.format(kind=kind))


def run_stream(
    session: Session, audio: np.ndarray, state_shapes: list[tuple[int, ...]] | None = None
) -> np.ndarray:
    """Enhance 16 kHz mono audio hop by hop through a streaming runtime session.

    Mirrors `hwcompress.enhance.enhance_streaming` (same padding, the same StreamingStft
    and the same realignment), so the two outputs can be compared sample for sample.
    """
    import torch

    from hwcompress.enhance import STFT
    from hwcompress.models.stft import StreamingStft

    if session.frames not in (None, 1):
        raise HwcError(f"run_stream needs a streaming (T=1) artifact, this one takes T={session.frames}")
    shapes = session.state_shapes if state_shapes is None else state_shapes
    hop, delay = STFT.hop, STFT.overlap
    n = audio.size
    n_frames = -(-(n + delay) // hop)
    padded = np.zeros(n_frames * hop, dtype=np.float32)
    padded[:n] = np.asarray(audio, dtype=np.float32).reshape(-1)
    stream = StreamingStft(STFT)
    state = [np.zeros((1, *s), dtype=np.float32) for s in shapes]
    out = []
    for t in range(n_frames):
        frame = stream.analyze(torch.from_numpy(padded[t * hop : (t + 1) * hop])[None])
        enhanced, state = session.run(frame.numpy(), state)
        out.append(stream.synthesize(torch.from_numpy(enhanced))[0].numpy())
    return np.concatenate(out)[delay : delay + n]
