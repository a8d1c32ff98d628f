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

The locks only hold back the steps that take them: a worker process starting, a module
import, a model load or Ray's own daemons run outside any step. So once `quiet()` holds the
machine it also waits (at most SETTLE_MAX_S) until the other processes' CPU use, read from
/proc/stat, is under SETTLE_CORES; what it saw is `settled()`, which the fit records with the
timing.

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
import time
from pathlib import Path
from typing import Iterator

ENV = "HWC_QUIET_LOCK"
#: the other processes' CPU use (cores) a timing waits to fall under once it holds the machine
SETTLE_CORES = 0.2
#: the longest a timing waits for that (a busy machine it cannot wait out is recorded as such)
SETTLE_MAX_S = 10.0
#: the window each reading of /proc/stat spans (its counters tick at 100 Hz)
SETTLE_WINDOW_S = 0.2

_state = threading.local()


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, all) CPU ticks of the whole machine since boot; None where there is no /proc/stat.
    Steal time counts as neither: a hypervisor's neighbours cannot be waited out."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq = (v + [0] * 7)[:7]
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


def others_cores(window_s: float = SETTLE_WINDOW_S) -> float | None:
    """Cores the machine was busy over `window_s` while this thread slept: the other processes'
    use (hand-written from /proc/stat: psutil's cpu_percent reads the same counters, and the
    project does not otherwise need it). None off Linux."""
    first = _cpu_ticks()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_ticks()
    total = second[1] - first[1]
    return (second[0] - first[0]) / total * (os.cpu_count() or 1) if total > 0 else 0.0


def _settle() -> dict:
    started = time.monotonic()
    first = busy = others_cores()
    while busy is not None and busy > SETTLE_CORES and time.monotonic() - started < SETTLE_MAX_S:
        busy = others_cores()
    return {"others_cores_at_start": first, "others_cores": busy, "waited_s": round(time.monotonic() - started, 3),
            "quiet": busy is None or busy <= SETTLE_CORES}


def settled() -> dict | None:
    """What the innermost held `quiet()` saw before its timing (see the module docstring):
    the other processes' CPU use when it got the machine and when it began, and how long it
    waited; None outside a parallel run's `quiet()`."""
    return getattr(_state, "settled", None)


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
                _state.settled = _settle()
                yield
            finally:
                _state.quiet = 0
                _state.settled = None
                fcntl.flock(m, fcntl.LOCK_UN)
        finally:
            fcntl.flock(t, fcntl.LOCK_UN)
