"""What an exported artifact is made of and what it is probed with: its files on disk, the
runtime's release, and a deterministic speech-like input. Shared by the export parity check and
the profiler (which sits downstream of export)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

#: frames of synthetic audio fed cyclically to timed runs (3 s); distinct frames keep caches honest
PROBE_FRAMES = 300

def runtime_version(runtime: str) -> str | None:
    """The runtime's release: its pip distribution's version (Capabilities.distribution; a
    module's __version__ is not always the release), else the module's __version__."""
    from hwcompress.export import CAPABILITIES

    caps = CAPABILITIES.get(runtime)
    dist, module = (caps.distribution, caps.runtime_module) if caps else (runtime, runtime)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return getattr(__import__(module), "__version__", None)
    except ImportError:
        return None


def artifact_files(path: Path) -> list[Path]:
    """Every file the artifact needs at load time: an OpenVINO IR is the .xml plus its .bin
    (Capabilities.companion_suffixes)."""
    from hwcompress.export import CAPABILITIES

    path = Path(path)
    files = [path]
    for caps in CAPABILITIES.values():
        if path.suffix == caps.suffix:
            files += [path.with_suffix(s) for s in caps.companion_suffixes if path.with_suffix(s).is_file()]
    return files


#: ONNX ops that only a weight-quantized graph has (onnxruntime quantize_dynamic writes the first three)
_ONNX_INT8_OPS = frozenset({"MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "QLinearMatMul", "QLinearConv",
                            "DequantizeLinear"})


def stored_weights(path: Path) -> str | None:
    """The weight format an exported artifact stores ("fp32", "int8" or "int4"), read from its
    contents, not its name: integer weight ops of an ONNX graph, the element types of an IR's
    constants, the dtypes of a .tflite's tensors. None when the file cannot be read (the session
    that loads it then says why)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".onnx":
            import onnx

            graph = onnx.load(str(path), load_external_data=False).graph  # protobuf, no code runs
            ints = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
            if any(t.data_type in ints for t in graph.initializer) or any(
                    n.op_type == "MatMulNBits" and next((a.i for a in n.attribute if a.name == "bits"), 4) == 4
                    for n in graph.node):
                return "int4"
            return "int8" if any(n.op_type in _ONNX_INT8_OPS for n in graph.node) else "fp32"
        if suffix == ".xml":
            import re

            # every weight tensor of an IR is a Const layer whose <data> names its element type
            types = set(re.findall(r'type="Const"[^>]*>\s*<data\b[^>]*\belement_type="(\w+)"', path.read_text(errors="replace")))
            if types & {"u4", "i4", "nf4"}:
                return "int4"
            return "int8" if types & {"u8", "i8"} else "fp32"
        if suffix == ".tflite":
            from ai_edge_litert.interpreter import Interpreter

            from hwcompress.export.tflite import weight_ops

            # the interpreter reports int4 tensors as int8: the flatbuffer's own types tell
            if any(r["type"] == "INT4" for r in weight_ops(path)):
                return "int4"
            details = Interpreter(model_path=str(path)).get_tensor_details()
            dtypes = {np.dtype(d["dtype"]) for d in details}
            if dtypes & {np.dtype(np.int8), np.dtype(np.uint8)}:
                return "int8"
            return "fp32"
    except Exception:  # unreadable or foreign file: the runtime's own loader reports it
        return None
    return None


def artifact_bytes(path: Path) -> int:
    """Bytes on disk of every file the artifact loads."""
    return sum(f.stat().st_size for f in artifact_files(path))


def speech_like_frames(n: int = PROBE_FRAMES, seed: int = 0, model: Any = None) -> np.ndarray:
    """`n` streaming STFT frames [n, 1, 1, F, 2] of a synthetic voiced signal in noise.

    Not zeros or white noise: silence decays the recurrent state towards denormals,
    which run far slower on x86 than normal floats, and white noise has none of the
    spectral tilt and level changes of speech. Harmonics with a moving pitch under three
    formant bumps, syllable-rate loudness changes and pauses, at about 10 dB SNR, give
    spectra in the range a real input has. Frames come from the same StreamingStft the
    model is trained and run with, or, for a `model` with its own analysis (`model.analyze`,
    DeepFilterNet3), from that analysis of the same audio.
    """
    from hwcompress.enhance import STFT

    rng = np.random.default_rng(seed)
    sr, hop = STFT.sample_rate, STFT.hop
    t = np.arange((n + 1) * hop) / sr
    f0 = 125 + 35 * np.sin(2 * np.pi * 0.6 * t) + 3 * rng.standard_normal(t.size).cumsum() / np.sqrt(t.size)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = np.zeros_like(t)
    for k in range(1, 40):
        fk = k * f0
        envelope = sum(np.exp(-0.5 * ((fk - fc) / bw) ** 2) for fc, bw in ((550, 150), (1600, 250), (2600, 350)))
        voiced += (0.2 + envelope) / k * np.sin(k * phase) * (fk < sr / 2 - 500)
    syllables = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 1.5 * (np.sin(2 * np.pi * 0.4 * t) > -0.6)
    speech = voiced * syllables
    speech *= 0.3 / (np.abs(speech).max() + 1e-9)
    noise = rng.standard_normal(t.size)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2)) * 10 ** (-10 / 20)
    audio = (speech + noise).astype(np.float32)
    if callable(getattr(model, "analyze", None)):
        import torch

        with torch.no_grad():
            spec = model.analyze(torch.from_numpy(audio)[None])[0, :n].numpy()
        return np.ascontiguousarray(spec[:, None, None], dtype=np.float32)
    return audio_frames(audio)[:n]


def audio_frames(audio: np.ndarray) -> np.ndarray:
    """The streaming STFT frames [n, 1, 1, F, 2] of 16 kHz mono `audio`, hop by hop as a streaming
    model sees them (the StreamingStft the models are trained and run with); the first frame,
    which saw only half a window of signal, is dropped."""
    import torch

    from hwcompress.enhance import STFT
    from hwcompress.models.stft import StreamingStft

    hop = STFT.hop
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    stream = StreamingStft(STFT)
    frames = []
    with torch.no_grad():
        for i in range(audio.size // hop):
            frames.append(stream.analyze(torch.from_numpy(audio[i * hop : (i + 1) * hop])[None]).numpy())
    return np.ascontiguousarray(np.stack(frames[1:]), dtype=np.float32)


def weights_held(net: Any, held: list[np.ndarray], gate_order_free: bool = False) -> dict[str, bool]:
    """Per weight matrix of `net` (parameters of 2 or more dims), whether one of the arrays a
    runtime file holds (`held`, read back by the backend) is exactly its values: element by
    element in torch's layout, reshaped, or transposed (a 2-D matrix stored the other way round);
    with `gate_order_free`, also as the same multiset (a recurrent layer whose gates the format
    reorders). The backends' `exact_weights` read their file and ask this."""
    out = {}
    for name, p in net.named_parameters():
        if p.dim() < 2:
            continue
        p = p.detach().cpu().numpy()
        out[name] = any(np.array_equal(a.reshape(p.shape), p)
                        or (a.ndim == 2 and a.T.shape == p.shape and np.array_equal(a.T, p))
                        or (gate_order_free and np.array_equal(np.sort(a.ravel()), np.sort(p.ravel())))
                        for a in held if a.size == p.size)
    return out
