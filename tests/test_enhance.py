"""`hwcompress enhance`: chunked = streaming = whole (tiny models, real runtimes), and the
command never replaces its input or leaves a half-written output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from hwcompress.audio import load_audio
from hwcompress.cli import main
from hwcompress.enhance import (WHOLE_MAX_FRAMES, enhance, enhance_chunked, enhance_streaming, n_frames_for,
                                torch_runner)
from hwcompress.models.io import load_model, save_model
from hwcompress.models.stft import istft, stft
from conftest import sigint_default, user_error  # exit 2 and one error line; SIGINT as a Ctrl-C

TINY = ("tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru")


def noisy(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def cli(capsys):
    """`hwcompress enhance ARGS` through the console-script entry point, in this process (the
    subprocess start and torch import would dominate these tests); the interrupt test below
    runs a real child process."""

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main(["enhance", *args])
        got = capsys.readouterr()
        return subprocess.CompletedProcess(args, stop.value.code, got.out, got.err)

    return call



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    save_model(path, load_model("tiny-crn"))
    return path


# ---------------------------------------------------------------- same samples every way


@pytest.mark.parametrize("name", TINY)
def test_chunked_equals_streaming_and_whole(name: str) -> None:
    torch.manual_seed(0)
    model = load_model(name)
    audio = noisy(0.8137)  # not a whole number of hops
    want_stream = enhance_streaming(model, audio)
    want_whole = enhance(model, audio)
    total = n_frames_for(audio.size)
    for chunk in (1, 7, total - 1, total, 10 * total):
        run, state = torch_runner(model)
        got = enhance_chunked(run, audio, state, chunk_frames=chunk)
        assert got.shape == audio.shape
        np.testing.assert_allclose(got, want_stream, atol=1e-6, err_msg=f"chunk {chunk}")
        np.testing.assert_allclose(got, want_whole, atol=1e-6, err_msg=f"chunk {chunk}")
    # the model does change the audio: the comparison above is not trivially true
    assert np.abs(want_whole - audio).max() > 1e-3


def test_progress_reaches_the_total() -> None:
    model = load_model("tiny-gru")
    audio = noisy(1.0)
    seen: list[tuple[int, int]] = []
    run, state = torch_runner(model)
    enhance_chunked(run, audio, state, chunk_frames=30, progress=lambda d, t: seen.append((d, t)))
    total = n_frames_for(audio.size)
    assert seen[-1] == (total, total) and len(seen) == -(-total // 30)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_whole_is_bounded_for_long_inputs() -> None:
    """Past WHOLE_MAX_FRAMES `enhance` goes in passes with the state carried: same samples as
    one pass over everything."""
    torch.manual_seed(1)
    model = load_model("tiny-crn")
    audio = noisy(WHOLE_MAX_FRAMES / 100 + 2.5, seed=1)
    assert n_frames_for(audio.size) > WHOLE_MAX_FRAMES
    with torch.no_grad():
        x = torch.from_numpy(audio)[None]
        spec, _ = model(stft(x), model.initial_state(1))
        one_pass = istft(spec, x.shape[-1])[0].numpy()
    np.testing.assert_allclose(enhance(model, audio), one_pass, atol=1e-6)


@pytest.mark.parametrize("name", ("tiny-crn", "tiny-gru"))
def test_onnxruntime_chunks_equal_torch_streaming(tmp_path, name: str) -> None:
    from hwcompress.export import get_backend

    torch.manual_seed(2)
    model = load_model(name)
    backend = get_backend("onnxruntime")
    session = backend.load(backend.export(model, tmp_path, "whole"), threads=1)
    audio = noisy(2.13, seed=2)
    got = enhance_chunked(session.run, audio, None, chunk_frames=50)
    np.testing.assert_allclose(got, enhance_streaming(model, audio), atol=2e-5)


# ---------------------------------------------------------------- the command


def test_cli_writes_what_streaming_gives_and_reports_rtf(tmp_path, tiny_model, cli) -> None:
    inp, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(inp, noisy(1.0, seed=3), 16000, subtype="FLOAT")
    want = enhance_streaming(load_model(str(tiny_model)), load_audio(inp))
    for extra in ([], ["--runtime", "torch"], ["--whole"], ["--hop-by-hop"]):
        proc = cli(str(inp), str(out), "--model", str(tiny_model), *extra)
        assert proc.returncode == 0, proc.stderr
        assert "real-time factor" in proc.stdout and proc.stdout.count("\n") == 1, proc.stdout
        rtf = float(proc.stdout.split("real-time factor ")[1].split()[0])
        assert 0 < rtf < 100
        got, sr = sf.read(out, dtype="float32")
        assert sr == 16000 and got.shape == want.shape
        np.testing.assert_allclose(got, np.clip(want, -1, 1), atol=1.5 / 32768, err_msg=str(extra))


def test_cli_int8_is_close_to_fp32(tmp_path, tiny_model, cli) -> None:
    inp = tmp_path / "in.wav"
    sf.write(inp, noisy(2.0, seed=4), 16000)
    outs = {}
    for w in ("fp32", "int8"):
        proc = cli(str(inp), str(tmp_path / f"{w}.wav"), "--model", str(tiny_model), "--weights", w)
        assert proc.returncode == 0, proc.stderr
        assert f"onnxruntime {w}" in proc.stdout
        outs[w] = sf.read(tmp_path / f"{w}.wav", dtype="float64")[0]
    err = outs["int8"] - outs["fp32"]
    snr = 10 * np.log10(np.sum(outs["fp32"] ** 2) / np.sum(err**2))
    assert 10 < snr < 200, snr  # approximate (not the fp32 samples), but the same enhancement


def _link_cases(tmp_path):
    """(input, output) pairs that are one file."""
    rec = tmp_path / "rec.wav"
    sf.write(rec, noisy(1.0, seed=5), 16000)
    (tmp_path / "sub").mkdir()
    sym = tmp_path / "sym.wav"
    sym.symlink_to(rec)
    hard = tmp_path / "hard.wav"
    os.link(rec, hard)
    (tmp_path / "dirlink").symlink_to(tmp_path)
    return rec, [
        (rec, rec, "the same path"),
        (rec, tmp_path / "sub" / ".." / "rec.wav", "the same path"),
        (rec, sym, "symbolic link"),
        (sym, rec, "symbolic link"),
        (rec, tmp_path / "dirlink" / "rec.wav", "symbolic link"),
        (rec, hard, "hard link"),
        (hard, rec, "hard link"),
    ]


def test_cli_refuses_to_overwrite_its_input(tmp_path, tiny_model, cli) -> None:
    rec, cases = _link_cases(tmp_path)
    before = rec.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    for inp, out, how in cases:
        proc = cli(str(inp), str(out), "--model", str(tiny_model))
        user_error(proc, "is the input file")
        assert how in proc.stderr, (inp, out, proc.stderr)
        assert proc.stdout == ""
        assert rec.read_bytes() == before, (inp, out)
        assert sorted(os.listdir(tmp_path)) == listing  # no temporary or partial file left
    assert os.path.islink(tmp_path / "sym.wav") and os.stat(tmp_path / "hard.wav").st_nlink == 2


def test_cli_bad_outputs_and_options(tmp_path, tiny_model, cli) -> None:
    inp = tmp_path / "in.wav"
    sf.write(inp, noisy(1.0, seed=6), 16000)
    (tmp_path / "folder").mkdir()
    user_error(cli(str(inp), str(tmp_path / "folder"), "--model", str(tiny_model)), "is a folder")
    for args, fragment in ((["--whole", "--hop-by-hop"], "exclude each other"),
                           (["--runtime", "tensorflow"], "unknown runtime"),
                           (["--weights", "int3"], "unknown weights"),
                           (["--runtime", "torch", "--weights", "int8"], "needs the chunked onnxruntime")):
        user_error(cli(str(inp), str(tmp_path / "o.wav"), "--model", str(tiny_model), *args), fragment)
    assert sorted(os.listdir(tmp_path)) == ["folder", "in.wav"]


def test_cli_interrupted_leaves_no_output(tmp_path, tiny_model) -> None:
    """Ctrl-C in the middle of a long enhancement: exit 130, no output file, no partial file."""
    inp, out = tmp_path / "long.wav", tmp_path / "out.wav"
    sf.write(inp, noisy(600.0, seed=7), 16000)  # hop by hop this takes minutes
    proc = subprocess.Popen([sys.executable, "-m", "hwcompress", "enhance", str(inp), str(out), "--model",
                             str(tiny_model), "--hop-by-hop"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["long.wav"]
