"""Speech-quality metrics for the evaluate stage: PESQ-WB, STOI, ESTOI, SI-SDR.

Every metric takes (reference, estimate) as 1-D arrays of equal length. A metric that
is undefined for a clip (e.g. PESQ finds no speech in it) is NaN rather than an
exception, so one odd clip cannot abort a long evaluation; `summarize` excludes NaNs
from means and reports how many there were.
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
from pesq import BufferTooShortError, NoUtterancesError, pesq
from pystoi import stoi as _pystoi

METRICS: tuple[str, ...] = ("pesq_wb", "stoi", "estoi", "si_sdr")
CONDITIONS: tuple[str, ...] = ("noisy", "enhanced", "delta")

# (label, decimals) used by to_markdown; PESQ/STOI differences below these are noise.
_DISPLAY: dict[str, tuple[str, int]] = {
    "pesq_wb": ("PESQ-WB", 2),
    "stoi": ("STOI", 3),
    "estoi": ("ESTOI", 3),
    "si_sdr": ("SI-SDR (dB)", 2),
}


def _pair(ref: Any, est: Any) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    e = np.asarray(est, dtype=np.float64).reshape(-1)
    if r.shape != e.shape:
        # Silently trimming would hide an alignment bug (e.g. model padding/latency).
        raise ValueError(f"reference and estimate lengths differ: {r.size} vs {e.size}")
    return r, e


def si_sdr(ref: Any, est: Any) -> float:
    """Scale-invariant SDR in dB (Le Roux et al., 2019), both signals made zero-mean.

    The tiny eps keeps identical signals finite (very large) instead of +inf, which
    would poison averages.
    """
    r, e = _pair(ref, est)
    r = r - r.mean()
    e = e - e.mean()
    eps = np.finfo(np.float64).eps
    alpha = (np.dot(e, r) + eps) / (np.dot(r, r) + eps)
    target = alpha * r
    noise = e - target
    return float(10.0 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def pesq_wb(ref: Any, est: Any, sr: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO ~1.0-4.64); NaN if undefined for the clip.

    The `pesq` package raises NoUtterancesError when its voice-activity detector finds
    no speech, and BufferTooShortError for very short clips. Those are properties of
    the clip, not bugs, so they become NaN and are counted by `summarize`.
    Configuration errors (wrong rate) still raise.
    """
    if sr != 16000:
        raise ValueError(f"PESQ-WB is defined for 16 kHz audio only, got sr={sr}")
    r, e = _pair(ref, est)
    if not np.any(r) and not np.any(e):
        return float("nan")  # pesq would divide by a zero peak
    try:
        return float(pesq(sr, r, e, "wb"))
    except (NoUtterancesError, BufferTooShortError):
        return float("nan")


def _stoi(ref: Any, est: Any, sr: int, extended: bool) -> float:
    r, e = _pair(ref, est)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        value = float(_pystoi(r, e, sr, extended=extended))
    # pystoi returns a sentinel 1e-5 (with a warning) when too little non-silent audio
    # remains; averaging that sentinel would look like a catastrophic score.
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return float("nan")
    return value


def stoi(ref: Any, est: Any, sr: int = 16000) -> float:
    """Short-Time Objective Intelligibility (0-1); NaN if the clip is too short/silent."""
    return _stoi(ref, est, sr, extended=False)


def estoi(ref: Any, est: Any, sr: int = 16000) -> float:
    """Extended STOI (Jensen & Taal 2016), robust to modulated noise; NaN if undefined."""
    return _stoi(ref, est, sr, extended=True)


def score(ref: Any, est: Any, sr: int = 16000) -> dict[str, float]:
    """All metrics of `est` against `ref`: keys pesq_wb, stoi, estoi, si_sdr."""
    return {
        "pesq_wb": pesq_wb(ref, est, sr),
        "stoi": stoi(ref, est, sr),
        "estoi": estoi(ref, est, sr),
        "si_sdr": si_sdr(ref, est),
    }


def _score_item(ref: Any, noisy: Any, enhanced: Any, sr: int) -> tuple[dict, dict]:
    return score(ref, noisy, sr), score(ref, enhanced, sr)


def _row(meta: Mapping[str, Any], noisy: Mapping[str, float], enh: Mapping[str, float]) -> dict:
    row: dict[str, Any] = dict(meta)
    for m in METRICS:
        row[f"noisy_{m}"] = noisy[m]
        row[f"enhanced_{m}"] = enh[m]
        row[f"delta_{m}"] = enh[m] - noisy[m]  # NaN propagates: no delta without both
    return row


