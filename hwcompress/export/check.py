"""Export a model to one runtime and check the artifact against torch on the spot.

The parity figure travels with the artifact (in the export report), so whoever deploys it
knows how far the runtime's output is from the model that was evaluated, and it is enforced:
an artifact whose output departs from torch by more than its weight format's stated
tolerance (`MIN_SNR_DB`) fails the export with a `ParityError` (one line naming the artifact,
the figures against the tolerance, and the model's layer kinds and widths). `check_parity`
runs the same check on any artifact already on disk and returns a `Parity` with `ok`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwcompress.errors import HwcError
from hwcompress.export import backend_for_artifact, canonical_name, check_mode, get_backend
from hwcompress.export.probe import artifact_files, runtime_version, speech_like_frames, stored_weights

PARITY_FRAMES = 50

#: Stated tolerance of each weight format: the least SNR (dB) of the runtime's output against
#: torch's (10 log10 of sum ref^2 / sum (ref - got)^2 over the output spectra of PARITY_FRAMES
#: streaming hops of `speech_like_frames`, state carried; whole-utterance artifacts: one
#: utterance). Chosen from `check_parity` on stream exports of the four tiny presets, each
#: also pruned 50% structured + clustered K=16, and the shipped default (same two forms), x86:
#:   fp32: 134-146 dB on onnxruntime and OpenVINO, 135-142 dB on LiteRT (tiny CRN/GCRN forms)
#:   int8: onnxruntime 38.5-73 dB, OpenVINO 42-68 dB, LiteRT 35.1-67.3 dB (8 of the 10 models:
#:         not the compressed tiny-lstm/-gru); lowest: the GCRNs, whose gated convolutions
#:         multiply two quantized paths; the default 42.4-50.1 dB over the three runtimes
#:   int4 (OpenVINO only): 36.4-58.8 dB (tiny-gru lowest; nncf keeps layers too small for
#:         groups of 128 in int8, so some "int4" artifacts read back as int8)
#: Each bound sits 10+ dB under the worst seen. Broken exports of tiny-gru (tests/test_parity.py):
#: its largest weight initializer negated 8.4 dB, set to NaN 14.9 dB; checked against its model
#: after the GRU's weights were scaled 1.5x, 33.4 dB: far under the fp32 bound, while an int8
#: bound cannot tell a change that small from quantization noise (it catches gross breakage).
MIN_SNR_DB: dict[str, float] = {"fp32": 60.0, "int8": 25.0, "int4": 20.0}

#: Least SNR (dB) of an int8 .tflite's output on the emulated arm64 CPU (qemu-aarch64 chroot,
#: XNNPACK's arm64 kernels) against the same file on this x86 host, 50 speech-like hops: measured
#: 35.4 dB (tiny-gcrn compressed), 46.6 / 48.3 (default compressed / dense), 53.9 (tiny-gru),
#: 68.9 (tiny-lstm); against torch the emulated run gave 42.0 (default), 53.3, 65.5 dB, within
#: 0.4-2.4 dB of the host's. The two ISAs round dynamic activation quantization differently, so
#: the bound is the int8 one, not fp32's.
EMULATED_MIN_SNR_DB = 25.0


@dataclass(frozen=True)
class ExportedArtifact:
    """One exported runtime artifact: what the export stage hands profile, the search and the CLI
    (`export_checked`); `to_json()` at the JSON edge (`export --json`, the fit report)."""

    backend: str
    runtime_version: str | None
    mode: str  # "stream" or "whole"
    weights: str  # fp32, int8, int4, mixed
    path: str  # the file a runtime loads (an IR's .xml)
    files: list[str]  # every file of the artifact (an IR's .xml and .bin)
    bytes: int  # on disk, all files
    #: parity against torch (`Parity.to_dict()` plus the activations it ran at); None unchecked
    parity: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.parity is None:
            del out["parity"]
        return out


class ParityError(HwcError):
    """An exported artifact whose runtime output departs from torch beyond its stated tolerance."""

    def __init__(self, parity: Parity) -> None:
        super().__init__(parity.message())
        self.parity = parity


@dataclass(frozen=True)
class Parity:
    """Runtime output of one artifact against torch's, and whether it is within tolerance."""

    path: str
    backend: str
    mode: str  # "stream" (hops with the state carried) or "whole" (one utterance per call)
    weights: str  # the artifact's stored weight format, which picks the tolerance
    frames: int
    max_abs_diff: float
    snr_db: float
    min_snr_db: float
    ok: bool
    #: the model's weight layers as "kind: output widths" (filled when not ok, for the error line)
    layers: str | None = None

    @property
    def how(self) -> str:
        feed = (f"{self.frames} streaming hops, state carried" if self.mode == "stream"
                else f"one {self.frames}-frame utterance")
        return (f"runtime output vs torch on {feed} of synthetic speech-like spectra; "
                f"SNR = 10 log10(sum ref^2 / sum diff^2), tolerance for {self.weights}: >= {self.min_snr_db:g} dB")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "how": self.how}

    def message(self) -> str:
        stated = MIN_SNR_DB.get(self.weights) == self.min_snr_db
        which = f"the stated {self.weights} tolerance" if stated else f"the given tolerance ({self.weights} weights)"
        return (f"{self.path}: {self.backend} output departs from torch beyond {which} "
                f"(SNR {self.snr_db:.1f} dB < {self.min_snr_db:g} dB, max|diff| {self.max_abs_diff:.3g}, "
                f"{self.mode} parity over {self.frames} frames); model layers (kind: output widths) {self.layers}")


