"""Pieces every backend shares: the flat graph signature, atomic writes, error lines.

No torch here: sessions import this module, and a session (the measurement child, a
device with only a runtime) must load without torch; the tracing side is in _trace."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hwcompress.errors import HwcError

N_BINS = 161
SPEC = "spec"
OUT = "out"


#: ONNX metadata key of a model's own front end (a JSON object), written for models that analyse
#: audio themselves (DeepFilterNet3), so that a runner of the file uses their analysis and synthesis
FRONT_END_KEY = "hwcompress.front_end"


def front_end_of(metadata: dict, path: Path) -> dict | None:
    text = metadata.get(FRONT_END_KEY)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise HwcError(f"{path}: metadata {FRONT_END_KEY} is not a JSON object")
    return value


def state_name(i: int) -> str:
    return f"state_{i}"


def state_out_name(i: int) -> str:
    return f"state_out_{i}"


def input_names(n_states: int) -> list[str]:
    return [SPEC] + [state_name(i) for i in range(n_states)]


def output_names(n_states: int) -> list[str]:
    return [OUT] + [state_out_name(i) for i in range(n_states)]


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A scratch folder next to the destination, so the final os.replace is atomic
    (same file system) and a failed export leaves no half-written artifact. Absolute, because
    converters run in subprocesses with their own working directory."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(files: list[tuple[Path, Path]]) -> None:
    """Move staged files into place; the entry file (e.g. the IR .xml) goes last, so a
    reader that finds the new entry also finds its companions."""
    for src, dst in files:
        os.replace(src, dst)


def artifact_stem(stem: str | None, mode: str, frames: int | None = None, weights: str = "fp32") -> str:
    base = stem or "model"
    return f"{base}-{mode}" + (f"-t{frames}" if frames else "") + (f"-{weights}" if weights != "fp32" else "")


def with_weights(staged: Path, weights: str, quantize_int8: Callable[[Path, Path], None]) -> Path:
    """The staged file itself (fp32), or its int8 version written next to it."""
    if weights == "fp32":
        return staged
    quantized = staged.with_name("q-" + staged.name)
    quantize_int8(staged, quantized)
    return quantized


_OP_PATTERNS = (
    re.compile(r"operator '([\w:.]+)'"),  # torch.onnx UnsupportedOperatorError
    re.compile(r"\b(aten[.:]{1,2}[\w.]+)"),  # torch / litert-torch lowering failures
    re.compile(r"[Oo]p(?:eration)? type:? *'?(\w+)"),  # OpenVINO frontends
    re.compile(r"No conversion rule found for operations?:? *([\w:.,\- ]+)"),
)


def unsupported(exporter: str, exc: BaseException, where: str | None = None) -> HwcError:
    """One line naming the op an exporter choked on (and where, if known), or else the
    first line of its message."""
    text = f"{exc}"
    for pattern in _OP_PATTERNS:
        m = pattern.search(text)
        if m:
            at = f" in {where}" if where else ""
            return HwcError(f"{exporter} cannot convert operator {m.group(1).strip()}{at}: "
                            f"unsupported by this exporter ({type(exc).__name__})")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return HwcError(f"{exporter} export failed: {first[:200]}")


def require_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such model file")
    return path


def corrupt(path: Path, runtime: str, exc: BaseException) -> HwcError:
    return HwcError(f"{path}: corrupt or unreadable {runtime} model ({type(exc).__name__})")


def as_input(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class SessionBase:
    """State-shape bookkeeping and argument checks shared by every runtime session."""

    state_shapes: list[tuple[int, ...]]
    frames: int | None

    def checked_inputs(self, spec: np.ndarray, state: list[np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray]]:
        """`spec` and `state` as the graph takes them (C-contiguous float32; zeros for a missing
        state), or a one-line HwcError for a wrong shape or state count."""
        spec = as_input(spec)
        if spec.ndim != 4 or spec.shape[0] != 1 or spec.shape[3] != 2:
            raise HwcError(f"spec must be [1, T, F, 2], got {list(spec.shape)}")
        if self.frames is not None and spec.shape[1] != self.frames:
            raise HwcError(f"this artifact takes exactly T={self.frames} frames per call, got T={spec.shape[1]}")
        if state is None:
            state = [np.zeros((1, *s), dtype=np.float32) for s in self.state_shapes]
        if len(state) != len(self.state_shapes):
            raise HwcError(f"expected {len(self.state_shapes)} state tensors, got {len(state)}")
        return spec, [as_input(s) for s in state]

    # A stream with its state held in the session: what a deployment runs each hop. `run` hands
    # the state to the caller and takes it back every call (two copies of every state tensor per
    # hop, and for most runtimes a new binding); `hop` lets a session keep it in place. This
    # default keeps it in a Python list; sessions that can keep it in the runtime's own buffers
    # (onnxruntime IOBinding, OpenVINO's paired requests, LiteRT's tensors) override both.

    #: False takes each runtime's per-call path (inputs wrapped or bound, outputs allocated
    #: anew every call), kept for side-by-side timing in benchmarks/hop_overhead.py
    fast_path = True

    def reset(self) -> None:
        """Start a new stream: the next `hop` sees zero state."""
        self._held: list[np.ndarray] | None = None

    def hop(self, spec: np.ndarray) -> np.ndarray:
        """One streaming hop on the held state (zeros after `reset` or at first); returns the
        output frame, a copy the caller keeps."""
        out, self._held = self.run(spec, getattr(self, "_held", None))
        return out

    def held_state(self) -> list[np.ndarray]:
        """Copies of the state the next `hop` reads."""
        held = getattr(self, "_held", None)
        return [s.copy() for s in held] if held is not None else [np.zeros((1, *s), np.float32) for s in self.state_shapes]


class PairedStateSession(SessionBase):
    """A session whose runtime reads and writes caller-owned buffers bound once: one spectrum
    buffer, one output buffer and the state as a ping-pong pair of sets, call k reading set k
    and writing set 1-k, so a `hop` keeps the state in place and copies only the spectrum in
    and the output frame out. A subclass binds the buffers `_pair_buffers` made and implements
    `_invoke(k)`; its `run` calls `_run_paired` when `_paired and fast_path`."""

    _paired = False

    def _pair_buffers(self, spec_shape, out_shape, state_shapes) -> None:
        self._spec_buf, self._out_buf = np.zeros(spec_shape, np.float32), np.zeros(out_shape, np.float32)
        self._pair = [[np.zeros(shape, np.float32) for shape in state_shapes] for _ in range(2)]
        self._cur = 0  # the set the next hop reads
        self._paired = True

    def _invoke(self, k: int) -> None:
        raise NotImplementedError

    def _run_paired(self, spec: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        for buf, array in zip(self._pair[self._cur], state):
            np.copyto(buf, array)
        out = self.hop(spec)
        # copies: the next hop overwrites the buffers, and the state handed back is the caller's
        return out, self.held_state()

    def hop(self, spec: np.ndarray) -> np.ndarray:
        if not (self._paired and self.fast_path):
            return super().hop(spec)
        if getattr(spec, "shape", None) != self._spec_buf.shape:
            raise HwcError(f"spec must be {list(self._spec_buf.shape)}, got {list(np.shape(spec))}")
        np.copyto(self._spec_buf, spec, casting="same_kind")
        self._invoke(self._cur)
        self._cur ^= 1
        return self._out_buf.copy()

    def reset(self) -> None:
        super().reset()
        if self._paired:
            for buf in self._pair[self._cur]:
                buf.fill(0.0)

    def held_state(self) -> list[np.ndarray]:
        if not (self._paired and self.fast_path):
            return super().held_state()
        return [buf.copy() for buf in self._pair[self._cur]]


def check_precision(backend: str, precision: str | None) -> None:
    """A backend that runs one activation precision (Capabilities.activations) refuses any
    other in one line, naming what it offers; None or its own precision passes."""
    from hwcompress.export import capabilities

    offered = capabilities(backend).activations
    if precision is not None and precision not in offered:
        raise HwcError(f"{backend} runs {' or '.join(offered)} activations, not {precision!r}"
                       + ("; bf16/f16 activations: the OpenVINO CPU plugin (x86-openvino)"
                          if precision in ("bf16", "f16") else ""))
