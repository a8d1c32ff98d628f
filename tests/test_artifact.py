""".hwc artifacts: sizes, bit-exact round trips, equivalence with the clustered model,
stream encodings, and corruption handling."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from hwcompress.compress import artifact
from hwcompress.compress.artifact import load_artifact, read_artifact, save_artifact
from hwcompress.compress.cluster import Clustered, apply_clustering, cluster_model, cluster_tensor
from hwcompress.enhance import enhance
from hwcompress.errors import HwcError
from hwcompress.models.io import load_model

TINY = ["tiny-crn", "tiny-gcrn", "tiny-lstm", "tiny-gru"]
DOC = Path(__file__).resolve().parent.parent / "docs" / "hwc-format.md"


def fake_prune(model: torch.nn.Module, frac: float = 0.5, seed: int = 1) -> torch.nn.Module:
    """Zero a random `frac` of every weight matrix/kernel, as pruning would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.view(-1)[torch.randperm(p.numel(), generator=g)[: int(p.numel() * frac)]] = 0
    return model


def compressed(name: str, k: int = 16) -> tuple[torch.nn.Module, dict[str, Clustered]]:
    """A 50%-pruned preset, clustered with K=k and with the clustering applied."""
    torch.manual_seed(0)
    model = fake_prune(load_model(name))
    clustered = cluster_model(model, {"*": k})
    return apply_clustering(model, clustered), clustered


def only_clustered(tensors: dict) -> dict[str, Clustered]:
    return {n: v for n, v in tensors.items() if isinstance(v, Clustered)}


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        # compare bits, not values: -0.0 vs 0.0 or NaN payloads would count as different
        assert torch.equal(sa[key].view(torch.int32), sb[key].view(torch.int32)), key


@pytest.mark.parametrize("entropy", [True, False])
@pytest.mark.parametrize("name", TINY)
def test_report_matches_file(tmp_path, name: str, entropy: bool) -> None:
    model, clustered = compressed(name)
    path = tmp_path / "m.hwc"
    report = save_artifact(path, model, clustered, entropy=entropy)
    assert report["size_bytes"] == os.path.getsize(path)
    assert report["header_bytes"] + report["payload_bytes"] == report["size_bytes"]
    assert sum(t["bytes"] for t in report["tensors"]) == report["payload_bytes"]
    params = sum(v.numel() for v in model.state_dict().values())
    assert report["dense_fp32_bytes"] == 4 * params
    assert report["compression_ratio"] == pytest.approx(4 * params / os.path.getsize(path))
    rows = {t["name"]: t for t in report["tensors"]}
    for key, c in clustered.items():
        row = rows[key]
        assert row["K"] == c.k <= 16 and row["nonzeros"] == c.nnz and row["params"] == c.numel
        assert row["bits_per_weight"] == pytest.approx(row["bytes"] * 8 / row["params"])
    assert all(rows[n]["encoding"] == "fp32" for n in rows if n not in clustered)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind


@pytest.mark.parametrize("name", TINY)
def test_decompressed_weights_are_the_clustered_weights(tmp_path, name: str) -> None:
    model, clustered = compressed(name)
    save_artifact(tmp_path / "m.hwc", model, clustered)
    header, tensors = read_artifact(tmp_path / "m.hwc")
    assert header["arch"] == model.arch and header["config"] == model.config
    assert list(tensors) == list(model.state_dict())
    for key, c in clustered.items():
        assert torch.equal(tensors[key].codebook, c.codebook) and torch.equal(tensors[key].indices, c.indices)
        assert torch.equal(tensors[key].dense(), c.dense())
    loaded = load_artifact(tmp_path / "m.hwc")
    assert_same_state(loaded, model)
    assert not loaded.training and loaded.meta == model.meta


@pytest.mark.parametrize("entropy", [True, False])
@pytest.mark.parametrize("name", TINY)
def test_round_trips_are_bit_exact(tmp_path, name: str, entropy: bool) -> None:
    model, clustered = compressed(name)
    first = tmp_path / "a.hwc"
    save_artifact(first, model, clustered, meta={"k": 16, "note": "ü", "loss": 0.1 + 0.2}, entropy=entropy)
    loaded = load_artifact(first)
    _, tensors = read_artifact(first)
    # load -> save with the clustering read back
    save_artifact(tmp_path / "b.hwc", loaded, only_clustered(tensors), meta=loaded.meta, entropy=entropy)
    assert (tmp_path / "b.hwc").read_bytes() == first.read_bytes()
    # load -> re-cluster with the same K: canonical codebooks make this exact too
    save_artifact(tmp_path / "c.hwc", loaded, cluster_model(loaded, {"*": 16}), meta=loaded.meta, entropy=entropy)
    assert (tmp_path / "c.hwc").read_bytes() == first.read_bytes()
    assert_same_state(load_artifact(tmp_path / "c.hwc"), loaded)
    assert loaded.meta == {"k": 16, "note": "ü", "loss": 0.1 + 0.2}


