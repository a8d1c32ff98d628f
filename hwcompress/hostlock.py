"""Quiet timings while several tasks share one machine.

A latency measured while another task fine-tunes on the same cores is the latency of a busy
machine: slower, noisier, and different from what a serial run measures (so a parallel fit
would prune more than the serial one). When a parallel run (search/multi.py) sets
HWC_QUIET_LOCK to a lock file on each machine, every task on that machine:

- wraps its CPU-heavy steps (a training step, one scored evaluation, an export) in
  `cpu_share()`: a shared lock, held for one step only;
- wraps each timing in `quiet()`: an exclusive lock. It first takes a turnstile that new
  steps must pass, then waits for the steps in flight to end, so a timing waits for at most
  one step per other task and is never starved by them.

Both are no-ops when HWC_QUIET_LOCK is unset (a serial run, or another program), and
`cpu_share()` inside `quiet()` of the same process is a no-op too (a timing's own setup).
Written with fcntl.flock because the two roles (many shared holders, one exclusive,
writer-preferred across processes that share nothing but the file system) are what no
standard-library lock offers; the kernel drops a lock when its process dies, so a killed
worker never leaves the machine locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterator

ENV = "HWC_QUIET_LOCK"

_state = threading.local()


def _paths() -> tuple[Path, Path] | None:
    where = os.environ.get(ENV, "").strip()
    if not where:
        return None
    main = Path(where)
    return main, main.with_name(main.name + ".turnstile")


def _open(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")


@contextlib.contextmanager
def cpu_share() -> Iterator[None]:
    """Hold a shared slot of this machine for one CPU-heavy step (see the module docstring)."""
    paths = _paths()
    depth = getattr(_state, "share", 0)
    if paths is None or depth or getattr(_state, "quiet", 0):
        _state.share = depth + 1
        try:
            yield
        finally:
            _state.share = depth
        return
    main, turnstile = paths
    with _open(turnstile) as t, _open(main) as m:
        fcntl.flock(t, fcntl.LOCK_EX)  # wait behind a timing that is waiting for its turn
        fcntl.flock(t, fcntl.LOCK_UN)
        fcntl.flock(m, fcntl.LOCK_SH)
        _state.share = 1
        try:
            yield
        finally:
            _state.share = 0
            fcntl.flock(m, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hold this machine alone for a timing: no other task's step runs meanwhile."""
    paths = _paths()
    depth = getattr(_state, "quiet", 0)
    if paths is None or depth:
        _state.quiet = depth + 1
        try:
            yield
        finally:
            _state.quiet = depth
        return
    if getattr(_state, "share", 0):
        # the shared slot this process holds would wait for itself
        raise RuntimeError("hostlock.quiet() inside cpu_share(): a timing must not run inside a CPU step")
    main, turnstile = paths
    with _open(turnstile) as t, _open(main) as m:
        fcntl.flock(t, fcntl.LOCK_EX)
        try:
            fcntl.flock(m, fcntl.LOCK_EX)
            _state.quiet = 1
            try:
                yield
            finally:
                _state.quiet = 0
                fcntl.flock(m, fcntl.LOCK_UN)
        finally:
            fcntl.flock(t, fcntl.LOCK_UN)
