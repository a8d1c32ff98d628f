"""Export a model to one runtime and check the artifact against torch on the spot.

The parity figure travels with the artifact (in the export report), so whoever deploys it
knows how far the runtime's output is from the model that was evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwcompress.export import canonical_name, check_mode, get_backend
from hwcompress.export.probe import artifact_files, runtime_version, speech_like_frames

PARITY_FRAMES = 50


def _snr_db(ref: np.ndarray, err: np.ndarray) -> float:
    den = float(np.sum(err.astype(np.float64) ** 2))
    return float("inf") if den == 0 else float(10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / den))


def stream_parity(model: torch.nn.Module, session: Any, frames: int = PARITY_FRAMES) -> dict[str, float]:
    """Torch vs runtime over `frames` streaming hops of a speech-like input, state carried."""
    spec = speech_like_frames(frames)
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
    spec = torch.from_numpy(speech_like_frames(frames)[:, 0, 0])[None]
    was = model.training
    model.eval()
    with torch.no_grad():
        want, _ = model(spec, model.initial_state(1))
    model.train(was)
    got, _ = session.run(spec.numpy())
    return {"frames": frames, "max_abs_diff": float(np.abs(want.numpy() - got).max()),
            "snr_db": _snr_db(want.numpy(), want.numpy() - got)}


def export_checked(model: torch.nn.Module, backend: str, out_dir: Path, modes: list[str], weights: str = "fp32",
                   frames: int = 100, stem: str = "model", check: bool = True) -> list[dict[str, Any]]:
    """Export `model` in each mode; returns one row per artifact with its files, bytes on
    disk and (with check) its parity against torch."""
    for mode in modes:
        check_mode(mode, weights, canonical_name(backend))
    be = get_backend(backend)
    rows = []
    for mode in modes:
        path = be.export(model, Path(out_dir), mode, frames=frames, stem=stem, weights=weights)
        files = artifact_files(path)
        row: dict[str, Any] = {"backend": be.name, "runtime_version": runtime_version(be.name), "mode": mode,
                               "weights": weights, "path": str(path), "files": [str(f) for f in files],
                               "bytes": sum(f.stat().st_size for f in files)}
        if check:
            session = be.load(path, threads=1)
            if mode == "stream":
                row["parity"] = stream_parity(model, session)
            else:
                row["parity"] = whole_parity(model, session, session.frames or frames)
        rows.append(row)
    return rows
