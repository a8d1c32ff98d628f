"""Your own PyTorch model as --model: loading (file and module), the front end, the streaming
step derived from a whole-sequence core, weights, ONNX export and every bad-input line.

The models are written into each test's tmp folder (none of them is in the zoo); audio is
the real speech of the small test corpus."""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import cli
from hwcompress.errors import HwcError
from hwcompress.models.io import load_model, save_model
from hwcompress.models.stft import stft
from hwcompress.models.wrap import FrontEndModel

HEAD = """
import torch
import torch.nn.functional as F
from torch import nn
from hwcompress.models.frontend import FrontEnd
"""

# Linear -> causal Conv1d over time (F.pad (k-1, 0)) -> 2-layer LSTM with a residual Linear
# skip -> Linear head; LayerNorm and PReLU; sigmoid magnitude mask
NET = HEAD + """
FRONT_END = FrontEnd(feature="log-power", output="magnitude-mask", gain_floor_db=-30)


class Net(nn.Module):
    def __init__(self, n_bins=161, hidden=16, k=3):
        super().__init__()
        self.k = k
        self.inp = nn.Linear(n_bins, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.conv = nn.Conv1d(hidden, hidden, k)
        self.act = nn.PReLU(hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=2, batch_first=True)
        self.skip = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_bins)

    def forward(self, x):
        h = self.norm(self.inp(x / 10))
        c = self.act(self.conv(F.pad(h.transpose(1, 2), (self.k - 1, 0)))).transpose(1, 2)
        r, _ = self.lstm(c)
        return torch.sigmoid(self.head(r + self.skip(c)))


def build():
    return Net()
"""

# TCN-style causal conv: symmetric padding p = (k-1)*dilation, last p frames chomped off
CHOMP = HEAD + """
FRONT_END = FrontEnd(feature="magnitude", output="magnitude-mask")


class Chomp(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return x[:, :, :-self.p].contiguous()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(161, 12)
        self.block = nn.Sequential(nn.Conv1d(12, 12, 3, padding=4, dilation=2), Chomp(4), nn.ReLU(),
                                   nn.Conv1d(12, 12, 2, padding=1), Chomp(1), nn.Tanh())
        self.head = nn.Linear(12, 161)

    def forward(self, x):
        y = self.block(self.proj(x).transpose(1, 2)).transpose(1, 2)
        return torch.sigmoid(self.head(y))


def build():
    return Net()
"""

