"""torch -> .tflite with litert-torch; also the entry point of the converter subprocess.

litert-torch is kept out of the main environment (it would downgrade typing_extensions
and pydantic, and brings ~1 GB of jax/transformers), so tools/setup.sh puts it in
.venv-tflite (created with --system-site-packages, sharing this torch) and
export/tflite.py runs `python -m hwcompress.export._litert_convert PROGRAM.pt2
INPUTS.pt OUT.tflite` in that interpreter. The model crosses the process boundary as
a torch.export program, not a pickle, so its classes need not be importable there
(a script's or a test's own layers convert too). On failure the child prints one
`HWC-ERROR: ...` line to stderr and exits with ERROR_EXIT.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import torch

from hwcompress.errors import HwcError
from hwcompress.export import _graph as g
from hwcompress.export import _trace

ERROR_EXIT = 3
ERROR_TAG = "HWC-ERROR: "


def trace(model: torch.nn.Module, frames: int) -> tuple[torch.export.ExportedProgram, dict[str, torch.Tensor]]:
    """The program litert-torch will convert (T fixed to `frames`) and its sample inputs."""
    spec, state = _trace.sample_inputs(model, frames)
    kwargs = {g.SPEC: spec, **{g.state_name(i): s for i, s in enumerate(state)}}
    with _trace.eval_mode(model), warnings.catch_warnings():
        # nn.LSTM/GRU re-assign their _flat_weights list while traced: harmless
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
        try:
            # strict=False: what litert-torch itself uses, so re-exporting below is a no-op
            program = torch.export.export(_trace.Named(model).eval(), (), kwargs, strict=False)
        except Exception as exc:
            raise g.unsupported("LiteRT (torch.export)", exc) from None
    return program, kwargs


def convert_program(program: torch.export.ExportedProgram, kwargs: dict[str, torch.Tensor], dst: Path) -> None:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch

    try:
        edge = litert_torch.convert(program.module(), (), kwargs)
    except Exception as exc:  # MLIR lowering raises many types
        raise g.unsupported("LiteRT", exc) from None
    edge.export(str(dst))


def locate(message: str, program: torch.export.ExportedProgram) -> str:
    """Add the layer that calls the op named in `message` (from the program's module
    stack) so the one-line error says where to look."""
    m = re.search(r"operator (aten\.[\w.]+)", message)
    if not m:
        return message
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target) == m.group(1):
            stack = list((node.meta.get("nn_module_stack") or {}).values())
            # the first entry is our Named wrapper's `model` attribute, i.e. the root
            path, kind = stack[-1] if stack else ("model", "")
            name = path.removeprefix("model").lstrip(".") or "<root>"
            kind = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1].strip("'>")
            return message.replace(m.group(0), f"{m.group(0)} in layer {name} ({kind})", 1)
    return message


def tensor_layers(names: list[str], model: torch.nn.Module, layers: dict[str, str]) -> dict[str, str]:
    """Tensor name -> layer name (a key of `layers`: layer name -> module path, as
    models.cost.layer_paths gives) where a tensor's name shows the module it came from.
    litert-torch names a weight after the module scope it was traced in, one
    `<module class>_<attribute>` segment per module on the path (containers such as
    nn.ModuleList add no segment of their own, their index is the attribute), so the module
    path's chain of segments must end the name (before its ';N' suffix). Modules that trace
    without a segment of their own (a torch.fx GraphModule, as imported ONNX models are) break the
    full chain: a tensor no full chain ends is matched on the longest tail of segments that
    exactly one layer's chain ends with. Tensors still unmatched, or matched by two layers, are
    left out."""
    chains = {}
    for layer, path in layers.items():
        parts, module, chain = path.split("."), model, []
        for i, attr in enumerate(parts):
            module = module.get_submodule(attr)
            container = i + 1 < len(parts) and isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential,
                                                                   torch.nn.ModuleDict))
            if container:  # the next attribute (the index) is written with the item's class
                continue
            chain.append(f"{type(module).__module__}.{type(module).__qualname__}_{attr}")
        chains[layer] = chain
    out = {}
    for name in names:
        scope = name.split(";")[0]
        for drop in range(max((len(c) for c in chains.values()), default=0)):
            hits = [layer for layer, chain in chains.items()
                    if len(chain) > drop and scope.endswith("/" + "/".join(chain[drop:]))]
            if len(hits) == 1:
                out[name] = hits[0]
            if hits:
                break
    return out


def main(argv: list[str]) -> int:
    program_file, inputs_file, dst = argv
    program = torch.export.load(program_file)
    kwargs = torch.load(inputs_file, weights_only=True)
    try:
        convert_program(program, kwargs, Path(dst))
    except HwcError as exc:
        print(f"{ERROR_TAG}{exc}", file=sys.stderr)
        return ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
