"""Hostile model files and audio (issue #16, points 3, 4 and 6): crafted configs are refused
before anything is allocated, odd files give one `error:` line and no torch warning, and float
audio beyond full scale is scaled down with one `warning:` line instead of being clipped."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hwcompress.audio import AudioError, load_audio
from hwcompress.compress import artifact
from hwcompress.compress.artifact import load_artifact, save_artifact
from hwcompress.errors import HwcError
from hwcompress.models import zoo
from hwcompress.models.io import load_model, save_model

# rnn config of the memory bomb: 204,689,891 weights (819 MB as float32), asked for by a file
# that carries tiny-lstm's 16,691; the loader before issue 16 built it before any check
BOMB = {"hidden": [4096, 4096], "cell": "lstm", "n_bins": 161}
BOMB_WEIGHTS = 204_689_891
# peak RSS a refused bomb may reach: a CLI run that loads a tiny model peaks at ~330 MB here
# (/usr/bin/time -v python3 -m hwcompress enhance in.wav out.wav --model tiny.pt); the old
# loader reached 1.2 GB (.pt) and 2.0 GB (.hwc) on these files
RSS_LIMIT_KB = 800 * 1024


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def payload_of(name: str) -> dict:
    """A model file's payload as save_model writes it, to be edited into hostile ones."""
    model = load_model(name)
    return {"format": "hwcompress-model", "version": 1, "arch": model.arch, "config": model.config,
            "state_dict": model.state_dict(), "meta": {}}


def write_pt(path: Path, **changes) -> Path:
    torch.save({**payload_of("tiny-lstm"), **changes}, path)
    return path


def write_stride0_pt(path: Path) -> Path:
    """A few-KB .pt whose tensors have exactly BOMB's shapes, as zero-stride views of one
    stored value each: every shape matches, but loading would allocate all of BOMB."""
    shapes = meta_shapes("rnn", BOMB)
    state = {k: torch.ones(1).expand(*s) for k, s in shapes.items()}
    return write_pt(path, config=BOMB, state_dict=state)


def meta_shapes(arch: str, config: dict) -> dict[str, list[int]]:
    """State shapes of `config`, independently of the code under test (meta device)."""
    with torch.device("meta"):
        model = zoo.build(arch, config)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def write_hwc_bomb(path: Path) -> Path:
    """A valid .hwc (checksum and all) whose header declares BOMB's tensors, every one
    clustered and fully pruned: no payload bytes, yet decoding would allocate them all."""
    records = [{"name": n, "shape": s, "enc": "clustered", "k": 0, "bits": 0, "nnz": 0,
                "pos": {"kind": "gaps", "codec": "none", "length": 0},
                "idx": {"layout": "packed", "codec": "none", "length": 0}, "offset": 0, "length": 0}
               for n, s in meta_shapes("rnn", BOMB).items()]
    header = json.dumps({"format": artifact.FORMAT, "arch": "rnn", "config": BOMB, "meta": {},
                         "tensors": records}).encode()
    body = artifact.PREAMBLE.pack(artifact.MAGIC, artifact.VERSION, 0, len(header), 0) + header
    path.write_bytes(body + artifact.TRAILER.pack(zlib.crc32(body)))
    return path


def tone(seconds: float = 1.0, sr: int = 16000, amp: float = 0.3) -> np.ndarray:
    """A 200 Hz sine of peak `amp` (at 16 kHz a sample falls on every crest)."""
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


# ------------------------------------------------------------------ in-process checks


def test_pt_bomb_is_refused_by_its_shapes(tmp_path) -> None:
    bomb = write_pt(tmp_path / "bomb.pt", config=BOMB)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(HwcError) as err:
        load_model(bomb)
    assert str(err.value) == (
        f"{bomb}: weights do not match the architecture (the config asks for {BOMB_WEIGHTS:,} weights, "
        "the file holds 16,691; rnn.layers.0.weight_ih_l0 is [64, 161] in the file, the config needs "
        "[16384, 161] and 8 more)")


def test_zero_stride_bomb_is_refused_by_its_stored_bytes(tmp_path) -> None:
    bomb = write_stride0_pt(tmp_path / "views.pt")
    assert bomb.stat().st_size < 10_000
    with pytest.raises(HwcError) as err:
        load_model(bomb)
    assert str(err.value) == (f"{bomb}: weights span {4 * BOMB_WEIGHTS:,} bytes but the file stores "
                              "48 (zero-stride or overlapping views): corrupt or crafted model file")