# GRU only, time-major (batch_first=False), real-imag features, complex mask
GRU = HEAD + """
FRONT_END = FrontEnd(feature="real-imag", output="complex-mask")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(322, 20, num_layers=2)
        self.out = nn.Linear(20, 322)

    def forward(self, x):
        b, t = x.shape[0], x.shape[1]
        y, _ = self.gru(x.reshape(b, t, 322).transpose(0, 1))
        return torch.tanh(self.out(y.transpose(0, 1))).reshape(b, t, 161, 2)


def build():
    return Net()
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """Spectrum [1, T, 161, 2] of 2 s of a real noisy test mixture."""
    from conftest import CACHE

    folder = CACHE / "small-corpus-v2" / "mix" / "test"
    if not folder.is_dir():
        pytest.skip("small corpus not built (run any test using the small_corpus fixture)")
    audio, rate = sf.read(sorted(folder.glob("*_noisy.wav"))[0], dtype="float32")
    assert rate == 16000
    return stft(torch.from_numpy(audio[:32000])[None])


def streamed(model, spec: torch.Tensor) -> torch.Tensor:
    state, outs = model.initial_state(1), []
    with torch.no_grad():
        for t in range(spec.shape[1]):
            out, state = model(spec[:, t : t + 1], state)
            outs.append(out)
    return torch.cat(outs, dim=1)


def whole(model, spec: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(spec, model.initial_state(1))[0]


# ------------------------------------------------------------------ loading and streaming


def test_loads_from_file_and_module_and_streams_like_whole(tmp_path, monkeypatch, speech):
    path = write(tmp_path, "usernet_a.py", NET)
    model = load_model(f"{path}:build")
    assert isinstance(model, FrontEndModel) and model.arch == "user" and model.n_bins == 161
    assert model.config == {"source": f"{path}:build", "kwargs": {}}
    assert model.front_end.gain_floor_db == -30
    # h, c of the 2-layer LSTM and the conv's context of k-1 = 2 frames
    assert model.state_shapes() == [(16, 2), (2, 16), (2, 16)]
    assert model.stream_diff < 1e-4
    ref = whole(model, speech)
    diff = float((streamed(model, speech) - ref).abs().max())
    assert diff < 1e-4, f"whole vs streaming max |diff| {diff:.2e}"
    # the mask is clipped below at the gain floor: enhanced >= 10^(-30/20) * noisy in magnitude
    ratio = ref.pow(2).sum(-1).sqrt() / speech.pow(2).sum(-1).sqrt().clamp_min(1e-9)
    assert float(ratio.min()) >= 10 ** (-30 / 20) - 1e-4
    # the same code by module name: the same (seeded) model
    monkeypatch.syspath_prepend(str(tmp_path))
    by_name = load_model("usernet_a:build")
    assert torch.equal(whole(by_name, speech), ref)
    # the layers stay modules of the core under the user's names (traceable, prunable)
    assert isinstance(model.core.lstm, torch.nn.LSTM) and isinstance(model.core.conv, torch.nn.Conv1d)
    assert "core.lstm.weight_ih_l1" in model.state_dict()
    traced = torch.fx.symbolic_trace(model)  # graph-based tools trace the wrapper itself
    with torch.no_grad():
        assert float((traced(speech, model.initial_state(1))[0] - ref).abs().max()) < 1e-6
    assert torch.equal(whole(copy.deepcopy(model), speech), ref)


def test_state_shapes_follow_narrowed_layers(tmp_path, speech):
    """Pruning replaces layers by narrower ones in place: the state is read from the layers."""
    model = load_model(f"{write(tmp_path, 'usernet_p.py', NET)}:build")
    nn = torch.nn
    core = model.core
    core.inp, core.norm, core.conv = nn.Linear(161, 12), nn.LayerNorm(12), nn.Conv1d(12, 16, 3)
    core.lstm, core.skip, core.head = nn.LSTM(16, 8, num_layers=2, batch_first=True), nn.Linear(16, 8), nn.Linear(8, 161)
    assert model.state_shapes() == [(12, 2), (2, 8), (2, 8)]
    assert model.check_streaming() < 1e-4
    diff = float((streamed(model, speech) - whole(model, speech)).abs().max())
    assert diff < 1e-4, f"narrowed: whole vs streaming max |diff| {diff:.2e}"


def test_chomp_conv_and_time_major_gru(tmp_path, speech):
    chomp = load_model(f"{write(tmp_path, 'chomp.py', CHOMP)}:build")
    assert chomp.state_shapes() == [(12, 4), (12, 1)]  # contexts: (3-1)*2 and (2-1) frames
    gru = load_model(f"{write(tmp_path, 'gru.py', GRU)}:build")
    assert gru.state_shapes() == [(2, 20)]
    for model in (chomp, gru):
        diff = float((streamed(model, speech) - whole(model, speech)).abs().max())
        assert diff < 1e-4, f"{model.source}: whole vs streaming max |diff| {diff:.2e}"


def test_core_with_its_own_step_is_used_as_is(tmp_path, speech):
    write(tmp_path, "stepper.py", HEAD + """
        class Smoother(nn.Module):
            front_end = FrontEnd(feature="magnitude", output="magnitude-mask")

            def __init__(self):
                super().__init__()
                self.a = nn.Parameter(torch.tensor(0.7))

            def state_shapes(self):
                return [(161,)]

            def step(self, x, state):
                s, outs = state[0], []
                for t in range(x.shape[1]):
                    s = self.a * s + (1 - self.a) * x[:, t]
                    outs.append(torch.sigmoid(x[:, t] - s))
                return torch.stack(outs, 1), [s]
        """.replace("\n        ", "\n"))
    model = load_model(f"{tmp_path / 'stepper.py'}:Smoother")
    assert model.state_shapes() == [(161,)]
    assert float((streamed(model, speech) - whole(model, speech)).abs().max()) < 1e-5


def test_weights_round_trip(tmp_path, monkeypatch, speech):
    path = write(tmp_path, "usernet_w.py", NET)
    spec = f"{path}:build"
    sys.path.insert(0, str(tmp_path))
    try:
        import usernet_w
    finally:
        sys.path.remove(str(tmp_path))
    core = usernet_w.build()
    with torch.no_grad():  # weights no fresh build has
        for p in core.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    torch.save(core.state_dict(), tmp_path / "w.pt")
    model = load_model(spec, weights=tmp_path / "w.pt")
    with torch.no_grad():
        expected = speech * core(torch.log(speech.pow(2).sum(-1) + 1e-10)).clamp_min(10 ** (-30 / 20)).unsqueeze(-1)
    assert float((whole(model, speech) - expected).abs().max()) < 1e-5
    assert not torch.allclose(whole(load_model(spec), speech), expected)

    # a hwcompress save: arch "user", config, front end, state_dict; loads only with its code given
    save_model(tmp_path / "model.pt", model, {"trained": True})
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["arch"] == "user" and payload["config"] == {"source": spec, "kwargs": {}}
    assert payload["front_end"]["gain_floor_db"] == -30
    with pytest.raises(HwcError, match=r"never imports code.*--model .*usernet_w.py:build --model-weights .*model.pt"):
        load_model(tmp_path / "model.pt")
    again = load_model(spec, weights=tmp_path / "model.pt")
    assert torch.equal(whole(again, speech), whole(model, speech)) and again.meta == {"trained": True}

    # .safetensors (the package is installed here), and a clear line where it is not
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in core.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert torch.equal(whole(load_model(spec, weights=tmp_path / "w.safetensors"), speech), whole(model, speech))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(HwcError, match=r"w.safetensors: .safetensors weights need the safetensors package"):
        load_model(spec, weights=tmp_path / "w.safetensors")


def test_onnx_stream_export_matches_torch(tmp_path, speech):
    from hwcompress.export import get_backend

    model = load_model(f"{write(tmp_path, 'usernet_o.py', NET)}:build")
    backend = get_backend("onnxruntime")
    session = backend.load(backend.export(model, tmp_path / "out", mode="stream"))
    assert session.frames == 1 and session.state_shapes == model.state_shapes()
    state, outs = None, []
    for t in range(speech.shape[1]):
        out, state = session.run(speech[:, t : t + 1].numpy(), state)
        outs.append(out)
    diff = float(np.abs(np.concatenate(outs, axis=1) - whole(model, speech).numpy()).max())
    assert diff < 1e-4, f"onnxruntime stream vs torch whole max |diff| {diff:.2e}"


# ------------------------------------------------------------------ what cannot stream


def core_file(body: str, init: str = "self.lin = nn.Linear(161, 161)") -> str:
    return HEAD + f"""
