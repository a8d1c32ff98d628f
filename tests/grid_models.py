"""Tiny models whose layers hold per-layer codebooks, on a runtime integer grid or free (what a
`.hwc` holds after `compress --codebook K [--grid 4|8]`), shared by the 4-bit weight tests."""

from __future__ import annotations

import torch

from hwcompress.models import zoo


def clustered(k_of: dict[str, int], grid: dict[str, int] | None = None) -> torch.nn.Module:
    """tiny-crn with the weight matrices of some layers clustered to K values each (what `.hwc`
    clustering leaves: a per-layer codebook), free k-means centroids unless `grid` names the
    layer's runtime width (compress.cluster.snap_to_grid); the others dense."""
    from hwcompress.compress.cluster import cluster_tensor, snap_to_grid
    from hwcompress.models.cost import layer_paths

    torch.manual_seed(0)
    model = zoo.build(*zoo.PRESETS["tiny-crn"]).eval()
    paths = layer_paths(model)
    with torch.no_grad():
        for layer, k in k_of.items():
            for name, p in model.named_parameters():
                if name.startswith(paths[layer] + ".") and p.dim() >= 2:
                    c = cluster_tensor(p, k)
                    p.copy_((snap_to_grid(c, grid[layer]) if (grid or {}).get(layer) else c).dense())
    return model


#: rnn.0 on the 4-bit grid, proj clustered to 16 free centroids (on no grid: not exact at 4
#: bits, so mixed keeps it 8-bit), the convolutions on the 8-bit grid
GRIDDED = ({"rnn.0": 16, "proj": 16, "enc.1": 64, "enc.2": 64, "dec.1": 64},
           {"rnn.0": 4, "enc.1": 8, "enc.2": 8, "dec.1": 8})
