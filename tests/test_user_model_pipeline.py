"""A model no one in hwcompress wrote, through the whole pipeline (issue 13's acceptance):
compress with structured pruning and clustering (Python API), the narrower model in a .hwc
and back (rebuilt from the user's code, never from the file alone), streaming export to
ONNX Runtime, OpenVINO and LiteRT with parity to torch.

The model (written into the test's tmp folder): Linear -> PReLU -> causal Conv1d over time
(F.pad (k-1, 0)) -> LayerNorm -> two single-layer LSTMs, the second with a residual Linear
skip -> Linear head -> sigmoid magnitude mask."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import hwcompress
from hwcompress.compress.groups import model_groups
from hwcompress.errors import HwcError
from hwcompress.export import get_backend
from hwcompress.export.check import check_parity
from hwcompress.models.cost import count_params
from hwcompress.models.io import load_model

NET = """
import torch
import torch.nn.functional as F
from torch import nn
from hwcompress.models.frontend import FrontEnd

FRONT_END = FrontEnd(feature="log-power", output="magnitude-mask", gain_floor_db=-30)


class Net(nn.Module):
    def __init__(self, hidden=24, k=3):
        super().__init__()
        self.k = k
        self.inp = nn.Linear(161, hidden)
        self.act = nn.PReLU(hidden)
        self.conv = nn.Conv1d(hidden, hidden, k)
        self.norm = nn.LayerNorm(hidden)
        self.lstm0 = nn.LSTM(hidden, hidden, batch_first=True)
        self.lstm1 = nn.LSTM(hidden, hidden, batch_first=True)
        self.skip = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 161)

    def forward(self, x):
        h = self.act(self.inp(x / 10).transpose(1, 2))
        c = self.norm(self.conv(F.pad(h, (self.k - 1, 0))).transpose(1, 2))
        r, _ = self.lstm0(c)
        r, _ = self.lstm1(r)
        return torch.sigmoid(self.head(r + self.skip(c)))


def build():
    return Net()
"""


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, small_corpus):
    folder = tmp_path_factory.mktemp("user-net")
    (folder / "net.py").write_text(textwrap.dedent(NET))
    spec = f"{folder / 'net.py'}:build"
    torch.manual_seed(0)
    dense = load_model(spec)
    report = hwcompress.compress(dense, folder / "net.hwc", data=small_corpus, structured=True, sparsity=0.5,
                                 codebook=16, prune_steps=6, prune_every=2, cluster_steps=2, batch=2, seconds=1.0)
    return spec, dense, folder / "net.hwc", report


@pytest.mark.slow
def test_groups_found_in_the_users_graph(compressed) -> None:
    _, dense, _, _ = compressed
    groups = {g.name: g.size for g in model_groups(dense)}
    # inp (with its PReLU) feeds the conv; lstm0 feeds lstm1; lstm1 and skip meet in the residual add
    assert {"core.inp", "core.lstm0"} <= set(groups), groups
    assert any(name in groups for name in ("core.lstm1", "core.skip")), groups
    assert "core.head" not in groups  # the mask: never a group


@pytest.mark.slow
def test_structured_hwc_round_trip_from_the_users_code(compressed) -> None:
    spec, dense, hwc, report = compressed
    # the file alone never imports the user's code: one line saying what to give
    with pytest.raises(HwcError, match=r"--model .*net\.py:build --model-weights"):
        load_model(str(hwc))
    small = load_model(spec, weights=str(hwc))  # what the CLI does with --model net.py:build --model-weights
    again = load_model(str(hwc), template=dense)  # what fit and report do with the dense model in hand
    assert count_params(small) < 0.75 * count_params(dense), (count_params(small), count_params(dense))
    assert [tuple(s) for s in small.state_shapes()] == [tuple(s) for s in again.state_shapes()]
    assert sum(np.prod(s) for s in small.state_shapes()) < sum(np.prod(s) for s in dense.state_shapes())
    assert small.stream_diff < 1e-4  # the narrower model streams as it runs whole (checked at load)
    spec_in = torch.randn(1, 30, 161, 2)
    with torch.no_grad():
        a, _ = small(spec_in, small.initial_state(1))
        b, _ = again(spec_in, again.initial_state(1))
    assert torch.equal(a, b)
    assert report["finetune_target"] == "teacher"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "litert"])
def test_streaming_export_of_the_compressed_model_matches_torch(compressed, tmp_path, backend) -> None:
    spec, _, hwc, _ = compressed
    small = load_model(spec, weights=str(hwc))
    be = get_backend(backend)
    path = be.export(small, tmp_path, mode="stream")
    parity = check_parity(small, path, mode="stream", weights="fp32", enforce=True)
    assert parity.ok and parity.snr_db >= 60, parity


@pytest.mark.slow
def test_python_api_fit_of_the_users_model(compressed, small_corpus, tmp_path) -> None:
    """hwcompress.fit takes the model object: a generous budget on this machine's onnxruntime target,
    the fitted .hwc rebuilt from the dense model in hand, every budget in the report."""
    _, dense, _, _ = compressed
    report = hwcompress.fit(dense, target="generic-onnx", budget_ms=50, out=tmp_path / "fit", data=small_corpus,
                            prune_steps=4, cluster_steps=1, batch=2, seconds=1.0, sensitivity_items=2, eval_items=2,
                            measure_runs=30, final_runs=60, emulate=False, dnsmos=False)
    (r,) = report["results"]
    assert r["budget_ms"] == 50 and r["latency_ms"] > 0
    assert (tmp_path / "fit" / "report.md").is_file() and (tmp_path / "fit" / "model.hwc").is_file()
    fitted = load_model(str(tmp_path / "fit" / "model.hwc"), template=dense)
    assert fitted.arch == "user" and fitted.stream_diff < 1e-4
