"""The CI skip guard of tests/conftest.py: under CI=true a skip for a missing runtime or
tool fails the run, a platform-only skip does not. Each case runs a real pytest in a
subprocess on a generated test folder that carries a copy of tests/conftest.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

MISSING_RUNTIME = '''
import pytest

def test_needs_runtime():
    pytest.importorskip("no_such_runtime_hwc", reason="runtime of backend 'x' is not installed")

def test_plain():
    assert 1 + 1 == 2
'''

PLATFORM_ONLY = '''
import pytest

def test_x86_binfmt():
    pytest.skip("arm64 host: no emulation needed")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False

def test_plain():
    assert True
'''

# the three other ways a test here skips: a skipif marker, a fixture and a module-level importorskip
MARKER = '''
import pytest

@pytest.mark.skipif(True, reason="nncf not installed")
def test_marker():
    pass
'''
FIXTURE = '''
import pytest

@pytest.fixture(scope="module")
def sshd():
    pytest.skip("OpenSSH server/client not installed (tools/setup.sh installs them)")

def test_fixture(sshd):
    pass
'''
MODULE_LEVEL = '''
import pytest

chromium = pytest.importorskip("no_such_browser_hwc")

def test_module():
    pass
'''


def _run(tmp_path: Path, files: dict[str, str], ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # roots the run here, not in this repo
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    for name, body in files.items():
        (tmp_path / name).write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_runtime_skip_fails_under_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, {"test_rt.py": MISSING_RUNTIME}, ci="true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "skips not allowed in CI" in proc.stdout
    assert "SKIPPED IN CI test_rt.py::test_needs_runtime: runtime of backend 'x' is not installed" in proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout  # the passing test still ran


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_same_skip_passes_outside_ci(tmp_path: Path, ci: str | None) -> None:
    proc = _run(tmp_path, {"test_rt.py": MISSING_RUNTIME}, ci=ci)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skips not allowed in CI" not in proc.stdout
    assert "SKIPPED [1]" in proc.stdout and "is not installed" in proc.stdout  # -rs lists it


def test_platform_only_skip_and_xfail_pass_under_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, {"test_arch.py": PLATFORM_ONLY}, ci="true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skips not allowed in CI" not in proc.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in proc.stdout


def test_marker_fixture_and_collection_skips_fail_under_ci(tmp_path: Path) -> None:
    files = {"test_marker.py": MARKER, "test_fixture.py": FIXTURE, "test_module.py": MODULE_LEVEL}
    proc = _run(tmp_path, files, ci="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "SKIPPED IN CI test_marker.py::test_marker: nncf not installed" in out
    assert "SKIPPED IN CI test_fixture.py::test_fixture: OpenSSH server/client not installed" in out
    assert "SKIPPED IN CI test_module.py: could not import 'no_such_browser_hwc'" in out
    assert "3 skip(s) under CI=true" in out


def test_real_failure_keeps_its_exit_status(tmp_path: Path) -> None:
    body = MISSING_RUNTIME + "\ndef test_broken():\n    assert False\n"
    proc = _run(tmp_path, {"test_rt.py": body}, ci="true")
    assert proc.returncode == 1 and "1 failed" in proc.stdout and "SKIPPED IN CI" in proc.stdout
