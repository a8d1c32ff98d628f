"""`--device auto|cpu|cuda` on train, compress and fit, and data-parallel training under torchrun.

CPU only (CI has no GPU): a CUDA device asked for where there is none is one line and exit 2,
`auto` falls back to the CPU and says so, `--device cpu` trains exactly what the library's
default does, and a real two-process torchrun (gloo) trains a tiny model data-parallel: one
set of files written by rank 0, replicas bit-identical, ranks drawing different batches, and a
resume. tools/gpu_check.sh is the check to run where a CUDA GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli, user_error
from hwcompress.models.io import load_model
from hwcompress.train import TrainConfig, epoch_rng, train
from hwcompress.workdir import model_digest

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available here")
TINY = ["--epochs", "1", "--steps-per-epoch", "3", "--batch", "2", "--seconds", "0.5"]


def _state(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return payload["state_dict"] if "state_dict" in payload else payload["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@NO_CUDA
@pytest.mark.parametrize("command, args", [
    ("train", ["--model", "tiny-gru", "--out", "{tmp}/run"]),
    ("compress", ["--model", "tiny-gru", "--out", "{tmp}/run/m.hwc"]),
    ("fit", ["--target", "raspberrypi4", "--model", "tiny-gru", "--out", "{tmp}/run"]),
])
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_one_line(capsys, tmp_path, command, args, device) -> None:
    proc = cli(capsys, command, *[a.format(tmp=tmp_path) for a in args], "--device", device)
    user_error(proc, f"--device {device}: no CUDA device", "use --device cpu or auto")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_unknown_device_is_one_line(capsys, tmp_path) -> None:
    user_error(cli(capsys, "train", "--model", "tiny-gru", "--out", str(tmp_path / "r"), "--device", "gpu"),
               "unknown device 'gpu'", "auto, cpu, cuda or cuda:N")


@NO_CUDA
def test_auto_falls_back_to_cpu_and_says_so(capsys, monkeypatch, small_corpus, tmp_path) -> None:
    import hwcompress.device

    monkeypatch.setattr(hwcompress.device, "_said_fallback", False)  # said once per process: maybe already
    proc = cli(capsys, "train", "--model", "tiny-gru", "--data", str(small_corpus), "--out", str(tmp_path / "r"),
               *TINY, "--device", "auto")
    assert proc.returncode == 0, proc.stderr
    said = [ln for ln in proc.stderr.splitlines() if "--device auto" in ln]
    assert len(said) == 1 and "no CUDA GPU" in said[0] and "running on the CPU" in said[0], proc.stderr
    assert "(trained on cpu)" in proc.stdout
    assert [h["device"] for h in json.loads((tmp_path / "r" / "history.json").read_text())] == ["cpu"]
    # the second resolution in the same process says nothing more
    again = cli(capsys, "train", "--model", "tiny-gru", "--data", str(small_corpus), "--out", str(tmp_path / "r2"),
                *TINY)
    assert again.returncode == 0 and "--device auto" not in again.stderr


def test_train_device_cpu_is_the_library_default(capsys, small_corpus, tmp_path) -> None:
    """--device cpu through the CLI trains bit for bit what train() does without a device (the
    code path every CPU run took before devices existed; tests/test_train.py covers its resume)."""
    proc = cli(capsys, "train", "--model", "tiny-gru", "--data", str(small_corpus), "--out", str(tmp_path / "cli"),
               *TINY, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    net = load_model("tiny-gru")
    train(net, small_corpus, tmp_path / "lib", TrainConfig(epochs=1, steps_per_epoch=3, batch=2, seconds=0.5,
                                                             patience=4), log=lambda _m: None)
    assert _same(_state(tmp_path / "cli" / "model.pt"), _state(tmp_path / "lib" / "model.pt"))
    assert _same(_state(tmp_path / "cli" / "last.pt"), net.state_dict())


def test_compress_reports_its_device(small_corpus, tmp_path) -> None:
    import hwcompress

    report = hwcompress.compress(load_model("tiny-gru"), tmp_path / "m.hwc", data=small_corpus, device="cpu",
                                 sparsity=0.5, structured=True, prune_steps=2, prune_every=1, cluster_steps=1, batch=2,
                                 seconds=0.5)
    assert report["torch_device"] == "cpu"


def test_compress_and_fit_refuse_torchrun(capsys, monkeypatch, tmp_path) -> None:
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    user_error(cli(capsys, "compress", "--model", "tiny-gru", "--out", str(tmp_path / "m.hwc")),
               "compress runs as one process", "hwcompress train")
    user_error(cli(capsys, "fit", "--target", "raspberrypi4", "--model", "tiny-gru", "--out", str(tmp_path / "f")),
               "fit runs as one process")


def test_each_rank_draws_its_own_batches(small_corpus) -> None:
    from hwcompress.data.loader import MixtureSampler

    sampler = MixtureSampler(small_corpus, "train")
    draw = lambda rng: sampler.batch(rng, 2, 8000)[0].numpy()  # noqa: E731
    single = draw(np.random.default_rng([3, 1]))  # what a one-process run draws in epoch 1
    assert np.array_equal(draw(epoch_rng(3, 1, rank=0)), single)
    assert not np.array_equal(draw(epoch_rng(3, 1, rank=1)), single)


def _torchrun(out: Path, corpus: Path, epochs: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "hwcompress", "train", "--model", "tiny-gru", "--data", str(corpus), "--out", str(out),
                           "--epochs", str(epochs), "--steps-per-epoch", "3", "--batch", "2", "--seconds", "0.5",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


@pytest.mark.slow
def test_torchrun_two_processes_train_data_parallel(capsys, small_corpus, tmp_path) -> None:
    out = tmp_path / "ddp"
    proc = _torchrun(out, small_corpus, epochs=1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # rank 0 alone logs and writes: one line per epoch, one set of files, nothing left half-written
    assert proc.stdout.count("epoch 1:") == 1 and "2 replicas identical" in proc.stdout, proc.stdout
    assert "data parallel: 2 processes (gloo)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "last.pt", "model.pt"]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2
    # every rank's digest of its own replica, against the digest of the weights rank 0 wrote
    net = load_model("tiny-gru")
    net.load_state_dict(ckpt["model"])
    assert json.loads(ckpt["replica_digests"]) == [model_digest(net)] * 2
    assert _same(_state(out / "model.pt"), ckpt["model"])

    # rank 0 draws what one process draws: had rank 1 drawn the same batches, the averaged
    # gradients would equal one process's and so would the weights (same thread count: 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun's default OMP_NUM_THREADS for each process
    try:
        single = load_model("tiny-gru")
        train(single, small_corpus, tmp_path / "single", TrainConfig(epochs=1, steps_per_epoch=3, batch=2, seconds=0.5,
                                                                     patience=4), log=lambda _m: None)
    finally:
        torch.set_num_threads(threads)
    assert not _same(single.state_dict(), ckpt["model"])

    # a resume continues the data-parallel run; one process may not resume it
    proc = _torchrun(out, small_corpus, epochs=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout and "at epoch 1" in proc.stdout and proc.stdout.count("epoch 2:") == 1
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and {h["processes"] for h in history} == {2}
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(ckpt["model"])
    assert json.loads(ckpt["replica_digests"]) == [model_digest(net)] * 2
    user_error(cli(capsys, "train", "--model", "tiny-gru", "--data", str(small_corpus), "--out", str(out),
                   "--epochs", "3", "--steps-per-epoch", "3", "--batch", "2", "--seconds", "0.5", "--device", "cpu"),
               "data-parallel run of 2 process(es), this run has 1", only_line=False)


@NO_CUDA
def test_api_fit_on_cuda_without_cuda_is_one_line_before_anything_is_written(tmp_path) -> None:
    import hwcompress
    from hwcompress.errors import HwcError

    with pytest.raises(HwcError, match="--device cuda: no CUDA device"):
        hwcompress.fit("tiny-gru", target="raspberrypi4", out=tmp_path / "run", device="cuda")
    assert not (tmp_path / "run").exists()
