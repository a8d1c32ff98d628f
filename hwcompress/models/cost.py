"""Analytic compute cost of a zoo model: parameters and multiply-accumulates per streaming
frame, layer by layer, so the effect of pruning and shrinking on compute is visible.

Only the weight layers are counted (activations, masks and the STFT are small next to
them). Frequency sizes come from one real streaming step with forward hooks rather than
re-deriving each architecture's shape arithmetic here.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.LSTM, nn.GRU)


def short_name(path: str) -> str:
    """Readable layer name: `enc.2.conv` -> `enc.2`, `rnn.layers.0` -> `rnn.0`."""
    if path.endswith(".conv"):
        path = path[: -len(".conv")]
    if path.startswith("rnn.layers."):
        path = "rnn." + path[len("rnn.layers.") :]
    return path


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Weight layers of a model by readable name, in definition order."""
    return {short_name(path): m for path, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def layer_paths(model: nn.Module) -> dict[str, str]:
    """Readable layer name -> module path (prefix of its parameter names)."""
    return {short_name(path): path for path, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def _frame_shapes(model: nn.Module) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input/output shapes each conv sees during one streaming step (batch 1, one frame)."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name, layer in named_layers(model).items():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
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
            kt, kf = layer.kernel_size
            c_in, f_in, c_out, f_out = x_shape[1], x_shape[-1], y_shape[1], y_shape[-1]
            if isinstance(layer, nn.Conv2d):
                # one new output frame per step, every output position sees c_in/g * kt * kf inputs
                macs = c_out * f_out * (c_in // layer.groups) * kt * kf
            else:
                # a transposed conv scatters each new input position into c_out/g * kt * kf outputs
                macs = c_in * f_in * (c_out // layer.groups) * kt * kf
            shape_in, shape_out = (c_in, f_in), (c_out, f_out)
        rows.append({"name": name, "kind": type(layer).__name__, "params": params, "macs_per_frame": macs,
                     "in_shape": shape_in, "out_shape": shape_out})
    return rows


def total_macs(model: nn.Module) -> int:
    """Multiply-accumulates of all weight layers for one streaming frame."""
    return sum(row["macs_per_frame"] for row in layer_costs(model))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
