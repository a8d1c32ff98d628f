"""hwcompress: hardware-aware compression of speech-enhancement networks.

The Python API takes a model object where the command line takes `--model`:

    import hwcompress
    from hwcompress.models.frontend import FrontEnd

    model = hwcompress.wrap(MyNet(), FrontEnd(feature="log-power", output="magnitude-mask",
                                               gain_floor_db=-25))          # any whole-sequence nn.Module
    # or: hwcompress.load_model("net.py:build", weights="net.pt"), load_model("nsnet2"), ...
    hwcompress.compress(model, "net.hwc", sparsity=0.5, codebook=16)     # -> the artifact report
    hwcompress.fit(model, target="raspberrypi4", budget_ms=8, out="fit-pi4")   # -> the fit report

See docs/your-model.md. Imports are deferred: `import hwcompress` does not load torch.
"""

from __future__ import annotations

from hwcompress.api import compress, fit, load_model, wrap

__all__ = ["compress", "fit", "load_model", "wrap"]
