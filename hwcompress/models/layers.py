"""Causal building blocks whose forward works for a whole utterance and for one frame.

Every layer that looks back in time takes its past as an explicit context tensor and
returns the updated one, so whole-utterance inference (zero context, T frames) and
streaming (carried context, 1 frame) run the very same code and export the same graph.
"""

from __future__ import annotations

import torch
from torch import nn


class CausalConv2d(nn.Module):
    """Conv over (time, freq) with a causal time kernel; x [B, C, T, F]."""

    def __init__(self, c_in: int, c_out: int, kt: int = 2, kf: int = 3, sf: int = 2) -> None:
        super().__init__()
        self.kt = kt
        self.conv = nn.Conv2d(c_in, c_out, (kt, kf), stride=(1, sf))

    def context_shape(self, f_in: int) -> tuple[int, int, int]:
        return (self.conv.in_channels, self.kt - 1, f_in)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = torch.cat([ctx, x], dim=2)
        return self.conv(full), full[:, :, full.shape[2] - (self.kt - 1) :]


class CausalConvTranspose2d(nn.Module):
    """Transposed conv upsampling frequency, causal in time; x [B, C, T, F]."""

    def __init__(
        self, c_in: int, c_out: int, kt: int = 2, kf: int = 3, sf: int = 2, out_pad_f: int = 0
    ) -> None:
        super().__init__()
        self.kt = kt
        self.conv = nn.ConvTranspose2d(c_in, c_out, (kt, kf), stride=(1, sf), output_padding=(0, out_pad_f))

    def context_shape(self, f_in: int) -> tuple[int, int, int]:
        return (self.conv.in_channels, self.kt - 1, f_in)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = x.shape[2]
        full = torch.cat([ctx, x], dim=2)
        y = self.conv(full)
        # output frame kt-1+t sums W[k] * x[t-k]: exactly the causal part
        return y[:, :, self.kt - 1 : self.kt - 1 + t], full[:, :, full.shape[2] - (self.kt - 1) :]


class Recurrent(nn.Module):
    """Stack of single-layer LSTMs/GRUs, one module per layer so each can be shrunk alone.

    State is a flat list: LSTM layers carry (h, c), GRU layers carry h.
    """

    def __init__(self, kind: str, sizes: list[int]) -> None:
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.kind = kind
        self.layers = nn.ModuleList(cls(a, b, batch_first=True) for a, b in zip(sizes[:-1], sizes[1:]))
        # Set by export code (hwcompress.export._graph.explicit_cells) for runtimes that keep
        # a fused LSTM/GRU op in float (OpenVINO's LSTMSequence escapes nncf weight
        # compression): the same parameters as plain matmuls, which int8 kernels do run.
        self.explicit_cells = False

    def state_shapes(self) -> list[tuple[int, ...]]:
        shapes = []
        for layer in self.layers:
            shapes += [(1, layer.hidden_size)] * (2 if self.kind == "lstm" else 1)
        return shapes

    def forward(self, x: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.explicit_cells:
            return self._forward_cells(x, state)
        new_state: list[torch.Tensor] = []
        i = 0
        for layer in self.layers:
            if self.kind == "lstm":
                h, c = state[i], state[i + 1]
                x, (h, c) = layer(x, (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()))
                new_state += [h.transpose(0, 1), c.transpose(0, 1)]
                i += 2
            else:
                x, h = layer(x, state[i].transpose(0, 1).contiguous())
                new_state.append(h.transpose(0, 1))
                i += 1
        return x, new_state

    def _forward_cells(self, x: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """nn.LSTM / nn.GRU equations (PyTorch's gate order i,f,g,o and r,z,n) step by step."""
        new_state: list[torch.Tensor] = []
        i = 0
        for layer in self.layers:
            w_ih, w_hh = layer.weight_ih_l0, layer.weight_hh_l0
            b_ih, b_hh = layer.bias_ih_l0, layer.bias_hh_l0
            outs = []
            if self.kind == "lstm":
                h, c = state[i][:, 0], state[i + 1][:, 0]
                for t in range(x.shape[1]):
                    gates = nn.functional.linear(x[:, t], w_ih, b_ih) + nn.functional.linear(h, w_hh, b_hh)
                    gi, gf, gg, go = gates.chunk(4, dim=-1)
                    c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
                    h = torch.sigmoid(go) * torch.tanh(c)
                    outs.append(h)
                new_state += [h[:, None], c[:, None]]
                i += 2
            else:
                h = state[i][:, 0]
                for t in range(x.shape[1]):
                    gx = nn.functional.linear(x[:, t], w_ih, b_ih).chunk(3, dim=-1)
                    gh = nn.functional.linear(h, w_hh, b_hh).chunk(3, dim=-1)
                    r = torch.sigmoid(gx[0] + gh[0])
                    z = torch.sigmoid(gx[1] + gh[1])
                    n = torch.tanh(gx[2] + r * gh[2])
                    h = (1 - z) * n + z * h
                    outs.append(h)
                new_state.append(h[:, None])
                i += 1
            x = torch.stack(outs, dim=1)
        return x, new_state
