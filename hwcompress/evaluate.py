"""Evaluate a model on a fixed corpus set: PESQ-WB, STOI, ESTOI, SI-SDR of the noisy
input and the enhanced output, overall and per SNR. The model is a torch network or an
exported streaming artifact run hop by hop in its own runtime (what a device would hear)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hwcompress.progress import progress_bar

from hwcompress import metrics
from hwcompress.data.loader import eval_set
from hwcompress.enhance import enhance
from hwcompress.models.zoo import SEModel


def evaluate(model: SEModel, data: Path, set_name: str = "test", limit: int | None = None, workers: int = 2) -> dict:
    """Returns {"set", "n", "summary", "rows"}; rows keep per-mixture scores."""
    return evaluate_with(lambda audio: enhance(model, audio), data, set_name, limit, workers)


def evaluate_artifact(path: Path, data: Path, set_name: str = "test", limit: int | None = None,
                      workers: int = 2, threads: int = 1) -> dict:
    """Evaluate an exported streaming artifact (.onnx, OpenVINO .xml, .tflite) in its runtime:
    quantized runtimes change the numbers, so this scores the file that would ship."""
    from hwcompress.export import backend_for_artifact, get_backend, run_stream

    backend = backend_for_artifact(path)
    session = get_backend(backend).load(Path(path), threads=threads)
    result = evaluate_with(lambda audio: run_stream(session, audio), data, set_name, limit, workers)
    result["runtime"] = backend
    return result


def evaluate_with(enhance_fn: Callable[[np.ndarray], np.ndarray], data: Path, set_name: str = "test",
                  limit: int | None = None, workers: int = 2) -> dict:
    items = eval_set(data, set_name, limit)
    scored = []
    with progress_bar(transient=True) as progress:
        task = progress.add_task(f"enhancing {set_name}", total=len(items))
        for item in items:
            enhanced = enhance_fn(item["noisy"])
            meta = {k: v for k, v in item.items() if k not in ("noisy", "clean")}
            scored.append((item["clean"], item["noisy"], enhanced, meta))
            progress.advance(task)
    rows = metrics.score_many(scored, workers=workers)
    return {"set": set_name, "n": len(rows), "summary": metrics.summarize(rows, "snr_db"), "rows": rows}


def write_results(result: dict, out_json: Path | None, out_md: Path | None, title: str) -> str:
    markdown = metrics.to_markdown(result["summary"], title)
    for path, text in ((out_json, json.dumps(result, indent=1, default=float)), (out_md, markdown + "\n")):
        if path:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
    return markdown
