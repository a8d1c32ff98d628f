"""What each ingredient of the new training recipe adds (issue 14): augmentation, the teacher pool,
and the teacher's share of the loss, at equal steps from the same initial weights.

    python benchmarks/distill_ingredients.py [--model crn-compact] [--epochs 8] [--steps 100] [--items 60]

Arms (all `hwcompress train` with the same seed, batch, crop, LR schedule and number of steps):

1. `clean`: on-the-fly mixtures, clean targets (the recipe of the shipped default);
2. `clean+aug`: the same with speed / room / microphone augmentation (`--augment`);
3. `pool, w=0`: augmented mixtures from the DeepFilterNet3 teacher pool, clean targets only
   (`--teacher dfn3 --teacher-weight 0`): a fixed set of mixtures instead of fresh ones;
4. `pool, w=1`: the same mixtures, DeepFilterNet3's output as the only target;
5. `pool, w=0.5`: half teacher, half clean.

Each arm's best checkpoint (by the validation loss against clean speech, held-out synthetic
voices) is scored on the first --items mixtures of the real-speech test split (June, fr-CA,
never trained on): PESQ-WB, STOI, SI-SDR with BCa 95% bootstrap intervals of the gain over the
noisy input (DNSMOS left out for time). Runs under runs/ingredients/ are resumed or reused.

Writes benchmarks/distill_ingredients.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _common import bootstrap_ci as ci, run_logged  # benchmarks/, the script's own folder
from _reading import write_keeping_reading

ROOT = Path(__file__).resolve().parent.parent
HWC = [sys.executable, "-m", "hwcompress"]
ARMS = [
    ("clean", []),
    ("clean+aug", ["--augment"]),
    ("pool, w=0", ["--augment", "--teacher", "dfn3", "--teacher-weight", "0"]),
    ("pool, w=1", ["--augment", "--teacher", "dfn3", "--teacher-weight", "1"]),
    ("pool, w=0.5", ["--augment", "--teacher", "dfn3", "--teacher-weight", "0.5"]),
]
METRICS = [("pesq_wb", "PESQ-WB", 3), ("stoi", "STOI", 4), ("si_sdr", "SI-SDR dB", 2)]
DNSMOS = [("dnsmos_sig", "DNSMOS SIG", 2), ("dnsmos_bak", "BAK", 2), ("dnsmos_ovrl", "OVRL", 2)]


def slug(name: str) -> str:
    return name.replace(", ", "-").replace("=", "").replace("+", "-").replace(".", "")


def run(cmd: list[str], log: Path) -> None:
    run_logged(cmd, log, ROOT, ["hwcompress", *cmd[3:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="crn-compact")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100, help="steps per epoch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pool-items", type=int, default=3000)
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--dnsmos", action="store_true", help="also DNSMOS P.835 (about 3 min per arm for 60 items)")
    ap.add_argument("--arms", default=",".join(str(i) for i in range(len(ARMS))), help="indices of the arms to run")
    args = ap.parse_args()
    base = ROOT / "runs" / "ingredients" / f"{args.model}-e{args.epochs}-s{args.steps}-b{args.batch}"
    base.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = []
    for i in (int(a) for a in args.arms.split(",")):
        name, extra = ARMS[i]
        out = base / slug(name)
        common = ["--model", args.model, "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps),
                  "--batch", str(args.batch), "--seconds", "4", "--lr", str(args.lr), "--patience", "100",
                  "--seed", "0", "--device", "cpu", "--pool-items", str(args.pool_items)]
        t0 = time.time()
        if not (out / "done.json").is_file():
            run([*HWC, "train", *common, *extra, "--out", str(out)], base / f"{slug(name)}.log")
            (out / "done.json").write_text(json.dumps({"seconds": time.time() - t0}))
        ev = out / f"eval-test-{args.items}{'-dnsmos' if args.dnsmos else ''}.json"
        if not ev.is_file():
            run([*HWC, "eval", "--model", str(out / "model.pt"), "--set", "test", "--limit", str(args.items),
                 "--workers", "2", "--dnsmos" if args.dnsmos else "--no-dnsmos", "--json", str(ev)],
                base / f"{slug(name)}.log")
        rows = json.loads(ev.read_text())["rows"]
        history = json.loads((out / "history.json").read_text())
        entry = {"arm": name, "flags": " ".join(extra), "train_seconds": json.loads((out / "done.json").read_text())["seconds"],
                 "best_valid": min(h["valid_loss"] for h in history), "epochs": len(history), "n": len(rows)}
        for key, _, _ in METRICS + (DNSMOS if args.dnsmos else []):
            noisy = np.array([r[f"noisy_{key}"] for r in rows], float)
            enh = np.array([r[f"enhanced_{key}"] for r in rows], float)
            entry[key] = {"noisy": float(noisy.mean()), "enhanced": float(enh.mean()),
                          "gain": float((enh - noisy).mean()), "gain_ci95": ci(enh - noisy)}
        results.append(entry)
    write(results, args, base, time.time() - started)


def write(results: list[dict], args, base: Path, seconds: float) -> None:
    import torch

    cmd = (f"python benchmarks/distill_ingredients.py --model {args.model} --epochs {args.epochs} --steps {args.steps} "
           f"--batch {args.batch} --items {args.items}{' --dnsmos' if args.dnsmos else ''}")
    lines = ["# What each ingredient of the training recipe adds", "", f"Command: `{cmd}`", "",
             f"Measured {time.strftime('%Y-%m-%d')} on this machine ({platform.machine()}, {os.cpu_count()} cores, "
             f"torch {torch.__version__}, CPU); {seconds / 60:.0f} min including reused stages. Model `{args.model}` "
             f"trained from the same initial weights in every arm: {args.epochs} epochs x {args.steps} steps x batch "
             f"{args.batch} of 4 s crops, Adam lr {args.lr:g} halved on a validation plateau, seed 0. Scores: the best "
             f"checkpoint on the first {args.items} mixtures of the real-speech test split; gain = enhanced - noisy, "
             "[95% CI] BCa bootstrap over mixtures.", "",
             "| arm | train flags | PESQ-WB | gain [95% CI] | STOI | gain | SI-SDR dB | gain [95% CI] | "
             + ("DNSMOS SIG | BAK | OVRL | " if args.dnsmos else "") + "best valid loss | train s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | " + ("---: | ---: | ---: | " if args.dnsmos else "")
             + "---: | ---: |"]
    r0 = results[0]
    lines.append(f"| noisy input | - | {r0['pesq_wb']['noisy']:.3f} | - | {r0['stoi']['noisy']:.4f} | - | "
                 f"{r0['si_sdr']['noisy']:.2f} | - | "
                 + ("".join(f"{r0[k]['noisy']:.2f} | " for k, _, _ in DNSMOS) if args.dnsmos else "") + "- | - |")
    for r in results:
        p, s = r["pesq_wb"], r["si_sdr"]
        lines.append(f"| {r['arm']} | `{r['flags'] or '(none)'}` | {p['enhanced']:.3f} | {p['gain']:+.3f} "
                     f"[{p['gain_ci95'][0]:+.3f}, {p['gain_ci95'][1]:+.3f}] | {r['stoi']['enhanced']:.4f} | "
                     f"{r['stoi']['gain']:+.4f} | {s['enhanced']:.2f} | {s['gain']:+.2f} "
                     f"[{s['gain_ci95'][0]:+.2f}, {s['gain_ci95'][1]:+.2f}] | "
                     + ("".join(f"{r[k]['enhanced']:.2f} | " for k, _, _ in DNSMOS) if args.dnsmos else "")
                     + f"{r['best_valid']:.4f} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", f"Runs: {base.relative_to(ROOT)}/. The validation loss is against clean speech of held-out "
              "synthetic voices for every arm (so arms that learn the teacher's output score it against a target "
              "they were not trained on)."]
    text = "\n".join(lines) + "\n"
    write_keeping_reading(ROOT / "benchmarks" / "distill_ingredients.json", json.dumps(results, indent=1))
    print(write_keeping_reading(ROOT / "benchmarks" / "distill_ingredients.md", text))


if __name__ == "__main__":
    main()
