"""Per-operator cycle prediction of a TFLite Micro model file on a microcontroller target.

The roofline (latency_model.py) prices the *torch* model's layers; on a microcontroller that
misses most of the per-hop cost: TFLite Micro runs one interpreter operator per graph node,
decodes every LUT-compressed weight tensor on each invoke (TFLM_DECODE), computes the ops it
has no integer kernel for in float, and moves data for every reshape, slice and concatenation
the converter emitted. So this module reads the exported .tflite itself and prices every
operator in it with the target's `[cycles]` figures (targets/<name>.toml):

    cycles(op) = op_dispatch + max(MACs x mac_<precision>, flash weight bytes x flash_read)
                 (FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, BATCH_MATMUL)
               = op_dispatch + weights decoded x decode                         (TFLM_DECODE)
               = op_dispatch + output elements x <kind figure>                  (everything else)

Figures are *predicted*, never measured: no Cortex-M is attached here. Each figure carries its
provenance in the target file; where a public CMSIS-NN figure exists for a comparable kernel the
comparison is committed (benchmarks/mcu_cycles.md, made by benchmarks/mcu_cycles.py).

Written by hand: no library prices a TFLite Micro graph per op for a Cortex-M (Arm's Vela and
ST's X-CUBE-AI estimate their own runtimes only, and neither runs here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hwcompress.errors import HwcError
from hwcompress.targets import CYCLE_UNITS, Target

#: ops whose cost is multiply-accumulates over a weight tensor (input 1)
MAC_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "BATCH_MATMUL")
#: float ops that call libm per element
TRANSCENDENTAL = ("EXP", "LOG", "TANH", "LOGISTIC", "SQRT", "RSQRT", "POW", "SIN", "COS")
#: int16 activations TFLM computes from a table with interpolation
INT_ACTIVATIONS = ("TANH", "LOGISTIC", "EXP", "LOG", "HARD_SWISH", "ELU")
#: data movement: one read and one write per element, no arithmetic
COPY_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "STRIDED_SLICE", "SLICE", "TRANSPOSE",
            "PAD", "PADV2", "SPLIT", "SPLIT_V", "PACK", "UNPACK", "GATHER", "BROADCAST_TO", "MIRROR_PAD")
_PRECISION = {"INT8": "s8", "INT16": "s16", "FLOAT32": "f32"}


@dataclass(frozen=True)
class OpCost:
    """One operator of the file, priced."""
    index: int
    op: str
    precision: str          # s8 / s16 / f32 (input activation type), "-" where none
    macs: int
    elements: int           # output elements (decoded weights for TFLM_DECODE)
    flash_bytes: int        # weight bytes a MAC op reads from flash (0 for decoded weights: arena)
    figure: str             # which [cycles] figure priced it
    cycles: float
    bound: str              # compute / flash / elements / dispatch


def _cycles(target: Target) -> dict[str, float]:
    if not target.cycles:
        raise HwcError(f"target {target.name!r} has no [cycles] table: per-op cycle prediction needs one "
                       f"(see targets/cortex-m7.toml)")
    return {k: target.cycles[k].value for k in CYCLE_UNITS}


def op_costs(data: bytes, target: Target) -> list[OpCost]:
    """Every operator of the main subgraph of a .tflite file, in execution order, priced with
    `target`'s cycle figures."""
    from hwcompress.export import tflm

    c = _cycles(target)
    fb = tflm._schema()
    names, types = tflm._names(fb.BuiltinOperator), tflm._names(fb.TensorType)
    model = tflm._read_model(data)
    sub = model.subgraphs[0]

    def tensor(i: int):
        return sub.tensors[int(i)]

    def shape(i: int) -> list[int]:
        t = tensor(i)
        return [int(d) for d in (t.shape if t.shape is not None else [])]

    def is_const(i: int) -> bool:
        return model.buffers[tensor(i).buffer].data is not None

    decoded = set()  # tensors a TFLM_DECODE writes into the arena
    rows = []
    for k, op in enumerate(sub.operators or []):
        name = names.get(tflm._builtin(model, op), "?")
        code = model.operatorCodes[op.opcodeIndex]
        if name == "CUSTOM":
            name = code.customCode.decode(errors="replace") if code.customCode else "CUSTOM"
        ins = [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0]
        outs = [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0]
        acts = [i for i in ins if not is_const(i)]
        precision = _PRECISION.get(types.get(tensor(acts[0]).type, "") if acts else "", "-")
        out_elements = int(sum(np.prod(shape(o)) for o in outs))
        macs = flash = 0
        if name == "TFLM_DECODE":  # inputs: (encoded indices, ancillary DCM + value tables) per output
            decoded.update(outs)
            per, fast = 0.0, True
            for anc, out in zip(ins[1::2], outs):
                bits = model.buffers[tensor(anc).buffer].data[5] & 0x07
                # TFLM has unrolled int8 decoders for 2, 3 and 4-bit indices; other widths take
                # its generic bit-extracting loop (decode_state_lut.cc)
                quick = bits in (2, 3, 4) and tensor(out).type == fb.TensorType.INT8
                fast &= quick
                per += c["decode" if quick else "decode_generic"] * int(np.prod(shape(out)))
            figure, bound = ("decode" if fast else "decode_generic"), "elements"
        elif name in MAC_OPS and len(ins) >= 2:
            w = shape(ins[1])
            if name == "TRANSPOSE_CONV":  # inputs: output shape, weights, input
                macs = int(np.prod(shape(ins[2]))) * int(np.prod(w[:3])) if len(ins) > 2 else 0
            elif name == "DEPTHWISE_CONV_2D":
                macs = out_elements * int(np.prod(w[1:3]))
            elif name == "BATCH_MATMUL":
                macs = out_elements * (shape(ins[0])[-1] if shape(ins[0]) else 0)
            else:  # FULLY_CONNECTED: [out, in]; CONV_2D: [cout, kh, kw, cin]
                macs = out_elements * int(np.prod(w[1:]))
            if is_const(ins[1]) and ins[1] not in decoded:
                flash = len(model.buffers[tensor(ins[1]).buffer].data)
            figure = f"mac_{precision if precision != '-' else 's8'}"
            compute, reads = macs * c[figure], flash * c["flash_read"]
            per, bound = max(compute, reads), "compute" if compute >= reads else "flash"
        elif name in COPY_OPS:
            figure, per, bound = "copy", c["copy"] * out_elements, "elements"
        elif precision == "f32" and name in TRANSCENDENTAL:
            figure, per, bound = "transcendental_f32", c["transcendental_f32"] * out_elements, "elements"
        elif precision == "s16" and name in INT_ACTIVATIONS:
            figure, per, bound = "activation_int16", c["activation_int16"] * out_elements, "elements"
        elif precision == "f32":
            figure, per, bound = "element_f32", c["element_f32"] * out_elements, "elements"
        else:  # integer elementwise, QUANTIZE / DEQUANTIZE, comparisons, selects
            figure, per, bound = "element_int", c["element_int"] * out_elements, "elements"
        cycles = c["op_dispatch"] + per
        if per < c["op_dispatch"]:
            bound = "dispatch"
        rows.append(OpCost(k, name, precision, int(macs), out_elements, int(flash), figure, float(cycles), bound))
    return rows


