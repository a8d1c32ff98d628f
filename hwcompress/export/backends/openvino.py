"""OpenVINO (extra `openvino`): implemented in hwcompress.export.openvino."""

from hwcompress.export.capabilities import Capabilities

CAPABILITIES = Capabilities(
    name="openvino", module="hwcompress.export.openvino", runtime="openvino", distribution="openvino",
    extra="openvino", suffix=".xml", artifact_kind="OpenVINO IR", companion_suffixes=(".bin",), aliases=("ov",),
    weights=("fp32", "int8", "int4", "mixed"),
    # the CPU plugin's FullyConnected (a MatMul) runs u4/i4 weights in its kernel while it
    # decompresses convolution weights to f32 at compile time (openvino.executed_widths)
    int4_kinds=("LSTM", "GRU", "Linear"),
    not_int4=("its CPU plugin decompresses {kind} weights to f32 when the model compiles; it offers "
              "them int8 storage (computed in f32) or fp32"),
    # i4/i8 constants and an f32 step written into the IR (openvino.quantize)
    grid_exact=True,
    activations=("f32", "bf16", "f16"),
    layer_widths="hwcompress.export.openvino:layer_widths", widths_read_back=("fp32", "int8", "int4", "mixed"),
    layer_profiler="hwcompress.export.openvino:layer_times",
    layer_profiler_source=("OpenVINO performance counters (PERF_COUNT, real_time of EXECUTED nodes), "
                           "median per node over {runs} hops"),
)
