"""Give a model's layers the widths a saved state_dict has, before loading it.

A structurally compressed model (hwcompress.compress.shrink) has narrower layers than the
model its code builds. Its file stores only the weights, so loading rebuilds the dense model
and then resizes every weight layer to the shapes in the file: parameters are replaced by
empty ones of the saved shape and the layer's size attributes follow (in_features,
hidden_size, in_channels, ...), so `state_shapes()` and the forward see the narrower model.
Nothing is copied here: `load_state_dict` fills the values. A layer type not listed, or a
shape that cannot come from removing units (more dimensions, a grown layer), is refused in
one line.
"""

from __future__ import annotations

import torch
from torch import nn

from hwcompress.errors import HwcError


def _resize_attrs(layer: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = shapes["weight"]
    elif isinstance(layer, (nn.LSTM, nn.GRU, nn.RNN)):
        layer.hidden_size = shapes["weight_hh_l0"][1]
        layer.input_size = shapes["weight_ih_l0"][1]
    elif isinstance(layer, nn.modules.conv._ConvNd):
        w = shapes["weight"]
        if layer.transposed:
            layer.in_channels, layer.out_channels = w[0], w[1] * layer.groups
        else:
            layer.out_channels, layer.in_channels = w[0], w[1] * layer.groups
    elif isinstance(layer, nn.modules.batchnorm._NormBase):
        layer.num_features = next(iter(shapes.values()))[0]
    elif isinstance(layer, nn.GroupNorm):
        layer.num_channels = shapes["weight"][0]
    elif isinstance(layer, nn.LayerNorm):
        layer.normalized_shape = tuple(shapes["weight"])
    elif isinstance(layer, nn.PReLU):
        layer.num_parameters = shapes["weight"][0]
    else:
        raise HwcError(f"cannot resize a {type(layer).__name__} layer to the saved weights")


def resize_to(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> list[str]:
    """Resize, in place, every layer of `model` whose tensors in `state` are smaller; returns
    the names of the resized layers."""
    resized = []
    for path, layer in model.named_modules():
        own = dict(layer.named_parameters(recurse=False)) | dict(layer.named_buffers(recurse=False))
        prefix = f"{path}." if path else ""
        saved = {k: tuple(state[prefix + k].shape) for k in own if prefix + k in state}
        if not saved or all(tuple(own[k].shape) == s for k, s in saved.items() if own[k] is not None):
            continue
        for k, s in saved.items():
            have = tuple(own[k].shape)
            if len(s) != len(have) or any(a > b for a, b in zip(s, have)):
                raise HwcError(f"{origin}: {prefix}{k} is {list(s)} in the file, {list(have)} in the model: not "
                               "the model with units removed")
        try:
            _resize_attrs(layer, saved)
        except KeyError as exc:
            raise HwcError(f"{origin}: layer {path} lacks {exc} in the file") from None
        except HwcError as exc:
            raise HwcError(f"{origin}: {path}: {exc}") from None
        for k, s in saved.items():
            t = own[k]
            if isinstance(t, nn.Parameter):
                setattr(layer, k, nn.Parameter(t.new_empty(s), requires_grad=t.requires_grad))
            else:
                layer.register_buffer(k, t.new_empty(s))
        if isinstance(layer, nn.RNNBase):
            layer._init_flat_weights()
        resized.append(path)
    return resized