def test_hwc_bomb_is_refused_before_decoding(tmp_path) -> None:
    bomb = write_hwc_bomb(tmp_path / "bomb.hwc")
    size = bomb.stat().st_size
    with pytest.raises(HwcError) as err:
        load_artifact(bomb)
    assert str(err.value) == (
        f"{bomb}: config asks for {BOMB_WEIGHTS:,} weights, more than a file of this size can hold "
        f"({artifact.MAX_WEIGHTS_PER_BYTE * size:,}): corrupt or crafted model file")


def test_hwc_header_config_must_match_its_tensor_records(tmp_path) -> None:
    model = load_model("tiny-gru")
    good = tmp_path / "good.hwc"
    save_artifact(good, model, entropy=False)
    data = good.read_bytes()
    _, _, _, h_len, p_len = artifact.PREAMBLE.unpack_from(data)
    header = json.loads(data[artifact.PREAMBLE.size : artifact.PREAMBLE.size + h_len])
    payload = data[artifact.PREAMBLE.size + h_len :][:p_len]
    for config, fragment in (({**header["config"], "hidden": [-1]}, "bad model config (hidden[0] must be between"),
                             ({**header["config"], "cell": "lstm"}, "weight_ih_l0 is [48, 161] in the file, the "
                                                                     "config needs [64, 161]")):
        raw = json.dumps({**header, "config": config}).encode()
        body = artifact.PREAMBLE.pack(artifact.MAGIC, artifact.VERSION, 0, len(raw), p_len) + raw + payload
        bad = tmp_path / "bad.hwc"
        bad.write_bytes(body + artifact.TRAILER.pack(zlib.crc32(body)))
        with pytest.raises(HwcError, match="bad.hwc: ") as err:
            load_artifact(bad)
        assert fragment in str(err.value)


@pytest.mark.parametrize(
    "arch, config, fragment",
    [
        ("rnn", {"hidden": [-3]}, "hidden[0] must be between 1 and 16384, got -3"),
        ("rnn", {"hidden": [0]}, "hidden[0] must be between 1 and 16384, got 0"),
        ("rnn", {"hidden": [16, 1 << 20]}, "hidden[1] must be between 1 and 16384, got 1048576"),
        ("rnn", {"hidden": [16.0]}, "hidden[0] must be an integer, got 16.0"),
        ("rnn", {"hidden": [True]}, "hidden[0] must be an integer, got True"),
        ("rnn", {"hidden": []}, "hidden needs 1 to 16 values, got 0"),
        ("rnn", {"hidden": [8] * 17}, "hidden needs 1 to 16 values, got 17"),
        ("rnn", {"hidden": "16"}, "hidden must be a list of integers, got str"),
        ("rnn", {"hidden": [16], "cell": "rnn"}, "cell must be one of lstm, gru, got 'rnn'"),
        ("rnn", {"hidden": [16], "n_bins": 257}, "n_bins must be 161"),
        ("rnn", {"hidden": [16], "n_bins": 161.0}, "n_bins must be 161"),
        ("rnn", {"hidden": [16], "dropout": 0.5}, "unknown rnn config field(s) dropout"),
        ("rnn", [16], "config must be a mapping, got list"),
        ("crn", {"channels": [4] * 7, "hidden": [8]}, "channels needs 1 to 6 values, got 7"),
        ("crn", {"channels": [4, -4], "hidden": [8]}, "channels[1] must be between 1 and 16384, got -4"),
        ("crn", {"channels": [4, 4], "hidden": [8], "kt": 0}, "kt must be between 1 and 16, got 0"),
        ("crn", {"channels": [4, 4], "hidden": [8], "proj_channels": -1}, "proj_channels must be between"),
        ("crn", {"channels": [4, 4, 4], "hidden": [8], "dec_channels": [4]}, "dec_channels needs 2 values, got 1"),
        ("gcrn", {"channels": [4, 4], "hidden": [8], "dec_imag_channels": [0]}, "dec_imag_channels[0] must be"),
        ("cnn", {}, "unknown architecture 'cnn'"),
    ],
)
def test_check_config_names_the_problem(arch, config, fragment) -> None:
    with pytest.raises(zoo.ConfigError) as err:
        zoo.check_config(arch, config)
    assert fragment in str(err.value)


