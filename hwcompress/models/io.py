"""Saving and loading models: `--model` is a file path, a zoo preset, or `default`."""

from __future__ import annotations

import os
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


def model_from_payload(payload: dict, origin: str) -> zoo.SEModel:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise HwcError(f"{origin}: not a hwcompress model file")
    if payload.get("arch") not in zoo.ARCHS:
        raise HwcError(f"{origin}: unknown architecture {payload.get('arch')!r}")
    try:
        model = zoo.build(payload["arch"], payload["config"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, RuntimeError) as exc:
        raise HwcError(f"{origin}: weights do not match the architecture ({str(exc).splitlines()[0]})") from None
    model.meta = payload.get("meta", {})
    return model.eval()


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such model file")
    try:
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
        model = zoo.build_preset(spec)
        model.meta = {"preset": spec, "trained": False}
        return model
    known = ", ".join(pretrained_names() + sorted(zoo.PRESETS))
    raise HwcError(f"unknown model {spec!r}: give a file path or one of {known}")
