"""The Python API behind `hwcompress.load_model / wrap / compress / fit` (see the package docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_model(spec: str | Path = "default", weights: str | Path | None = None):
    """`--model` in Python: a zoo name, a file, a named pretrained model, an ONNX file, or code
    (`path/to/net.py:build`) with its `weights`."""
    from hwcompress.models.io import load_model as _load

    return _load(spec, weights)


def wrap(core, front_end, name: str = "python"):
    """Any whole-sequence `nn.Module` (features -> mask / spectrum) with its front end, as a model
    every stage runs (streaming derived and checked). `name` labels it in reports."""
    from hwcompress.models.wrap import FrontEndModel

    model = FrontEndModel(core, front_end, source=name, kwargs={})
    model.meta = {"source": name}
    return model.eval()


def _as_model(model: Any):
    from torch import nn

    if isinstance(model, (str, Path)):
        return load_model(model)
    if not isinstance(model, nn.Module) or not hasattr(model, "state_shapes"):
        from hwcompress.errors import HwcError

        raise HwcError(f"a {type(model).__name__} is not a hwcompress model: pass hwcompress.wrap(core, front_end), "
                       "or a name or file as on the command line")
    return model


def compress(model: Any, out: str | Path, data: str | Path | None = None, device: str = "auto",
             **options: Any) -> dict:
    """Sparse regularization, pruning and per-layer k-means clustering of `model` into a .hwc at
    `out`. `options` are hwcompress.compress.pipeline.CompressConfig fields (sparsity, codebook,
    structured, layers, prune_steps, cluster_steps, finetune_target, ...). `device`: where the
    fine-tuning runs, as `--device` (auto, cpu, cuda, cuda:N); the model ends where it was."""
    from hwcompress.compress.pipeline import CompressConfig, compress as _compress
    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.device import resolve_device

    dev = resolve_device(device)
    net = _as_model(model)
    cfg = CompressConfig(**options)
    return _compress(net, cfg, Path(data) if data is not None else ensure_default_corpus(), Path(out), device=dev)


def fit(model: Any, target: str, budget_ms: float | list[float] | None = None, out: str | Path = "fit",
        data: str | Path | None = None, pool: Any = None, **options: Any) -> dict:
    """`hwcompress fit` in Python: per-layer sparsity and codebook sizes chosen to meet the target's
    budgets, exported, measured and reported under `out`. `options` are
    hwcompress.search.fit.FitConfig fields (budget_bytes, weights, prune_steps, device, ...); `pool`: a
    hwcompress.profile.pool.DevicePool (`build_pool(host=..., pool_file=...)`) to time on."""
    from hwcompress.search.fit import FitConfig, fit as _fit

    budgets = [] if budget_ms is None else [float(b) for b in (budget_ms if isinstance(budget_ms, (list, tuple))
                                                                 else [budget_ms])]
    label = str(model) if isinstance(model, (str, Path)) else None
    net = None if label is not None else _as_model(model)
    cfg = FitConfig(target=target, out=Path(out), budgets_ms=budgets,
                    model=label if label is not None else getattr(net, "source", type(net).__name__),
                    data=Path(data) if data is not None else None, **options)
    return _fit(cfg, model=net, pool=pool)
