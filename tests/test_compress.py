"""The compression pipeline end to end on a tiny model: sizes, sparsity, K, resume, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hwcompress.compress.artifact import read_artifact
from hwcompress.compress.pipeline import CompressConfig, compress, layer_settings
from hwcompress.enhance import enhance
from hwcompress.errors import HwcError
from hwcompress.models.cost import total_macs
from hwcompress.models.io import load_model, save_model

FAST = dict(prune_steps=2, prune_every=1, cluster_steps=1, batch=2, seconds=0.5)


def quiet(_msg: str) -> None:
    pass


def test_unstructured_pipeline(small_corpus, tmp_path) -> None:
    model = load_model("tiny-lstm")
    out = tmp_path / "m.hwc"
    report = compress(model, CompressConfig(sparsity=0.5, codebook=8, **FAST), small_corpus, out, log=quiet)
    assert report["size_bytes"] == os.path.getsize(out)
    assert report["size_bytes"] * 3 < report["dense_fp32_bytes"]
    _, tensors = read_artifact(out)
    weight = tensors["rnn.layers.0.weight_ih_l0"]
    dense = weight.dense()
    assert 0.45 < float((dense == 0).float().mean()) < 0.6
    assert len(torch.unique(dense[dense != 0])) <= 8
    loaded = load_model(str(out))
    audio = np.random.default_rng(0).standard_normal(4000).astype(np.float32) * 0.1
    assert np.isfinite(enhance(loaded, audio)).all()


def test_structured_pipeline_shrinks(small_corpus, tmp_path) -> None:
    model = load_model("tiny-crn")
    before = total_macs(model)
    out = tmp_path / "s.hwc"
    report = compress(model, CompressConfig(sparsity=0.5, codebook=16, structured=True, **FAST), small_corpus, out, log=quiet)
    assert report["macs_per_frame"]["after"] < 0.6 * before
    loaded = load_model(str(out))
    assert loaded.config["hidden"][0] < model.config["hidden"][0]
    assert total_macs(loaded) == report["macs_per_frame"]["after"]


def test_resume_skips_finished_stages(small_corpus, tmp_path) -> None:
    """Interrupted after the pruning stage, the same call resumes after it; the finished run
    removes its work folder, and equals an uninterrupted run."""
    out = tmp_path / "r.hwc"
    work = tmp_path / "r.hwc.work"
    cfg = CompressConfig(sparsity=0.3, codebook=4, **FAST)

    def interrupt_in_clustering(msg: str) -> None:
        if (work / "prune" / "result.pt").exists():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress(load_model("tiny-gru"), cfg, small_corpus, out, log=interrupt_in_clustering)
    assert not out.exists() and (work / "prune" / "result.pt").exists()
    logged: list[str] = []
    resumed = compress(load_model("tiny-gru"), cfg, small_corpus, out, log=logged.append)
    assert any("already done" in line for line in logged)
    assert not work.exists()
    fresh = compress(load_model("tiny-gru"), cfg, small_corpus, tmp_path / "f.hwc", log=quiet)
    assert resumed["size_bytes"] == fresh["size_bytes"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"sparsity": 1.0}, "sparsity must be in [0, 1)"),
    ({"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ({"codebook": 1}, "between 2 and 256"),
    ({"codebook": 257}, "between 2 and 256"),
    ({"layers": {"no.such": {"sparsity": 0.1}}}, "no.such"),
    ({"layers": {"out": {"structured": True, "sparsity": 0.5}}}, "cannot be pruned structurally"),
])
def test_bad_settings(kwargs, fragment) -> None:
    model = load_model("tiny-lstm")
    with pytest.raises(HwcError) as err:
        cfg = CompressConfig(**kwargs)
        layer_settings(model, cfg)
        if "structured" in str(kwargs):
            compress(model, cfg, "/nonexistent", "/tmp/x.hwc", log=quiet)
    assert fragment in str(err.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=600)


def test_cli_compress_and_errors(small_corpus, tmp_path) -> None:
    model = tmp_path / "tiny.pt"
    save_model(model, load_model("tiny-crn"))
    out = tmp_path / "c.hwc"
    proc = _cli("compress", "--model", str(model), "--data", str(small_corpus), "--sparsity", "0.5", "--codebook", "8",
                "--prune-steps", "2", "--cluster-steps", "1", "--batch", "2", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(proc.stdout)
    assert report["size_bytes"] == os.path.getsize(out)
    # the same run as a table (resumed from its stages): every clustered weight shows its K
    proc = _cli("compress", "--model", str(model), "--data", str(small_corpus), "--sparsity", "0.5", "--codebook", "8",
                "--prune-steps", "2", "--cluster-steps", "1", "--batch", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    weight_rows = [ln for ln in proc.stdout.splitlines() if ".weight" in ln]
    assert weight_rows and all(ln.split("│")[4].strip() == "8" for ln in weight_rows), proc.stdout
    # the artifact feeds the other commands
    wav = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    assert _cli("enhance", str(wav), str(tmp_path / "o.wav"), "--model", str(out)).returncode == 0
    # corrupt artifact: checksum, one line, exit 2
    blob = bytearray(out.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad = tmp_path / "bad.hwc"
    bad.write_bytes(bytes(blob))
    for args in (["enhance", str(wav), str(tmp_path / "o2.wav"), "--model", str(bad)],
                 ["compress", "--model", "tiny-crn", "--sparsity", "1.5", "--out", str(tmp_path / "x.hwc")],
                 ["compress", "--model", "tiny-crn", "--codebook", "300", "--out", str(tmp_path / "x.hwc")]):
        proc = _cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "corrupt" in _cli("enhance", str(wav), str(tmp_path / "o2.wav"), "--model", str(bad)).stderr
    cfg = tmp_path / "layers.toml"
    cfg.write_text('[layers."missing.layer"]\nsparsity = 0.2\n')
    proc = _cli("compress", "--model", str(model), "--data", str(small_corpus), "--config", str(cfg), "--out", str(tmp_path / "y.hwc"))
    assert proc.returncode == 2 and "missing.layer" in proc.stderr


def test_grid_holds_the_codebooks_on_the_runtime_grid_after_tuning(small_corpus, tmp_path) -> None:
    """`grid`: every codebook ends on its integer grid (one step per weight matrix) after the
    free centroid fine-tuning, per layer from the TOML override or the global setting."""
    from hwcompress.export import grid_bits

    model = load_model("tiny-crn")
    out = tmp_path / "g.hwc"
    cfg = CompressConfig(sparsity=0.3, codebook=16, grid=8, layers={"rnn.0": {"grid": 4}, "proj": {"grid": 0}},
                         **{**FAST, "cluster_steps": 3})
    compress(model, cfg, small_corpus, out, log=quiet)
    bits = grid_bits(load_model(str(out)))
    assert bits["rnn.0"] == 4 and "proj" not in bits  # proj: free k-means centroids, on no grid
    assert all(bits[layer] in (4, 8) for layer in bits) and len(bits) == 11, bits


@pytest.mark.parametrize("grid", [3, 16, True])
def test_bad_grid(grid) -> None:
    with pytest.raises(HwcError, match="grid"):
        layer_settings(load_model("tiny-lstm"), CompressConfig(grid=grid))
    with pytest.raises(HwcError, match="grid"):
        layer_settings(load_model("tiny-lstm"), CompressConfig(layers={"out": {"grid": grid}}))
