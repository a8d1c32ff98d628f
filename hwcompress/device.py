"""Where torch runs: `--device auto|cpu|cuda|cuda:N` resolved once, and the few helpers every
torch stage (train, compress fine-tuning, sensitivity scoring, evaluation) shares.

Low-level on purpose (imports nothing of the pipeline), like errors.py and workdir.py.

- `resolve_device(spec)`: `auto` is a CUDA GPU when torch sees one, else the CPU, said once on
  stderr; `cuda` (or `cuda:N`) without one is one HwcError line (exit 2 in the CLI).
- `describe(device)`: what a report records, e.g. `cpu` or `cuda:0 (NVIDIA H100 80GB HBM3)`.
- `device_of(module)`, `placed(module, device)`: torch work follows the module's device; a
  module that must stay where it is (on the CPU for export and hashing) is copied, never moved.
- `to_cpu(obj)`: tensors of a nested checkpoint on the CPU before anything is serialised.
- `torchrun_ranks()`: the rank layout `torchrun` gives a data-parallel process.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from hwcompress.errors import HwcError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_said_fallback = False


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run launched by torchrun."""

    rank: int  # global rank (0 validates, logs and writes)
    world: int  # number of processes over all machines
    local: int  # rank on this machine: the GPU index it drives


def torchrun_ranks() -> Ranks | None:
    """The ranks torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), or None when this process was not
    started by torchrun or is its only process (a one-process run needs no process group)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(n in os.environ for n in names):
        return None
    try:
        rank, world, local = (int(os.environ[n]) for n in names)
    except ValueError:
        given = ", ".join(f"{n}={os.environ[n]!r}" for n in names)
        raise HwcError(f"torchrun environment is malformed: {given}") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise HwcError(f"torchrun environment is inconsistent: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return Ranks(rank, world, local) if world > 1 else None


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int | None = None,
                   say: bool = True) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch.device. `auto` falls back to the CPU when no
    CUDA device is available and says so once on stderr (unless `say` is false: the ranks of a
    data-parallel run other than 0); an explicit CUDA device that is not there is one HwcError
    line. `local_rank` (a torchrun process): `cuda`/`auto` mean the GPU of that index, one GPU
    per process."""
    global _said_fallback
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        if not torch.cuda.is_available():
            if say and not _said_fallback:
                print(f"device: --device auto found no CUDA GPU ({_no_cuda_reason()}); running on the CPU",
                      file=sys.stderr, flush=True)
                _said_fallback = True
            return torch.device("cpu")
        text = "cuda"
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise HwcError(f"--device {text}: no CUDA device is available here ({_no_cuda_reason()}): "
                           "use --device cpu or auto")
        count = torch.cuda.device_count()
        if text == "cuda":
            index = local_rank if local_rank is not None else torch.cuda.current_device()
        else:
            index = int(text[5:])
            if local_rank is not None and index != local_rank:
                raise HwcError(f"--device {text}: under torchrun each process drives the GPU of its LOCAL_RANK "
                               f"({local_rank}); pass --device cuda (or auto)")
        if index >= count:
            raise HwcError(f"--device cuda:{index}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    raise HwcError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


def describe(device: torch.device | str) -> str:
    """`cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3)`: the device a report records."""
    device = torch.device(device)
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def device_key(device: torch.device | str) -> str | None:
    """What a cache of float scores records about where they were computed: None on the CPU (the
    key caches always had), else the device kind and model (another GPU rounds otherwise)."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    return describe(device).split(" ", 1)[-1] if device.type == "cuda" else device.type


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for one that has neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def placed(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """`module` itself when it already lives on `device`, else a copy moved there (the original
    stays where it is: exports and digests read it on the CPU)."""
    device = torch.device(device)
    if _same(device_of(module), device):
        return module
    return copy.deepcopy(module).to(device)


def _same(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it (dicts, lists, tuples) detached on the CPU: what a checkpoint
    holds, so that a file written on a GPU loads anywhere. CPU tensors are returned as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
