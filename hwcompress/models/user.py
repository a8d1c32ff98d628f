"""Your own PyTorch model as `--model`: `path/to/net.py:build` or `package.module:build`.

**A model file is code you chose to run.** hwcompress imports `net.py` (or the module) the
way `python -c "import net"` would, with your user's rights: it can do anything you can.
Give only files you trust. Weights are data, never code: `--model-weights FILE` is read
with `torch.load(..., weights_only=True)` or, for `.safetensors`, with the safetensors
package (when it is installed); nothing from a weights file is unpickled or evaluated.

- `build` is a class or a factory returning an `nn.Module` (the core): whole sequences in,
  `core(features [B, T, F] or [B, T, F, 2]) -> output`, see hwcompress.models.wrap. It is
  called with no arguments (or with the kwargs saved in a hwcompress .pt, see below), under
  a fixed seed, so an untrained model is the same model on every run.
- Its front end (hwcompress.models.frontend.FrontEnd), first found wins: a `front_end`
  attribute of the factory object; `FRONT_END = FrontEnd(...)` in the module; a TOML file
  with a `[front_end]` table beside the model file with the same stem (`net.py` ->
  `net.toml`; for `package.module`, beside the module's file).
- A file's folder is on sys.path while it is imported and its factory runs (so it can
  import modules next to it); `package.module` must be importable from sys.path.
- `--model-weights FILE`: a state_dict of the core (`torch.save(core.state_dict(), FILE)`,
  or a checkpoint dict whose "state_dict" entry is one), a `.safetensors` file, or a model
  hwcompress saved (below). Names and shapes must match the core exactly.

Saving and loading (decided here): `io.save_model` of a FrontEndModel writes arch "user",
config {"source", "kwargs"}, the front end and the state_dict of the derived model (names
"core.<your names>"). Such a .pt never imports code by itself: `load_model("model.pt")`
answers with the command to use, `--model net.py:build --model-weights model.pt`, which
rebuilds the core from the code with the saved kwargs, derives streaming and loads the
weights. The saved front end is used; if the code declares one too, they must agree.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hwcompress.errors import HwcError
from hwcompress.models import io
from hwcompress.models.frontend import FrontEnd
from hwcompress.models.wrap import FrontEndModel

_IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
#: the command-line option that names weights for a model given as code
WEIGHTS_OPTION = "--model-weights"
_HERE = str(Path(__file__).resolve().parent.parent)  # the hwcompress package: not the user's frames


@dataclass(frozen=True)
class Source:
    """A parsed `--model` value naming code."""

    text: str  # as given
    file: Path | None  # net.py, or None for a module given by name
    module: str | None
    factory: str

    @property
    def where(self) -> str:
        return str(self.file) if self.file is not None else self.module


def parse_source(spec: str) -> Source | None:
    """`net.py:build` / `package.module:build` as a Source, None if `spec` is neither."""
    left, sep, right = str(spec).rpartition(":")
    if not sep or not left or not _IDENT.fullmatch(right):
        return None
    if left.endswith(".py"):
        return Source(str(spec), Path(left), None, right)
    if _IDENT.fullmatch(left):
        return Source(str(spec), None, left, right)
    return None


def is_user_spec(spec: object) -> bool:
    return parse_source(str(spec)) is not None


def spec_stem(spec: str) -> str:
    """A file-name stem for artifacts of `spec` (`path/net.py:build` -> `net-build`)."""
    src = parse_source(spec)
    if src is None:
        return Path(spec).stem
    base = src.file.stem if src.file is not None else src.module.rsplit(".", 1)[-1]
    return f"{base}-{src.factory.replace('.', '-')}"


def safe_source(value: object) -> str | None:
    """A saved source string fit to print in one line, or None."""
    if isinstance(value, str) and 0 < len(value) <= 300 and value.isprintable():
        return value
    return None


# ------------------------------------------------------------------ importing the code


@contextmanager
def _on_path(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:  # the user's code removed it itself
            pass


def _raised(exc: BaseException, file: Path | None) -> str:
    """'ValueError: bad width (net.py:12)': the exception and the user's line that raised it."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"SyntaxError: {exc.msg} ({Path(exc.filename or '?').name}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if file is not None and Path(f.filename).resolve() == file.resolve()]
    if not mine:
        mine = [f for f in frames if not f.filename.startswith(("<frozen", _HERE))]
    at = f" ({Path(mine[-1].filename).name}:{mine[-1].lineno})" if mine else ""
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}{': ' + text if text else ''}{at}"


def _import(src: Source) -> ModuleType:
    if src.file is None:
        try:
            return importlib.import_module(src.module)
        except ModuleNotFoundError as exc:
            if exc.name and (src.module == exc.name or src.module.startswith(exc.name + ".")):
                raise HwcError(f"{src.text}: no module named {exc.name!r} on sys.path; give the file instead "
                               f"(path/to/{src.module.rsplit('.', 1)[-1]}.py:{src.factory})") from None
            raise HwcError(f"{src.module}: importing it raised {_raised(exc, None)}") from None
        except (Exception, SystemExit) as exc:  # the user's module may raise anything on import
            raise HwcError(f"{src.module}: importing it raised {_raised(exc, None)}") from None
    path = src.file
    if not path.is_file():
        raise HwcError(f"{path}: no such model file (from --model {src.text})")
    resolved = path.resolve()
    name = f"_hwc_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise HwcError(f"{path}: cannot be imported as Python code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, typing and pickling look the module up there
    try:
        with _on_path(resolved.parent):
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise HwcError(f"{path}: importing it raised {_raised(exc, resolved)}") from None
    return module


