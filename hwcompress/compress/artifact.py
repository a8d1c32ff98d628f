"""The `.hwc` compressed model file (layout: docs/hwc-format.md).

    preamble (24 B) | header (JSON, maybe deflated) | tensor payloads | CRC-32 (4 B)

Clustered weights are stored as codebook + sparse positions + bit-packed indices, each
stream optionally entropy coded (deflate/lzma) only when that makes it smaller; the choice
is recorded per stream. Everything is deterministic, so saving the same model with the
same options gives the same bytes, and nothing in the file depends on time or host.
Any damage (bad magic, truncation, checksum, malformed header or payload) is a HwcError
mentioning "corrupt", never a traceback.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hwcompress.compress.cluster import PRUNED, Clustered
from hwcompress.errors import HwcError
from hwcompress.models import zoo

MAGIC = b"\x89HWC\r\n\x1a\n"  # PNG-style: catches text-mode and 7-bit transfer damage
VERSION = 1
FORMAT = "hwcompress-artifact"
PREAMBLE = struct.Struct("<8sHHIQ")  # magic, version, flags, header length, payload length
TRAILER = struct.Struct("<I")  # CRC-32 of everything before it
FLAG_HEADER_DEFLATE = 1
CODECS = ("none", "deflate", "lzma")
# Preset dictionary for the header's deflate stream: the JSON keys and names every header
# repeats. It saves ~250 bytes per file, which is 3% of a tiny model's artifact. Part of
# format version 1 (reproduced in docs/hwc-format.md); changing it needs a new version.
HEADER_DICT = (
    b'{"format":"hwcompress-artifact","arch":"crn","arch":"gcrn","arch":"rnn",'
    b'"config":{"channels":[16,32,64,128,256],"hidden":[1024,1024],"cell":"gru","cell":"lstm","kt":2,"n_bins":161},'
    b'"meta":{"preset":"","trained":false,"trained":true},"tensors":['
    b'{"name":"dec_imag.0.conv.weight","name":"dec.0.conv.weight","name":"enc.0.conv.weight",'
    b'"name":"proj.weight","name":"out.weight",'
    b'{"name":"rnn.layers.0.weight_hh_l0","rnn.layers.1.bias_ih_l0","rnn.layers.1.bias_hh_l0",'
    b'"rnn.layers.0.weight_ih_l0",'
    b'{"name":"feat_mean","shape":[161],"enc":"fp32","filter":"none","codec":"none","offset":0,"length":644},'
    b'{"name":"feat_std","shape":[161],"enc":"fp16","filter":"shuffle","codec":"deflate","offset":644,"length":644},'
    b'"enc":"clustered","k":16,"bits":4,"nnz":,"pos":{"kind":"gaps","codec":"deflate","length":},'
    b'"idx":{"layout":"bytes","codec":"lzma","length":},'
    b'"enc":"clustered","k":16,"bits":4,"nnz":,"pos":{"kind":"bitmap","codec":"none","length":},'
    b'"idx":{"layout":"packed","codec":"none","length":},"offset":,"length":},'
    b'{"name":"rnn.layers.0.bias_ih_l0","shape":[64],"enc":"fp32","filter":"none","codec":"none","offset":,"length":256},'
)
DENSE_DTYPES = {"fp32": "<f4", "fp16": "<f2"}
MAX_NUMEL = 1 << 36  # sanity bound when reading shapes from a file
# load_artifact's bound on the weights a file may declare per byte of file. Measured with
# save_artifact (K=2, fp16 dense) on random 100 %-pruned presets: crn 593, lstm 541,
# crn-small 131 weights per byte; 99.9 % pruned crn: 301. So 8192 leaves >13x headroom.
MAX_WEIGHTS_PER_BYTE = 1 << 13


class _Corrupt(Exception):
    """Internal: what is wrong with the file; turned into HwcError with the path."""


# ------------------------------------------------------------------- stream coding


def _deflate(data: bytes, zdict: bytes | None = None) -> bytes:
    """Raw deflate (RFC 1951), level 9: no zlib wrapper, the file CRC covers integrity."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, **({"zdict": zdict} if zdict else {}))
    return c.compress(data) + c.flush()


def _compress(codec: str, data: bytes) -> bytes:
    if codec == "deflate":
        return _deflate(data)
    return lzma.compress(data, format=lzma.FORMAT_ALONE, preset=6)


