"""TFLite Micro (extra `tflm`): fully integer 16x8 .tflite files run by the TFLite Micro
interpreter (targets/cortex-m7.toml); implemented in hwcompress.export.tflm."""

from hwcompress.export.capabilities import Capabilities

CAPABILITIES = Capabilities(
    name="tflite-micro", module="hwcompress.export.tflm", runtime="tflite_micro", distribution="tflite-micro",
    extra="tflm", suffix=".tflite", artifact_kind="TFLite Micro (.tflite) model",
    aliases=("tflm", "tflite_micro", "tfl-micro"),
    # one suffix, two runtimes: only this exporter writes 16x8 files and LUT-decoded weights
    # (TFLM_DECODE, which LiteRT cannot run), so such a file runs here
    claims_file="hwcompress.export.tflm:is_micro_file",
    modes=("stream",), dynamic_whole=False, weights=("int8",), default_weights="int8",
    activations=("int16",), microcontroller=True,
)