@pytest.mark.parametrize("name", TINY)
def test_loaded_model_enhances_like_the_clustered_model(tmp_path, name: str) -> None:
    model, clustered = compressed(name)
    save_artifact(tmp_path / "m.hwc", model, clustered)
    audio = np.random.default_rng(3).standard_normal(8000).astype(np.float32) * 0.1
    via_io = load_model(str(tmp_path / "m.hwc"))  # the --model path for .hwc files
    np.testing.assert_array_equal(enhance(via_io, audio), enhance(model.eval(), audio))


def test_unclustered_and_fp16(tmp_path) -> None:
    torch.manual_seed(0)
    model = load_model("tiny-gru")
    save_artifact(tmp_path / "plain.hwc", model, None)
    assert_same_state(load_artifact(tmp_path / "plain.hwc"), model)
    save_artifact(tmp_path / "half.hwc", model, None, dense="fp16")
    half = load_artifact(tmp_path / "half.hwc")
    for key, value in model.state_dict().items():
        assert torch.equal(half.state_dict()[key], value.half().float()), key
    assert os.path.getsize(tmp_path / "half.hwc") < 0.6 * os.path.getsize(tmp_path / "plain.hwc")


def test_sparse_k16_tiny_lstm_is_8x_smaller_than_dense(tmp_path) -> None:
    model, clustered = compressed("tiny-lstm", k=16)
    report = save_artifact(tmp_path / "m.hwc", model, clustered)
    ratio = report["dense_fp32_bytes"] / os.path.getsize(tmp_path / "m.hwc")
    assert ratio >= 8.0, report


def encode(weight: torch.Tensor, k: int, entropy: bool = True) -> tuple[dict, Clustered]:
    """Encode one clustered tensor and decode it again through the file-level functions."""
    c = cluster_tensor(weight, k)
    rec, blob = artifact._encode_clustered(c, entropy)
    back = artifact._decode_clustered(rec, blob, c.shape, c.numel)
    assert torch.equal(back.codebook, c.codebook) and torch.equal(back.indices, c.indices)
    return rec, c


def test_position_encoding_choice() -> None:
    torch.manual_seed(0)
    half = torch.randn(64, 64)
    half[torch.rand_like(half) < 0.5] = 0
    assert encode(half, 16)[0]["pos"]["kind"] == "bitmap"
    very_sparse = torch.randn(64, 64)
    very_sparse[torch.rand_like(very_sparse) < 0.97] = 0
    assert encode(very_sparse, 16, entropy=False)[0]["pos"]["kind"] == "gaps"
    assert encode(torch.randn(16, 16), 16)[0]["pos"]["kind"] == "all"
    rec, c = encode(torch.zeros(5, 7), 16)
    assert rec["nnz"] == 0 and rec["k"] == 0


