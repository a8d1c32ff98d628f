"""Speech-quality metrics for the evaluate stage: PESQ-WB, STOI, ESTOI, SI-SDR, and the
non-intrusive DNSMOS P.835 (SIG, BAK, OVRL) with its P.808 MOS.

Every intrusive metric takes (reference, estimate) as 1-D arrays of equal length; DNSMOS
takes the estimate alone (`dnsmos`). A metric that is undefined for a clip (e.g. PESQ
finds no speech in it) is NaN rather than an exception, so one odd clip cannot abort a
long evaluation; `summarize` excludes NaNs from means and reports how many there were.

DNSMOS: Microsoft's DNS Challenge models (Reddy et al., "DNSMOS P.835", ICASSP 2022) as
packaged by Microsoft in `speechmos` (its LICENSE.txt: "MIT License, Copyright (c)
Microsoft Corporation"; its metadata: "License :: OSI Approved :: MIT License"). The ONNX
models ship inside the package: nothing is downloaded (speechmos has no download code; its
unused `requests` import opens no connection). speechmos' own `run()` builds its
onnxruntime sessions with the default thread count (every core), so `dnsmos` builds the
same two sessions with a bounded thread count and calls speechmos' scoring (`DNSMOS.__call__`,
what `run()` calls) on them.
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
from pesq import BufferTooShortError, NoUtterancesError, pesq
from pystoi import stoi as _pystoi

METRICS: tuple[str, ...] = ("pesq_wb", "stoi", "estoi", "si_sdr")
# non-intrusive (no reference): scored by `score_many(..., dnsmos=True)`, columns present only then
DNSMOS_METRICS: tuple[str, ...] = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
CONDITIONS: tuple[str, ...] = ("noisy", "enhanced", "delta")
# onnxruntime intra-op threads of each DNSMOS session (one per scoring process: `workers`
# processes score in parallel, so the total is bounded by workers x this)
DNSMOS_THREADS = 1

# (label, decimals) used by to_markdown; PESQ/STOI differences below these are noise.
_DISPLAY: dict[str, tuple[str, int]] = {
    "pesq_wb": ("PESQ-WB", 2),
    "stoi": ("STOI", 3),
    "estoi": ("ESTOI", 3),
    "si_sdr": ("SI-SDR (dB)", 2),
    "dnsmos_sig": ("DNSMOS SIG", 2),
    "dnsmos_bak": ("DNSMOS BAK", 2),
    "dnsmos_ovrl": ("DNSMOS OVRL", 2),
    "dnsmos_p808": ("DNSMOS P.808", 2),
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


@dataclass(frozen=True)
class DnsmosScore:
    """DNSMOS of one clip: P.835 signal (SIG), background (BAK) and overall (OVRL) MOS and
    the P.808 MOS, each ~1-5 (higher is better); NaN where the clip cannot be scored."""

    sig: float
    bak: float
    ovrl: float
    p808: float

    def as_dict(self) -> dict[str, float]:
        return {"dnsmos_sig": self.sig, "dnsmos_bak": self.bak, "dnsmos_ovrl": self.ovrl, "dnsmos_p808": self.p808}


_DNSMOS_SESSIONS: dict[int, Any] = {}  # threads -> speechmos DNSMOS with bounded sessions (per process)


def _dnsmos_model(threads: int) -> Any:
    if threads not in _DNSMOS_SESSIONS:
        import os

        import onnxruntime as ort
        from speechmos import dnsmos as sm

        class Bounded(sm.DNSMOS):
            # speechmos' __init__ with SessionOptions: its own passes none (= every core)
            def __init__(self, primary: str, p808: str) -> None:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                self.primary_model_path = primary
                self.onnx_sess = ort.InferenceSession(primary, opts, providers=["CPUExecutionProvider"])
                self.p808_onnx_sess = ort.InferenceSession(p808, opts, providers=["CPUExecutionProvider"])

        models = os.path.join(os.path.dirname(os.path.abspath(sm.__file__)), "dnsmos_models")
        # the files speechmos.dnsmos.run(x, 16000) loads for its default model_type="dnsmos"
        _DNSMOS_SESSIONS[threads] = Bounded(os.path.join(models, "sig_bak_ovr.onnx"),
                                            os.path.join(models, "model_v8.onnx"))
    return _DNSMOS_SESSIONS[threads]


def dnsmos(audio: Any, sr: int = 16000, threads: int = DNSMOS_THREADS) -> DnsmosScore:
    """DNSMOS P.835 of a 16 kHz clip (no reference needed).

    What speechmos does with the clip (dnsmos.py, as Microsoft's dnsmos_local.py): a clip
    shorter than 9.01 s is repeated (doubled until it is at least 9.01 s long, not padded
    with zeros); every 9.01 s window at 1 s hops is scored by the P.835 CNN (raw waveform)
    and the P.808 CNN (120-band log-mel), and the window scores are averaged. So a 1.5 s
    clip costs three windows, a 3 s clip two, a 10 s clip one. Samples must lie in [-1, 1]
    (speechmos raises otherwise): louder samples are clipped to [-1, 1], as writing the
    audio to a 16-bit WAV would. An empty clip or one with NaN/Inf gives NaN scores (an
    empty one would loop forever in speechmos).
    Cost measured here (1 thread, on 2 cores shared with other jobs): 0.4-0.8 s per 9 s
    window; the corpus' test clips (~2.5 s: 1-3 windows each) took 1.9 s per clip at load 2,
    ~8x PESQ + STOI + ESTOI + SI-SDR together (0.25 s); plus 3-6 s once per process
    (librosa's first mel filterbank).
    """
    if sr != 16000:
        raise ValueError(f"DNSMOS is defined for 16 kHz audio only, got sr={sr}")
    if int(threads) < 1:
        raise ValueError(f"DNSMOS threads must be at least 1, got {threads}")
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        nan = float("nan")
        return DnsmosScore(nan, nan, nan, nan)
    r = _dnsmos_model(int(threads))(np.clip(x, -1.0, 1.0), sr, False)
    return DnsmosScore(sig=float(r["sig_mos"]), bak=float(r["bak_mos"]), ovrl=float(r["ovrl_mos"]),
                       p808=float(r["p808_mos"]))


def dnsmos_provenance(threads: int = DNSMOS_THREADS) -> str:
    """What produced the DNSMOS figures, for reports: package version, author, threads."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("speechmos")
    except PackageNotFoundError:
        v = "?"
    return f"DNSMOS P.835 (speechmos {v}, Microsoft, onnxruntime {threads} thread{'' if threads == 1 else 's'})"


def score(ref: Any, est: Any, sr: int = 16000) -> dict[str, float]:
    """All metrics of `est` against `ref`: keys pesq_wb, stoi, estoi, si_sdr."""
    return {
        "pesq_wb": pesq_wb(ref, est, sr),
        "stoi": stoi(ref, est, sr),
        "estoi": estoi(ref, est, sr),
        "si_sdr": si_sdr(ref, est),
    }


def _score_item(ref: Any, noisy: Any, enhanced: Any, sr: int, with_dnsmos: bool = False) -> tuple[dict, dict]:
    n, e = score(ref, noisy, sr), score(ref, enhanced, sr)
    if with_dnsmos:
        n.update(dnsmos(noisy, sr).as_dict())
        e.update(dnsmos(enhanced, sr).as_dict())
    return n, e


def _row(meta: Mapping[str, Any], noisy: Mapping[str, float], enh: Mapping[str, float]) -> dict:
    row: dict[str, Any] = dict(meta)
    for m in (*METRICS, *DNSMOS_METRICS):
        if m not in noisy:
            continue
        row[f"noisy_{m}"] = noisy[m]
        row[f"enhanced_{m}"] = enh[m]
        row[f"delta_{m}"] = enh[m] - noisy[m]  # NaN propagates: no delta without both
    return row


def score_many(
    items: Sequence[tuple[Any, Any, Any, Mapping[str, Any]]],
    workers: int = 2,
    sr: int = 16000,
    dnsmos: bool = False,
) -> list[dict[str, Any]]:
    """Score noisy and enhanced audio of each (ref, noisy, enhanced, meta) item.

    Returns one row per item, in input order: the meta fields plus noisy_<metric>,
    enhanced_<metric> and delta_<metric> (enhanced - noisy) for each metric, and for each
    of DNSMOS_METRICS too when `dnsmos` (two CNNs per 9 s window: 1-2 s per short clip and
    condition here, ~8x the intrusive metrics). Items are spread over `workers` processes (PESQ is
    single-threaded C; each process runs DNSMOS with DNSMOS_THREADS onnxruntime threads);
    workers <= 1 scores in-process (easier to debug/profile).
    """
    reserved = {f"{c}_{m}" for c in CONDITIONS for m in (*METRICS, *DNSMOS_METRICS)}
    for _, _, _, meta in items:
        clash = reserved.intersection(meta)
        if clash:
            raise ValueError(f"meta keys clash with metric columns: {sorted(clash)}")
    if not items:
        return []

    workers = min(int(workers), len(items))
    if workers <= 1:
        results = [_score_item(ref, noisy, enh, sr, dnsmos) for ref, noisy, enh, _ in items]
    else:
        # spawn, not fork: the caller usually has torch (and its OpenMP/intra-op
        # threads) loaded, and forking a threaded process can deadlock the children.
        # Cost: ~1 s worker start-up, and a calling script needs a __main__ guard.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_score_item, ref, noisy, enh, sr, dnsmos) for ref, noisy, enh, _ in items]
            results = [f.result() for f in futures]
    return [_row(meta, n, e) for (_, _, _, meta), (n, e) in zip(items, results)]


def _metrics_in(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    # the intrusive metrics always; DNSMOS where it was scored
    return [*METRICS, *(m for m in DNSMOS_METRICS if any(f"noisy_{m}" in r for r in rows))]


def _columns(metrics: Sequence[str] = METRICS) -> list[str]:
    return [f"{c}_{m}" for m in metrics for c in CONDITIONS]


def _stats(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    mean: dict[str, float] = {}
    n_nan: dict[str, int] = {}
    for col in _columns(metrics):
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
    metrics = _metrics_in(rows)
    groups: dict[Hashable, list[Mapping[str, Any]]] = {}
    if group_by is not None:
        for r in rows:
            if group_by in r:
                groups.setdefault(r[group_by], []).append(r)
    return {
        "group_by": group_by,
        "overall": _stats(rows, metrics),
        "groups": {k: _stats(groups[k], metrics) for k in sorted(groups, key=_group_sort_key)},
    }


def _group_label(group_by: str | None, value: Any) -> str:
    if group_by == "snr_db":
        return f"SNR {value:g} dB" if isinstance(value, (int, float)) else f"SNR {value} dB"
    return f"{group_by} = {value}"


def _fmt(x: float, decimals: int) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{decimals}f}"


def _markdown_table(summary: Mapping[str, Any], metrics: Sequence[str]) -> list[str]:
    header = ["Condition"]
    align = ["---"]
    for m in metrics:
        label = _DISPLAY[m][0]
        header += [f"{label} noisy", f"{label} enhanced"]
        align += ["---:", "---:"]
    header.append("n")
    align.append("---:")

    entries = [("Overall", summary["overall"])]
    entries += [(_group_label(summary.get("group_by"), k), s) for k, s in summary["groups"].items()]

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for label, s in entries:
        cells = [label]
        for m in metrics:
            dec = _DISPLAY[m][1]
            cells += [_fmt(s["mean"][f"noisy_{m}"], dec), _fmt(s["mean"][f"enhanced_{m}"], dec)]
        cells.append(str(s["n"]))
        lines.append("| " + " | ".join(cells) + " |")

    overall = summary["overall"]
    notes = []
    for m in metrics:
        for c in ("noisy", "enhanced"):
            k = overall["n_nan"][f"{c}_{m}"]
            if k:
                notes.append(f"{_DISPLAY[m][0]} {c}: {k} of {overall['n']}")
    if notes:
        lines += ["", "Undefined values excluded from means: " + "; ".join(notes) + "."]
    return lines


def to_markdown(summary: Mapping[str, Any], title: str, dnsmos_note: str | None = None) -> str:
    """Render a `summarize` result as a Markdown section: a `### title` heading and a
    table with one row for overall and one per group, noisy vs enhanced for each
    metric, plus n. Cells with no finite value print "n/a"; excluded NaN values are
    listed in a note under the table so a mean over fewer clips is not mistaken for n.
    Where the summary holds DNSMOS columns they follow in a second table (non-intrusive,
    1-5), under `dnsmos_note` (default: `dnsmos_provenance()`).
    """
    lines = [f"### {title}", "", *_markdown_table(summary, METRICS)]
    scored = [m for m in DNSMOS_METRICS if f"noisy_{m}" in summary["overall"]["mean"]]
    if scored:
        lines += ["", (dnsmos_note or dnsmos_provenance()) + ": non-intrusive MOS (1-5, higher is better), "
                  "no clean reference used.", "", *_markdown_table(summary, scored)]
    return "\n".join(lines) + "\n"
