"""Quality of a `hwcompress fit --target cortex-m7` result as the microcontroller would run it
(issue 18): the shipped TFLite Micro file (int8 weights, int16 activations) scored hop by hop in
the TFLM interpreter on the real-speech test split, beside the fully int8 alternative of the same
.hwc (what the int16 activations buy), the fit's torch .hwc, the dense model and the model's
raspberrypi4 fit. The fit's own report.md follows the table.

    .venv/bin/python benchmarks/fit_cortex_m7.py --fit runs/m7/fit-default \\
        --pi4-md benchmarks/fit_raspberrypi4.md --out benchmarks/fit_cortex_m7.md
    .venv/bin/python benchmarks/fit_cortex_m7.py --fit runs/m7/fit-nsnet2 \\
        --pi4 runs/fit-nsnet2-pi4 --out benchmarks/fit_cortex_m7_nsnet2.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._reading import write_keeping_reading  # noqa: E402

METRICS = ("pesq_wb", "stoi", "si_sdr")


def _q(m: dict) -> str:
    return f"{m['pesq_wb']:.3f} | {m['stoi']:.3f} | {m['si_sdr']:.2f}"


def pi4_from_md(path: Path) -> dict:
    """The first result row of a committed raspberrypi4 fit report (its quality columns)."""
    text = path.read_text()
    row = re.search(r"^\| [\d.]+ \| ([\d.]+) \| (\w+) \| \w+ \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([-\d.]+) \|$",
                    text, re.M)
    if not row:
        raise SystemExit(f"{path}: no fit result row found")
    return {"latency_ms": float(row.group(1)), "latency_source": row.group(2), "bytes": int(row.group(3)),
            "quality": dict(zip(METRICS, map(float, row.groups()[4:]))), "source": str(path)}


def pi4_from_dir(path: Path) -> dict:
    r = json.loads((path / "report.json").read_text())
    res = r["results"][0]
    return {"latency_ms": res["latency_ms"], "latency_source": res["latency_source"],
            "bytes": res["runtime_artifact_bytes"], "quality": res["quality"]["compressed"],
            "source": f"{path}/report.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", type=Path, required=True, help="output folder of a cortex-m7 fit")
    ap.add_argument("--pi4", type=Path, help="output folder of the same model's raspberrypi4 fit")
    ap.add_argument("--pi4-md", type=Path, help="or its committed report (benchmarks/fit_raspberrypi4.md)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from hwcompress.evaluate import evaluate_artifact
    from hwcompress.export import get_backend
    from hwcompress.export.check import check_parity
    from hwcompress.export.probe import runtime_version
    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.models.io import load_model
    from hwcompress.profile.mcu import predict_tflm
    from hwcompress.targets import load_target

    report = json.loads((args.fit / "report.json").read_text())
    res = report["results"][0]
    target = load_target(report["target"])
    q = res["quality"]
    n = q["n"]
    data = Path(report["settings"]["data"]) if report["settings"].get("data") else ensure_default_corpus()
    shipped = Path(res["runtime_artifact"]["path"])
    model = load_model(str(args.fit / "model.hwc"), template=load_model(report["model"])).eval()
    lut = bool(res.get("lut_layers"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        from hwcompress.data.loader import eval_set

        audio = [row["noisy"] for row in eval_set(data, "valid", report["settings"].get("sensitivity_items", 8))]
        alt = get_backend("tflite-micro").export(model, Path(tmp), activations=8, lut=lut, calibration_audio=audio)
        export_s = time.time() - t0
        for label, path in (("TFLM file as shipped: int8 weights, int16 activations (16x8)", shipped),
                            ("the same .hwc fully int8 (int8 activations)", alt)):
            session = get_backend("tflite-micro").load(path)
            parity = check_parity(model, path, weights="int8", mode="stream", enforce=False, backend="tflite-micro",
                                  session=session)
            t0 = time.time()
            ev = evaluate_artifact(path, data, "test", limit=n, dnsmos=False)
            mean = ev["summary"]["overall"]["mean"]
            rows.append({"label": label, "bytes": path.stat().st_size, "arena": session.arena_bytes,
                         "ms": predict_tflm(path.read_bytes(), target)["latency_ms"], "snr": parity.snr_db,
                         "quality": {m: mean[f"enhanced_{m}"] for m in METRICS}, "n": ev["n"],
                         "eval_s": time.time() - t0})
    pi4 = pi4_from_dir(args.pi4) if args.pi4 else pi4_from_md(args.pi4_md) if args.pi4_md else None
    cmd = " ".join(["benchmarks/fit_cortex_m7.py", "--fit", str(args.fit),
                    *(["--pi4", str(args.pi4)] if args.pi4 else []), *(["--pi4-md", str(args.pi4_md)] if args.pi4_md else []),
                    "--out", str(args.out)])
    lines = [f"# {report['model']} on cortex-m7: quality as TFLite Micro runs it", "",
             f"Command: `.venv/bin/python {cmd}` (the fit: `{report['command']}`). TFLite Micro "
             f"{runtime_version('tflite-micro')} host interpreter; every latency of the TFLM files is PREDICTED per op "
             f"(profile/mcu.py, targets/{target.name}.toml [cycles]); arenas are measured in the interpreter. Quality: "
             f"the first {n} mixtures of the real-speech test split (unseen speaker), each file run hop by hop with "
             f"its state carried; PESQ-WB, STOI, SI-SDR (dB) of the enhanced output against the clean speech.", "",
             "| model | form | file B | arena B | latency ms | parity vs .hwc dB | PESQ-WB | STOI | SI-SDR dB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| noisy input | - | - | - | - | - | {_q(q['noisy'])} |",
             f"| dense {report['model']} | torch fp32 | {res['dense_fp32_bytes']} | - | - | - | {_q(q['baseline'])} |"]
    if pi4:
        lines.append(f"| raspberrypi4 fit | LiteRT int8 ({pi4['source']}) | {pi4['bytes']} | - | {pi4['latency_ms']:.3f} "
                     f"{pi4['latency_source']} | - | {_q(pi4['quality'])} |")
    lines.append(f"| cortex-m7 fit | torch .hwc | {res['size_bytes']} | - | - | - | {_q(q['compressed'])} |")
    for r in rows:
        lines.append(f"| cortex-m7 fit | {r['label']} | {r['bytes']} | {r['arena']} | {r['ms']:.3f} predicted | "
                     f"{r['snr']:.1f} | {_q(r['quality'])} |")
    lines += ["", f"Budgets: {target.latency_budget_ms:g} ms per hop, {target.storage_budget_bytes} B flash, "
                  f"{target.memory_budget_bytes} B arena. The int8 alternative was exported in {export_s:.0f} s with the "
                  f"shipped file's LUT setting ({'LUT' if lut else 'plain int8'} weights) and, like the fit's export, "
                  f"activation ranges calibrated on {len(audio)} noisy validation mixtures; scoring took "
                  + ", ".join(f"{r['eval_s']:.0f} s" for r in rows) + ".", "",
              "## The fit's report (report.md)", ""]
    fit_md = (args.fit / "report.md").read_text().splitlines()
    lines += [("#" + ln if ln.startswith("#") else ln) for ln in fit_md]
    text = write_keeping_reading(args.out, "\n".join(lines) + "\n")
    print(text[:4000])


if __name__ == "__main__":
    main()
