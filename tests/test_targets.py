"""Target registry: shipped files load, the CLI lists them, and bad files fail with one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hwcompress.cli import app, main
from hwcompress.errors import HwcError
from hwcompress.targets import (
    ENV_VAR,
    PERF_UNITS,
    Target,
    TargetError,
    list_targets,
    load_target,
    targets_dir,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {"x86-openvino", "generic-onnx", "x86-litert", "raspberrypi4", "cortex-m7"}

VALID = """\
name = "{name}"
description = "test target"
arch = "aarch64"
cpu = "test cpu"
runtime = "litert"
threads = 1
latency_budget_ms = 8.0
memory_budget_bytes = 1048576
storage_budget_bytes = 2097152
budget_provenance = "estimate: test"

[perf.peak_gflops_fp32]
value = 6.0
unit = "GFLOP/s"
provenance = "estimate: test"

[perf.dram_bandwidth_gbps]
value = 4.0
unit = "GB/s"
provenance = "public source: a datasheet"

[perf.cache_bytes]
value = 1048576
unit = "bytes"
provenance = "measured here"

[perf.cache_bandwidth_gbps]
value = 12.0
unit = "GB/s"
provenance = "measured here: tools/measure_host.py"

[perf.op_overhead_us]
value = 5.0
unit = "us"
provenance = "estimate: test"
"""


@pytest.fixture(autouse=True)
def _default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # a developer's shell may point the registry elsewhere; tests must see the shipped one
    monkeypatch.delenv(ENV_VAR, raising=False)


def write(tmp_path: Path, text: str, name: str = "t") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text, encoding="utf-8")
    return p


def assert_one_line_naming(err: TargetError, path: Path, field: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg
    assert field in msg, msg


# ---------------------------------------------------------------- shipped targets


def test_registry_is_repo_targets_folder() -> None:
    assert targets_dir() == REPO / "targets"


def test_all_shipped_targets_load() -> None:
    targets = list_targets()
    assert {t.name for t in targets} == SHIPPED
    for t in targets:
        assert isinstance(t, Target)
        assert t.latency_budget_ms > 0 and t.memory_budget_bytes > 0 and t.storage_budget_bytes > 0
        # every roofline input is present with its unit and provenance
        assert set(PERF_UNITS) - {"peak_gops_int8"} <= set(t.perf)
        for key, p in t.perf.items():
            assert p.unit == PERF_UNITS[key]
            assert p.kind in ("measured", "public", "estimate")
        assert load_target(t.name) == t


def test_x86_targets_cite_measurements_and_edge_targets_do_not() -> None:
    # nothing is measured on a Pi or an MCU here, so claiming "measured here" there would be a lie
    for name in ("raspberrypi4", "cortex-m7"):
        assert all(p.kind != "measured" for p in load_target(name).perf.values())
    for name in ("x86-openvino", "generic-onnx"):
        assert load_target(name).perf["peak_gflops_fp32"].provenance.startswith(
            "measured here: tools/measure_host.py"
        )


def test_raspberrypi4_basics() -> None:
    t = load_target("raspberrypi4")
    assert (t.arch, t.runtime, t.threads, t.emulation) == ("aarch64", "litert", 1, "qemu-aarch64")
    assert t.latency_budget_ms == 8.0
    assert t.value("cache_bytes") == 1 << 20


def test_load_by_path_and_to_dict_is_json() -> None:
    t = load_target(REPO / "targets" / "cortex-m7.toml")
    d = json.loads(json.dumps(t.to_dict()))
    assert d["name"] == "cortex-m7"
    assert d["perf"]["cache_bytes"] == {
        "value": 16384, "unit": "bytes", "provenance": t.perf["cache_bytes"].provenance
    }


# ---------------------------------------------------------------- CLI


def test_cli_json_lists_every_shipped_target_with_budgets_and_provenance() -> None:
    result = CliRunner().invoke(app, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {d["name"] for d in data} == SHIPPED
    for d in data:
        for key in ("latency_budget_ms", "memory_budget_bytes", "storage_budget_bytes", "budget_provenance"):
            assert key in d
        assert d["perf"] and all(p["provenance"] for p in d["perf"].values())


def test_cli_table_and_show() -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["targets"])
    assert table.exit_code == 0
    for name in SHIPPED:
        assert name in table.stdout
    show = runner.invoke(app, ["targets", "show", "raspberrypi4"])
    assert show.exit_code == 0
    assert "dram_bandwidth_gbps" in show.stdout and "estimate:" in show.stdout
    as_json = runner.invoke(app, ["targets", "show", "x86-openvino", "--json"])
    assert json.loads(as_json.stdout)["threads"] == 2


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    full_env.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "hwcompress", *args],
        capture_output=True, text=True, env=full_env, cwd=REPO, timeout=120,
    )


def test_cli_unknown_target_is_one_line_exit_2() -> None:
    r = _run_cli("targets", "show", "no-such-board")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown target 'no-such-board'")
    assert "raspberrypi4" in lines[0]  # the known names are listed


def test_cli_usage_error_is_one_line_exit_2() -> None:
    r = _run_cli("targets", "--no-such-flag")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")


def test_main_converts_hwc_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, VALID.format(name="t").replace("threads = 1", "threads = 0"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["targets"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "threads" in err


# ---------------------------------------------------------------- validation


def test_valid_fixture_loads_via_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, VALID.format(name="t"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert [t.name for t in list_targets()] == ["t"]
    assert load_target("t").perf["cache_bytes"].kind == "measured"


def test_unknown_name_lists_known(tmp_path: Path) -> None:
    write(tmp_path, VALID.format(name="t"))
    with pytest.raises(TargetError, match=r"unknown target 'nope'; known targets: t"):
        load_target("nope", directory=tmp_path)


def test_target_error_is_hwc_error() -> None:
    assert issubclass(TargetError, HwcError)


def test_toml_syntax_error(tmp_path: Path) -> None:
    p = write(tmp_path, VALID.format(name="t").replace('arch = "aarch64"', "arch = aarch64"))
    with pytest.raises(TargetError) as e:
        load_target(p)
    assert_one_line_naming(e.value, p, "invalid TOML")


# (edit to the valid file, field that must be named in the error)
BAD_CASES = {
    "missing top-level": (lambda s: s.replace('runtime = "litert"\n', ""), "runtime"),
    "unknown perf param": (lambda s: s.replace("[perf.op_overhead_us]", "[perf.unused]"), "perf.unused"),
    "missing perf param": (
        lambda s: s.split("[perf.op_overhead_us]")[0], "perf.op_overhead_us"),
    "negative budget": (
        lambda s: s.replace("memory_budget_bytes = 1048576", "memory_budget_bytes = -1"), "memory_budget_bytes"),
    "zero latency": (
        lambda s: s.replace("latency_budget_ms = 8.0", "latency_budget_ms = 0"), "latency_budget_ms"),
    "negative perf": (lambda s: s.replace("value = 4.0", "value = -4.0"), "perf.dram_bandwidth_gbps.value"),
    "bad provenance": (
        lambda s: s.replace('provenance = "public source: a datasheet"', 'provenance = "datasheet"'),
        "perf.dram_bandwidth_gbps.provenance"),
    "empty provenance reason": (
        lambda s: s.replace('provenance = "public source: a datasheet"', 'provenance = "estimate: "'),
        "perf.dram_bandwidth_gbps.provenance"),
    "bad budget provenance": (
        lambda s: s.replace('budget_provenance = "estimate: test"', 'budget_provenance = "guess"'),
        "budget_provenance"),
    "unknown key": (lambda s: s.replace("threads = 1", "threads = 1\nthreds = 2"), "threds"),
    "unknown perf key": (lambda s: s.replace('unit = "us"', 'unit = "us"\nsource = "x"'),
                         "perf.op_overhead_us.source"),
    "wrong type": (lambda s: s.replace("threads = 1", 'threads = "1"'), "threads"),
    "bool is not int": (lambda s: s.replace("threads = 1", "threads = true"), "threads"),
    "float bytes": (lambda s: s.replace("memory_budget_bytes = 1048576", "memory_budget_bytes = 1.5e6"),
                    "memory_budget_bytes"),
    "wrong unit": (lambda s: s.replace('unit = "GB/s"', 'unit = "GiB/s"', 1), "perf.dram_bandwidth_gbps.unit"),
    "bare number perf": (
        lambda s: s.split("[perf.op_overhead_us]")[0].replace("[perf.peak_gflops_fp32]", "[perf]\nop_overhead_us = 5\n[perf.peak_gflops_fp32]"),
        "perf.op_overhead_us"),
    "unknown runtime": (lambda s: s.replace('runtime = "litert"', 'runtime = "tensorrt"'), "runtime"),
    "unknown arch": (lambda s: s.replace('arch = "aarch64"', 'arch = "arm64"'), "arch"),
    "name mismatch": (lambda s: s.replace('name = "t"', 'name = "other"'), "name"),
    # a LiteRT target cannot claim bf16 activations: its backend runs f32 only
    "activation the runtime lacks": (lambda s: s.replace("threads = 1", 'threads = 1\nactivations = ["f32", "bf16"]'),
                                     "activations"),
    "duplicate activations": (lambda s: s.replace("threads = 1", 'threads = 1\nactivations = ["f32", "f32"]'),
                              "activations"),
    "empty activations": (lambda s: s.replace("threads = 1", "threads = 1\nactivations = []"), "activations"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_names_field(tmp_path: Path, case: str) -> None:
    edit, field = BAD_CASES[case]
    text = edit(VALID.format(name="t"))
    assert text != VALID.format(name="t"), "edit did not apply"
    p = write(tmp_path, text)
    with pytest.raises(TargetError) as e:
        load_target(p)
    assert_one_line_naming(e.value, p, field)


def test_error_message_format(tmp_path: Path) -> None:
    p = write(tmp_path, VALID.format(name="t").replace("memory_budget_bytes = 1048576", "memory_budget_bytes = -5"))
    with pytest.raises(TargetError, match=re.escape(f"{p}: memory_budget_bytes: must be a positive")):
        load_target(p)


def test_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(TargetError, match="targets directory does not exist"):
        list_targets()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="target file not found"):
        load_target(tmp_path / "absent.toml")


def _cortex_m7_text() -> str:
    return (REPO / "targets" / "cortex-m7.toml").read_text()


def test_cortex_m7_cycle_figures_load_with_provenance() -> None:
    from hwcompress.targets import CYCLE_UNITS

    t = load_target("cortex-m7")
    assert set(t.cycles) == set(CYCLE_UNITS)
    assert t.cycles["clock_mhz"].value == 480 and t.cycles["clock_mhz"].kind == "public"
    assert t.to_dict()["cycles"]["mac_s16"]["unit"] == "cycles/MAC"
    assert not load_target("raspberrypi4").cycles  # the table is optional


@pytest.mark.parametrize("edit, field", [
    (lambda s: s.replace('unit = "cycles/MAC"', 'unit = "cycles"', 1), "cycles.mac_s8.unit"),
    (lambda s: s.replace("[cycles.copy]", "[cycles.kopy]"), "cycles.kopy"),
    (lambda s: s.split("[cycles.copy]")[0], "cycles.copy"),  # all or none: a partial table is refused
])
def test_bad_cycle_table_names_field(tmp_path: Path, edit, field: str) -> None:
    text = edit(_cortex_m7_text())
    assert text != _cortex_m7_text()
    p = tmp_path / "cortex-m7.toml"
    p.write_text(text)
    with pytest.raises(TargetError) as e:
        load_target(p)
    assert_one_line_naming(e.value, p, field)



def test_activation_precisions_are_data_default_first() -> None:
    """Per target, the activation precisions its device runs, the default first: bf16 on the
    x86 OpenVINO host, f32 only on the Pi 4 (Cortex-A72: no fp16 arithmetic), the runtime's one
    where a target says nothing (TFLite Micro 16x8: int16)."""
    assert load_target("x86-openvino").activations == ("f32", "bf16")
    assert load_target("raspberrypi4").activations == ("f32",)
    assert load_target("generic-onnx").activations == ("f32",)
    assert load_target("cortex-m7").activations == ("int16",)
    assert load_target("x86-openvino").to_dict()["activations"] == ["f32", "bf16"]
