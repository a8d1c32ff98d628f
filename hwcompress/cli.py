"""Command-line interface: parsing, calling into the library, printing. No logic lives here.

Adding a command group: write a `typer.Typer()` (in this file or next to the code it drives)
and register it below with `app.add_typer(my_app, name="my-command")`; a single command is
`@app.command()`. Raise HwcError (or a subclass) for user mistakes: main() turns it into one
`error: ...` line and exit code 2. Commands print and return None.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from hwcompress.errors import HwcError
from hwcompress.targets import Target, list_targets, load_target
from hwcompress.workdir import check_writable

try:
    # recent typer ships its own copy of click; its usage errors are not click's classes
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # older typer on top of click, where typer.Abort is click's Abort
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

PROG = "hwcompress"

app = typer.Typer(
    name=PROG,
    help="Hardware-aware compression of speech-enhancement models.",
    no_args_is_help=True,
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _console() -> Console:
    # built per call so tests that swap sys.stdout (CliRunner, capsys) see the output;
    # markup off because file contents like "[1]" or "[bold]" must print literally
    return Console(file=sys.stdout, highlight=False, markup=False)


def _print_json(obj: Any) -> None:
    # plain echo, not rich: JSON must stay byte-exact for pipes and tests
    typer.echo(json.dumps(obj, indent=2))


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:g} B"


# ---------------------------------------------------------------- targets

targets_app = typer.Typer(help="List and inspect hardware targets (targets/*.toml).", add_completion=False)
app.add_typer(targets_app, name="targets")


def _targets_table(targets: list[Target]) -> Table:
    # borderless so the whole table fits 80 columns (rich's width when piped)
    t = Table(title="targets", caption="budgets: latency in ms per 10 ms hop, runtime memory, model storage",
              box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    # short headers and no wrapping: names are copied into `targets show`, sizes read at a glance
    for col in ("name", "arch", "runtime"):
        t.add_column(col, no_wrap=True)
    for col in ("threads", "latency", "memory", "storage"):
        t.add_column(col, justify="right", no_wrap=True)
    for tg in targets:
        t.add_row(
            tg.name, tg.arch, tg.runtime, str(tg.threads), f"{tg.latency_budget_ms:g}",
            fmt_bytes(tg.memory_budget_bytes), fmt_bytes(tg.storage_budget_bytes),
        )
    return t


@targets_app.callback(invoke_without_command=True)
def targets_list(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List registered targets with their budgets."""
    if ctx.invoked_subcommand is not None:
        return
    targets = list_targets()
    if json_:
        _print_json([tg.to_dict() for tg in targets])
    else:
        _console().print(_targets_table(targets))


@targets_app.command("show")
def targets_show(
    name: Annotated[str, typer.Argument(help="Registered target name or path to a target .toml file.")],
    json_: JsonOpt = False,
) -> None:
    """Show one target with every performance parameter and its provenance."""
    tg = load_target(name)
    if json_:
        _print_json(tg.to_dict())
        return
    con = _console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    rows = [
        ("name", tg.name), ("description", tg.description), ("arch", tg.arch), ("cpu", tg.cpu),
        ("runtime", f"{tg.runtime} {tg.runtime_version or ''}".strip()), ("threads", str(tg.threads)),
        ("latency budget", f"{tg.latency_budget_ms:g} ms per 10 ms hop"),
        ("memory budget", f"{fmt_bytes(tg.memory_budget_bytes)} ({tg.memory_budget_bytes} B)"),
        ("storage budget", f"{fmt_bytes(tg.storage_budget_bytes)} ({tg.storage_budget_bytes} B)"),
        ("budget provenance", tg.budget_provenance),
        ("emulation", tg.emulation or "-"), ("source", str(tg.source)),
    ]
    for k, v in rows:
        head.add_row(k, v)
    con.print(head)
    perf = Table(title="perf parameters")
    perf.add_column("parameter")
    perf.add_column("value", justify="right")
    perf.add_column("unit")
    perf.add_column("provenance")
    for key, p in tg.perf.items():
        # byte counts are ints and must print exactly; :g would show 1.04858e+06
        value = str(p.value) if isinstance(p.value, int) else f"{p.value:g}"
        perf.add_row(key, value, p.unit, p.provenance)
    con.print(perf)


# ---------------------------------------------------------------- data