FRONT_END = FrontEnd()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        {init}

    def forward(self, x):
        {body}


def build():
    return Net()
"""


NON_CAUSAL = {
    "bidirectional": ("y, _ = self.rnn(x)\n        return torch.sigmoid(self.lin(y))",
                      "self.rnn = nn.LSTM(161, 80, batch_first=True, bidirectional=True); self.lin = nn.Linear(160, 161)",
                      r"layer rnn \(LSTM\) at nonc_bidirectional.py:\d+ is bidirectional"),
    "symmetric conv": ("return torch.sigmoid(self.conv(x.transpose(1, 2)).transpose(1, 2))",
                       "self.conv = nn.Conv1d(161, 161, 3, padding=1)",
                       r"layer conv \(Conv1d\) at .*pads 1 frame\(s\) on both sides of time"),
    "right pad": ("return torch.sigmoid(self.lin(F.pad(x.transpose(1, 2), (0, 2)).transpose(1, 2)[:, 2:]))", None,
                  r"F.pad at nonc_right_pad.py:\d+ pads 2 future frame\(s\) on the time axis"),
    "softmax over time": ("return torch.softmax(self.lin(x), dim=1)", None, r"torch.softmax at .* normalises over the time axis"),
    "utterance mean": ("return torch.sigmoid(self.lin(x - x.mean(dim=1, keepdim=True)))", None,
                       r"\.mean\(\) at .* drops the time axis"),
    "attention": ("y, _ = self.att(x, x, x)\n        return torch.sigmoid(y)", "self.att = nn.MultiheadAttention(161, 1, batch_first=True)",
                  r"layer att \(MultiheadAttention\) at .* attends over time"),
    "cumsum": ("return torch.sigmoid(self.lin(x).cumsum(1))", None, r"\.cumsum\(\) at .* accumulates over the time axis"),
    "positions": ("return torch.sigmoid(self.lin(x) + torch.arange(x.shape[1])[None, :, None])", None,
                  r"streaming differs from the whole utterance .*first differing op: torch.arange at nonc_positions.py:\d+"),
    "control flow": ("return torch.sigmoid(self.lin(x)) if x.mean() > 0 else x", None,
                     r"torch.fx cannot trace the core at nonc_control_flow.py:\d+ .*TraceError"),
}


@pytest.mark.parametrize("case", list(NON_CAUSAL))
def test_non_causal_cores_are_refused_naming_the_layer(tmp_path, case):
    body, init, message = NON_CAUSAL[case]
    name = "nonc_" + case.replace(" ", "_") + ".py"
    path = write(tmp_path, name, core_file(body, init or "self.lin = nn.Linear(161, 161)"))
    with pytest.raises(HwcError, match=message) as exc:
        load_model(f"{path}:build")
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ bad input, one line each


def bad_cases(tmp: Path) -> list[tuple[str, str | None, str]]:
    """(--model, --model-weights, expected line) for every way loading can fail."""
    write(tmp, "net.py", NET)
    write(tmp, "boom.py", HEAD + "\nFRONT_END = FrontEnd()\nWIDTH = int('wide')\n")
    write(tmp, "raises.py", HEAD + "\nFRONT_END = FrontEnd()\n\ndef build():\n    raise ValueError('no GPU here')\n")
    write(tmp, "notmodule.py", HEAD + "\nFRONT_END = FrontEnd()\n\ndef build():\n    return 42\n")
    write(tmp, "nofe.py", NET.replace("FRONT_END = ", "OTHER = "))
    write(tmp, "badfe.py", NET.replace('FrontEnd(feature=', 'FrontEnd(win=512, feature='))
    write(tmp, "nonc.py", NET.replace("batch_first=True)", "batch_first=True, bidirectional=True)")
          .replace("nn.Linear(hidden, hidden)", "nn.Linear(hidden, 2 * hidden)")
          .replace("nn.Linear(hidden, n_bins)", "nn.Linear(2 * hidden, n_bins)"))
    small = write(tmp, "small.py", NET.replace("hidden=16", "hidden=8"))
    sys.path.insert(0, str(tmp))
    try:
        import small as small_module  # noqa: F401 - a state_dict of another width
    finally:
        sys.path.remove(str(tmp))
    torch.save(small_module.build().state_dict(), tmp / "small.pt")
    del small
    return [
        (f"{tmp}/missing.py:build", None, r"missing.py: no such model file"),
        (f"{tmp}/net.py:make", None, r"net.py: no 'make' in it \(it defines Net, build\)"),
        (f"{tmp}/boom.py:build", None, r"boom.py: importing it raised ValueError: invalid literal .*\(boom.py:8\)"),
        (f"{tmp}/raises.py:build", None, r"raises.py:build: build\(\) raised ValueError: no GPU here \(raises.py:10\)"),
        (f"{tmp}/notmodule.py:build", None, r"build\(\) returned a value of type int, not a torch.nn.Module"),
        (f"{tmp}/net.py:build", str(tmp / "small.pt"),
         r"small.pt: weights do not match .*net.py:build \(0 missing, 0 unexpected, 18 of another shape; "
         r"first: inp.weight is \[8, 161\] in the file, \[16, 161\] in the model; the model has 19 tensors of 10,785 "
         r"values, the file 19 of 4,193\)"),
        (f"{tmp}/nofe.py:build", None,
         r"nofe.py: no front-end declaration for build: add `FRONT_END = FrontEnd\(...\)`.* or a nofe.toml beside it"),
        (f"{tmp}/badfe.py:build", None, r"front end 16000 Hz, win 512, hop 160 is not supported yet"),
        (f"{tmp}/nonc.py:build", None, r"layer lstm \(LSTM\) at nonc.py:\d+ is bidirectional"),
    ]


def test_bad_inputs_one_line_each(tmp_path):
    for spec, weights, message in bad_cases(tmp_path):
        with pytest.raises(HwcError, match=message) as exc:
            load_model(spec, weights=weights)
        assert "\n" not in str(exc.value), spec
    with pytest.raises(HwcError, match=r"weights go with a model given as code.*tiny-lstm carries its own"):
        load_model("tiny-lstm", weights=tmp_path / "small.pt")
    more = [
        (f"{tmp_path}/net.py", None, r"net.py: Python code: name the class or function .* --model .*net.py:build"),
        ("no_such_module_here:build", None, r"no module named 'no_such_module_here' on sys.path; give the file"),
        (f"{tmp_path}/net.py:build", str(tmp_path / "none.pt"), r"none.pt: no such weights file"),
        (f"{tmp_path}/net.py:build", str(tmp_path / "w.npz"), r"w.npz: weights must be a state_dict .pt/.pth"),
        (f"{tmp_path}/net.py:build", str(tmp_path / "whole.pt"),
         r"whole.pt: not a readable state_dict .*save weights with torch.save\(model.state_dict\(\), path\)"),
    ]
    (tmp_path / "w.npz").write_bytes(b"x")
    torch.save(load_model(f"{tmp_path}/net.py:build"), tmp_path / "whole.pt")  # a pickled module, not weights
    for spec, weights, message in more:
        with pytest.raises(HwcError, match=message) as exc:
            load_model(spec, weights=weights)
        assert "\n" not in str(exc.value), spec


def test_front_end_from_toml_and_factory_attribute(tmp_path):
    write(tmp_path, "tomlnet.py", NET.replace("FRONT_END = ", "OTHER = "))
    write(tmp_path, "tomlnet.toml", '[front_end]\nfeature = "log10-power"\noutput = "magnitude-mask"\n')
    assert load_model(f"{tmp_path}/tomlnet.py:build").front_end.feature == "log10-power"
    write(tmp_path, "attrnet.py", NET.replace("FRONT_END = ", "OTHER = ") +
          '\nbuild.front_end = FrontEnd(feature="magnitude")\n')
    assert load_model(f"{tmp_path}/attrnet.py:build").front_end.feature == "magnitude"


def test_cli_enhance_with_user_model(tmp_path, capsys, speech):
    from conftest import CACHE

    noisy = sorted((CACHE / "small-corpus-v2" / "mix" / "test").glob("*_noisy.wav"))[0]
    cases = bad_cases(tmp_path)
    for spec, weights, message in cases:
        args = ["enhance", str(noisy), str(tmp_path / "out.wav"), "--model", spec]
        r = cli(capsys, *args, *(["--model-weights", weights] if weights else []))
        assert r.returncode == 2, (spec, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert __import__("re").search(message, lines[0]), (message, lines[0])
    # and a working run: the user's weights, exported to onnxruntime, real speech in and out
    core_weights = tmp_path / "w.pt"
    torch.save(torch.load(tmp_path / "small.pt", weights_only=True), core_weights)
    r = cli(capsys, "enhance", str(noisy), str(tmp_path / "out.wav"), "--model", f"{tmp_path}/small.py:build",
            "--model-weights", str(core_weights))
    assert r.returncode == 0, r.stderr
    out, rate = sf.read(tmp_path / "out.wav")
    assert rate == 16000 and out.size == sf.info(noisy).frames and np.isfinite(out).all()
