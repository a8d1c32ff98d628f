"""Output folders that a run owns: writability checked up front, one run at a time, and
work folders keyed by everything that determines their contents.

Low-level on purpose (imports nothing of the pipeline): compress, export and search all
write through these helpers.

- `check_writable(path)`: fails in one line before any long work when an output cannot be
  written (read-only folder or file system, a folder where a file is expected, ...).
- `OutputLock(path)`: an advisory `flock` on `PATH.lock` (or inside a folder); a second concurrent run into the
  same output fails at once with one line. The kernel drops the lock when the process dies,
  so a killed run never leaves a stale lock behind.
- `WorkFolder(path, key)`: a resumable work folder whose `key.json` records the fingerprint of
  what produced it (model weights, data, settings, code version). Opening it with another key
  empties it (one log line) instead of resuming stages computed for other settings.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from hwcompress.errors import HwcError

# bump when a change in the code makes earlier work folders and caches invalid
CODE_VERSION = 2


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path, kind: str = "file") -> None:
    """Raise HwcError (one line) unless `path` can be created or replaced as a `kind`
    ("file" or "dir"). Probes by really creating a file: permission bits alone do not tell
    (root ignores them, a read-only mount does not show in them)."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise HwcError(f"{path}: is a folder; give a file path for this output")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise HwcError(f"{path}: exists and is not a folder; give a folder for this output")
    if path.is_symlink() and not path.exists():
        raise HwcError(f"{path}: is a broken symbolic link")
    base = path if (kind == "dir" and path.is_dir()) else path.parent
    existing = _first_existing(base)
    if not existing.is_dir():
        raise HwcError(f"{path}: cannot create it, {existing} is not a folder")
    probe = existing / f".hwc-write-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "xb"):
            pass
    except OSError as exc:
        why = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or type(exc).__name__).lower()
        raise HwcError(f"{path}: cannot write there ({existing}: {why})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


class OutputLock:
    """`with OutputLock(out):` holds an exclusive advisory lock on `out.lock` beside a file
    output, or on `out/.hwcompress.lock` inside a folder output (`inside=True`). With
    `wait=True` a second holder waits for the first instead of failing (shared caches that
    every run may build, such as the corpus)."""

    def __init__(self, path: Path, inside: bool = False, wait: bool = False) -> None:
        self.path = Path(path)
        self.wait = wait
        self.lock_path = self.path / ".hwcompress.lock" if inside else self.path.with_name(self.path.name + ".lock")
        self._fh = None

    def __enter__(self) -> "OutputLock":
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.lock_path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise HwcError(f"{self.path}: another hwcompress run is writing there ({holder}); "
                               "wait for it or choose another output") from None
            # the holder before us unlinks the file on exit: if we locked that unlinked
            # file, the lock protects nothing, so take the one now at the path instead
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            try:  # unlink while still holding the lock (see __enter__)
                self.lock_path.unlink()
            except OSError:
                pass
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def digest(obj: Any) -> str:
    """Stable short hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def model_digest(model: Any) -> str:
    """Hash of a module's architecture declaration and every tensor's exact bytes."""
    import torch

    h = hashlib.sha256(json.dumps({"arch": getattr(model, "arch", type(model).__name__),
                                   "config": getattr(model, "config", None)}, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def data_digest(data: Path) -> str:
    """A corpus is identified by its manifest (every source, split and seed it was built from)."""
    manifest = Path(data) / "manifest.json"
    return file_digest(manifest) if manifest.is_file() else digest(str(Path(data).resolve()))


class WorkFolder:
    """A resumable work folder tied to the fingerprint of what it computes."""

    def __init__(self, path: Path, key: dict, log: Callable[[str], None]) -> None:
        self.path = Path(path)
        self.key = _plain(key)
        key_file = self.path / "key.json"
        if self.path.exists():
            try:
                previous = json.loads(key_file.read_text())
            except (OSError, ValueError):
                previous = None
            if previous != self.key:
                what = "another model, data or settings" if previous is not None else "an unknown or older run"
                log(f"{self.path}: work left by {what}; starting afresh")
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = key_file.with_name(key_file.name + ".tmp")
        tmp.write_text(json.dumps(self.key, indent=1, sort_keys=True))
        tmp.replace(key_file)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _plain(key: dict) -> dict:
    """The key as it reads back from JSON (tuples become lists, dict keys strings), so that a
    key compares equal to its own stored copy."""
    return json.loads(json.dumps({"code_version": CODE_VERSION, **key}, sort_keys=True, default=str))


def write_keyed(path: Path, key: dict, payload: dict) -> None:
    """Atomic JSON cache entry `{"key": key, **payload}`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per writer (process and call), so two workers writing one key never share a temporary file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps({"key": _plain(key), **payload}, indent=1, default=float))
    tmp.replace(path)


def read_keyed(path: Path, key: dict, log: Callable[[str], None]) -> dict | None:
    """The payload cached at `path` if it was computed for exactly `key`; None (recompute)
    otherwise, saying in one line why a file that exists is not used."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log(f"{path}: unreadable cache ({type(exc).__name__}); recomputing it")
        return None
    if not isinstance(payload, dict) or payload.get("key") != _plain(key):
        log(f"{path}: computed for another model, data or settings; recomputing it")
        return None
    return payload
