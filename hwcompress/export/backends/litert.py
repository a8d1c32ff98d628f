"""LiteRT (extra `tflite`): implemented in hwcompress.export.tflite."""

from hwcompress.export.capabilities import Capabilities

CAPABILITIES = Capabilities(
    name="litert", module="hwcompress.export.tflite", runtime="ai_edge_litert.interpreter",
    distribution="ai-edge-litert", extra="tflite", suffix=".tflite", artifact_kind="LiteRT (.tflite) model",
    aliases=("tflite",),
    # the converter unrolls the recurrent layers: a whole-utterance graph has a fixed T
    dynamic_whole=False,
    weights=("fp32", "int8", "int4", "mixed"),
    # FULLY_CONNECTED ops (litert-torch lowers LSTM/GRU gates and Linear to them), XNNPACK's
    # dynamic-range int4 kernels
    int4_kinds=("LSTM", "GRU", "Linear"),
    not_int4="ai-edge-quantizer's 4-bit recipe here takes FULLY_CONNECTED ops only; it offers {kind} int8 or fp32",
    # scales and integers patched into ai-edge-quantizer's file (tflite.exact_grid)
    grid_exact=True,
    layer_widths="hwcompress.export.tflite:layer_widths", widths_read_back=("fp32", "int8", "int4", "mixed"),
    emulated=True,
)