def _decompress(codec: str, data: bytes, max_len: int) -> bytes:
    """Decode one stream, refusing to inflate beyond max_len (the size the record implies)."""
    if codec == "none":
        return data
    if codec == "deflate":
        d = zlib.decompressobj(-15)
        out = d.decompress(data, max_len + 1)
        if not d.eof or d.unused_data:
            raise _Corrupt("bad deflate stream")
    elif codec == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
        out = d.decompress(data, max_len + 1)
        if not d.eof or d.unused_data:
            raise _Corrupt("bad lzma stream")
    else:
        raise _Corrupt(f"unknown codec {codec!r}")
    if len(out) > max_len:
        raise _Corrupt("stream inflates beyond its declared size")
    return out


def _smallest(variants: list[tuple[str, bytes, bool]], entropy: bool) -> tuple[str, str, bytes]:
    """Pick the smallest (variant, codec, bytes) over variants x codecs. A variant with
    allow_raw=False only exists to feed a codec (e.g. unpacked index bytes). Ties keep
    the earlier option, so the choice is deterministic."""
    best: tuple[str, str, bytes] | None = None
    for variant, data, allow_raw in variants:
        options = [("none", data)] if allow_raw else []
        if entropy:
            z = _compress("deflate", data)
            options.append(("deflate", z))
            # lzma is slow on big streams; it only ever helps where deflate already found structure
            if len(z) < 0.99 * len(data):
                options.append(("lzma", _compress("lzma", data)))
        for codec, blob in options:
            if best is None or len(blob) < len(best[2]):
                best = (variant, codec, blob)
    assert best is not None
    return best


# ------------------------------------------------------------------ position streams