def layer_summary(model: torch.nn.Module) -> str:
    """'Conv2d 8/16, GRU 64, Linear 161': each weight-layer kind with its layers' output widths
    (channels of a conv, hidden units of a recurrent layer, features of a linear one)."""
    from hwcompress.models.cost import layer_costs

    kinds: dict[str, list[str]] = {}
    for row in layer_costs(model):
        kinds.setdefault(row["kind"], []).append(str(row["out_shape"][0]))
    return ", ".join(f"{kind} {'/'.join(widths)}" for kind, widths in kinds.items()) or "none"


def _snr_db(ref: np.ndarray, err: np.ndarray) -> float:
    den = float(np.sum(err.astype(np.float64) ** 2))
    return float("inf") if den == 0 else float(10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / den))


def stream_parity(model: torch.nn.Module, session: Any, frames: int = PARITY_FRAMES) -> dict[str, float]:
    """Torch vs runtime over `frames` streaming hops of a speech-like input, state carried."""
    spec = speech_like_frames(frames, model=model)
    was = model.training
    model.eval()
    state_t, state_r = model.initial_state(1), None
    want, got = [], []
    with torch.no_grad():
        for frame in spec:
            w, state_t = model(torch.from_numpy(frame), state_t)
            g, state_r = session.run(frame, state_r)
            want.append(w.numpy())
            got.append(g)
    model.train(was)
    want_a, got_a = np.concatenate(want), np.concatenate(got)
    return {"frames": frames, "max_abs_diff": float(np.abs(want_a - got_a).max()),
            "snr_db": _snr_db(want_a, want_a - got_a)}


def whole_parity(model: torch.nn.Module, session: Any, frames: int) -> dict[str, float]:
    spec = torch.from_numpy(speech_like_frames(frames, model=model)[:, 0, 0])[None]
    was = model.training
    model.eval()
    with torch.no_grad():
        want, _ = model(spec, model.initial_state(1))
    model.train(was)
    got, _ = session.run(spec.numpy())
    return {"frames": frames, "max_abs_diff": float(np.abs(want.numpy() - got).max()),
            "snr_db": _snr_db(want.numpy(), want.numpy() - got)}


