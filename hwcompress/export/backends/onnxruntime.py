"""ONNX Runtime (a core dependency): implemented in hwcompress.export.onnx."""

from hwcompress.export.capabilities import Capabilities

CAPABILITIES = Capabilities(
    name="onnxruntime", module="hwcompress.export.onnx", runtime="onnxruntime", distribution="onnxruntime",
    extra=None, suffix=".onnx", artifact_kind="ONNX model", aliases=("onnx", "ort"),
    weights=("fp32", "int8", "int4", "mixed"),
    # MatMulNBits replaces MatMul only (the recurrent cells are exported as matmuls for it)
    int4_kinds=("LSTM", "GRU", "Linear"), not_int4="MatMulNBits replaces MatMul only; it offers {kind} int8 or fp32",
    # quantize_dynamic overrides and MatMulNBits rewritten with the grid's step (onnx.quantize)
    grid_exact=True,
    # quantize_dynamic has an integer LSTM (DynamicQuantizeLSTM) but no integer GRU (nor
    # ConvTranspose): GRU runs at fp32 speed (measured: GRU models' int8/fp32 latency ratio 1.0);
    # its weights are still stored at 8 bits (int8 behind a DequantizeLinear: onnx.weight_only_int8)
    float_kinds_when_quantized=("GRU",),
    # MatMulNBits nodes hold the 4-bit layers, the rest read as int8 (so not read back for int8)
    layer_widths="hwcompress.export.onnx:model_layer_widths", widths_read_back=("fp32", "int4", "mixed"),
    layer_profiler="hwcompress.export.onnx:layer_times",
    layer_profiler_source="ONNX Runtime profiler (enable_profiling, *_kernel_time events), median per node over {runs} hops",
)