def _varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low group first, high bit = more follows."""
    v = values.astype(np.uint64)
    nbytes = np.ones(v.size, dtype=np.int64)
    for shift in range(7, 64, 7):
        nbytes += v >= (np.uint64(1) << np.uint64(shift))
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    starts = np.cumsum(nbytes) - nbytes
    for b in range(int(nbytes.max(initial=0))):
        sel = nbytes > b
        group = (v[sel] >> np.uint64(7 * b)) & np.uint64(0x7F)
        more = np.where(nbytes[sel] - 1 > b, 0x80, 0).astype(np.uint64)
        out[starts[sel] + b] = (group | more).astype(np.uint8)
    return out.tobytes()


def _varint_decode(data: bytes, count: int) -> np.ndarray:
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr < 0x80)
    if ends.size != count or (arr.size and arr[-1] >= 0x80):
        raise _Corrupt("gap stream does not hold one varint per nonzero")
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    nbytes = ends - starts + 1
    if nbytes.size and nbytes.max() > 9:  # 9 groups = 63 bits, plenty for positions
        raise _Corrupt("varint too long")
    out = np.zeros(count, dtype=np.uint64)
    for b in range(int(nbytes.max(initial=0))):
        sel = nbytes > b
        out[sel] |= (arr[starts[sel] + b].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * b)
    return out


def _position_variants(mask: np.ndarray) -> list[tuple[str, bytes, bool]]:
    """Bitmap (1 bit per weight) and gaps (varint of zeros skipped before each nonzero):
    the bitmap wins for moderate sparsity, gaps for high sparsity."""
    if mask.all():
        return [("all", b"", True)]
    pos = np.flatnonzero(mask)
    gaps = np.diff(pos, prepend=-1) - 1
    return [("bitmap", np.packbits(mask).tobytes(), True), ("gaps", _varint_encode(gaps), True)]


def _decode_positions(kind: str, data: bytes, numel: int, nnz: int) -> np.ndarray:
    if kind == "all":
        if data or nnz != numel:
            raise _Corrupt("'all' positions with a stream or nnz != numel")
        return np.arange(numel, dtype=np.int64)
    if kind == "bitmap":
        if len(data) != (numel + 7) // 8:
            raise _Corrupt("bitmap length does not match the shape")
        mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel).astype(bool)
        pos = np.flatnonzero(mask)
    elif kind == "gaps":
        gaps = _varint_decode(data, nnz)
        if gaps.size and gaps.max() >= numel:
            raise _Corrupt("gap beyond the tensor")
        pos = np.cumsum(gaps.astype(np.int64) + 1) - 1
    else:
        raise _Corrupt(f"unknown position encoding {kind!r}")
    if pos.size != nnz or (pos.size and pos[-1] >= numel):
        raise _Corrupt("positions do not match nnz/shape")
    return pos


# -------------------------------------------------------------------- index streams


def index_bits(k: int) -> int:
    """Bits per stored index: ceil(log2 K); 0 when there is at most one centroid."""
    return max(k - 1, 0).bit_length()


def _pack_indices(idx: np.ndarray, bits: int) -> bytes:
    """Each index as `bits` bits, most significant first, concatenated, zero padded."""
    if bits == 0 or idx.size == 0:
        return b""
    planes = np.unpackbits(idx.astype(np.uint8)[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(planes.ravel()).tobytes()


def _unpack_indices(data: bytes, n: int, bits: int) -> np.ndarray:
    if bits == 0:
        if data:
            raise _Corrupt("index stream for a single-centroid layer")
        return np.zeros(n, dtype=np.uint8)
    if len(data) != (n * bits + 7) // 8:
        raise _Corrupt("index stream length does not match nnz x bits")
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n * bits).reshape(n, bits)
    return np.packbits(np.pad(planes, ((0, 0), (8 - bits, 0))), axis=1).ravel()


def _index_variants(idx: np.ndarray, bits: int, entropy: bool) -> list[tuple[str, bytes, bool]]:
    """Packed bits, plus (for the entropy coders only) one byte per index: when indices
    straddle byte boundaries (3, 5, 6, 7 bits) the coders cannot see their distribution
    in the packed stream (e.g. K=64 Laplacian weights: packed+lzma 5.4 bits/index,
    bytes+lzma 4.8, entropy 4.7); with 1, 2, 4 or 8 bits packed bytes already align."""
    variants = [("packed", _pack_indices(idx, bits), True)]
    if entropy and bits in (3, 5, 6, 7):
        variants.append(("bytes", idx.astype(np.uint8).tobytes(), False))
    return variants


def _decode_indices(layout: str, data: bytes, n: int, bits: int, k: int) -> np.ndarray:
    if layout == "packed":
        idx = _unpack_indices(data, n, bits)
    elif layout == "bytes":
        if len(data) != n:
            raise _Corrupt("index bytes do not match nnz")
        idx = np.frombuffer(data, dtype=np.uint8)
    else:
        raise _Corrupt(f"unknown index layout {layout!r}")
    if idx.size and int(idx.max()) >= k:
        raise _Corrupt("index beyond the codebook")
    return idx


# ----------------------------------------------------------------- tensor payloads


def _encode_dense(t: torch.Tensor, dtype: str, entropy: bool) -> tuple[dict, bytes]:
    """fp32/fp16 little-endian; with entropy coding, a byte-shuffled copy (all first
    bytes, then all second bytes, ...) is also tried: sign/exponent bytes compress well."""
    width = int(DENSE_DTYPES[dtype][-1])
    raw = np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy().astype(DENSE_DTYPES[dtype]))
    data = raw.tobytes()
    shuffled = raw.view(np.uint8).reshape(-1, width).T.tobytes()
    variant, codec, blob = _smallest([("none", data, True), ("shuffle", shuffled, False)], entropy)
    return {"enc": dtype, "filter": variant, "codec": codec}, blob


def _decode_dense(rec: dict, blob: bytes, shape: tuple[int, ...], numel: int) -> torch.Tensor:
    dtype = DENSE_DTYPES[rec["enc"]]
    width = int(dtype[-1])
    data = _decompress(rec["codec"], blob, numel * width)
    if len(data) != numel * width:
        raise _Corrupt("dense payload length does not match the shape")
    if rec["filter"] == "shuffle":
        data = np.frombuffer(data, dtype=np.uint8).reshape(width, numel).T.tobytes()
    elif rec["filter"] != "none":
        raise _Corrupt(f"unknown filter {rec['filter']!r}")
    arr = np.frombuffer(data, dtype=dtype).astype(np.float32)
    return torch.from_numpy(arr.reshape(shape).copy())


def _encode_clustered(c: Clustered, entropy: bool) -> tuple[dict, bytes]:
    flat = c.indices.reshape(-1).numpy()
    mask = flat != PRUNED
    idx = flat[mask]
    bits = index_bits(c.k)
    codebook = np.ascontiguousarray(c.codebook.detach().cpu().numpy().astype("<f4")).tobytes()
    pos_kind, pos_codec, pos = _smallest(_position_variants(mask), entropy)
    idx_layout, idx_codec, ids = _smallest(_index_variants(idx, bits, entropy), entropy)
    rec = {
        "enc": "clustered",
        "k": c.k,
        "bits": bits,
        "nnz": int(mask.sum()),
        "pos": {"kind": pos_kind, "codec": pos_codec, "length": len(pos)},
        "idx": {"layout": idx_layout, "codec": idx_codec, "length": len(ids)},
    }
    return rec, codebook + pos + ids


def _decode_clustered(rec: dict, blob: bytes, shape: tuple[int, ...], numel: int) -> Clustered:
    k, nnz, bits = _int(rec, "k"), _int(rec, "nnz"), _int(rec, "bits")
    pos_rec, idx_rec = rec["pos"], rec["idx"]
    if not 0 <= k <= 256 or bits != index_bits(k) or nnz > numel or (k == 0 and nnz):
        raise _Corrupt("inconsistent k/bits/nnz")
    cut1 = 4 * k
    cut2 = cut1 + _int(pos_rec, "length")
    if cut2 + _int(idx_rec, "length") != len(blob):
        raise _Corrupt("stream lengths do not add up to the payload")
    codebook = np.frombuffer(blob[:cut1], dtype="<f4").astype(np.float32)
    pos_bound = (numel + 7) // 8 if pos_rec["kind"] == "bitmap" else 9 * nnz
    pos = _decode_positions(pos_rec["kind"], _decompress(pos_rec["codec"], blob[cut1:cut2], pos_bound), numel, nnz)
    ids = _decode_indices(idx_rec["layout"], _decompress(idx_rec["codec"], blob[cut2:], nnz), nnz, bits, k)
    indices = np.full(numel, PRUNED, dtype=np.int16)
    indices[pos] = ids
    return Clustered(torch.from_numpy(codebook.copy()), torch.from_numpy(indices.reshape(shape)), tuple(shape))


# ---------------------------------------------------------------------------- saving


def _check_clustered(state: dict[str, torch.Tensor], clustered: dict[str, Clustered]) -> None:
    for name, c in clustered.items():
        if name not in state:
            raise HwcError(f"clustered tensor {name!r} is not in the model")
        if tuple(state[name].shape) != tuple(c.shape):
            raise HwcError(f"clustered tensor {name!r} has shape {list(c.shape)}, model has {list(state[name].shape)}")


def _json(obj: dict) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise HwcError(f"artifact header is not plain JSON (check meta): {exc}") from None


def _tensor_report(name: str, t: torch.Tensor, rec: dict, nbytes: int) -> dict:
    params = t.numel()
    return {
        "name": name,
        "params": params,
        "nonzeros": rec["nnz"] if rec["enc"] == "clustered" else int(torch.count_nonzero(t)),
        "K": rec.get("k"),
        "encoding": rec["enc"],
        "bits_per_weight": nbytes * 8 / params if params else 0.0,
        "bytes": nbytes,
    }


def encode_artifact(
    model: zoo.SEModel,
    clustered: dict[str, Clustered] | None = None,
    meta: dict | None = None,
    entropy: bool = True,
    dense: str = "fp32",
) -> tuple[bytes, dict]:
    """The .hwc file bytes and the size report (see save_artifact)."""
    if dense not in DENSE_DTYPES:
        raise HwcError(f"unknown dense encoding {dense!r}: use fp32 or fp16")
    clustered = clustered or {}
    state = model.state_dict()
    _check_clustered(state, clustered)
    records, payloads, report = [], [], []
    offset = 0
    for name, t in state.items():
        if name in clustered:
            rec, blob = _encode_clustered(clustered[name], entropy)
        else:
            if t.dtype != torch.float32:
                raise HwcError(f"{name}: only float32 tensors can be stored (got {t.dtype})")
            rec, blob = _encode_dense(t, dense, entropy)
        records.append({"name": name, "shape": list(t.shape), **rec, "offset": offset, "length": len(blob)})
        payloads.append(blob)
        report.append(_tensor_report(name, t, rec, len(blob)))
        offset += len(blob)
    meta = getattr(model, "meta", {}) if meta is None else meta
    fields = {"format": FORMAT, "arch": model.arch, "config": model.config, "meta": meta, "tensors": records}
    if model.arch == "user":  # a FrontEndModel (hwcompress.models.wrap): what its features and output are
        fields["front_end"] = model.front_end.to_dict()
    header = _json(fields)
    flags = 0
    if entropy:
        packed = _deflate(header, HEADER_DICT)
        if len(packed) < len(header):
            header, flags = packed, FLAG_HEADER_DEFLATE
    body = PREAMBLE.pack(MAGIC, VERSION, flags, len(header), offset) + header + b"".join(payloads)
    blob = body + TRAILER.pack(zlib.crc32(body))
    params = sum(t.numel() for t in state.values())
    totals = {
        "tensors": report,
        "params": params,
        "nonzeros": sum(r["nonzeros"] for r in report),
        "header_bytes": PREAMBLE.size + len(header) + TRAILER.size,
        "payload_bytes": offset,
        "size_bytes": len(blob),
        "dense_fp32_bytes": 4 * params,
        "compression_ratio": 4 * params / len(blob),
        "bits_per_weight": len(blob) * 8 / params if params else 0.0,
    }
    return blob, totals


def save_artifact(
    path: str | Path,
    model: zoo.SEModel,
    clustered: dict[str, Clustered] | None = None,
    meta: dict | None = None,
    entropy: bool = True,
    dense: str = "fp32",
) -> dict:
    """Write `model` as a .hwc file (atomically) and return the size report.

    clustered: name -> Clustered for weights stored as codebook + indices (the stored
        values are Clustered.dense(), whatever the model parameter holds); every other
        tensor (biases, buffers, unclustered weights) is stored as `dense` (fp32 default,
        fp16 lossy option).
    meta: JSON metadata (default: model.meta). entropy: try deflate/lzma per stream and
        deflate the header, each only when smaller.
    Report: per-tensor name/params/nonzeros/K/encoding/bits_per_weight/bytes, and totals
    size_bytes (== file size), dense_fp32_bytes (4 B x every parameter and buffer),
    compression_ratio, header_bytes, payload_bytes.
    """
    blob, report = encode_artifact(model, clustered, meta, entropy, dense)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


# ---------------------------------------------------------------------------- loading


def _int(rec: dict, key: str) -> int:
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Corrupt(f"field {key!r} is not a non-negative integer")
    return v


def _parse_header(data: bytes, flags: int) -> dict:
    try:
        if flags & FLAG_HEADER_DEFLATE:
            d = zlib.decompressobj(-15, zdict=HEADER_DICT)
            data = d.decompress(data)
            if not d.eof or d.unused_data:
                raise _Corrupt("malformed header: bad deflate stream")
        header = json.loads(data.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise _Corrupt(f"malformed header: {type(exc).__name__}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _Corrupt("malformed header: not a hwcompress artifact header")
    if not isinstance(header.get("tensors"), list) or not isinstance(header.get("config"), dict):
        raise _Corrupt("malformed header: missing tensors/config")
    if not isinstance(header.get("arch"), str):
        raise _Corrupt("malformed header: arch is not a string")
    if not isinstance(header.get("meta", {}), dict):
        raise _Corrupt("malformed header: meta is not an object")
    return header


def _split(data: bytes, path: Path) -> tuple[int, bytes, bytes]:
    """Check preamble, length and checksum; return (flags, header bytes, payload bytes)."""
    if len(data) < PREAMBLE.size + TRAILER.size:
        raise _Corrupt("truncated")
    magic, version, flags, header_len, payload_len = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _Corrupt("bad magic: not a .hwc file")
    if version != VERSION:
        raise HwcError(f"{path}: unsupported .hwc version {version} (this hwcompress reads version {VERSION})")
    expected = PREAMBLE.size + header_len + payload_len + TRAILER.size
    if len(data) < expected:
        raise _Corrupt(f"truncated: {len(data)} of {expected} bytes")
    if len(data) > expected:
        raise _Corrupt(f"{len(data) - expected} trailing bytes")
    (crc,) = TRAILER.unpack_from(data, expected - TRAILER.size)
    if zlib.crc32(data[: expected - TRAILER.size]) != crc:
        raise _Corrupt("checksum mismatch")
    start = PREAMBLE.size + header_len
    return flags, data[PREAMBLE.size : start], data[start : start + payload_len]


def _decode_tensor(rec: dict, payload: bytes, offset: int) -> tuple[str, Clustered | torch.Tensor]:
    name, shape = rec["name"], rec["shape"]
    if not isinstance(name, str) or not isinstance(shape, list):
        raise _Corrupt("tensor record without name/shape")
    shape = tuple(_int({"d": d}, "d") for d in shape)
    numel = math.prod(shape)
    if numel > MAX_NUMEL or _int(rec, "offset") != offset or offset + _int(rec, "length") > len(payload):
        raise _Corrupt(f"tensor {name!r}: bad shape or offsets")
    if rec["enc"] not in ("clustered", *DENSE_DTYPES):
        raise _Corrupt(f"tensor {name!r}: unknown encoding {rec['enc']!r}")
    blob = payload[offset : offset + rec["length"]]
    decode: Callable = _decode_clustered if rec["enc"] == "clustered" else _decode_dense
    return name, decode(rec, blob, shape, numel)


def read_artifact(path: str | Path) -> tuple[dict, dict[str, Clustered | torch.Tensor]]:
    """Header (dict) and tensors (Clustered for clustered weights, float32 tensors else)."""
    path = Path(path)
    if not path.is_file():
        raise HwcError(f"{path}: no such model file")
    data = path.read_bytes()
    try:
        flags, header_bytes, payload = _split(data, path)
        header = _parse_header(header_bytes, flags)
        tensors: dict[str, Clustered | torch.Tensor] = {}
        offset = 0
        for rec in header["tensors"]:
            name, value = _decode_tensor(rec, payload, offset)
            tensors[name] = value
            offset += rec["length"]
        if offset != len(payload):
            raise _Corrupt("payload longer than its tensor records")
    except _Corrupt as exc:
        raise HwcError(f"{path}: corrupt .hwc artifact ({exc})") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, MemoryError, zlib.error, lzma.LZMAError) as exc:
        raise HwcError(f"{path}: corrupt .hwc artifact (malformed record: {type(exc).__name__})") from None
    return header, tensors


def _check_header_config(path: Path) -> None:
    """Before any tensor is decoded: the header's config must be a sane one for its arch
    and imply exactly the tensor shapes the header lists, and those may hold at most
    MAX_WEIGHTS_PER_BYTE weights per byte of file (a crafted header could otherwise make
    decoding a tiny file allocate gigabytes)."""
    from hwcompress.models.io import check_weights  # io imports us lazily

    if not path.is_file():
        raise HwcError(f"{path}: no such model file")
    data = path.read_bytes()
    try:
        flags, header_bytes, _ = _split(data, path)
        header = _parse_header(header_bytes, flags)
        shapes: dict[str, tuple[int, ...]] = {}
        for rec in header["tensors"]:
            name, shape = rec["name"], rec["shape"]
            if not isinstance(name, str) or not isinstance(shape, list) or name in shapes:
                raise _Corrupt("tensor record without name/shape, or named twice")
            shapes[name] = tuple(_int({"d": d}, "d") for d in shape)
    except _Corrupt as exc:
        raise HwcError(f"{path}: corrupt .hwc artifact ({exc})") from None
    except (KeyError, TypeError) as exc:
        raise HwcError(f"{path}: corrupt .hwc artifact (malformed record: {type(exc).__name__})") from None
    if header["arch"] == "user":  # a model of your code: its shapes are checked against the rebuilt model
        wanted = sum(math.prod(s) for s in shapes.values())
        if wanted > MAX_WEIGHTS_PER_BYTE * len(data):
            raise HwcError(f"{path}: header asks for {wanted:,} weights, more than a file of this size can hold: "
                           "corrupt or crafted model file")
        return
    check_weights(header["arch"], header["config"], shapes, str(path), max_params=MAX_WEIGHTS_PER_BYTE * len(data))


def load_artifact(path: str | Path, template=None) -> zoo.SEModel:
    """The model stored in a .hwc file, with decompressed weights, in eval mode, `.meta` set.
    `template`: for a model of your own code, the dense model it was compressed from."""
    from hwcompress.models.io import FORMAT as MODEL_FORMAT, model_from_payload  # io imports us lazily

    path = Path(path)
    _check_header_config(path)
    header, tensors = read_artifact(path)
    state = {n: v.dense() if isinstance(v, Clustered) else v for n, v in tensors.items()}
    payload = {
        "format": MODEL_FORMAT,
        "arch": header.get("arch"),
        "config": header["config"],
        "state_dict": state,
        "meta": header.get("meta", {}),
    }
    if "front_end" in header:
        payload["front_end"] = header["front_end"]
    try:
        return model_from_payload(payload, str(path), template)
    except HwcError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, RuntimeError, MemoryError) as exc:
        # the checksum only proves the file is as written: a foreign writer may still give nonsense config
        raise HwcError(f"{path}: corrupt .hwc artifact (cannot build {header['arch']!r}: {type(exc).__name__})") from None
