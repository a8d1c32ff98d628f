"""Evaluate a model on a fixed corpus set: PESQ-WB, STOI, ESTOI, SI-SDR of the noisy
input and the enhanced output, overall and per SNR."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hwcompress.progress import progress_bar

from hwcompress import metrics
from hwcompress.data.loader import eval_set
from hwcompress.enhance import enhance
from hwcompress.models.zoo import SEModel


def evaluate(model: SEModel, data: Path, set_name: str = "test", limit: int | None = None, workers: int = 2) -> dict:
    """Returns {"set", "n", "summary", "rows"}; rows keep per-mixture scores."""
    items = eval_set(data, set_name, limit)
    scored = []
    with progress_bar(transient=True) as progress:
        task = progress.add_task(f"enhancing {set_name}", total=len(items))
        for item in items:
            enhanced = enhance(model, item["noisy"])
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
