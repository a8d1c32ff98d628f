"""Helpers shared by the benchmark scripts: a logged subprocess that stops the benchmark in one
line when it fails, and the bootstrap interval every comparison table uses."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def run_logged(cmd: list[str], log: Path, cwd: Path, shown: list[str] | None = None) -> None:
    """Run `cmd` in `cwd` with its output appended to `log`; print `shown` (default: `cmd`) first.
    A failure ends the benchmark with one line naming the log."""
    print("$", shlex.join(shown or cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}; see {log}")


def bootstrap_ci(deltas: np.ndarray) -> tuple[float, float]:
    """95% BCa bootstrap interval of the mean of per-mixture differences (scipy.stats.bootstrap,
    2000 resamples, seed 0). All-equal differences have the degenerate interval [d, d]."""
    deltas = np.asarray(deltas, dtype=float)
    if np.ptp(deltas) == 0:
        return float(deltas[0]), float(deltas[0])
    r = stats.bootstrap((deltas,), np.mean, n_resamples=2000, confidence_level=0.95, method="BCa",
                        random_state=np.random.default_rng(0))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)
