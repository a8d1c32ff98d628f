"""Issue 16: bad input and stale state get one line and a non-zero exit, and lose nothing.

Stale work folders, budgets, unwritable outputs, option values checked before the long work,
concurrent runs into one output, and Ctrl-C (message + resume) for compress and fit.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hwcompress.compress.artifact import read_artifact
from hwcompress.models.io import load_model, save_model
from hwcompress.workdir import OutputLock
from conftest import sigint_default, user_error  # exit 2 and one error line; SIGINT as a Ctrl-C

user_error_last = functools.partial(user_error, only_line=False)  # after progress lines

FAST_COMPRESS = ["--prune-steps", "2", "--cluster-steps", "1", "--batch", "2"]
FAST_FIT = ["--model", "tiny-crn", "--prune-steps", "4", "--cluster-steps", "2", "--eval-items", "2",
            "--measure-runs", "30", "--no-dnsmos"]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=timeout)



def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    save_model(path, load_model("tiny-lstm"))
    return path


# ------------------------------------------------------------------ 2. stale work folders


def _sparsity_and_k(hwc: Path, name: str = "rnn.layers.0.weight_ih_l0") -> tuple[float, int]:
    _, tensors = read_artifact(hwc)
    dense = tensors[name].dense()
    return float((dense == 0).float().mean()), len(torch.unique(dense[dense != 0]))


def test_compress_rerun_with_other_settings_gives_the_new_artifact(tiny_pt, small_corpus, tmp_path) -> None:
    out = tmp_path / "m.hwc"
    common = ["compress", "--model", str(tiny_pt), "--data", str(small_corpus), "--out", str(out), *FAST_COMPRESS]
    first = run(*common, "--sparsity", "0.5", "--codebook", "16")
    assert first.returncode == 0, first.stderr
    s, k = _sparsity_and_k(out)
    assert 0.45 < s < 0.6 and k <= 16
    assert not (tmp_path / "m.hwc.work").exists(), "work folder left behind after success"
    assert not (tmp_path / "m.hwc.lock").exists()
    # a work folder from an interrupted run with the old settings must not be resumed either
    (tmp_path / "m.hwc.work" / "prune").mkdir(parents=True)
    save_model(tmp_path / "m.hwc.work" / "prune" / "result.pt", load_model(str(out)))
    second = run(*common, "--sparsity", "0.9", "--codebook", "8")
    assert second.returncode == 0, second.stderr
    assert "starting afresh" in second.stderr
    s, k = _sparsity_and_k(out)
    assert 0.85 < s < 0.95 and k <= 8


def test_concurrent_run_into_the_same_output_is_refused(tiny_pt, small_corpus, tmp_path) -> None:
    out = tmp_path / "busy.hwc"
    with OutputLock(out):  # another run holds it
        proc = run("compress", "--model", str(tiny_pt), "--data", str(small_corpus), "--out", str(out), *FAST_COMPRESS)
    user_error_last(proc, "another hwcompress run is writing there")
    assert not out.exists()
    folder = tmp_path / "fit-busy"
    with OutputLock(folder, inside=True):
        proc = run("fit", "--target", "generic-onnx", "--data", str(small_corpus), "--out", str(folder), *FAST_FIT)
    user_error_last(proc, "another hwcompress run is writing there")
    assert not (folder / "calibration.json").exists()


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path) -> None:
    out = tmp_path / "m.hwc"
    code = f"from hwcompress.workdir import OutputLock; l = OutputLock({str(out)!r}).__enter__(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "m.hwc.lock").exists()  # the dead process could not clean up...
    with OutputLock(out):  # ...but the kernel released its lock
        pass


# ------------------------------------------------------------------ 5. budgets


@pytest.mark.parametrize("budget, fragment", [
    ("inf", "finite positive"), ("1e309", "finite positive"), ("nan", "finite positive"), ("-1", "finite positive"),
    ("0", "finite positive"), ("2,,3", "single commas"), ("2,", "single commas"), (",2", "single commas"),
    (",", "is empty"), ("2;3", "numbers separated by commas"),
])
def test_budget_values_are_finite_positive_and_well_formed(tmp_path, budget, fragment) -> None:
    user_error_last(run("fit", "--target", "generic-onnx", f"--budget-ms={budget}", "--out", str(tmp_path / "o"),
                       *FAST_FIT), fragment)
    assert not (tmp_path / "o").exists()


def test_size_budget_must_be_finite(tmp_path) -> None:
    user_error_last(run("fit", "--target", "generic-onnx", "--budget-kb", "inf", "--out", str(tmp_path / "o"),
                       *FAST_FIT), "finite positive")


# ------------------------------------------------------------------ 6. outputs and option values


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder no one can write to: a read-only tmpfs as root (root ignores permission bits)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
        yield d
        subprocess.run(["umount", str(d)], check=False)
    else:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_output_into_a_read_only_folder(tiny_pt, small_corpus, read_only_dir) -> None:
    line = user_error_last(run("compress", "--model", str(tiny_pt), "--data", str(small_corpus),
                              "--out", str(read_only_dir / "m.hwc"), *FAST_COMPRESS), "cannot write there")
    assert "read-only" in line or "permission" in line
    user_error_last(run("fit", "--target", "generic-onnx", "--data", str(small_corpus),
                       "--out", str(read_only_dir / "fit"), *FAST_FIT), "cannot write there")
    user_error_last(run("export", "--model", str(tiny_pt), "--format", "onnx", "--out", str(read_only_dir / "x")),
                   "cannot write there")


def test_output_path_of_the_wrong_kind(tiny_pt, small_corpus, tmp_path) -> None:
    folder = tmp_path / "is-a-folder.hwc"
    folder.mkdir()
    user_error_last(run("compress", "--model", str(tiny_pt), "--data", str(small_corpus), "--out", str(folder),
                       *FAST_COMPRESS), "is a folder")
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    user_error_last(run("fit", "--target", "generic-onnx", "--data", str(small_corpus), "--out", str(a_file),
                       *FAST_FIT), "is not a folder")
    user_error_last(run("export", "--model", str(tiny_pt), "--format", "onnx", "--out", str(a_file)),
                   "is not a folder")
    assert a_file.read_text() == "keep me"
    user_error_last(run("eval", "--model", str(tiny_pt), "--data", str(small_corpus), "--limit", "1",
                       "--json", str(folder)), "is a folder")


@pytest.mark.parametrize("toml, fragment", [
    ('[layers."rnn.0"]\nsparsity = "half"\n', "sparsity must be a number"),
    ('[layers."rnn.0"]\ncodebook = 4.5\n', "codebook must be an integer"),
    ('[layers."rnn.0"]\ncodebook = true\n', "codebook must be an integer"),
    ('[layers."rnn.0"]\nstructured = "yes"\n', "structured must be true or false"),
    ('[layers."rnn.0"]\nsparsity = 1.5\n', "sparsity must be in [0, 1)"),
])
def test_layer_config_with_wrong_types(tiny_pt, small_corpus, tmp_path, toml, fragment) -> None:
    cfg = tmp_path / "layers.toml"
    cfg.write_text(toml)
    out = tmp_path / "m.hwc"
    user_error_last(run("compress", "--model", str(tiny_pt), "--data", str(small_corpus), "--out", str(out),
                       "--config", str(cfg), *FAST_COMPRESS), fragment)
    assert not out.exists() and not (tmp_path / "m.hwc.work").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--init", "bogus"], "unknown codebook init 'bogus'"),
    (["--l1", "nan"], "l1 must be finite"),
    (["--lr", "inf"], "lr must be finite"),
])
def test_option_values_are_checked_before_fine_tuning(tiny_pt, small_corpus, tmp_path, args, fragment) -> None:
    out = tmp_path / "m.hwc"
    started = time.monotonic()
    user_error_last(run("compress", "--model", str(tiny_pt), "--data", str(small_corpus), "--out", str(out),
                       "--prune-steps", "400", *args), fragment)
    assert not out.exists() and not (tmp_path / "m.hwc.work").exists()
    assert time.monotonic() - started < 60  # no fine-tuning ran first


# ------------------------------------------------------------------ 8. Ctrl-C, then resume


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 300) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=120)


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hwcompress", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)


def _assert_interrupted(proc: subprocess.Popen, stderr: str, command: str) -> None:
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = [ln for ln in stderr.splitlines() if ln.strip()][-1]
    assert last == f"interrupted: nothing is half-written; run the same command again to resume the {command} run"


@pytest.mark.slow
def test_ctrl_c_during_compress_says_so_and_the_same_command_resumes(tiny_pt, small_corpus, tmp_path) -> None:
    out = tmp_path / "m.hwc"
    args = ["compress", "--model", str(tiny_pt), "--data", str(small_corpus), "--out", str(out),
            "--sparsity", "0.5", "--prune-steps", "4", "--cluster-steps", "300", "--batch", "2"]
    proc = _popen(*args)
    _, err = _interrupt_when(proc, lambda: (tmp_path / "m.hwc.work" / "prune" / "result.pt").exists())
    _assert_interrupted(proc, err, "compress")
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))
    resumed = run(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "prune: already done, resuming after it" in resumed.stderr
    s, _ = _sparsity_and_k(out)
    assert 0.45 < s < 0.6
    assert not (tmp_path / "m.hwc.work").exists()


@pytest.mark.slow
def test_ctrl_c_during_fit_says_so_and_the_same_command_resumes(small_corpus, tmp_path) -> None:
    out = tmp_path / "fit"
    args = ["fit", "--target", "generic-onnx", "--budget-ms", "5", "--data", str(small_corpus), "--out", str(out),
            "--json", *FAST_FIT]
    proc = _popen(*args)
    _, err = _interrupt_when(proc, lambda: (out / "sensitivity" / "codebooks.json").exists())
    _assert_interrupted(proc, err, "fit")
    assert not (out / "report.json").exists()
    calibration = (out / "calibration.json").read_bytes()
    done = run(*args)
    assert done.returncode == 0, done.stderr
    assert "calibrate: exporting" not in done.stderr  # resumed: the calibration was not redone
    assert (out / "calibration.json").read_bytes() == calibration
    assert json.loads(done.stdout)["results"][0]["budget_met"]
    assert not (out / ".hwcompress.lock").exists()


def test_a_shared_cache_lock_waits_for_the_builder(tmp_path) -> None:
    """Corpus builds (shared by every command and test run) wait for each other instead of
    deleting each other's half-built folder."""
    out = tmp_path / "corpus"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hwcompress.workdir import OutputLock\n"
        f"with OutputLock({str(out)!r}):\n    print('held', flush=True); time.sleep(1.5)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with OutputLock(out, wait=True):
        waited = time.monotonic() - started
    assert waited > 1.0  # got the lock only once the builder (holding it 1.5 s) let go
    holder.wait()