data_app = typer.Typer(help="Build and locate the offline speech + noise corpus.", add_completion=False)
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    out: Annotated[Optional[Path], typer.Option(help="Corpus folder (default: the shared cache).")] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same corpus.")] = 0,
    clean_dir: Annotated[Optional[list[Path]], typer.Option(help="Your own clean speech WAVs (speaker = name before '_').")] = None,
    noise_dir: Annotated[Optional[list[Path]], typer.Option(help="Your own noise WAVs.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the corpus exists.")] = False,
    corpus_version: Annotated[int, typer.Option(help="2 (default): v1 plus more training speakers, voices and noise; 1: the corpus the models before issue 14 were trained on. Valid and test are the same in both.")] = 2,
) -> None:
    """Build the deterministic offline corpus (no network)."""
    from hwcompress.data.corpus import build_corpus, default_corpus_dir

    if corpus_version not in (1, 2):
        raise HwcError(f"--corpus-version {corpus_version}: 1 or 2")
    out = out or default_corpus_dir(seed, corpus_version)
    for d in (clean_dir or []) + (noise_dir or []):
        if not d.is_dir():
            raise HwcError(f"{d}: not a folder")
    if (out / "manifest.json").exists() and not force:
        typer.echo(f"corpus exists: {out} (use --force to rebuild)")
        return
    check_writable(out, "dir")
    from hwcompress.workdir import OutputLock

    with OutputLock(out):  # a second build into the same folder would delete this one's work
        manifest = build_corpus(out, seed=seed, clean_dirs=clean_dir, noise_dirs=noise_dir, version=corpus_version)
    table = Table(title=f"corpus {out}")
    for col in ("split", "speakers", "utterances", "speech (min)", "noise files"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, info in manifest["splits"].items():
        table.add_row(split, str(len(info["speakers"])), str(info["utterances"]),
                      f"{info['speech_seconds'] / 60:.1f}", str(len(info["noise_files"])))
    _console().print(table)


@data_app.command("path")
def data_path(seed: Annotated[int, typer.Option()] = 0, corpus_version: Annotated[int, typer.Option()] = 2) -> None:
    """Print where the default corpus lives."""
    from hwcompress.data.corpus import default_corpus_dir

    typer.echo(str(default_corpus_dir(seed, corpus_version)))


@data_app.command("example")
def data_example(
    min_seconds: Annotated[float, typer.Option(help="Shortest acceptable recording, seconds.")] = 4.0,
    set_name: Annotated[str, typer.Option("--set", help="Evaluation set: test, test-synth or valid.")] = "test",
    data: Annotated[Optional[Path], typer.Option("--data", help="Corpus folder (default: the shared cache for --seed).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    json_: JsonOpt = False,
) -> None:
    """Print the noisy WAV of the first mixture of a set (in id order) lasting --min-seconds or more."""
    from hwcompress.data.example import first_long_mixture

    if data is None:  # corpus.py pulls in scipy.signal (seconds): only for the default location
        from hwcompress.data.corpus import default_corpus_dir

        data = default_corpus_dir(seed)
    ex = first_long_mixture(data, set_name, min_seconds)
    if json_:
        _print_json({"set": ex.set_name, "id": ex.id, "noisy": str(ex.noisy), "clean": str(ex.clean),
                     "seconds": ex.seconds, "snr_db": ex.snr_db, "noise_kind": ex.noise_kind, "speaker": ex.speaker,
                     "seconds_source": f"mix/{ex.set_name}.json (speech length written by hwcompress data build)"})
    else:
        typer.echo(str(ex.noisy))


def _corpus(data: Optional[Path]) -> Path:
    from hwcompress.data.corpus import ensure_default_corpus

    return data if data is not None else ensure_default_corpus()


ModelOpt = Annotated[str, typer.Option("--model", help="Model file (.pt/.hwc), zoo preset, 'default', or your own model's code: path/to/net.py:build or package.module:build.")]
ModelWeightsOpt = Annotated[Optional[Path], typer.Option("--model-weights", metavar="FILE", help="Weights of a model given as code (--model net.py:build): a state_dict .pt (weights_only), a .safetensors, or a .pt hwcompress saved of that model.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Corpus folder (default: built-in corpus).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where torch runs: auto (a CUDA GPU when there is one, else the CPU, said on stderr), cpu, cuda or cuda:N.")]


def _one_process(command: str) -> None:
    """compress and fit run as one process: a torchrun launch of several is refused in one line."""
    from hwcompress.device import torchrun_ranks

    if torchrun_ranks() is not None:
        raise HwcError(f"{command} runs as one process (one device); data-parallel training under torchrun is "
                       "`hwcompress train`: launch this command without torchrun")


def reject_artifact(model: str, command: str) -> None:
    """Call before load_model in a command that needs the torch model: an exported runtime
    artifact (.onnx, .xml, .tflite, an IR's .bin) gets one line saying what the command takes
    and which commands take the artifact, instead of an unpickling error."""
    from hwcompress.export import is_artifact

    if is_artifact(model):
        raise HwcError(f"{model}: {command} accepts a model (.pt, .hwc, a zoo preset or 'default'), not an exported "
                       f"runtime artifact; for an exported artifact use `hwcompress eval --model {model}` (quality) "
                       f"or `hwcompress profile --model {model}` (latency)")


# ---------------------------------------------------------------- train / eval / enhance


@app.command()
def train(
    model: ModelOpt = "crn",
    model_weights: ModelWeightsOpt = None,
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="Run folder: model.pt, last.pt (resume), history.json.")] = Path("runs/train"),
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 150,
    batch: Annotated[int, typer.Option(min=1)] = 8,
    seconds: Annotated[float, typer.Option(min=0.5, help="Crop length of each training example.")] = 4.0,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    patience: Annotated[int, typer.Option(min=1, help="Stop after this many epochs without improvement.")] = 4,
    max_minutes: Annotated[float, typer.Option(min=0.0, help="Stop cleanly after this wall time (0: no limit).")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt if present.")] = True,
    device: DeviceOpt = "auto",
    teacher: Annotated[Optional[str], typer.Option(help="Distil from a pretrained model's outputs: dfn3 (DeepFilterNet3, its C runtime) or nsnet2, computed once on a pool of fixed mixtures and cached in the corpus folder (docs/training.md).")] = None,
    teacher_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="With --teacher: the loss is this x (against the teacher) + the rest x (against clean speech).")] = 0.5,
    pool_items: Annotated[int, typer.Option(min=1, help="With --teacher: mixtures in the pool (each --seconds long).")] = 2000,
    pool_workers: Annotated[int, typer.Option(min=1, help="With --teacher: processes that compute missing pool items.")] = 1,
    augment: Annotated[bool, typer.Option(help="Speed, room (pyroomacoustics RIR) and microphone-channel augmentation of every training mixture.")] = False,
    loss: Annotated[str, typer.Option(help="Spectral loss: mag+complex (compressed magnitudes and complex spectra) or mag (magnitudes only: for a model that scales the noisy spectrum by a real gain, e.g. NSNet2; docs/training.md).")] = "mag+complex",
) -> None:
    """Train a model (a zoo preset, or continue from a file) with on-the-fly mixing. Launched by
    torchrun with several processes (`torchrun --nproc_per_node N -m hwcompress train ...`) it
    trains data-parallel: one GPU per process with --device cuda/auto, gloo between CPU processes
    with --device cpu; rank 0 validates and writes OUT (docs/gpu.md)."""
    from contextlib import nullcontext

    from hwcompress.device import describe, resolve_device, torchrun_ranks
    from hwcompress.models.io import load_model
    from hwcompress.train import LOSSES, TrainConfig, data_parallel
    from hwcompress.train import train as run_train

    reject_artifact(model, "train")
    if loss not in LOSSES:
        raise HwcError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    check_writable(out, "dir")
    for name, value in (("lr", lr), ("seconds", seconds), ("max-minutes", max_minutes)):
        if not math.isfinite(value):
            raise HwcError(f"--{name} must be finite, got {value:g}")
    ranks = torchrun_ranks()
    dev = resolve_device(device, local_rank=ranks.local if ranks else None, say=ranks is None or ranks.rank == 0)
    net = load_model(model, model_weights)
    cfg = TrainConfig(epochs=epochs, steps_per_epoch=steps_per_epoch, batch=batch, seconds=seconds, lr=lr,
                      patience=patience, seed=seed, max_minutes=max_minutes, distill_from=teacher or "",
                      distill_weight=teacher_weight, pool_items=pool_items, augment=augment, loss=loss)
    if teacher is not None:
        from hwcompress.teachers import teacher as known_teacher

        known_teacher(teacher)
    else:
        given = [f"--{n}" for n, v, d in (("teacher-weight", teacher_weight, 0.5), ("pool-items", pool_items, 2000),
                                          ("pool-workers", pool_workers, 1)) if v != d]
        if given:
            raise HwcError(f"{', '.join(given)}: used only with --teacher (dfn3 or nsnet2)")
    corpus = _corpus(data)
    with data_parallel(ranks, dev) if ranks is not None else nullcontext():
        state = run_train(net, corpus, out, cfg, resume=resume, device=dev, pool_workers=pool_workers)
    if ranks is None or ranks.rank == 0:
        where = describe(dev) + (f", {ranks.world} data-parallel processes" if ranks is not None else "")
        typer.echo(f"best valid loss {state['best']:.4f} after {state['epoch']} epochs: {out / 'model.pt'} "
                   f"(trained on {where})")


@app.command("wise-ft")
def wise_ft_cmd(
    model: ModelOpt,
    start: Annotated[str, typer.Option("--start", help="The model training started from (a preset, a named model such as nsnet2-wide, or a file).")],
    out: Annotated[Path, typer.Option(help="Where to write the ensemble (.pt).")],
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the fine-tuned model (1: it alone; 0: the start).")] = 0.5,
    model_weights: ModelWeightsOpt = None,
) -> None:
    """Weight-space ensemble of a fine-tuned model (--model) and the model its training started
    from (--start): alpha x fine-tuned + (1 - alpha) x start, weight by weight (WiSE-FT,
    docs/training.md)."""
    from hwcompress.models.io import load_model, save_model
    from hwcompress.train import derived_from, wise_ft
    from hwcompress.workdir import model_digest

    for spec, what in ((model, "--model"), (start, "--start")):
        reject_artifact(spec, "wise-ft")
        if spec.endswith(".hwc"):
            raise HwcError(f"{spec}: {what} must be a dense model (.pt, a preset or a named model), not a compressed "
                           ".hwc: averaging would undo its pruning and codebooks")
    if out.suffix != ".pt":
        raise HwcError(f"--out {out}: the ensemble is written as a .pt file")
    check_writable(out, "file")
    tuned, origin = load_model(model, model_weights), load_model(start)
    if not tuned.meta.get("trained"):
        raise HwcError(f"{model}: not a trained model file (its training writes model.pt); WiSE-FT averages a "
                       "fine-tuned model with its start")
    merged = wise_ft(tuned, origin, alpha)
    meta = {**derived_from(origin), **tuned.meta, "wise_ft": {"alpha": alpha, "finetuned": str(model), "start": start,
                                      "start_digest": model_digest(origin)}}
    save_model(out, merged, meta)
    typer.echo(f"{out}: {alpha:g} x {model} + {1 - alpha:g} x {start} (WiSE-FT)")


