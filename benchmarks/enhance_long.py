"""A 10-minute recording through `hwcompress enhance`: old paths vs the new default, one run.

    python benchmarks/enhance_long.py [--data CORPUS] [--minutes 10] [--model default]

Makes a long noisy file by concatenating the corpus's test mixtures (real held-out speech in
babble, music, events and coloured noise, -5..15 dB SNR) with their clean references, then
enhances it, each way in a fresh process with one thread (torch.set_num_threads(1),
OMP_NUM_THREADS=1, onnxruntime intra-op threads 1):

- old streaming: the previous default, `enhance_streaming` hop by hop (torch);
- old whole: the previous `--whole`, one torch pass over every frame at once;
- new: the `hwcompress enhance` command as a user runs it, in its default (onnxruntime fp32,
  4 s chunks, state carried), with `--runtime torch`, with `--whole` (now 30 s passes) and
  with `--weights int8`.

For each: the enhancement's wall time (from the process itself: STFT, model, overlap-add; not
loading), the process's total wall time, its CPU time and peak RSS (os.wait4 on the child),
the real-time factor (enhancement wall / audio duration), the largest sample difference from
the old streaming output, and SI-SDR against the clean reference over the whole file. The
machine's load average is recorded next to each row: on a shared machine wall times include
waiting for a core, CPU times much less so. Writes benchmarks/enhance_long.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _reading import write_keeping_reading  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
SR = 16000


def child(mode: str, model_name: str, inp: str, out: str) -> None:
    """The old paths, exactly as they were before chunking (run in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    from hwcompress.audio import load_audio, save_audio
    from hwcompress.enhance import STFT, enhance_streaming
    from hwcompress.models.io import load_model
    from hwcompress.models.stft import istft, stft

    audio = load_audio(inp, SR)
    model = load_model(model_name)
    w0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        if mode == "old-stream":
            result = enhance_streaming(model, audio)
        else:  # the previous `enhance`: every frame in one pass
            x = torch.from_numpy(audio)[None]
            spec, _ = model(stft(x, STFT), model.initial_state(1))
            result = istft(spec, x.shape[-1], STFT)[0].numpy()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    save_audio(out, result, SR)
    print(json.dumps({"enhance_wall_s": wall, "enhance_cpu_s": cpu}))


def long_file(data: Path, minutes: float, folder: Path) -> tuple[Path, np.ndarray, int]:
    """noisy.wav of `minutes` (test mixtures one after another, 0.3 s gaps, repeated as
    needed), the matching clean signal, and how many distinct mixtures it holds."""
    import soundfile as sf

    from hwcompress.data.loader import eval_set

    items = eval_set(data, "test")
    target = int(minutes * 60 * SR)
    gap = np.zeros(int(0.3 * SR), np.float32)
    noisy, clean, total, i = [], [], 0, 0
    while total < target:
        item = items[i % len(items)]
        noisy += [item["noisy"], gap]
        clean += [item["clean"], gap]
        total += item["noisy"].size + gap.size
        i += 1
    noisy_a, clean_a = np.concatenate(noisy)[:target], np.concatenate(clean)[:target]
    peak = np.abs(noisy_a).max()
    if peak > 0.99:  # keep the 16-bit file unclipped
        noisy_a, clean_a = noisy_a * (0.99 / peak), clean_a * (0.99 / peak)
    path = folder / "noisy.wav"
    sf.write(path, noisy_a, SR, subtype="PCM_16")
    return path, clean_a, min(i, len(items))


def run_measured(cmd: list[str], timeout: float) -> dict:
    """Run `cmd` to completion (killed after `timeout` s); wall time, and CPU time and peak RSS of
    exactly this child from os.wait4 (RUSAGE_CHILDREN's maxrss is a maximum over all children)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, env=env, cwd=ROOT)
        killed = False
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline and not killed:
                proc.kill()
                killed = True
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        so.seek(0)
        se.seek(0)
        out, err = so.read(), se.read()
    return {"out": out, "err": err, "rc": proc.returncode, "wall_s": wall, "killed": killed,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="corpus (default: the built-in one)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--model", default="default")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds after which a path is killed")
    p.add_argument("--skip", default="", help="comma-separated labels not to run (e.g. 'old streaming')")
    p.add_argument("--table", type=Path, default=ROOT / "benchmarks" / "enhance_long.md")
    p.add_argument("--child", nargs=3, metavar=("MODE", "IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.model, args.child[1], args.child[2])
        return 0

    import onnxruntime
    import soundfile as sf
    import torch

    from hwcompress.data.corpus import ensure_default_corpus
    from hwcompress.metrics import si_sdr
    from hwcompress.models.cost import count_params, total_macs
    from hwcompress.models.io import load_model
    from hwcompress.profile.measure import host_cpu

    data = args.data or ensure_default_corpus()
    net = load_model(args.model)
    me = [sys.executable, str(Path(__file__).resolve())]
    hwc = [sys.executable, "-m", "hwcompress", "enhance"]
    paths = [
        ("new default", "`hwcompress enhance IN OUT` (onnxruntime fp32, 400-frame chunks)", lambda i, o: hwc + [i, o, "--model", args.model]),
        ("new torch", "`... --runtime torch` (400-frame chunks)", lambda i, o: hwc + [i, o, "--model", args.model, "--runtime", "torch"]),
        ("new whole", "`... --whole` (torch, 3000-frame passes)", lambda i, o: hwc + [i, o, "--model", args.model, "--whole"]),
        ("new int8", "`... --weights int8` (onnxruntime int8 weights, 400-frame chunks)", lambda i, o: hwc + [i, o, "--model", args.model, "--weights", "int8"]),
        ("old whole", "torch, every frame in one pass (previous --whole)", lambda i, o: me + ["--model", args.model, "--child", "old-whole", i, o]),
        ("old streaming", "torch, hop by hop (previous default)", lambda i, o: me + ["--model", args.model, "--child", "old-stream", i, o]),
    ]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwc-bench-enhance-") as tmp:
        noisy, clean, n_items = long_file(data, args.minutes, Path(tmp))
        seconds = clean.size / SR
        outputs: dict[str, np.ndarray] = {}
        for label, what, cmd in paths:
            if label in skip:
                continue
            out = Path(tmp) / f"{label.replace(' ', '-')}.wav"
            print(f"{label}: running", file=sys.stderr, flush=True)
            r = run_measured(cmd(str(noisy), str(out)), args.timeout)
            row = {"label": label, "what": what, **{k: r[k] for k in ("rc", "wall_s", "cpu_s", "peak_rss_mib",
                                                                       "killed", "load_before", "load_after")}}
            if r["rc"] == 0 and out.is_file():
                if label.startswith("old"):
                    row["enhance_wall_s"] = json.loads(r["out"].strip().splitlines()[-1])["enhance_wall_s"]
                else:  # "... in 41.2 s, real-time factor ..." (the command's own line)
                    row["stdout"] = r["out"].strip()
                    row["enhance_wall_s"] = float(r["out"].split(" s, real-time factor")[0].rsplit(" in ", 1)[1])
                outputs[label] = sf.read(out, dtype="float32")[0]
            else:
                row["error"] = (r["err"].strip().splitlines() or ["?"])[-1][:200]
            rows.append(row)
            print(f"{label}: {json.dumps({k: v for k, v in row.items() if k != 'stdout'}, default=float)}",
                  file=sys.stderr, flush=True)
        noisy_sdr = si_sdr(clean, sf.read(noisy, dtype="float32")[0])
        # the reference every output is compared with: the old default (hop by hop) if it finished
        ref_label = "old streaming" if "old streaming" in outputs else "old whole"
        for row in rows:
            if row["label"] in outputs:
                got = outputs[row["label"]]
                row["si_sdr_db"] = si_sdr(clean, got)
                ref = outputs.get(ref_label)
                row["max_diff"] = float(np.abs(got - ref).max()) if ref is not None else None
            if row.get("stdout"):
                row["stdout"] = row["stdout"].replace(tmp, "$TMP")

    cmd_line = "python benchmarks/enhance_long.py" + (f" --data {args.data}" if args.data else "") + \
        (f" --minutes {args.minutes:g}" if args.minutes != 10 else "") + \
        (f" --model {args.model}" if args.model != "default" else "") + (f" --skip '{args.skip}'" if args.skip else "") + \
        (f" --timeout {args.timeout:g}" if args.timeout != 1800 else "")
    lines = [f"# A {args.minutes:g}-minute recording through `hwcompress enhance` (measured here, one run)", "",
             f"Command: `{cmd_line}`", "",
             f"Machine: {host_cpu()}, {os.cpu_count()} cores (shared: see the load average column). Python "
             f"{platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. "
             f"Model `{args.model}` ({count_params(net)} params, {total_macs(net)} MACs per 10 ms hop). "
             f"Threads: 1 everywhere (torch.set_num_threads(1), OMP_NUM_THREADS=1, onnxruntime intra-op 1, "
             f"`--threads 1`, the command's default). Input: {seconds:.0f} s of 16 kHz audio, {n_items} distinct "
             f"test mixtures of `{data.name}` one after another (SI-SDR of the noisy file {noisy_sdr:.2f} dB).", "",
             "Each path ran once in a fresh process. *enhance s*: wall time of the enhancement as the process "
             "measured it (STFT, model, overlap-add; loading, export and writing not included); "
             "*RTF* = enhance s / audio s; *process s*, *CPU s* and *peak RSS*: the whole child process "
             "(os.wait4), so they include Python start, imports, loading the model and, for onnxruntime, "
             f"exporting it; *max diff*: largest |sample| difference from the {ref_label} output (16-bit "
             "files, 1 LSB = 3.1e-5); *SI-SDR*: against the clean reference over the whole file.", "",
             "| path | what | enhance s | RTF | process s | CPU s | peak RSS MiB | max diff | SI-SDR dB | load avg (1 min) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            status = f"killed after {r['wall_s']:.0f} s" if r["killed"] else f"failed (rc {r['rc']}): {r['error']}"
            lines.append(f"| {r['label']} | {r['what']} | {status} | - | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                         f"{r['peak_rss_mib']:.0f} | - | - | {r['load_before']:.1f} -> {r['load_after']:.1f} |")
            continue
        diff = "-" if r.get("max_diff") is None else f"{r['max_diff']:.2g}"
        lines.append(f"| {r['label']} | {r['what']} | {r['enhance_wall_s']:.1f} | {r['enhance_wall_s'] / seconds:.3f} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | {diff} | {r['si_sdr_db']:.2f} | "
                     f"{r['load_before']:.1f} -> {r['load_after']:.1f} |")
    outs = [r["stdout"] for r in rows if r.get("stdout")]
    if outs:
        lines += ["", "The command's own output lines:", "", "```", *outs, "```"]
    write_keeping_reading(args.table, "\n".join(lines) + "\n")
    print(args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