def test_every_preset_and_a_shrunk_config_still_load(tmp_path) -> None:
    configs = [(a, c) for a, c in zoo.PRESETS.values()]
    configs.append(("gcrn", {"channels": [4, 4, 8], "hidden": [16, 8], "cell": "gru", "kt": 3,
                             "proj_channels": 5, "dec_channels": [3, 2], "dec_imag_channels": [2, 1]}))
    for arch, config in configs:
        model = zoo.build(arch, config)
        checked = zoo.check_config(arch, model.config)
        assert zoo.param_shapes(arch, checked) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model = zoo.build(*configs[-1])
    save_model(tmp_path / "shrunk.pt", model)
    loaded = load_model(tmp_path / "shrunk.pt")
    assert loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_state_dict_values_must_be_finite_dense_float_tensors(tmp_path) -> None:
    state = payload_of("tiny-lstm")["state_dict"]
    nan = {**state, "out.bias": torch.full_like(state["out.bias"], float("nan"))}
    ints = {**state, "out.bias": state["out.bias"].to(torch.int64)}
    sparse = {**state, "feat_mean": state["feat_mean"].to_sparse()}
    arrays = {**state, "out.bias": [0.0] * 161}
    zero_std = {**state, "feat_std": torch.zeros_like(state["feat_std"])}
    for sd, fragment in ((nan, "weight 'out.bias' contains NaN/Inf values"),
                         (ints, "weight 'out.bias' is not a dense float tensor (torch.int64"),
                         (sparse, "weight 'feat_mean' is not a dense float tensor (torch.float32 torch.sparse_coo)"),
                         (arrays, "weight 'out.bias' is not a dense float tensor (list)"),
                         (zero_std, "weight 'feat_std' (feature normalisation) must be positive")):
        with pytest.raises(HwcError, match="odd.pt: ") as err:
            load_model(write_pt(tmp_path / "odd.pt", state_dict=sd))
        assert fragment in str(err.value)


def test_loud_float_audio_is_scaled_not_clipped(tmp_path) -> None:
    loud = tmp_path / "loud.wav"
    sf.write(loud, tone(amp=4.5), 16000, subtype="FLOAT")
    messages: list[str] = []
    audio = load_audio(loud, warn=messages.append)
    assert float(np.max(np.abs(audio))) == pytest.approx(0.99, abs=1e-6)
    assert messages == [f"{loud}: float samples exceed full scale (peak 4.5 > 1.0): scaled by 0.22 "
                        "to peak 0.99 instead of clipping"]
    # resampled: the factor is taken after the filter, so the peak is still 0.99
    sf.write(loud, tone(amp=4.5, sr=44100), 44100, subtype="FLOAT")
    messages.clear()
    assert float(np.max(np.abs(load_audio(loud, warn=messages.append)))) == pytest.approx(0.99, abs=1e-6)
    assert len(messages) == 1 and "peak 4.5 > 1.0" in messages[0]


@pytest.mark.parametrize("subtype, amp", [("FLOAT", 1.0), ("PCM_16", 32767 / 32768), ("PCM_24", 0.5)])
def test_audio_within_full_scale_is_untouched(tmp_path, subtype, amp) -> None:
    path = tmp_path / "ok.wav"
    data = tone(amp=amp)
    sf.write(path, data, 16000, subtype=subtype)
    messages: list[str] = []
    audio = load_audio(path, warn=messages.append)
    assert messages == []
    np.testing.assert_allclose(audio, sf.read(path, dtype="float32")[0])


def test_too_low_sample_rate_is_refused(tmp_path) -> None:
    path = tmp_path / "slow.wav"
    sf.write(path, tone(seconds=2.0, sr=1000), 1000)
    with pytest.raises(AudioError, match=r"slow\.wav: sample rate 1000 Hz is too low \(at least 4000 Hz\)"):
        load_audio(path)


# ------------------------------------------------------------------------ the CLI