def check_parity(model: torch.nn.Module, path: str | Path, *, weights: str | None = None, mode: str | None = None,
                 frames: int | None = None, min_snr_db: float | None = None, session: Any = None,
                 enforce: bool = False, backend: str | None = None) -> Parity:
    """Run the artifact at `path` in its runtime (from the suffix) against `model` in torch.

    `weights` (default: read from the artifact) picks the tolerance `MIN_SNR_DB[weights]`
    unless `min_snr_db` is given; `mode` (default: "stream" for a T=1 graph, "whole" otherwise)
    picks streaming hops or one utterance of `frames` frames (a fixed-T artifact's own T).
    Returns the figures with `ok`; with `enforce`, a result that is not ok raises ParityError.
    `backend` names the runtime where the suffix does not say it (a .tflite for tflite-micro).
    """
    path = Path(path)
    backend = canonical_name(backend) if backend else backend_for_artifact(path)
    if session is None:
        session = get_backend(backend).load(path, threads=1)
    want_states = [tuple(int(d) for d in s) for s in model.state_shapes()]
    if [tuple(s) for s in session.state_shapes] != want_states:
        raise HwcError(f"{path}: its state shapes {[list(s) for s in session.state_shapes]} are not the model's "
                       f"{[list(s) for s in want_states]}: the artifact was exported from another architecture")
    if weights is None:
        weights = stored_weights(path) or "fp32"
    if weights == "mixed":  # held to the narrowest width the file stores (int4 when any layer has it)
        weights = stored_weights(path) or "int8"
    if weights not in MIN_SNR_DB:
        raise HwcError(f"unknown weight format {weights!r}: choose one of {', '.join(MIN_SNR_DB)}")
    if mode is None:
        mode = "stream" if session.frames == 1 else "whole"
    if mode == "stream":
        figures = stream_parity(model, session, frames or PARITY_FRAMES)
    elif mode == "whole":
        figures = whole_parity(model, session, session.frames or frames or 100)
    else:
        raise HwcError(f"unknown parity mode {mode!r}: choose stream or whole")
    bound = MIN_SNR_DB[weights] if min_snr_db is None else float(min_snr_db)
    snr, diff = figures["snr_db"], figures["max_abs_diff"]
    # NaN compares False, so a runtime that puts out NaN or inf never passes
    ok = bool(np.isfinite(diff) and snr >= bound)
    parity = Parity(path=str(path), backend=backend, mode=mode, weights=weights, frames=int(figures["frames"]),
                    max_abs_diff=diff, snr_db=snr, min_snr_db=bound, ok=ok,
                    layers=None if ok else layer_summary(model))
    if enforce and not ok:
        raise ParityError(parity)
    return parity


def export_checked(model: torch.nn.Module, backend: str, out_dir: Path, modes: list[str], weights: str = "fp32",
                   frames: int = 100, stem: str = "model", check: bool = True, enforce: bool = True,
                   min_snr_db: float | None = None, options: dict[str, Any] | None = None,
                   precision: str | None = None) -> list[ExportedArtifact]:
    """Export `model` in each mode (`options`: the backend's own export keywords, e.g. tflite-micro's
    `lut`); returns one ExportedArtifact per mode with its files, bytes on
    disk and (with check) its parity against torch (`Parity.to_dict()`, `ok` included), the
    artifact run with `precision` activations (None: the runtime's default).

    With check and enforce (the default), an artifact beyond its tolerance (`MIN_SNR_DB[weights]`,
    or `min_snr_db`) raises ParityError; it stays on disk for inspection (the error names it).
    `enforce=False` records the failure in the artifact instead (`parity["ok"]` false), as a caller
    that must mark a budget not met rather than stop wants it."""
    for mode in modes:
        check_mode(mode, weights, canonical_name(backend))
    be = get_backend(backend)
    rows = []
    for mode in modes:
        path = be.export(model, Path(out_dir), mode, frames=frames, stem=stem, weights=weights, **(options or {}))
        files = artifact_files(path)
        parity = None
        if check:
            checked = check_parity(model, path, weights=weights, mode=mode, frames=frames if mode == "whole" else None,
                                   min_snr_db=min_snr_db,
                                   session=be.load(path, threads=1, precision=precision), enforce=enforce,
                                   backend=be.name)
            from hwcompress.export import capabilities

            parity = {**checked.to_dict(), "activations": precision or capabilities(be.name).activations[0]}
        rows.append(ExportedArtifact(backend=be.name, runtime_version=runtime_version(be.name), mode=mode,
                                     weights=weights, path=str(path), files=[str(f) for f in files],
                                     bytes=sum(f.stat().st_size for f in files), parity=parity))
    return rows
