"""Analytic compute cost of a zoo model: parameters and multiply-accumulates per streaming
frame, layer by layer, so the effect of pruning and shrinking on compute is visible.

Only the weight layers are counted (activations, masks and the STFT are small next to
them); the few parameters of per-channel layers (LayerNorm, BatchNorm, GroupNorm, PReLU)
are non-weight parameters (`non_weight_params`): no MACs of note, never pruned or
clustered. Frequency sizes come from one real streaming step with forward hooks rather
than re-deriving each architecture's shape arithmetic here.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

#: layers whose weights are pruned, clustered and counted here
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.LSTM, nn.GRU)
#: per-channel layers: their parameters follow the units of the layer before them
UNIT_LAYERS = (nn.PReLU, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
               nn.LayerNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def short_name(path: str) -> str:
    """Readable layer name: `enc.2.conv` -> `enc.2`, `rnn.layers.0` -> `rnn.0`."""
    if path.endswith(".conv"):
        path = path[: -len(".conv")]
    if path.startswith("rnn.layers."):
        path = "rnn." + path[len("rnn.layers.") :]
    return path


def readable_names(model: nn.Module, types: tuple[type, ...] = WEIGHT_LAYERS + UNIT_LAYERS) -> dict[str, str]:
    """Module path -> readable name for the modules of `types`, in definition order. A conv
    is named after its wrapper (`enc.2.conv` -> `enc.2`) only when the wrapper holds no
    other such module; a short name two modules would share falls back to the full paths."""
    paths = [path for path, m in model.named_modules() if isinstance(m, types)]

    def name(path: str) -> str:
        if path.endswith(".conv"):
            parent = path[: -len(".conv")]
            if any(p != path and (p == parent or p.startswith(parent + ".")) for p in paths):
                return path  # not a one-conv wrapper: `core.conv` stays `core.conv`
        return short_name(path)

    short = [name(p) for p in paths]
    counts = Counter(short)
    return {p: (p if counts[s] > 1 else s) for p, s in zip(paths, short)}


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Weight layers of a model by readable name, in definition order."""
    return {name: model.get_submodule(path) for path, name in readable_names(model).items()
            if isinstance(model.get_submodule(path), WEIGHT_LAYERS)}


def layer_paths(model: nn.Module) -> dict[str, str]:
    """Readable layer name -> module path (prefix of its parameter names)."""
    return {name: path for path, name in readable_names(model).items()
            if isinstance(model.get_submodule(path), WEIGHT_LAYERS)}


def non_weight_params(model: nn.Module) -> int:
    """Parameters outside the weight layers (normalisation and PReLU parameters, ...)."""
    inside = sum(p.numel() for m in named_layers(model).values() for p in m.parameters())
    return count_params(model) - inside


def _frame_shapes(model: nn.Module) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input/output shapes each conv sees during one streaming step (batch 1, one frame)."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name, layer in named_layers(model).items():
        if isinstance(layer, _CONVS):
            def hook(mod, args, out, name=name):  # noqa: ANN001 - torch hook signature
                shapes[name] = (args[0].shape, out.shape)

            hooks.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, model.n_bins, 2), model.initial_state(1))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def layer_costs(model: nn.Module) -> list[dict]:
    """One dict per weight layer: name, kind, params, macs_per_frame, in_shape, out_shape.

    Shapes exclude batch and time: (channels, freq) for convs, (features,) otherwise.
    """
    conv_shapes = _frame_shapes(model)
    rows = []
    for name, layer in named_layers(model).items():
        params = sum(p.numel() for p in layer.parameters())
        if isinstance(layer, nn.Linear):
            macs = layer.in_features * layer.out_features
            shape_in, shape_out = (layer.in_features,), (layer.out_features,)
        elif isinstance(layer, (nn.LSTM, nn.GRU)):
            gates = 4 if isinstance(layer, nn.LSTM) else 3
            i, h = layer.input_size, layer.hidden_size
            macs = gates * h * (i + h)
            shape_in, shape_out = (i,), (h,)
        else:
            x_shape, y_shape = conv_shapes[name]
            k = math.prod(layer.kernel_size)
            ch = len(x_shape) - len(layer.kernel_size) - 1  # channel axis (unbatched inputs too)
            c_in, f_in, c_out, f_out = x_shape[ch], x_shape[-1], y_shape[ch], y_shape[-1]
            if isinstance(layer, nn.Conv2d):
                # one new output frame per step, every output position sees c_in/g * kt * kf inputs
                macs = c_out * f_out * (c_in // layer.groups) * k
            elif isinstance(layer, nn.ConvTranspose2d):
                # a transposed conv scatters each new input position into c_out/g * kt * kf outputs
                macs = c_in * f_in * (c_out // layer.groups) * k
            elif isinstance(layer, nn.Conv1d):
                # every output position of the step (one frame for a causal conv over time)
                macs = c_out * f_out * (c_in // layer.groups) * k
            else:
                # ConvTranspose1d: every input position of the step scatters into c_out/g * k outputs
                macs = c_in * f_in * (c_out // layer.groups) * k
            shape_in, shape_out = (c_in, f_in), (c_out, f_out)
        rows.append({"name": name, "kind": type(layer).__name__, "params": params, "macs_per_frame": macs,
                     "in_shape": shape_in, "out_shape": shape_out})
    return rows


def total_macs(model: nn.Module) -> int:
    """Multiply-accumulates of all weight layers for one streaming frame."""
    return sum(row["macs_per_frame"] for row in layer_costs(model))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