@pytest.mark.parametrize("k", [2, 3, 5, 8, 16, 17, 33, 64, 100, 129, 256])
def test_index_packing_uses_ceil_log2_k_bits(k: int) -> None:
    torch.manual_seed(k)
    rec, c = encode(torch.randn(40, 40), k, entropy=False)
    assert rec["bits"] == int(np.ceil(np.log2(c.k)))
    assert rec["idx"]["length"] == -(-c.nnz * rec["bits"] // 8)


def test_entropy_coding_shrinks_peaked_indices() -> None:
    torch.manual_seed(0)
    peaked = torch.distributions.Laplace(0.0, 0.05).sample((200, 200))
    rec, c = encode(peaked, 64)
    assert rec["idx"]["codec"] != "none"
    assert rec["idx"]["length"] < 0.9 * (-(-c.nnz * rec["bits"] // 8))


def test_varint_round_trip() -> None:
    values = np.array([0, 1, 127, 128, 255, 16383, 16384, 2**31 - 1, 2**40], dtype=np.uint64)
    data = artifact._varint_encode(values)
    assert len(data) == 1 + 1 + 1 + 2 + 2 + 2 + 3 + 5 + 6
    assert np.array_equal(artifact._varint_decode(data, values.size), values)


def test_save_errors(tmp_path) -> None:
    model, clustered = compressed("tiny-gru")
    with pytest.raises(HwcError, match="not in the model"):
        save_artifact(tmp_path / "x.hwc", model, {"nope.weight": clustered["out.weight"]})
    with pytest.raises(HwcError, match="shape"):
        save_artifact(tmp_path / "x.hwc", model, {"out.weight": cluster_tensor(torch.randn(3, 3), 4)})
    with pytest.raises(HwcError, match="JSON"):
        save_artifact(tmp_path / "x.hwc", model, clustered, meta={"bad": object()})
    assert not (tmp_path / "x.hwc").exists()


@pytest.fixture
def good_file(tmp_path) -> Path:
    model, clustered = compressed("tiny-crn")
    path = tmp_path / "m.hwc"
    save_artifact(path, model, clustered)
    return path


def corrupt_with(path: Path, data: bytes) -> Path:
    bad = path.with_name("bad.hwc")
    bad.write_bytes(data)
    return bad


def test_flipped_byte_is_detected(good_file) -> None:
    data = bytearray(good_file.read_bytes())
    for where in (len(data) // 2, 30, len(data) - 2):
        flipped = bytearray(data)
        flipped[where] ^= 0x40
        with pytest.raises(HwcError, match=r"bad\.hwc: corrupt \.hwc artifact \(checksum mismatch\)"):
            load_artifact(corrupt_with(good_file, bytes(flipped)))


@pytest.mark.parametrize("keep", [0, 5, 24, 100, 0.5, -1])
def test_truncation_is_detected(good_file, keep) -> None:
    data = good_file.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    with pytest.raises(HwcError, match="corrupt .hwc artifact .*truncated"):
        load_model(str(corrupt_with(good_file, data[:cut])))


def test_bad_magic_version_trailing_bytes(good_file) -> None:
    data = good_file.read_bytes()
    with pytest.raises(HwcError, match="corrupt .hwc artifact .*bad magic"):
        load_artifact(corrupt_with(good_file, b"PK\x03\x04" + data[4:]))
    with pytest.raises(HwcError, match="corrupt .hwc artifact .*trailing bytes"):
        load_artifact(corrupt_with(good_file, data + b"\0"))
    bumped = data[:8] + struct.pack("<H", 99) + data[10:]
    with pytest.raises(HwcError, match="unsupported .hwc version 99"):
        load_artifact(corrupt_with(good_file, bumped))
    with pytest.raises(HwcError, match="no such model file"):
        load_artifact(good_file.with_name("missing.hwc"))


def rebuild(header: bytes | dict, payload: bytes, flags: int = 0) -> bytes:
    """A file with a valid checksum around an arbitrary header: tests the parser itself."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = artifact.PREAMBLE.pack(artifact.MAGIC, artifact.VERSION, flags, len(raw), len(payload)) + raw + payload
    return body + artifact.TRAILER.pack(zlib.crc32(body))


def test_malformed_header_with_valid_checksum(good_file) -> None:
    header, _ = read_artifact(good_file)
    data = good_file.read_bytes()
    _, _, _, h_len, p_len = artifact.PREAMBLE.unpack_from(data)
    payload = data[artifact.PREAMBLE.size + h_len : artifact.PREAMBLE.size + h_len + p_len]
    cases = {
        "not json": rebuild(b"{nope", payload),
        "not deflate": rebuild(b"\xff\xfe garbage", payload, flags=1),
        "wrong format": rebuild({**header, "format": "other"}, payload),
        "no tensors": rebuild({k: v for k, v in header.items() if k != "tensors"}, payload),
    }
    records = header["tensors"]
    clustered_at = next(i for i, r in enumerate(records) if r["enc"] == "clustered")

    def edit(i: int, **changes) -> dict:
        recs = [dict(r) for r in records]
        recs[i].update(changes)
        return {**header, "tensors": recs}

    cases["bad offset"] = rebuild(edit(1, offset=3), payload)
    cases["bad encoding"] = rebuild(edit(0, enc="int3"), payload)
    cases["bad shape"] = rebuild(edit(0, shape=[2, "x"]), payload)
    cases["k too large"] = rebuild(edit(clustered_at, k=300, bits=9), payload)
    cases["bad pos kind"] = rebuild(edit(clustered_at, pos={**records[clustered_at]["pos"], "kind": "rle"}), payload)
    cases["missing field"] = rebuild(edit(clustered_at, idx={}), payload)
    cases["short payload"] = rebuild(header, payload[:-3])
    for what, blob in cases.items():
        with pytest.raises(HwcError, match="corrupt .hwc artifact") as err:
            load_artifact(corrupt_with(good_file, blob))
        assert "\n" not in str(err.value), what


def test_wrong_architecture_config(good_file) -> None:
    header, _ = read_artifact(good_file)
    data = good_file.read_bytes()
    _, _, _, h_len, p_len = artifact.PREAMBLE.unpack_from(data)
    payload = data[artifact.PREAMBLE.size + h_len :][:p_len]
    wrong = rebuild({**header, "config": {**header["config"], "hidden": [32]}}, payload)
    with pytest.raises(HwcError, match="weights do not match the architecture"):
        load_artifact(corrupt_with(good_file, wrong))


def test_format_doc_matches_the_code() -> None:
    doc = DOC.read_text()
    assert artifact.HEADER_DICT.decode() in doc.splitlines()
    assert f"({len(artifact.HEADER_DICT)} bytes" in doc.replace("ASCII, ", "")
    assert "89 48 57 43 0D 0A 1A 0A" in doc and artifact.MAGIC == bytes.fromhex("894857430D0A1A0A")
    assert re.search(r"Preamble \(24 bytes", doc) and artifact.PREAMBLE.size == 24
