"""Saving and loading models: `--model` is a file path, a zoo preset, or `default`."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch

from hwcompress.errors import HwcError
from hwcompress.models import zoo

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"
FORMAT = "hwcompress-model"


def pretrained_names() -> list[str]:
    return sorted(p.stem for p in PRETRAINED.glob("*.pt"))


def save_model(path: Path, model: zoo.SEModel, meta: dict | None = None) -> None:
    """Atomic write of a plain dict of tensors and values (loadable with weights_only=True)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": 1,
        "arch": model.arch,
        "config": model.config,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def check_weights(arch: object, config: object, shapes: dict, origin: str, max_params: int | None = None) -> dict:
    """Check a file's `config` for `arch` and its tensors' `shapes` (name -> shape) against
    each other before anything is allocated; return the checked config.

    The config is bounded field by field (zoo.check_config), the shapes it implies are
    computed on the meta device, and they must equal the file's, name for name: a file
    cannot ask for more weights than it carries. `max_params` bounds the total further
    (a .hwc file stores pruned weights in fewer bytes than they take once loaded).
    """
    if arch not in zoo.ARCHS:
        raise HwcError(f"{origin}: unknown architecture {arch!r}")
    try:
        config = zoo.check_config(arch, config)
    except zoo.ConfigError as exc:
        raise HwcError(f"{origin}: bad model config ({exc})") from None
    expected = zoo.param_shapes(arch, config)
    wanted = sum(math.prod(s) for s in expected.values())
    if max_params is not None and wanted > max_params:
        raise HwcError(f"{origin}: config asks for {wanted:,} weights, more than a file of this size can hold "
                       f"({max_params:,}): corrupt or crafted model file")
    missing = [n for n in expected if n not in shapes]
    extra = [n for n in shapes if n not in expected]
    wrong = [n for n in expected if n in shapes and tuple(shapes[n]) != expected[n]]
    if not (missing or extra or wrong):
        return config
    if wrong:
        first = f"{wrong[0]} is {list(shapes[wrong[0]])} in the file, the config needs {list(expected[wrong[0]])}"
    else:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
    count = len(missing) + len(extra) + len(wrong)
    more = f" and {count - 1} more" if count > 1 else ""
    held = sum(math.prod(s) for s in shapes.values())
    sizes = f"the config asks for {wanted:,} weights, the file holds {held:,}; " if wanted != held else ""
    raise HwcError(f"{origin}: weights do not match the architecture ({sizes}{first}{more})")


def model_from_payload(payload: dict, origin: str) -> zoo.SEModel:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise HwcError(f"{origin}: not a hwcompress model file")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise HwcError(f"{origin}: not a hwcompress model file (no state_dict of named tensors)")
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or not t.is_floating_point():
            kind = f"{t.dtype} {t.layout}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise HwcError(f"{origin}: weight {name!r} is not a dense float tensor ({kind})")
    # a tensor may be a view (zero strides, overlaps) spanning far more than its stored bytes:
    # the model's own copies would then allocate what the file never carried
    stored = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
    spanned = sum(t.numel() * t.element_size() for t in state.values())
    if spanned > sum(stored.values()):
        raise HwcError(f"{origin}: weights span {spanned:,} bytes but the file stores {sum(stored.values()):,} "
                       "(zero-stride or overlapping views): corrupt or crafted model file")
    config = check_weights(payload.get("arch"), payload.get("config"), {n: t.shape for n, t in state.items()}, origin)
    for name, t in state.items():
        if not bool(torch.isfinite(t).all()):
            raise HwcError(f"{origin}: weight {name!r} contains NaN/Inf values")
    # the features are divided by it: zero (e.g. a fully pruned .hwc) turns every output into NaN
    if not bool((state["feat_std"] > 0).all()):
        raise HwcError(f"{origin}: weight 'feat_std' (feature normalisation) must be positive")
    try:
        model = zoo.build(payload["arch"], config)
        model.load_state_dict(state)
    except (TypeError, KeyError, ValueError, RuntimeError) as exc:  # checked above: a bug if it happens
        raise HwcError(f"{origin}: weights do not match the architecture ({str(exc).splitlines()[0]})") from None
    meta = payload.get("meta", {})
    model.meta = meta if isinstance(meta, dict) else {}
    return model.eval()


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such model file")
    try:
        # torch warns about odd files (e.g. "Detected pickle protocol 4 in the checkpoint")
        # before failing on them: the error line below is what the user needs, alone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise HwcError(f"{path}: corrupt or unreadable model file ({type(exc).__name__})") from None


def load_model(spec: str | Path = "default") -> zoo.SEModel:
    """Resolve `spec`: an existing file, a shipped pretrained name, or a zoo preset
    (a preset gives a freshly initialised model, for training)."""
    spec = str(spec)
    path = Path(spec)
    if path.suffix == ".hwc":
        from hwcompress.compress.artifact import load_artifact  # compressed models (issue 3)

        return load_artifact(path)
    if path.exists() or path.suffix == ".pt" or os.sep in spec:
        return model_from_payload(read_checkpoint(path), str(path))
    if spec in pretrained_names():
        return model_from_payload(read_checkpoint(PRETRAINED / f"{spec}.pt"), spec)
    if spec in zoo.PRESETS:
        # seeded (without touching the caller's RNG): the same preset name is the same model,
        # so two runs of one command measure, cache and choose alike
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = zoo.build_preset(spec)
        model.meta = {"preset": spec, "trained": False}
        return model
    known = ", ".join(pretrained_names() + sorted(zoo.PRESETS))
    raise HwcError(f"unknown model {spec!r}: give a file path or one of {known}")