def run_all(cases: dict[str, list[str]], tmp: Path) -> dict[str, tuple[int, str, str, int]]:
    """Start every `python3 -m hwcompress` run at once (each waits mostly on imports) and
    collect (exit code, stdout, stderr, peak RSS in KiB) of each, measured by os.wait4 in a
    launcher process."""
    # Linux carries a process's peak RSS across exec, so a child forked from this (large)
    # pytest process would report pytest's size: a small launcher forks and execs each run
    # and reports the run's own peak (os.wait4) in a file
    launcher = ("import os, sys\n"
                "pid = os.fork()\n"
                "if pid == 0:\n    os.execv(sys.argv[2], sys.argv[2:])\n"
                "_, status, usage = os.wait4(pid, 0)\n"
                "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
                "sys.exit(os.waitstatus_to_exitcode(status))\n")
    procs = {}
    for name, args in cases.items():
        out, err = open(tmp / f"{name}.out", "w+"), open(tmp / f"{name}.err", "w+")
        cmd = [sys.executable, "-c", launcher, str(tmp / f"{name}.rss"), sys.executable, "-m", "hwcompress", *args]
        procs[name] = (subprocess.Popen(cmd, stdout=out, stderr=err), out, err)
    results = {}
    for name, (proc, out, err) in procs.items():
        proc.wait()
        out.seek(0), err.seek(0)
        results[name] = (proc.returncode, out.read(), err.read(), int((tmp / f"{name}.rss").read_text()))
        out.close(), err.close()
    return results


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    good = tmp / "good.wav"
    sf.write(good, tone(), 16000)
    loud = tmp / "loud.wav"
    sf.write(loud, tone(amp=4.5), 16000, subtype="FLOAT")
    slow = tmp / "slow.wav"
    sf.write(slow, tone(seconds=2.0, sr=1000), 1000)
    tiny = tmp / "tiny.pt"
    save_model(tiny, load_model("tiny-crn"))
    inputs = {
        "pt_bomb": (good, write_pt(tmp / "bomb.pt", config=BOMB)),
        "hwc_bomb": (good, write_hwc_bomb(tmp / "bomb.hwc")),
        "stride0": (good, write_stride0_pt(tmp / "views.pt")),
        "negative": (good, write_pt(tmp / "negative.pt", config={"hidden": [-16], "cell": "lstm", "n_bins": 161})),
        # a plain pickle: torch warns "Detected pickle protocol 4 in the checkpoint" before failing
        "pickle": (good, tmp / "plain_pickle.pt"),
        "slow": (slow, tiny),
        "loud": (loud, tiny),
    }
    (tmp / "plain_pickle.pt").write_bytes(pickle.dumps({"format": "hwcompress-model"}, protocol=4))
    before = {name: (digest(wav), digest(model)) for name, (wav, model) in inputs.items()}
    cases = {name: ["enhance", str(wav), str(tmp / "out" / f"{name}.wav"), "--model", str(model)]
             for name, (wav, model) in inputs.items()}
    results = run_all(cases, tmp)
    for name, (wav, model) in inputs.items():
        assert (digest(wav), digest(model)) == before[name], f"{name}: an input file changed"
    return tmp, results


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("pt_bomb", f"bomb.pt: weights do not match the architecture (the config asks for {BOMB_WEIGHTS:,} "
                    "weights, the file holds 16,691;"),
        ("hwc_bomb", f"bomb.hwc: config asks for {BOMB_WEIGHTS:,} weights, more than a file of this size can hold"),
        ("stride0", f"views.pt: weights span {4 * BOMB_WEIGHTS:,} bytes but the file stores 48 "),
        ("negative", "negative.pt: bad model config (hidden[0] must be between 1 and 16384, got -16)"),
        ("pickle", "plain_pickle.pt: corrupt or unreadable model file (UnpicklingError)"),
        ("slow", "slow.wav: sample rate 1000 Hz is too low"),
    ],
)
def test_cli_hostile_input_is_one_error_line(cli, case, fragment) -> None:
    tmp, results = cli
    code, stdout, stderr, rss_kb = results[case]
    assert code == 2, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0], lines[0]
    assert stdout == ""
    assert not (tmp / "out" / f"{case}.wav").exists()
    assert not list(tmp.glob(f"out/.{case}.wav*"))  # nor a temp file of it
    assert rss_kb < RSS_LIMIT_KB, f"{case}: peak RSS {rss_kb / 1024:.0f} MiB"


def test_cli_loud_float_input_warns_once_and_does_not_clip(cli) -> None:
    tmp, results = cli
    code, stdout, stderr, _ = results["loud"]
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"warning: {tmp / 'loud.wav'}: float samples exceed full scale (peak 4.5 > 1.0): "
                     "scaled by 0.22 to peak 0.99 instead of clipping"], stderr
    out, sr = sf.read(tmp / "out" / "loud.wav")
    assert sr == 16000 and out.size == 16000
    clipped = float(np.mean(np.abs(out) >= 32767 / 32768))
    assert clipped < 0.01, f"{clipped:.1%} of the output is at full scale"