@app.command("eval")
def eval_cmd(
    model: ModelOpt = "default",
    model_weights: ModelWeightsOpt = None,
    data: DataOpt = None,
    set_name: Annotated[str, typer.Option("--set", help="valid, test (real speech, unseen speaker) or test-synth.")] = "test",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N mixtures.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write full results (per mixture) here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write the Markdown table here.")] = None,
    workers: Annotated[int, typer.Option(min=1)] = 2,
    dnsmos: Annotated[bool, typer.Option(help="Also DNSMOS P.835 SIG/BAK/OVRL and P.808 (Microsoft's non-intrusive CNN, 1 onnxruntime thread per worker): 1-2 s per clip and condition, ~8x the other metrics together.")] = True,
    activations: Annotated[Optional[str], typer.Option(help="With an exported artifact: run its activations at this precision (OpenVINO: f32, bf16 where the CPU has it, f16; the others: their one). Default: the runtime's f32.")] = None,
) -> None:
    """PESQ-WB, STOI, ESTOI, SI-SDR and DNSMOS P.835 of noisy and enhanced audio, overall and per SNR.
    MODEL may also be an exported streaming artifact (.onnx, .xml, .tflite): it then runs hop
    by hop in its runtime, so quantized weights are scored as they would ship; `deepfilternet3-native`
    is DeepFilterNet3 in its own C runtime (the reference its torch import, `deepfilternet3`, matches)."""
    from hwcompress.evaluate import REFERENCES, evaluate, evaluate_artifact, evaluate_reference, write_results
    from hwcompress.export import backend_for_artifact, is_artifact
    from hwcompress.models.io import load_model

    for path in (json_out, markdown):
        if path is not None:
            check_writable(path, "file")
    if model in REFERENCES and not Path(model).exists():
        if model_weights is not None or activations is not None:
            raise HwcError(f"{model}: runs in its authors' own runtime with its own weights; --model-weights and "
                           "--activations do not apply")
        result = evaluate_reference(model, _corpus(data), set_name, limit, workers, dnsmos=dnsmos)
    elif is_artifact(model):
        backend_for_artifact(Path(model))  # an IR's .bin: "give its .xml", before any corpus work
        if model_weights is not None:
            raise HwcError(f"{model}: an exported artifact carries its own weights; --model-weights is for a model given as code")
        if not Path(model).is_file():
            raise HwcError(f"{model}: no such artifact file")
        from hwcompress.export import get_backend

        get_backend(backend_for_artifact(Path(model))).load(Path(model), precision=activations)  # before the corpus work
        result = evaluate_artifact(Path(model), _corpus(data), set_name, limit, workers, dnsmos=dnsmos,
                                   precision=activations)
    else:
        if activations is not None:
            raise HwcError("--activations runs an exported artifact at that precision; a model given as code runs in torch (f32)")
        result = evaluate(load_model(model, model_weights), _corpus(data), set_name, limit, workers, dnsmos=dnsmos)
    result["model"] = model
    typer.echo(write_results(result, json_out, markdown, f"{model} on {set_name} ({result['n']} mixtures)"))


@app.command()
def enhance(
    inp: Annotated[Path, typer.Argument(metavar="IN.wav", help="Noisy audio, any sample rate (first channel).")],
    out: Annotated[Path, typer.Argument(metavar="OUT.wav", help="Enhanced 16 kHz audio (never the input file).")],
    model: ModelOpt = "default",
    model_weights: ModelWeightsOpt = None,
    runtime: Annotated[str, typer.Option(help="Chunked path: onnxruntime (the model exported to a session) or torch.")] = "onnxruntime",
    weights: Annotated[str, typer.Option(help="onnxruntime weights: fp32 (the model's own numbers) or int8 (faster, approximate).")] = "fp32",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for the model.")] = 1,
    whole: Annotated[bool, typer.Option(help="torch, the utterance in one pass (inputs over 30 s in 30 s passes).")] = False,
    hop_by_hop: Annotated[bool, typer.Option(help="torch, one 10 ms hop at a time, as a device runs it (slow).")] = False,
) -> None:
    """Enhance a recording: 4 s chunks of frames with the model state carried across them (the same
    samples as hop-by-hop streaming, in bounded memory), with progress and the real-time factor."""
    import tempfile

    import torch

    from hwcompress.audio import load_audio, save_audio
    from hwcompress import enhance as enh
    from hwcompress.models.io import load_model

    enh.check_output_not_input(inp, out)
    check_writable(out, "file")
    if whole and hop_by_hop:
        raise HwcError("--whole and --hop-by-hop exclude each other")
    if runtime not in ("onnxruntime", "torch"):
        raise HwcError(f"unknown runtime {runtime!r}: choose onnxruntime or torch")
    if weights not in ("fp32", "int8"):
        raise HwcError(f"unknown weights {weights!r}: choose fp32 or int8")
    if weights != "fp32" and (runtime != "onnxruntime" or whole or hop_by_hop):
        raise HwcError("--weights int8 needs the chunked onnxruntime path (no --runtime torch, --whole, --hop-by-hop)")
    reject_artifact(model, "enhance")
    audio = load_audio(inp, 16000)
    torch.set_num_threads(threads)
    from hwcompress.evaluate import REFERENCES

    reference = model in REFERENCES and not Path(model).exists()  # a pretrained model in its authors' runtime
    if reference:
        if model_weights is not None or weights != "fp32" or whole or hop_by_hop:
            raise HwcError(f"{model}: runs hop by hop in its authors' own runtime with its own weights; "
                           "--model-weights, --weights, --whole and --hop-by-hop do not apply")
    else:
        net = load_model(model, model_weights)
        if callable(getattr(net, "analyze", None)) and not (whole or hop_by_hop):
            # its own front end (DeepFilterNet3: 48 kHz STFT, resampled): torch, in passes of frames
            if weights != "fp32":
                raise HwcError(f"{model}: has its own front end and runs in torch here; --weights int8 does not "
                               "apply (export it and run the artifact instead)")
            whole = True
    if reference:
        import importlib

        module, func, load, how = REFERENCES[model]
        getattr(importlib.import_module(module), load)()  # loading is not part of the timing
        fn = getattr(importlib.import_module(module), func)
        done = enh.timed(lambda tick: fn(audio, 16000), audio.size)
    elif whole or hop_by_hop:
        how = f"torch {'whole' if whole else 'hop by hop'}"
        fn = enh.enhance if whole else enh.enhance_streaming
        done = enh.timed(lambda tick: fn(net, audio, progress=tick), audio.size)
    else:
        if runtime == "onnxruntime":
            # Why onnxruntime: measured here (default CRN, 1 thread, 400-frame chunks of 6 s of noise,
            # process CPU time, best of 3 on the shared 2-core machine) the exported whole-utterance
            # graph took 3.0 ms per frame and the same chunks in torch 3.8 ms, for the same samples
            # (fp32, ~1e-6 apart); exporting costs ~2 s once per run. Both are bound by reading the
            # two 16 MB LSTM recurrent matrices every frame. int8 weights took 1.4 ms but differ from
            # the fp32 output (~19 dB SNR), so they are opt-in. 10-minute figures: benchmarks/enhance_long.md.
            from hwcompress.export import get_backend

            backend = get_backend("onnxruntime")
            with tempfile.TemporaryDirectory(prefix="hwc-enhance-") as tmp:
                session = backend.load(backend.export(net, Path(tmp), "whole", weights=weights), threads=threads)
            run, state = session.run, None
        else:
            run, state = enh.torch_runner(net)
        how = f"{runtime} {weights}, {enh.CHUNK_FRAMES}-frame chunks"
        done = enh.timed(lambda tick: enh.enhance_chunked(run, audio, state, progress=tick), audio.size)
    try:  # atomic: a failed write leaves no partial file (and never touches the input)
        save_audio(out, done.audio, 16000)
    except OSError as exc:
        raise HwcError(f"{out}: cannot write the enhanced audio ({exc.strerror or type(exc).__name__})") from None
    typer.echo(f"{out}: {done.seconds:.2f} s enhanced with {model} in {done.wall_s:.1f} s, real-time factor "
               f"{done.rtf:.3f} (wall time of the enhancement / audio duration, loading not included; "
               f"{how}, {threads} thread{'s' if threads > 1 else ''})")