def predict_tflm(data: bytes, target: Target) -> dict:
    """Predicted per-invoke (= per-hop) latency of a TFLite Micro file on `target`: the total, the
    cycles per figure, and every operator's row. Labelled predicted; says which figures are
    estimates."""
    rows = op_costs(data, target)
    clock = target.cycles["clock_mhz"].value * 1e6
    total = sum(r.cycles for r in rows)
    by_figure: dict[str, dict] = {}
    for r in rows:
        f = by_figure.setdefault(r.figure, {"ops": 0, "cycles": 0.0, "macs": 0, "elements": 0})
        f["ops"] += 1
        f["cycles"] += r.cycles
        f["macs"] += r.macs
        f["elements"] += r.elements
    for f in by_figure.values():
        f["ms"] = f["cycles"] / clock * 1e3
        f["share"] = f["cycles"] / total if total else 0.0
    kinds = {k: target.cycles[k].kind for k in CYCLE_UNITS}
    estimates = sorted(k for k, v in kinds.items() if v == "estimate")
    return {
        "target": target.name,
        "runtime": "tflite-micro",
        "latency_ms": total / clock * 1e3,
        "cycles": total,
        "clock_mhz": clock / 1e6,
        "latency_source": "predicted",
        "latency_model": "per-op cycles",
        "how": (f"per-op cycle model of the exported file ({len(rows)} TFLite Micro operators priced with the "
                f"[cycles] figures of {target.source or target.name}: dispatch + max(MACs x cycles/MAC, flash "
                f"weight bytes x cycles/byte) or elements x cycles/element; LUT weights decoded every invoke); "
                f"figures that are estimates: {', '.join(estimates) if estimates else 'none'}"),
        "macs": sum(r.macs for r in rows),
        "ops": len(rows),
        "by_figure": dict(sorted(by_figure.items(), key=lambda kv: -kv[1]["cycles"])),
        "figures": {k: target.cycles[k].to_dict() for k in CYCLE_UNITS},
        "layers": [asdict(r) | {"ms": r.cycles / clock * 1e3} for r in rows],
    }
