"""Run a model on audio: in chunks of frames with the state carried across chunks (the
default: bounded memory, batched frames), the whole utterance at once (short clips), or hop
by hop (what a device does). All three give the same samples up to float rounding;
tests/test_enhance.py proves it.

The chunked path takes any `run(spec, state) -> (spec, state)` on numpy arrays: a torch model
(`torch_runner`) or an exported runtime session's `run` (the CLI builds one; this module does
not import the export stage, which sits downstream of it)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwcompress.device import device_of
from hwcompress.errors import HwcError
from hwcompress.models.stft import StftConfig, StreamingStft, istft, stft
from hwcompress.models.zoo import SEModel
from hwcompress.progress import progress_bar

STFT = StftConfig()

#: frames per chunk of the chunked path (4 s of audio): long enough that the convolutions and
#: the recurrent input projections run as matrix products over many frames, short enough that
#: the activations stay small (the default CRN peaks at a few hundred MB per 4 s chunk
#: instead of 4.8 GB for a whole 10-minute file; see benchmarks/enhance_long.md)
CHUNK_FRAMES = 400
#: `enhance` (whole utterance) does inputs of up to this many frames (30 s) in one pass and
#: longer ones in passes of this size with the state carried, so its memory is bounded too
WHOLE_MAX_FRAMES = 3000

#: one model call on a chunk: spec [1, T, F, 2] float32 and the carried state -> both, updated
Runner = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]
#: progress(done, total), in STFT frames
Progress = Callable[[int, int], None]


def check_output_not_input(inp: Path, out: Path) -> None:
    """Refuse an output that is the input recording itself, so enhancing never replaces it:
    the same path, a path reaching it through a symbolic link, or a hard link to it (same
    device and inode). One-line HwcError."""
    inp, out = Path(inp), Path(out)
    try:
        same = os.path.samefile(inp, out)
    except OSError:  # either does not exist (yet): they cannot be one file
        return
    if not same:
        return
    if os.path.abspath(inp) == os.path.abspath(out):
        how = "the same path"
    elif inp.resolve() == out.resolve():
        how = "through a symbolic link"
    else:
        how = "a hard link to it"
    raise HwcError(f"{out}: is the input file {inp} ({how}); writing there would replace the recording, "
                   "give another output path")


@dataclass(frozen=True)
class Enhanced:
    """An enhancement and how long it took (crosses into the CLI and the benchmark)."""

    audio: np.ndarray
    #: duration of the input, seconds
    seconds: float
    #: wall and process CPU time of the enhancement itself (STFT, model, overlap-add), seconds;
    #: loading the audio and the model, and exporting a runtime session, are not in them
    wall_s: float
    cpu_s: float

    @property
    def rtf(self) -> float:
        """Real-time factor: enhancement wall time / audio duration (below 1 is faster than real time)."""
        return self.wall_s / self.seconds if self.seconds else float("nan")


def timed(fn: Callable[[Progress], np.ndarray], n_samples: int, label: str = "enhancing") -> Enhanced:
    """Run `fn(progress)` under a progress bar on stderr (frames done of total; only on a
    terminal, where rich can redraw it) and time it."""
    with progress_bar(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(label, total=n_frames_for(n_samples))

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        wall0, cpu0 = time.perf_counter(), time.process_time()
        audio = fn(tick)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Enhanced(audio=audio, seconds=n_samples / STFT.sample_rate, wall_s=wall, cpu_s=cpu)


def n_frames_for(n_samples: int, cfg: StftConfig = STFT) -> int:
    """STFT frames `stft` gives for `n_samples` (each sample covered by two frames)."""
    return -(-(n_samples + cfg.overlap) // cfg.hop)


def torch_runner(model: SEModel) -> tuple[Runner, list[torch.Tensor]]:
    """A `Runner` for a torch model and its initial (zero) state."""

    device = device_of(model)  # run where the model lives; audio in and out on the CPU

    def run(spec: np.ndarray, state: list[torch.Tensor]) -> tuple[np.ndarray, list[torch.Tensor]]:
        with torch.no_grad():
            out, state = model(torch.from_numpy(spec).to(device), state)
        return out.cpu().numpy(), state

    return run, [s.to(device) for s in model.initial_state(1)]


def enhance_chunked(
    run: Runner,
    audio: np.ndarray,
    state: Any = None,
    chunk_frames: int = CHUNK_FRAMES,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Enhance 16 kHz mono audio `chunk_frames` STFT frames at a time, the model state
    carried from chunk to chunk (what `enhance` computes, in bounded memory).

    Chunk k takes frames [t0, t1): analysis needs the padded samples [t0*hop, t1*hop + win -
    hop), the last win - hop of which the next chunk reads again; synthesis overlap-adds the
    chunk's frames into t1 - t0 finished hops plus a tail of win - hop samples that the next
    chunk's first frame completes. `progress(done, total)` is called after each chunk (frames).
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
    cfg = STFT
    hop, overlap = cfg.hop, cfg.overlap
    window = cfg.window()
    n = int(audio.size)
    total = n_frames_for(n)
    # the same padding as `stft`: win - hop zeros in front, zeros up to the last frame
    padded = np.zeros(overlap + total * hop, dtype=np.float32)
    padded[overlap : overlap + n] = np.asarray(audio, dtype=np.float32).reshape(-1)
    out = np.empty(total * hop, dtype=np.float32)
    tail = torch.zeros(overlap)
    for t0 in range(0, total, chunk_frames):
        t1 = min(t0 + chunk_frames, total)
        c = t1 - t0
        frames = torch.from_numpy(padded[t0 * hop : t1 * hop + overlap]).unfold(-1, cfg.win, hop) * window
        spec = torch.view_as_real(torch.fft.rfft(frames, dim=-1))[None]
        enhanced, state = run(np.ascontiguousarray(spec.numpy()), state)
        time_frames = torch.fft.irfft(torch.view_as_complex(torch.from_numpy(enhanced).contiguous()), n=cfg.win, dim=-1)
        time_frames = time_frames * window  # [1, c, win]
        local = torch.nn.functional.fold(
            time_frames.transpose(1, 2), output_size=(1, c * hop + overlap), kernel_size=(1, cfg.win), stride=(1, hop)
        ).reshape(-1)
        local[:overlap] += tail
        out[t0 * hop : t1 * hop] = local[: c * hop].numpy()
        tail = local[c * hop :].clone()
        if progress is not None:
            progress(t1, total)
    # padded-output coordinates: input sample i is output sample i + (win - hop); the frame
    # count covers n + win - hop samples, so the tail left after the last chunk is not needed
    return out[overlap : overlap + n]


@torch.no_grad()
def enhance(model: SEModel, audio: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """Whole-utterance enhancement of 16 kHz mono float audio: one pass for up to
    WHOLE_MAX_FRAMES frames (30 s), longer inputs in passes of that size with the state
    carried (the memory of one pass grows with its length: 4.8 GB for 10 minutes at once)."""
    if callable(getattr(model, "analyze", None)):
        return _enhance_own_front_end(model, audio, progress)
    if n_frames_for(audio.size) > WHOLE_MAX_FRAMES:
        run, state = torch_runner(model)
        return enhance_chunked(run, audio, state, chunk_frames=WHOLE_MAX_FRAMES, progress=progress)
    device = device_of(model)  # run where the model lives; audio in and out on the CPU
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(device)
    spec, _ = model(stft(x, STFT), [s.to(device) for s in model.initial_state(1)])
    out = istft(spec, x.shape[-1], STFT)[0].cpu().numpy()
    if progress is not None:
        progress(spec.shape[1], spec.shape[1])
    return out


def _enhance_own_front_end(model: SEModel, audio: np.ndarray, progress: Progress | None = None,
                           frames_per_pass: int = WHOLE_MAX_FRAMES) -> np.ndarray:
    """A model with its own analysis and synthesis (`model.analyze(audio [B, N]) -> spec`,
    `model.synthesize(spec, N) -> audio`, e.g. DeepFilterNet3's 48 kHz STFT): its frames in passes
    of `frames_per_pass` with the state carried (the same samples as one pass)."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    spec = model.analyze(x)
    state, outs, total = model.initial_state(1), [], spec.shape[1]
    for t0 in range(0, total, frames_per_pass):
        out, state = model(spec[:, t0:t0 + frames_per_pass], state)
        outs.append(out)
        if progress is not None:
            progress(min(t0 + frames_per_pass, total), total)
    return model.synthesize(torch.cat(outs, dim=1), x.shape[-1])[0].numpy()


@torch.no_grad()
def enhance_streaming(model: SEModel, audio: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """Hop-by-hop enhancement: one STFT frame in, state carried, one hop out. The output
    is realigned (the synthesis delay of win - hop samples removed) to match `enhance`. A model
    with its own analysis (DeepFilterNet3) runs its frames one at a time the same way."""
    if callable(getattr(model, "analyze", None)):
        return _enhance_own_front_end(model, audio, progress, frames_per_pass=1)
    hop, delay = STFT.hop, STFT.overlap
    n = audio.size
    n_frames = -(-(n + delay) // hop)
    padded = np.zeros(n_frames * hop, dtype=np.float32)
    padded[:n] = audio
    stream = StreamingStft(STFT)
    state = model.initial_state(1)
    out = []
    for t in range(n_frames):
        frame = stream.analyze(torch.from_numpy(padded[t * hop : (t + 1) * hop])[None])
        frame, state = model(frame, state)
        out.append(stream.synthesize(frame)[0].numpy())
        if progress is not None and ((t + 1) % 100 == 0 or t + 1 == n_frames):
            progress(t + 1, n_frames)
    return np.concatenate(out)[delay : delay + n]