# ---------------------------------------------------------------- compress


@app.command()
def compress(
    out: Annotated[Path, typer.Option(help="Output .hwc artifact.")],
    model: ModelOpt = "default",
    model_weights: ModelWeightsOpt = None,
    sparsity: Annotated[float, typer.Option(help="Fraction of weights (or of units with --structured) to prune.")] = 0.5,
    codebook: Annotated[int, typer.Option(help="Codebook size K per layer (2..256).")] = 16,
    structured: Annotated[bool, typer.Option(help="Remove whole units/channels (physically shrinks the model).")] = False,
    config: Annotated[Optional[Path], typer.Option(help="TOML of per-layer overrides: [layers.\"rnn.0\"] sparsity/codebook/structured/grid.")] = None,
    grid: Annotated[int, typer.Option(help="Hold every codebook on the symmetric integer grid of this runtime weight width (4: at most 14 nonzero centroids, q in [-7, 7]; 8: at most 254), one step per layer, so that LiteRT, onnxruntime and OpenVINO exports reproduce the .hwc exactly; 0: free k-means centroids (the paper's).")] = 0,
    data: DataOpt = None,
    l1: Annotated[float, typer.Option(help="L1 weight during the regularisation stage.")] = 0.0,
    group_lasso: Annotated[float, typer.Option(help="Group-lasso weight during the regularisation stage.")] = 0.0,
    regularize_steps: Annotated[int, typer.Option(min=0)] = 0,
    prune_steps: Annotated[int, typer.Option(min=0, help="Fine-tuning steps while sparsity ramps up.")] = 200,
    cluster_steps: Annotated[int, typer.Option(min=0, help="Centroid fine-tuning steps.")] = 100,
    init: Annotated[str, typer.Option(help="Codebook init: linear, density or random.")] = "linear",
    batch: Annotated[int, typer.Option(min=1)] = 8,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-4,
    finetune_target: Annotated[str, typer.Option(help="Fine-tuning target: teacher (distil: the dense model's output on the same noisy batch), clean (the clean speech), or mix (0.5/0.5).")] = "teacher",
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
) -> None:
    """Prune, cluster and fine-tune a model into a .hwc artifact (Tan & Wang pipeline)."""
    from hwcompress.compress.pipeline import CompressConfig, check_global, read_layer_config
    from hwcompress.compress.pipeline import compress as run_compress
    from hwcompress.models.io import load_model

    cfg = CompressConfig(sparsity=sparsity, codebook=codebook, structured=structured,
                         layers=read_layer_config(config) if config else {}, regularize_steps=regularize_steps,
                         l1=l1, group_lasso=group_lasso, prune_steps=prune_steps, cluster_steps=cluster_steps,
                         init=init, batch=batch, lr=lr, finetune_target=finetune_target, grid=grid)
    check_global(cfg)
    if out.suffix != ".hwc":
        raise HwcError(f"{out}: the output must be a .hwc file")
    check_writable(out, "file")
    reject_artifact(model, "compress")
    _one_process("compress")
    from hwcompress.device import resolve_device

    dev = resolve_device(device)
    net = load_model(model, model_weights)
    report = run_compress(net, cfg, _corpus(data), out, log=lambda m: typer.echo(m, err=True), device=dev)
    report["model"] = model
    if json_:
        _print_json(report)
        return
    table = Table(title=f"{out}: {fmt_bytes(report['size_bytes'])} ({report['size_bytes']} B), "
                        f"{report['compression_ratio']:.1f}x smaller than fp32 ({fmt_bytes(report['dense_fp32_bytes'])})")
    for col in ("tensor", "params", "sparsity", "K", "bits/weight", "bytes"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for row in report["tensors"]:
        params = row["params"]
        sparsity_pct = 100 * (1 - row["nonzeros"] / params) if params else 0.0
        table.add_row(row["name"], str(params), f"{sparsity_pct:.0f}%", str(row.get("K") or "-"),
                      f"{row['bits_per_weight']:.2f}", str(row["bytes"]))
    _console().print(table)
    macs = report["macs_per_frame"]
    typer.echo(f"MACs per frame: {macs['before']} -> {macs['after']}")
    typer.echo(f"fine-tuning target: {report['finetune_target']}, on {report['torch_device']}")


# ---------------------------------------------------------------- fit


def _budget_list(text: Optional[str]) -> list[float]:
    if text is None:
        return []
    parts = [x.strip() for x in text.split(",")]
    if not any(parts):
        raise HwcError("--budget-ms is empty")
    if not all(parts):  # "2,,3", "2," and ",2" are typos, not a list of two budgets
        raise HwcError(f"--budget-ms takes numbers separated by single commas (e.g. 2,4,8), got {text!r}")
    try:
        values = [float(x) for x in parts]
    except ValueError:
        raise HwcError(f"--budget-ms takes numbers separated by commas (e.g. 2,4,8), got {text!r}") from None
    for v in values:
        check_budget_value(v, "latency budget", "ms")
    return values


def check_budget_value(v: float, what: str, unit: str) -> None:
    # nan compares false and 1e309 parses as inf: both must be refused before a whole fit runs
    if not (v > 0 and math.isfinite(v)):
        raise HwcError(f"{what} must be a finite positive number, got {v:g} {unit}")


@app.command()
def fit(
    target: Annotated[str, typer.Option(help="Target name or .toml path; several separated by commas (e.g. raspberrypi4,x86-openvino,generic-onnx): one run shares the sensitivity analysis, fits each (target, budget) as its own task, and writes each target's report in OUT/<target>/ plus a combined report with a Pareto table per target in OUT.")],
    budget_ms: Annotated[Optional[str], typer.Option(help="Latency budget(s) per 10 ms hop, e.g. 8 or 2,4,8 (default: the target's).")] = None,
    budget_kb: Annotated[Optional[float], typer.Option(help="Runtime artifact size budget in KiB (default: the target's storage budget).")] = None,
    budget_mb_ram: Annotated[Optional[float], typer.Option(help="Runtime RAM budget in MiB (default: the target's memory budget): the peak a fresh process adds loading and running the artifact, measured where the target is this machine (the search models it from the dense and most pruned models' measured peaks), else predicted as artifact + state bytes; on tflite-micro the measured tensor arena.")] = None,
    model: ModelOpt = "default",
    model_weights: ModelWeightsOpt = None,
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="Run folder: report.json/.md/.html, model.hwc, export/ (resumable).")] = Path("runs/fit"),
    prune_steps: Annotated[int, typer.Option(min=0, help="Fine-tuning steps while structured sparsity ramps up.")] = 120,
    cluster_steps: Annotated[int, typer.Option(min=0, help="Centroid fine-tuning steps.")] = 40,
    eval_items: Annotated[int, typer.Option(min=1, help="Test mixtures scored for the report.")] = 40,
    emulate: Annotated[bool, typer.Option(help="Functional run on the emulated target CPU when it cannot be measured here.")] = True,
    measure_runs: Annotated[int, typer.Option(min=10, help="Timed hops per latency measurement (the final one takes at least 500).")] = 300,
    measure_rounds: Annotated[int, typer.Option(min=1, help="Fresh-process rounds per latency measurement; the slowest round's median is the figure (one that holds in every timing mode seen: 2-thread OpenVINO on a VM lands in modes up to 1.8x apart, benchmarks/idle_core.md).")] = 1,
    allocation: Annotated[str, typer.Option(help="search (per layer), or uniform (one ratio and K=16 everywhere: the baseline).")] = "search",
    weights: Annotated[str, typer.Option(help="Runtime weights: int8 (every backend), int4 (OpenVINO: the matmuls 4-bit, nncf INT4_ASYM; LiteRT: 4-bit fully-connected; onnxruntime: MatMulNBits; convolutions int8 on all three) or mixed (LiteRT, onnxruntime, OpenVINO: 4 bits for the recurrent and linear layers the search clusters to K <= 16, held on the 4-bit grid; 8 for the rest). On LiteRT, onnxruntime and OpenVINO every codebook is held on its runtime width's integer grid, so the shipped file holds the .hwc weights exactly.")] = "int8",
    finetune_target: Annotated[str, typer.Option(help="Fine-tuning target: teacher (distil from the dense model), clean, or mix (0.5/0.5).")] = "teacher",
    dnsmos: Annotated[bool, typer.Option(help="Score DNSMOS P.835 in the report (about 2 s per clip and condition here).")] = True,
    codebook_tolerance: Annotated[float, typer.Option(min=0.0, help="What the per-layer codebooks may cost, summed over layers: the fine-tuning objective's increase (distance to the dense model's output by default) relative to the dense model's clean validation loss.")] = 0.01,
    activations: Annotated[Optional[str], typer.Option(help="Runtime activation precision, one the target lists (targets/*.toml `activations`; x86-openvino: f32 or bf16). Every timed run and parity check uses it, and with other than f32 the quality is scored on the shipped file run at it. Default: the target's first.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Run the tasks (sensitivities, calibrations, each (target, budget)) on a local Ray runtime with this many task slots (needs the ray extra). Default: serially in this process, no Ray.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Run the tasks on the existing Ray cluster whose head is at HOST:PORT (every node needs this hwcompress and must see --out and --data at the same paths).")] = None,
    torch_threads: Annotated[int, typer.Option(min=0, help="torch threads of each task (with Ray also the CPUs each task asks for; 0: torch's default serially, 1 per task with Ray). The same value gives the same results serially and in parallel.")] = 0,
    host: HostOpt = None,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    remote_python: RemotePythonOpt = "python3",
    pool_file: PoolOpt = None,
    device: Annotated[str, typer.Option("--device", help="Where torch runs the sensitivity scoring, the compression fine-tuning and the torch quality scoring: auto (a CUDA GPU when there is one, else the CPU, said on stderr), cpu, cuda or cuda:N. Exports, runtime timings and the runtime artifact stay on the CPU.")] = "auto",
    json_: JsonOpt = False,
) -> None:
    """Find per-layer sparsity and codebook sizes that meet the target's budgets, then compress, export, verify and report.
    With --host/--pool (LiteRT targets) every latency is timed on those devices: the target becomes measurable."""
    from hwcompress.search.fit import FitConfig
    from hwcompress.search.fit import fit as run_fit

    reject_artifact(model, "fit")
    _one_process("fit")
    from hwcompress.device import resolve_device

    resolve_device(device)  # before the output folder is locked and anything loads (the fit keeps the spelling)
    targets = [t.strip() for t in target.split(",")]
    if not all(targets):
        raise HwcError(f"--target takes names separated by single commas (e.g. raspberrypi4,generic-onnx), got {target!r}")
    if workers is not None and workers < 1:
        raise HwcError(f"--workers must be at least 1 (leave it out to run serially without Ray), got {workers}")
    if workers is not None and ray_address is not None:
        raise HwcError("--workers starts a local Ray runtime; with --ray-address the cluster's CPUs decide: give one of the two")
    budgets = _budget_list(budget_ms)
    if budget_kb is not None:
        check_budget_value(budget_kb, "size budget", "KiB")
    if budget_mb_ram is not None:
        check_budget_value(budget_mb_ram, "RAM budget", "MiB")
    cfg = FitConfig(target=target, out=out, budgets_ms=budgets,
                    budget_bytes=int(budget_kb * 1024) if budget_kb is not None else None, model=model,
                    budget_ram_bytes=int(budget_mb_ram * 2**20) if budget_mb_ram is not None else None,
                    model_weights=model_weights, data=data,
                    prune_steps=prune_steps, cluster_steps=cluster_steps, eval_items=eval_items, emulate=emulate,
                    measure_runs=measure_runs, measure_rounds=measure_rounds, allocation=allocation, weights=weights,
                    finetune_target=finetune_target, dnsmos=dnsmos, codebook_tolerance=codebook_tolerance,
                    activations=activations, torch_threads=torch_threads, device=device)
    pool = _device_pool(host, port, identity, remote_python, pool_file)  # checked here, in seconds
    if len(targets) > 1 or workers is not None or ray_address is not None:
        from hwcompress.search.multi import fit_many

        spec = None if pool is None else {"host": host, "port": port, "identity": identity,
                                          "python": remote_python, "pool_file": pool_file}
        report = fit_many(cfg, targets, engine="serial" if workers is None and ray_address is None else "ray",
                          workers=workers, address=ray_address, log=lambda m: typer.echo(m, err=True), pool=spec)
        if len(targets) > 1:
            if json_:
                _print_json(report)
            else:
                _multi_table(report, out)
            return
    else:
        report = run_fit(cfg, log=lambda m: typer.echo(m, err=True), pool=pool)
    if json_:
        _print_json(report)
        return
    from hwcompress.search.report import summary_rows

    r0 = report["results"][0]
    q = r0["quality"]
    table = Table(title=f"{report['model']} on {report['target']} ({r0['runtime']}, {r0['threads']} thread(s))",
                  caption=f"quality: test split, {q['n']} mixtures; dense model PESQ-WB {q['baseline']['pesq_wb']:.2f} "
                          f"STOI {q['baseline']['stoi']:.3f}; noisy {q['noisy']['pesq_wb']:.2f} / {q['noisy']['stoi']:.3f}",
                  box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    for col in ("budget", "latency ms", "source", "met", "runtime B", ".hwc B", "PESQ", "STOI"):
        table.add_column(col, justify="left" if col in ("source", "met") else "right", no_wrap=True)
    for s in summary_rows(report):
        table.add_row(f"{s['budget_ms']:g}", f"{s['latency_ms']:.3f}", s["latency_source"], "yes" if s["budget_met"] else "NO",
                      str(s["runtime_bytes"]), str(s["hwc_bytes"]), f"{s['pesq_wb']:.2f}", f"{s['stoi']:.3f}")
    _console().print(table)
    if pool is not None:
        typer.echo(pool.summary())
    typer.echo(f"torch (sensitivity, fine-tuning, torch scoring) ran on {report['torch_device']}")
    typer.echo(f"report: {out / 'report.md'} (also report.json, report.html)")


def _multi_table(report: dict, out: Path) -> None:
    from hwcompress.search.multi_report import pareto_rows

    e = report["engine"]
    table = Table(title=f"{report['model']} on {len(report['targets'])} targets ({e['kind']}"
                        f"{', ' + str(e['workers']) + ' workers' if e.get('workers') else ''}; {report['seconds']:.0f} s)",
                  caption="* on the target's Pareto front (no faster and better budget); latency: measured here, "
                          "predicted (roofline) or per-op cycles, as `how` says",
                  box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    for col in ("target", "budget", "latency ms", "how", "met", "", "runtime B", "PESQ", "STOI"):
        table.add_column(col, justify="left" if col in ("target", "how", "met", "") else "right", no_wrap=True)
    for t in report["targets"]:
        pt = report["per_target"][t]
        if pt["error"]:
            table.add_row(t, "-", "-", "-", "NO", "", "-", "-", "-")
            continue
        for r in sorted(pareto_rows(pt["budgets"]), key=lambda r: r["budget_ms"]):
            table.add_row(t, f"{r['budget_ms']:g}", f"{r['latency_ms']:.3f}", r["latency_source"],
                          "yes" if r["budget_met"] else "NO", "*" if r["pareto"] else "", str(r["runtime_bytes"]),
                          f"{r['pesq_wb']:.2f}", f"{r['stoi']:.3f}")
        for u in pt.get("unmet") or []:
            table.add_row(t, f"{u['budget_ms']:g}", "-", "-", "NO", "", "-", "-", "-")
    _console().print(table)
    for t in report["targets"]:
        pt = report["per_target"][t]
        for why in ([pt["error"]] if pt["error"] else [u["why"] for u in pt.get("unmet") or []]):
            typer.echo(f"not fitted: {t}: {why}", err=True)
    typer.echo(f"report: {out / 'report.md'} (also report.json, report.html; each target's in {out}/<target>/)")


# ---------------------------------------------------------------- export


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the artifacts (written atomically).")],
    format_: Annotated[str, typer.Option("--format", help="onnx, openvino, tflite or tflm (TFLite Micro).")],
    model: ModelOpt = "default",
    model_weights: ModelWeightsOpt = None,
    mode: Annotated[Optional[str], typer.Option(help="stream (one hop, state in/out), whole (utterance) or both [default: both; stream for tflm, which runs hop by hop only].")] = None,
    weights: Annotated[Optional[str], typer.Option(help="fp32; int8 in the runtime's native int8 form; int4 (OpenVINO: the matmuls 4-bit, nncf INT4_ASYM in groups of 128; LiteRT: 4-bit fully-connected; onnxruntime: MatMulNBits; convolutions int8 on all three); mixed (LiteRT, onnxruntime, OpenVINO: 4 bits for the layers whose weights lie on the 4-bit integer grid, as compress --grid 4 and the fit leave them, stored exactly; 8 for the rest) [default: for a .hwc on onnx/tflite/openvino, mixed when every layer lies on an integer grid (as the fit and compress --grid leave it), else fp32, said on stderr; fp32 otherwise; int8 for tflm, whose 16x8 form is its only one].")] = None,
    int4_layers: Annotated[Optional[str], typer.Option(help="--weights mixed: the layers to store at 4 bits, comma-separated (names as `hwcompress predict` lists them) [default: those whose weights lie on the 4-bit grid]. A layer kind the runtime does not run at 4 bits is refused.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="T of a whole-utterance .tflite (LiteRT fixes T), and of an onnx/openvino one whose recurrent cells are exported as matmuls (OpenVINO integer weights, onnxruntime int4/mixed: they unroll over T).")] = 100,
    check: Annotated[bool, typer.Option(help="Run each artifact against torch; one beyond its tolerance fails the export.")] = True,
    min_snr_db: Annotated[Optional[float], typer.Option(help="Parity tolerance: least SNR (dB) of the runtime output vs torch (default per weights: fp32 60, int8 25, int4 20).")] = None,
    calibration_data: Annotated[Optional[Path], typer.Option(help="tflm: a corpus folder (hwcompress data build) whose first 8 noisy validation mixtures calibrate the integer activation ranges [default: synthetic speech-like spectra; fit uses its corpus].")] = None,
    json_: JsonOpt = False,
) -> None:
    """Export a model (.pt, .hwc, preset or default) to a runtime artifact, checked against torch:
    an artifact whose output departs from torch beyond the tolerance fails (exit 2, one line)."""
    from hwcompress.export import canonical_name, capabilities
    from hwcompress.export.check import export_checked
    from hwcompress.models.io import load_model

    backend = canonical_name(format_)
    caps = capabilities(backend)
    micro = caps.microcontroller
    mode = mode or ("both" if "whole" in caps.modes else caps.modes[0])
    hwc_default = weights is None and Path(model).suffix == ".hwc"
    weights = weights or caps.default_weights
    if mode not in ("stream", "whole", "both"):
        raise HwcError(f"unknown export mode {mode!r}: choose stream, whole or both")
    if min_snr_db is not None and not check:
        raise HwcError("--min-snr-db is the parity tolerance: it needs --check")
    if min_snr_db is not None and not -1e3 < min_snr_db < 1e3:  # nan fails too: it would fail every export
        raise HwcError(f"--min-snr-db must be a finite number of dB, got {min_snr_db:g}")
    modes = ["stream", "whole"] if mode == "both" else [mode]
    check_writable(out, "dir")
    reject_artifact(model, "export")
    net = load_model(model, model_weights)
    if getattr(net, "stream_only", None) and "whole" in modes:
        if mode == "whole":
            raise HwcError(f"{model}: no whole-utterance export: {net.stream_only}; use --mode stream")
        modes = ["stream"]
        typer.echo(f"mode: stream only ({model}: {net.stream_only})", err=True)
    if hwc_default:  # a .hwc's codebooks decide: the narrowest widths that hold them exactly
        from hwcompress.export import default_weights

        weights, why = default_weights(backend, net)
        typer.echo(f"weights: {weights} (default for a .hwc on {backend}: {why}; --weights chooses)", err=True)
    from hwcompress.models.user import is_user_spec, spec_stem

    stem = spec_stem(model) if is_user_spec(model) else Path(model).stem if Path(model).suffix in (".pt", ".hwc") else model
    options = {}
    if calibration_data is not None:
        if not micro:
            raise HwcError("--calibration-data calibrates TFLite Micro's integer activations: it needs --format tflm")
        from hwcompress.data.loader import eval_set

        options["calibration_audio"] = [row["noisy"] for row in eval_set(calibration_data, "valid", 8)]
    if int4_layers is not None:
        if weights != "mixed":
            raise HwcError(f"--int4-layers names the layers --weights mixed stores at 4 bits (weights here: {weights})")
        options["int4_layers"] = [x.strip() for x in int4_layers.split(",") if x.strip()]
    rows = export_checked(net, backend, out, modes, weights=weights, frames=frames, stem=stem, check=check,
                          min_snr_db=min_snr_db, options=options)
    if json_:
        _print_json({"model": model, "artifacts": [r.to_json() for r in rows]})
        return
    table = Table(title=f"{model} -> {backend} {rows[0].runtime_version or ''}".rstrip(),
                  caption="max|diff| and SNR: runtime output vs torch on 50 speech-like hops (whole: one utterance); "
                          "every artifact shown is within its tolerance (min SNR)",
                  box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    for col in ("artifact", "mode", "weights", "bytes", "max|diff|", "SNR dB", "min SNR"):
        table.add_column(col, justify="left" if col in ("artifact", "mode", "weights") else "right", no_wrap=True)
    for r in rows:
        par = r.parity
        table.add_row(Path(r.path).name, r.mode, r.weights, str(r.bytes),
                      f"{par['max_abs_diff']:.1e}" if par else "-", f"{par['snr_db']:.1f}" if par else "-",
                      f"{par['min_snr_db']:g}" if par else "not checked")
    _console().print(table)


# ---------------------------------------------------------------- predict


def _timeable(net: Any, model: str) -> Any:
    """`net`, unless it brings its own front end, whose frames the timing probes do not make yet."""
    if callable(getattr(net, "analyze", None)):
        raise HwcError(f"{model}: profile times hops of hwcompress's 161-bin STFT, not yet a model with its own front "
                       "end (DeepFilterNet3's 481 bins); predict gives its roofline, eval scores it")
    return net


@app.command()
def predict(
    target: Annotated[str, typer.Option(help="Target name or .toml path.")],
    model: ModelOpt = "default",
    model_weights: ModelWeightsOpt = None,
    weight_bits: Annotated[int, typer.Option(help="32 for fp32 weights, 8 for int8 weights.")] = 32,
    json_: JsonOpt = False,
) -> None:
    """Predicted (roofline, not measured) per-hop latency of a model on a target."""
    from hwcompress.models.io import load_model
    from hwcompress.profile.latency_model import predict_latency

    if weight_bits not in (8, 32):
        raise HwcError(f"--weight-bits must be 8 or 32, got {weight_bits}")
    reject_artifact(model, "predict")
    tg = load_target(target)
    result = {**predict_latency(load_model(model, model_weights), tg, weight_bits).to_json(), "model": model}
    if json_:
        _print_json(result)
        return
    table = Table(title=f"{model} on {tg.name}: {result['latency_ms']:.2f} ms per hop (PREDICTED, {tg.runtime}, "
                        f"{tg.threads} thread(s); budget {tg.latency_budget_ms:g} ms)")
    for col in ("layer", "kind", "params", "MACs/frame", "compute ms", "memory ms", "ms", "bound"):
        table.add_column(col, justify="left" if col in ("layer", "kind", "bound") else "right")
    for r in result["layers"]:
        table.add_row(r["name"], r["kind"], str(r["params"]), str(r["macs_per_frame"]), f"{r['compute_ms']:.3f}",
                      f"{r['memory_ms']:.3f}", f"{r['ms']:.3f}", r["bound"])
    _console().print(table)
    typer.echo(result["how"])


# ---------------------------------------------------------------- profile


HostOpt = Annotated[Optional[str], typer.Option(help="Measure on these devices over SSH: [user@]address[:port], several separated by commas (a device pool: the measurements spread over them, one at a time per device; a host that cannot be reached is skipped and reported).")]
PortOpt = Annotated[Optional[int], typer.Option(help="SSH port of the --host entries that give none.")]
IdentityOpt = Annotated[Optional[Path], typer.Option(help="SSH private key for --host.")]
RemotePythonOpt = Annotated[str, typer.Option(help="Python on the --host devices that has ai-edge-litert or tflite-runtime.")]
PoolOpt = Annotated[Optional[Path], typer.Option("--pool", metavar="FILE", help="Device pool file (TOML): [[host]] tables with address, port, identity, python and the targets / arch each serves (README, Latency figures).")]


def _device_pool(host: Optional[str], port: Optional[int], identity: Optional[Path], remote_python: str,
                 pool_file: Optional[Path]):
    from hwcompress.profile.pool import build_pool

    return build_pool(host, port, identity, remote_python, pool_file, log=lambda m: typer.echo(m, err=True))


@app.command()
def profile(
    target: Annotated[str, typer.Option(help="Target name or .toml path.")],
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Model file (.pt/.hwc), zoo preset, 'default', your own model's code (net.py:build), or an exported streaming artifact; several --model with --host/--pool are timed on the pool's devices at once.")] = None,
    model_weights: ModelWeightsOpt = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed streaming hops (after the warm-up).")] = 500,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed hops first.")] = 50,
    backend: Annotated[Optional[str], typer.Option(help="Run with this backend instead of the target's runtime.")] = None,
    top: Annotated[int, typer.Option(min=1, help="Per-layer rows to show.")] = 10,
    out: Annotated[Optional[Path], typer.Option(help="Keep the exported artifact in this folder.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="fp32 (default); int8 in the runtime's native int8 form; int4 (OpenVINO: nncf INT4_ASYM, groups of 128). Not with an exported artifact: it keeps its own.")] = None,
    sweep: Annotated[bool, typer.Option(help="Build profiles/<target>.json: time a spread of model shapes here and fit the latency model.")] = False,
    rounds: Annotated[int, typer.Option(min=1, help="With --sweep: interleaved timing rounds per model, a fresh process each (the median is kept; the committed tables used 7, OpenVINO 9: a shared host needs several).")] = 5,
    host: HostOpt = None,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    remote_python: RemotePythonOpt = "python3",
    pool_file: PoolOpt = None,
    activations: Annotated[Optional[str], typer.Option(help="Activation precision, one the target lists (targets/*.toml `activations`; x86-openvino: f32, bf16). Default: the target's first.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Per-hop streaming latency on this machine (measured), or predicted when the target is another CPU.
    MODEL may also be an exported streaming artifact (.onnx, OpenVINO .xml, .tflite): that very file is
    timed in its runtime with the target's threads (what benchmark_app would be compared with).
    With --host/--pool the LiteRT file is timed on those devices over SSH, named in every figure."""
    from hwcompress.models.io import load_model
    from hwcompress.profile.measure import measure_local, profile_artifact

    from hwcompress.export import check_mode, is_artifact

    models = model or ["default"]
    pooled = host is not None or pool_file is not None
    if len(models) > 1 and (not pooled or sweep):
        raise HwcError("several --model are timed at once on a device pool (--host a,b or --pool FILE), without "
                       "--sweep; here give one")
    model = models[0]
    artifacts = [m for m in models if is_artifact(m)]
    if artifacts:
        given = [flag for flag, v in (("--weights", weights), ("--out", out), ("--model-weights", model_weights))
                 if v is not None]
        given += ["--sweep"] if sweep else []
        if given:
            raise HwcError(f"{artifacts[0]}: profile times an exported artifact as it is; the options {', '.join(given)} "
                           "are for a model that profile exports (.pt, .hwc, a zoo preset or 'default')")
    artifact = is_artifact(model)
    weights = weights or "fp32"
    check_mode("stream", weights)
    tg = load_target(target)
    if activations is not None and (pooled or sweep):
        raise HwcError("--activations applies to a timing here; not with --host, --pool or --sweep")
    if backend is not None and pooled:
        raise HwcError("--backend chooses a runtime here; pool devices run LiteRT (.tflite) with the device runner")
    pool = _device_pool(host, port, identity, remote_python, pool_file)
    if pool is not None and not sweep:
        from hwcompress.profile.pool import profile_models

        done = profile_models(models, tg, pool, runs=runs, warmup=warmup, weights=weights, out_dir=out,
                              model_weights=model_weights)
        if json_:
            # one model: its fields also at the top level, as `fit` does with one budget
            _print_json({**(done["results"][0] if len(done["results"]) == 1 else {}), **done})
            return
        for r in done["results"]:
            d = r["device"]
            typer.echo(f"{r['model']} on {tg.name} at {d['host']} ({d['machine']}, {d['cpu']}): MEASURED median "
                       f"{r['median_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms over {r['runs']} hops; {r['runtime']} "
                       f"{r['runtime_version']}, {r['threads']} thread(s), {r['weights']} weights, artifact "
                       f"{r['artifact']['bytes']} B; budget {tg.latency_budget_ms:g} ms")
        for note in dict.fromkeys(r["warning"] for r in done["results"] if r.get("warning")):
            typer.echo(f"note: {note}")
        typer.echo(pool.summary())
        return
    if sweep:
        from hwcompress.profile.table import sweep as run_sweep
        from hwcompress.profile.table import write_table

        table = run_sweep(tg, runs=min(runs, 300), repeats=rounds, pool=pool)
        path = write_table(table)
        if json_:
            _print_json({**table, **({"pool": pool.state()} if pool is not None else {})})
            return
        t = Table(title=f"{path}: {table['provenance']}", box=box.SIMPLE_HEAD, show_edge=False)
        for col in ("model", "weights", "params", "measured ms", "fitted ms", "error"):
            t.add_column(col, justify="left" if col in ("model", "weights") else "right", no_wrap=True)
        for r in table["rows"]:
            t.add_row(r["model"], r["weights"], str(r["params"]), f"{r['measured_ms']:.3f}", f"{r['fitted_ms']:.3f}",
                      f"{100 * (r['fitted_ms'] / r['measured_ms'] - 1):+.1f}%")
        _console().print(t)
        if pool is not None:
            typer.echo(pool.summary())
        return
    if artifact:
        r = profile_artifact(model, tg, backend=backend, runs=runs, warmup=warmup, top=top, activations=activations)
    else:
        r = measure_local(_timeable(load_model(model, model_weights), model), tg, backend=backend, runs=runs, warmup=warmup, out_dir=out, top=top,
                          weights=weights, activations=activations)
    r["model"] = model
    if json_:
        _print_json(r)
        return
    con = _console()
    source = r["latency_source"].upper()
    if r["latency_source"] == "measured":
        lat = f"median {r['median_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms, mean {r['mean_ms']:.3f}, min {r['min_ms']:.3f} ({r['runs']} hops)"
    else:
        lat = f"{r['latency_ms']:.3f} ms ({r['reason']})"
    art = r["artifact"]
    mem = r["peak_memory_bytes"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for k, v in (
        ("model / target", f"{model} on {tg.name}"),
        ("latency", f"{source}: {lat}; budget {tg.latency_budget_ms:g} ms"),
        ("runtime's own timing", f"median {r['runtime_median_ms']:.3f} ms, p90 {r['runtime_p90_ms']:.3f} ms of the same hops, "
                                 f"InferRequest.latency as benchmark_app reports it (Python call adds "
                                 f"{r['harness_overhead_ms']:.3f} ms)" if r.get("runtime_median_ms") is not None else "-"),
        ("predicted (roofline)", f"{r['predicted_ms']:.3f} ms" if r["predicted_ms"] is not None else r.get("prediction", "-")),
        ("runtime", f"{r['runtime']} {r.get('runtime_version') or ''}, {r['weights']} weights".strip()
         + (" (read from the artifact)" if artifact else "")
         + (f", {r['activations']} activations" if r.get("activations") else "")),
        ("threads", str(r["threads"])),
        ("device", f"{r['device']['cpu']} ({r['device']['arch']}, {r['device']['where']})"),
        ("host load", " ".join(str(x) for x in r["host"].get("load_avg") or []) or "-"),
        ("artifact", f"{fmt_bytes(art['bytes'])} ({art['bytes']} B) {art['path'] if art['kept'] else '(not kept: use --out)'}"
         if art else "-"),
        ("peak memory", f"{fmt_bytes(mem)} ({mem} B), {r['peak_memory_method']}" if mem is not None else "-"),
    ):
        head.add_row(k, v)
    if r.get("emulation"):
        head.add_row("emulation", r["emulation"])
    if r.get("note"):
        head.add_row("note", r["note"])
    con.print(head)
    if r["layers"]:
        layers = Table(title=f"top {len(r['layers'])} layers: {r['layers_source']}")
        for col in ("layer", "type", "ms/hop", "share"):
            layers.add_column(col, justify="left" if col in ("layer", "type") else "right")
        for row in r["layers"]:
            layers.add_row(row["name"], row["type"], f"{row['ms']:.4f}", f"{100 * row['share']:.1f}%")
        con.print(layers)
    else:
        typer.echo(f"per-layer times: {r['layers_source']}")


# ---------------------------------------------------------------- entry point


# commands whose work is cached stage by stage under their output: rerunning resumes
RESUMABLE = {"fit", "compress", "train", "data"}


def interrupted_line(args: list[str]) -> str:
    command = next((a for a in args if not a.startswith("-")), "")
    if command in RESUMABLE:
        return f"interrupted: nothing is half-written; run the same command again to resume the {command} run"
    return "interrupted: nothing is half-written"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: every user error is one `error: ...` line on stderr, exit 2."""
    try:
        # standalone_mode=False hands errors to us instead of click/typer printing a panel
        # (usage errors) or a traceback (HwcError raised inside a command)
        rv = app(args=argv, prog_name=PROG, standalone_mode=False)
    except HwcError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NoArgsIsHelpError as e:
        # bare `hwcompress` or `hwcompress targets-group`: help is what the user needs, not an error line
        help_text = e.ctx.get_help()  # typer's rich help prints itself and returns ""
        if help_text:
            typer.echo(help_text, err=True)
        sys.exit(2)
    except UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        print(f"error: {e.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print(interrupted_line(sys.argv[1:] if argv is None else argv), file=sys.stderr)
        sys.exit(130)
    if rv == 130:  # recent typer turns Ctrl-C into a returned exit code 130 instead of raising Abort
        print(interrupted_line(sys.argv[1:] if argv is None else argv), file=sys.stderr)
    # in non-standalone mode click returns the exit code of ctx.exit()/--help as an int
    sys.exit(rv if isinstance(rv, int) else 0)