def _factory(module: ModuleType, src: Source) -> object:
    obj: object = module
    for part in src.factory.split("."):
        if not hasattr(obj, part):
            defined = sorted(n for n, v in vars(module).items() if not n.startswith("_")
                             and (inspect.isclass(v) or inspect.isfunction(v))
                             and getattr(v, "__module__", None) == module.__name__)
            has = f"it defines {', '.join(defined)}" if defined else "it defines no classes or functions"
            raise HwcError(f"{src.where}: no {src.factory!r} in it ({has})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise HwcError(f"{src.where}: {src.factory} is a {type(obj).__name__}, not a class or function "
                       "returning an nn.Module")
    return obj


def _declared_front_end(factory: object, module: ModuleType, src: Source) -> FrontEnd | None:
    for value, what in ((getattr(factory, "front_end", None), f"{src.factory}.front_end"),
                        (getattr(module, "FRONT_END", None), "FRONT_END")):
        if value is None:
            continue
        if isinstance(value, FrontEnd):
            return value
        if isinstance(value, dict):
            return FrontEnd.from_dict(value, f"{src.where}: {what}")
        raise HwcError(f"{src.where}: {what} is a {type(value).__name__}; it must be a FrontEnd(...) "
                       "(from hwcompress.models.frontend import FrontEnd)")
    file = src.file if src.file is not None else Path(getattr(module, "__file__", "") or "")
    toml = file.with_suffix(".toml") if file.name else None
    if toml is not None and toml.is_file():
        return FrontEnd.from_toml(toml)
    return None


def _build(factory: object, kwargs: dict, src: Source) -> nn.Module:
    folder = src.file.resolve().parent if src.file is not None else None
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        # seeded like a zoo preset, without touching the caller's RNG
        with _on_path(folder), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            core = factory(**kwargs)
    except (Exception, SystemExit) as exc:
        raise HwcError(f"{src.text}: {src.factory}({args[:120]}) raised "
                       f"{_raised(exc, src.file.resolve() if src.file else None)}") from None
    if not isinstance(core, nn.Module):
        raise HwcError(f"{src.text}: {src.factory}({args[:120]}) returned a value of type {type(core).__name__}, not a torch.nn.Module")
    return core


# ------------------------------------------------------------------ weights


@dataclass(frozen=True)
class Weights:
    """What a weights file holds: tensors by name, and the hwcompress payload if it is one."""

    path: Path
    state: dict[str, torch.Tensor]
    payload: dict | None = None


def read_weights(path: Path | str) -> Weights:
    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such weights file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise HwcError(f"{path}: .safetensors weights need the safetensors package, which is not installed here "
                           "(pip install safetensors); or save a state_dict .pt") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError...
            raise HwcError(f"{path}: corrupt or unreadable .safetensors file ({type(exc).__name__})") from None
        io.check_tensors(state, str(path), floats_only=False)
        return Weights(path, dict(state))
    if suffix not in (".pt", ".pth"):
        raise HwcError(f"{path}: weights must be a state_dict .pt/.pth (torch.save(model.state_dict(), ...)) "
                       "or a .safetensors file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many types for foreign or truncated files
        raise HwcError(f"{path}: not a readable state_dict ({type(exc).__name__}: torch.load with weights_only=True "
                       "refused it); save weights with torch.save(model.state_dict(), path), not the whole model") from None
    if isinstance(data, dict) and data.get("format") == io.FORMAT:
        return Weights(path, io.payload_state(data, str(path)), data)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # a trainer's checkpoint: {"state_dict": ..., "epoch": ...}
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                         for k, v in data.items()):
        raise HwcError(f"{path}: not a state_dict (a dict of named tensors); save it with "
                       "torch.save(model.state_dict(), path)")
    io.check_tensors(data, str(path), floats_only=False)
    return Weights(path, data)


def check_match(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], origin: str, what: str) -> None:
    """One line naming the first mismatch of names/shapes, with the counts."""
    missing = [n for n in expected if n not in state]
    extra = [n for n in state if n not in expected]
    wrong = [n for n in expected if n in state and tuple(state[n].shape) != tuple(expected[n].shape)]
    if not (missing or extra or wrong):
        return
    if wrong:
        first = f"{wrong[0]} is {list(state[wrong[0]].shape)} in the file, {list(expected[wrong[0]].shape)} in the model"
    elif missing:
        first = f"missing {missing[0]!r}"
    else:
        first = f"unexpected {extra[0]!r}"
    held, wanted = sum(t.numel() for t in state.values()), sum(t.numel() for t in expected.values())
    raise HwcError(f"{origin}: weights do not match {what} ({len(missing)} missing, {len(extra)} unexpected, "
                   f"{len(wrong)} of another shape; first: {first}; the model has {len(expected)} tensors of "
                   f"{wanted:,} values, the file {len(state)} of {held:,})")


