"""The torch side of export: flat-signature wrappers, sample inputs, eval mode.

Kept apart from _graph so that loading a runtime session never imports torch (the
measurement child starts in ~0.3 s instead of ~1.5 s, which is most of a sweep's time).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hwcompress.errors import HwcError
from hwcompress.export._graph import N_BINS, OUT, SPEC, state_name, state_out_name


class Positional(torch.nn.Module):
    """(spec, *state) -> (out, *new_state): exporters want flat tensors, not lists."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, new_state = self.model(spec, list(state))
        return (out, *new_state)


class Named(torch.nn.Module):
    """spec=..., state_i=... -> {"out", "state_out_i"}: litert-torch names the signature
    after keyword arguments and dict keys, positional ones would become args_0..."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        spec = inputs[SPEC]
        state = [inputs[state_name(i)] for i in range(len(inputs) - 1)]
        out, new_state = self.model(spec, state)
        return {OUT: out, **{state_out_name(i): s for i, s in enumerate(new_state)}}


def sample_inputs(model: torch.nn.Module, frames: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    only = getattr(model, "stream_only", None)  # e.g. DeepFilterNet3: a recursion over frames in its front end
    if frames > 1 and only:
        raise HwcError(f"{getattr(model, 'source', type(model).__name__)}: no whole-utterance export: {only}; "
                       "export --mode stream")
    # random rather than zeros so no exporter can fold the input away as a constant
    gen = torch.Generator().manual_seed(0)
    spec = torch.randn(1, frames, getattr(model, "n_bins", N_BINS), 2, generator=gen)
    return spec, [torch.randn(1, *s, generator=gen) * 0.1 for s in model.state_shapes()]


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Export in eval mode without leaving the caller's model changed."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextmanager
def explicit_cells(model: torch.nn.Module) -> Iterator[None]:
    """Trace recurrent layers as plain matmuls + gates (see models.layers.Recurrent)."""
    rnns = [m for m in model.modules() if hasattr(m, "explicit_cells")]
    before = [m.explicit_cells for m in rnns]
    for m in rnns:
        m.explicit_cells = True
    try:
        yield
    finally:
        for m, b in zip(rnns, before):
            m.explicit_cells = b
