"""Causal STFT front end shared by every model, whole-utterance and streaming.

Frames are causal: frame t covers samples [t*hop - (win - hop), t*hop + hop), so the
newest frame only needs the newest hop of audio. With a periodic sqrt-Hann window at
50 % overlap, analysis x synthesis windows sum to one, so overlap-add reconstructs the
input exactly (delayed by win - hop samples in streaming).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StftConfig:
    sample_rate: int = 16000
    win: int = 320  # 20 ms
    hop: int = 160  # 10 ms

    @property
    def n_bins(self) -> int:
        return self.win // 2 + 1

    @property
    def overlap(self) -> int:
        return self.win - self.hop

    def window(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.hann_window(self.win, periodic=True, device=device).sqrt()


def stft(audio: torch.Tensor, cfg: StftConfig = StftConfig()) -> torch.Tensor:
    """audio [B, N] -> spectrum [B, T, F, 2] (real, imag), T = ceil((N + win - hop) / hop),
    enough frames for every input sample to be covered twice (so `istft` is exact)."""
    n = audio.shape[-1]
    n_frames = -(-(n + cfg.overlap) // cfg.hop)
    padded = torch.nn.functional.pad(audio, (cfg.overlap, n_frames * cfg.hop - n))
    frames = padded.unfold(-1, cfg.win, cfg.hop) * cfg.window(audio.device)
    return torch.view_as_real(torch.fft.rfft(frames, dim=-1))


def istft(spec: torch.Tensor, length: int, cfg: StftConfig = StftConfig()) -> torch.Tensor:
    """spectrum [B, T, F, 2] -> audio [B, length], inverse of `stft` (overlap-add)."""
    frames = torch.fft.irfft(torch.view_as_complex(spec.contiguous()), n=cfg.win, dim=-1)
    frames = frames * cfg.window(frames.device)
    b, t, _ = frames.shape
    total = (t - 1) * cfg.hop + cfg.win
    out = torch.nn.functional.fold(
        frames.transpose(1, 2), output_size=(1, total), kernel_size=(1, cfg.win), stride=(1, cfg.hop)
    ).reshape(b, total)
    return out[:, cfg.overlap : cfg.overlap + length]


class StreamingStft:
    """Hop-by-hop analysis/synthesis with the exact arithmetic of `stft`/`istft`."""

    def __init__(self, cfg: StftConfig = StftConfig(), batch: int = 1) -> None:
        self.cfg = cfg
        self.window = cfg.window()
        self.in_buf = torch.zeros(batch, cfg.win)
        self.out_buf = torch.zeros(batch, cfg.win)

    def analyze(self, hop_audio: torch.Tensor) -> torch.Tensor:
        """hop_audio [B, hop] -> one frame [B, 1, F, 2]."""
        self.in_buf = torch.cat([self.in_buf[:, self.cfg.hop :], hop_audio], dim=-1)
        return torch.view_as_real(torch.fft.rfft(self.in_buf * self.window, dim=-1)).unsqueeze(1)

    def synthesize(self, frame: torch.Tensor) -> torch.Tensor:
        """one frame [B, 1, F, 2] -> the hop of audio it completes [B, hop]."""
        time = torch.fft.irfft(torch.view_as_complex(frame[:, 0].contiguous()), n=self.cfg.win, dim=-1)
        self.out_buf = self.out_buf + time * self.window
        done = self.out_buf[:, : self.cfg.hop]
        self.out_buf = torch.nn.functional.pad(self.out_buf[:, self.cfg.hop :], (0, self.cfg.hop))
        return done