def load_resized(model: nn.Module, state: dict[str, torch.Tensor], origin: str, what: str) -> bool:
    """Load `state` into `model`, first narrowing the layers that structured compression narrowed
    in the file (hwcompress.models.resize), names and shapes checked; True if any was resized."""
    from hwcompress.models.resize import resize_to

    resized = bool(resize_to(model, state, origin))
    check_match(model.state_dict(), state, origin, what)
    model.load_state_dict(state)
    return resized


def _payload_front_end(payload: dict, path: Path) -> FrontEnd:
    return FrontEnd.from_dict(payload.get("front_end"), f"{path}: front_end")


def _differs(a: FrontEnd, b: FrontEnd) -> str:
    da, db = a.to_dict(), b.to_dict()
    key = next(k for k in da if da[k] != db[k])
    return f"{key} = {db[key]!r} in the file, {da[key]!r} in the code"


# ------------------------------------------------------------------ the whole load


def load_user_model(spec: str, weights: Path | str | None = None, kwargs: dict | None = None) -> FrontEndModel:
    """Import the code `spec` names, build the core, load `weights`, wrap it (see the module
    docstring). Every failure is one HwcError line."""
    src = parse_source(spec)
    if src is None:
        raise HwcError(f"{spec}: give a model as code: path/to/net.py:build or package.module:build")
    if weights is not None and Path(weights).suffix == ".hwc":  # compressed from this code: rebuilt from it
        from hwcompress.compress.artifact import load_artifact

        model = load_artifact(weights, template=load_user_model(spec, None, kwargs))
        if model.arch != "user":
            raise HwcError(f"{weights}: a hwcompress {model.arch} model, not weights for {src.text}: give it alone, "
                           f"--model {weights}")
        return model
    held = read_weights(weights) if weights is not None else None
    payload = held.payload if held is not None else None
    if payload is not None:
        arch = payload.get("arch")
        if arch != "user":
            raise HwcError(f"{held.path}: a hwcompress {arch!s:.40} model, not weights for {src.text}: give it alone, "
                           f"--model {held.path}")
        saved = payload.get("config")
        if not isinstance(saved, dict) or not isinstance(saved.get("kwargs", {}), dict):
            raise HwcError(f"{held.path}: not a hwcompress model file (config without kwargs)")
        if kwargs is not None and kwargs != saved.get("kwargs", {}):
            raise HwcError(f"{held.path}: saved with kwargs {saved.get('kwargs', {})}, not {kwargs}")
        kwargs = saved.get("kwargs", {})
    kwargs = dict(kwargs or {})
    module = _import(src)
    factory = _factory(module, src)
    declared = _declared_front_end(factory, module, src)
    front_end = declared
    if payload is not None:
        front_end = _payload_front_end(payload, held.path)
        if declared is not None and declared != front_end:
            raise HwcError(f"{held.path}: saved with another front end than {src.where} declares "
                           f"({_differs(declared, front_end)})")
    if front_end is None:
        toml = (src.file if src.file is not None else Path(getattr(module, "__file__", "") or "net.py")).with_suffix(".toml")
        raise HwcError(f"{src.where}: no front-end declaration for {src.factory}: add `FRONT_END = FrontEnd(...)` "
                       f"(from hwcompress.models.frontend import FrontEnd) to it, or a {toml.name} beside it with a "
                       "[front_end] table (see docs/your-model.md)")
    front_end.check_supported(src.text)
    core = _build(factory, kwargs, src)
    late = payload is not None  # weights named as in the wrapped model ("core.<your names>")
    if held is not None and payload is None:
        if _matches(core.state_dict(), held.state):
            core.load_state_dict(held.state)
        elif held.state and all(k.startswith("core.") for k in held.state):
            late = True  # a state_dict of a FrontEndModel itself
        else:
            check_match(core.state_dict(), held.state, str(held.path), src.text)
    model = FrontEndModel(core, front_end, source=src.text, kwargs=kwargs)
    if late:
        load_resized(model, held.state, str(held.path), src.text)
        model.stream_diff = model.check_streaming()  # with the loaded weights
    if payload is not None:
        meta = payload.get("meta", {})
        model.meta = meta if isinstance(meta, dict) else {}
    else:
        model.meta = {"source": src.text, "trained": held is not None}
    return model.eval()


def _matches(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> bool:
    return expected.keys() == state.keys() and all(tuple(expected[k].shape) == tuple(state[k].shape) for k in state)


def needs_source(payload: dict, origin: str) -> HwcError:
    """The line for a saved user model loaded without its code."""
    config = payload.get("config")
    source = safe_source(config.get("source")) if isinstance(config, dict) else None
    code = source or "path/to/net.py:build"
    return HwcError(f"{origin}: a model built from your code ({code}); a saved model file never imports code by itself: give "
                    f"the code again, --model {code} {WEIGHTS_OPTION} {origin} "
                    f"(Python: load_model({code!r}, weights={origin!r}))")
