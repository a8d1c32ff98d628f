"""A whole-sequence core module + its front end = a model every hwcompress stage runs.

    model = FrontEndModel(core, FrontEnd(feature="log-power", output="magnitude-mask",
                                         gain_floor_db=-25), source="net.py:build", kwargs={})
    out, state = model(spec, model.initial_state(batch))   # spec [B, T, 161, 2]

`core(features) -> output` is any nn.Module written for whole utterances: features
[B, T, F] (or [B, T, F, 2] for "real-imag"), output as the front end declares it (a
magnitude mask [B, T, F], or a complex mask / spectrum [B, T, F, 2]). The wrapper computes
the features from hwcompress's causal STFT, runs the core as a streaming step derived from
it (hwcompress.models.streaming: the same graph for a whole utterance from zero state and
for one frame from the carried state, checked numerically when the model is built), and
turns the core's output back into an enhanced spectrum. A core that has its own
`step(features, state) -> (out, state)` (any T >= 1) and `state_shapes()` is used as is.

The pipeline contract of hwcompress.models.zoo.SEModel holds: `state_shapes()`,
`initial_state(batch)`, `n_bins`, `arch` ("user"), `config` ({"source", "kwargs"}: what
rebuilds the core), `meta`, `front_end`. The state list is the derived one: for each
recurrent layer over time its h (and c) as [B, layers, hidden], for each left padding of
time its context [B, ..., k-1 frames, ...], in graph order.

Features: "magnitude" is sqrt(|X|^2 + eps) and "compressed-magnitude" (|X|^2 + eps)^(c/2),
with the front end's eps (1e-10: <= 1e-5 from |X|), so that gradients stay finite on silent
bins; the logarithms use the same eps, as the front end declares.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from hwcompress.errors import HwcError
from hwcompress.models import streaming
from hwcompress.models.frontend import FrontEnd


def features(spec: torch.Tensor, fe: FrontEnd) -> torch.Tensor:
    """What the core reads, from a spectrum [B, T, F, 2] (see hwcompress.models.frontend)."""
    if fe.feature == "real-imag":
        return spec
    power = spec.pow(2).sum(-1)
    if fe.feature == "log-power":
        return torch.log(power + fe.eps)
    if fe.feature == "log10-power":
        return torch.log10(power + fe.eps)
    if fe.feature == "magnitude":
        return torch.sqrt(power + fe.eps)
    return torch.pow(power + fe.eps, fe.compress_exponent / 2)  # compressed-magnitude


def apply_output(spec: torch.Tensor, out: torch.Tensor, fe: FrontEnd) -> torch.Tensor:
    """The enhanced spectrum [B, T, F, 2] from the core's output and the noisy spectrum."""
    if fe.output == "magnitude-mask":
        mask = out.clamp_min(fe.gain_floor) if fe.gain_floor_db is not None else out
        return spec * mask.unsqueeze(-1)
    if fe.output == "complex-mask":
        m_re, m_im = out[..., 0], out[..., 1]
        re, im = spec[..., 0], spec[..., 1]
        return torch.stack([m_re * re - m_im * im, m_re * im + m_im * re], dim=-1)
    return out  # "spectrum": the core's output is the enhanced STFT


def _json_kwargs(kwargs: object, origin: str) -> dict:
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise HwcError(f"{origin}: kwargs must be a mapping of names to values")
    try:
        return json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise HwcError(f"{origin}: kwargs must be JSON values (numbers, strings, lists, mappings): {exc}") from None


class FrontEndModel(nn.Module):
    """The pipeline contract around a user's whole-sequence core (see the module docstring)."""

    arch = "user"

    def __init__(self, core: nn.Module, front_end: FrontEnd, *, source: str, kwargs: dict) -> None:
        super().__init__()
        origin = str(source)
        if not isinstance(core, nn.Module):
            raise HwcError(f"{origin}: the core is a {type(core).__name__}, not a torch.nn.Module")
        if not isinstance(front_end, FrontEnd):
            raise HwcError(f"{origin}: front_end must be a hwcompress.models.frontend.FrontEnd, "
                           f"got {type(front_end).__name__}")
        front_end.check_supported(origin)
        self.front_end = front_end
        self.n_bins = front_end.n_bins
        self.source = origin
        self.kwargs = _json_kwargs(kwargs, origin)
        self.meta: dict = {}
        out_frame = (self.n_bins,) if front_end.output == "magnitude-mask" else (self.n_bins, 2)
        derived = streaming.derive(core, self._random_features, out_frame, origin)
        self.core = derived.module
        self._state_shapes = [tuple(s) for s in derived.state_shapes]
        self._user_step = derived.user_step
        self._specs = derived.specs
        self._shapes_key = self._layer_key()
        #: max |streamed - whole| of the build-time check (random features, VERIFY_FRAMES frames)
        self.stream_diff = self.check_streaming(None if derived.user_step else core)

    @property
    def config(self) -> dict:
        return {"source": self.source, "kwargs": dict(self.kwargs)}

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Read from the layers as they are now (pruning may have narrowed them since)."""
        if self._user_step:
            return [tuple(int(d) for d in s) for s in self.core.state_shapes()]
        key = self._layer_key()
        if key != self._shapes_key:
            was_training = self.training
            self.eval()
            try:
                self._state_shapes = streaming.state_shapes(self.core, self._specs, self._random_features(1, 1))
            finally:
                self.train(was_training)
            self._shapes_key = key
        return list(self._state_shapes)

    def _layer_key(self) -> tuple:
        return tuple((name, tuple(t.shape)) for name, t in self.core.state_dict().items())

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        """Zero state on the model's device."""
        return [torch.zeros((batch, *s), device=self._device()) for s in self.state_shapes()]

    def _device(self) -> torch.device:
        from hwcompress.device import device_of

        return device_of(self.core)

    def step(self, feats: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The core's streaming step on features (any T from the given state)."""
        # `state` is passed on as given (not copied into a list) so that torch.fx can trace this
        if self._user_step:
            out, new_state = self.core.step(feats, state)
        else:
            out, new_state = self.core(feats, state)
        return out, list(new_state)

    def forward(self, spec: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, new_state = self.step(features(spec, self.front_end), state)
        return apply_output(spec, out, self.front_end), new_state

    def _random_features(self, batch: int, frames: int) -> torch.Tensor:
        """Features of a random spectrum (own generator: the caller's RNG is left alone)."""
        gen = torch.Generator().manual_seed(1000 * batch + frames)
        spec = torch.randn(batch, frames, self.n_bins, 2, generator=gen)
        core = getattr(self, "core", None)  # drawn on the CPU (the same numbers anywhere), run where the core is
        return features(spec.to(self._device()) if core is not None else spec, self.front_end)

    def check_streaming(self, core: nn.Module | None = None) -> float:
        """Whole utterance vs frame by frame on random features (and vs `core` itself when
        given); one-line HwcError on a mismatch. Returns the max |diff|."""
        was_training = self.training
        self.eval()
        if core is not None:
            core_training = core.training
            core.eval()
        try:
            return streaming.verify(self.step, self._derived_view(), core, self._random_features, self.source)
        finally:
            self.train(was_training)
            if core is not None:
                core.train(core_training)

    def _derived_view(self) -> streaming.Derived:
        # the registered core (deep copies, pruned modules) rather than the one built with
        return streaming.Derived(self.core, self.state_shapes(), self._user_step, self._specs)
