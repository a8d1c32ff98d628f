"""Saving and loading models: `--model` is a file path, a zoo preset, `default`, or your own
model as code (`path/to/net.py:build`, `package.module:build`: see hwcompress.models.user,
which says why a model file is code you chose to run and how a saved one is loaded again)."""

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
        # on the CPU (a copy): a model trained on a GPU loads anywhere
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    if model.arch == "user":  # a FrontEndModel: its front end; its code is named by config["source"]
        payload["front_end"] = model.front_end.to_dict()
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


def check_tensors(state: dict, origin: str, floats_only: bool = True) -> None:
    """Every entry a dense tensor (float, or any real type unless `floats_only`), finite, and
    no more bytes spanned than stored; one line naming the first that is not."""
    for name, t in state.items():
        ok = isinstance(t, torch.Tensor) and t.layout == torch.strided and (
            t.is_floating_point() or (not floats_only and not t.is_complex()))
        if not ok:
            kind = f"{t.dtype} {t.layout}" if isinstance(t, torch.Tensor) else type(t).__name__
            what = "dense float" if floats_only else "dense real"
            raise HwcError(f"{origin}: weight {name!r} is not a {what} tensor ({kind})")
    # a tensor may be a view (zero strides, overlaps) spanning far more than its stored bytes:
    # the model's own copies would then allocate what the file never carried
    stored = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
    spanned = sum(t.numel() * t.element_size() for t in state.values())
    if spanned > sum(stored.values()):
        raise HwcError(f"{origin}: weights span {spanned:,} bytes but the file stores {sum(stored.values()):,} "
                       "(zero-stride or overlapping views): corrupt or crafted model file")
    if not floats_only:
        for name, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise HwcError(f"{origin}: weight {name!r} contains NaN/Inf values")


def payload_state(payload: dict, origin: str, floats_only: bool = True) -> dict:
    """The checked state_dict of a hwcompress model file."""
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise HwcError(f"{origin}: not a hwcompress model file (no state_dict of named tensors)")
    check_tensors(state, origin, floats_only)
    return state


def model_from_payload(payload: dict, origin: str, template: torch.nn.Module | None = None) -> zoo.SEModel:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise HwcError(f"{origin}: not a hwcompress model file")
    if payload.get("arch") == "user":
        return _wrapped_from_payload(payload, origin, template)
    state = payload_state(payload, origin)
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


# Pretrained models no one here wrote, built by hwcompress's own code from the packages that
# ship their weights: a saved file naming one rebuilds it without importing anyone's code.
NAMED = {"nsnet2": "hwcompress.models.nsnet2:model", "nsnet2-wide": "hwcompress.models.nsnet2:wide_model",
         "deepfilternet3": "hwcompress.models.deepfilternet:model"}


def named_model(name: str) -> torch.nn.Module:
    import importlib

    module, function = NAMED[name].split(":")
    return getattr(importlib.import_module(module), function)()


def onnx_model(path: Path) -> torch.nn.Module:
    """An ONNX file of a frame-wise SE model, imported (hwcompress.models.onnx_import) and wrapped
    with the front end its `[front_end]` TOML beside it declares (NAME.toml for NAME.onnx)."""
    from hwcompress.models.frontend import FrontEnd
    from hwcompress.models.onnx_import import import_onnx
    from hwcompress.models.wrap import FrontEndModel

    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such ONNX file")
    toml = path.with_suffix(".toml")
    if not toml.is_file():
        raise HwcError(f"{path}: no front-end declaration: add {toml.name} beside it with a [front_end] table "
                       "(sample_rate, win, hop, feature, output, gain_floor_db: see docs/your-model.md)")
    front_end = FrontEnd.from_toml(toml)
    net = FrontEndModel(import_onnx(path).eval(), front_end, source=str(path), kwargs={})
    net.meta = {"source": str(path), "imported_from": "onnx"}
    return net.eval()


def _wrapped_from_payload(payload: dict, origin: str, template: torch.nn.Module | None = None) -> torch.nn.Module:
    """A saved FrontEndModel: rebuilt from `template` (the dense model it was made from, same
    source), or when its source is data or hwcompress's own code (a named pretrained model, an
    ONNX file); a user's Python code is never imported on a file's word. Layers narrowed by
    structured compression are resized to the file's shapes (hwcompress.models.resize)."""
    import copy

    from hwcompress.models.user import load_resized, needs_source

    config = payload.get("config")
    source = config.get("source") if isinstance(config, dict) else None
    if template is not None and getattr(template, "arch", None) == "user" and template.config.get("source") == source:
        model = copy.deepcopy(template)
    elif source in NAMED:
        model = named_model(source)
    elif isinstance(source, str) and source.endswith(".onnx") and Path(source).is_file():
        model = onnx_model(Path(source))
    else:
        raise needs_source(payload, origin)
    if payload.get("front_end") != model.front_end.to_dict():
        raise HwcError(f"{origin}: saved with another front end than {source} declares now")
    state = payload_state(payload, origin)
    if load_resized(model, state, origin, str(source)):
        model.stream_diff = model.check_streaming()  # the narrower model still streams as it runs whole
    meta = payload.get("meta", {})
    model.meta = meta if isinstance(meta, dict) else {}
    return model.eval()


def load_model(spec: str | Path = "default", weights: str | Path | None = None,
               template: torch.nn.Module | None = None) -> zoo.SEModel:
    """Resolve `spec`: an existing file, a shipped pretrained name, a zoo preset (a preset
    gives a freshly initialised model, for training), or code naming your own model,
    `path/to/net.py:build` / `package.module:build`, with optional `weights` (a state_dict
    .pt, .safetensors, or a .pt hwcompress saved of that model): hwcompress.models.user.
    `template`: the dense model a saved (.pt/.hwc) compressed model of your code was made from;
    it is rebuilt from a copy of it (the code is not imported again)."""
    spec = str(spec)
    path = Path(spec)
    from hwcompress.models import user

    if not path.exists() and user.is_user_spec(spec):
        return user.load_user_model(spec, weights)
    if weights is not None:
        raise HwcError(f"{user.WEIGHTS_OPTION} {weights}: weights go with a model given as code (path/to/net.py:build "
                       f"or package.module:build); {spec} carries its own")
    if path.suffix == ".py":
        raise HwcError(f"{spec}: Python code: name the class or function in it that builds the model, "
                       f"e.g. --model {spec}:build")
    if spec in NAMED and not path.exists():
        return named_model(spec)
    if path.suffix == ".onnx":
        return onnx_model(path)
    if path.suffix == ".hwc":
        from hwcompress.compress.artifact import load_artifact  # compressed models (issue 3)

        return load_artifact(path, template)
    if path.exists() or path.suffix == ".pt" or os.sep in spec:
        return model_from_payload(read_checkpoint(path), str(path), template)
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
    known = ", ".join(pretrained_names() + sorted(NAMED) + sorted(zoo.PRESETS))
    raise HwcError(f"unknown model {spec!r}: give a file path, your model's code (path/to/net.py:build) or one of {known}")