def score_many(
    items: Sequence[tuple[Any, Any, Any, Mapping[str, Any]]],
    workers: int = 2,
    sr: int = 16000,
) -> list[dict[str, Any]]:
    """Score noisy and enhanced audio of each (ref, noisy, enhanced, meta) item.

    Returns one row per item, in input order: the meta fields plus noisy_<metric>,
    enhanced_<metric> and delta_<metric> (enhanced - noisy) for each metric.
    PESQ is single-threaded C and dominates the cost, so items are spread over
    `workers` processes; workers <= 1 scores in-process (easier to debug/profile).
    """
    reserved = {f"{c}_{m}" for c in CONDITIONS for m in METRICS}
    for _, _, _, meta in items:
        clash = reserved.intersection(meta)
        if clash:
            raise ValueError(f"meta keys clash with metric columns: {sorted(clash)}")
    if not items:
        return []

    workers = min(int(workers), len(items))
    if workers <= 1:
        results = [_score_item(ref, noisy, enh, sr) for ref, noisy, enh, _ in items]
    else:
        # spawn, not fork: the caller usually has torch (and its OpenMP/intra-op
        # threads) loaded, and forking a threaded process can deadlock the children.
        # Cost: ~1 s worker start-up, and a calling script needs a __main__ guard.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_score_item, ref, noisy, enh, sr) for ref, noisy, enh, _ in items]
            results = [f.result() for f in futures]
    return [_row(meta, n, e) for (_, _, _, meta), (n, e) in zip(items, results)]


def _columns() -> list[str]:
    return [f"{c}_{m}" for m in METRICS for c in CONDITIONS]


def _stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    mean: dict[str, float] = {}
    n_nan: dict[str, int] = {}
    for col in _columns():
        vals = np.array([float(r.get(col, float("nan"))) for r in rows], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        n_nan[col] = int(vals.size - finite.size)
        mean[col] = float(finite.mean()) if finite.size else float("nan")
    return {"n": len(rows), "mean": mean, "n_nan": n_nan}


def _group_sort_key(value: Hashable) -> tuple[int, Any]:
    # Numbers in numeric order first (so SNR -5 < 0 < 5), anything else after, by text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def summarize(rows: Iterable[Mapping[str, Any]], group_by: str | None = "snr_db") -> dict[str, Any]:
    """Mean of every noisy_/enhanced_/delta_ column, overall and per `group_by` value.

    Returns {"group_by", "overall", "groups"} where overall and each groups[value] are
    {"n": rows, "mean": {column: mean over finite values}, "n_nan": {column: count}}.
    NaN/Inf values are excluded from means and counted in n_nan; a column with no
    finite value has mean NaN. Rows lacking the group_by key count only in overall.
    """
    rows = list(rows)
    groups: dict[Hashable, list[Mapping[str, Any]]] = {}
    if group_by is not None:
        for r in rows:
            if group_by in r:
                groups.setdefault(r[group_by], []).append(r)
    return {
        "group_by": group_by,
        "overall": _stats(rows),
        "groups": {k: _stats(groups[k]) for k in sorted(groups, key=_group_sort_key)},
    }


def _group_label(group_by: str | None, value: Any) -> str:
    if group_by == "snr_db":
        return f"SNR {value:g} dB" if isinstance(value, (int, float)) else f"SNR {value} dB"
    return f"{group_by} = {value}"


def _fmt(x: float, decimals: int) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{decimals}f}"


def to_markdown(summary: Mapping[str, Any], title: str) -> str:
    """Render a `summarize` result as a Markdown section: a `### title` heading and a
    table with one row for overall and one per group, noisy vs enhanced for each
    metric, plus n. Cells with no finite value print "n/a"; excluded NaN values are
    listed in a note under the table so a mean over fewer clips is not mistaken for n.
    """
    header = ["Condition"]
    align = ["---"]
    for m in METRICS:
        label = _DISPLAY[m][0]
        header += [f"{label} noisy", f"{label} enhanced"]
        align += ["---:", "---:"]
    header.append("n")
    align.append("---:")

    entries = [("Overall", summary["overall"])]
    entries += [(_group_label(summary.get("group_by"), k), s) for k, s in summary["groups"].items()]

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for label, s in entries:
        cells = [label]
        for m in METRICS:
            dec = _DISPLAY[m][1]
            cells += [_fmt(s["mean"][f"noisy_{m}"], dec), _fmt(s["mean"][f"enhanced_{m}"], dec)]
        cells.append(str(s["n"]))
        lines.append("| " + " | ".join(cells) + " |")

    overall = summary["overall"]
    notes = []
    for m in METRICS:
        for c in ("noisy", "enhanced"):
            k = overall["n_nan"][f"{c}_{m}"]
            if k:
                notes.append(f"{_DISPLAY[m][0]} {c}: {k} of {overall['n']}")
    if notes:
        lines += ["", "Undefined values excluded from means: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"
