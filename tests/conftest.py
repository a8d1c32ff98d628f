"""Shared fixtures: a small corpus built once per session with the real builder.

Under CI (CI=true, as .ci/run sets it) a skipped test fails the run: a missing runtime,
extra or tool (onnxruntime, openvino, nncf, ai_edge_litert, the litert-torch venv, the
arm64 root, chromium, sshd, ...) must not silently drop coverage. Only the skips whose
reason matches CI_ALLOWED_SKIPS (platform-only: the other architecture's tests) pass;
every other skip is listed in a "skips not allowed in CI" section and the exit status
becomes 1. tests/test_ci_skips.py runs this hook on generated test files.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("HWC_TEST_CACHE", Path.home() / ".cache" / "hwcompress-tests"))

#: skip reasons (regular expressions, searched) that are legitimate in CI: the test is
#: meaningless on this platform, whatever is installed. Anything else that skips under
#: CI=true fails the run.
CI_ALLOWED_SKIPS = (
    r"^arm64 host: no emulation needed$",  # test_emulated_arm: the x86 host's binfmt check
    r"^the measured targets here are x86_64$",  # test_profile on a non-x86 host
    r"^a CUDA device is available here$",  # test_device: the no-GPU answers, on a GPU host
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_reason(report) -> str:
    longrepr = report.longrepr  # (path, line, "Skipped: reason") for test and collection skips
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


_CI_BAD_SKIPS: list[tuple[str, str]] = []  # (test id, reason) of the skips CI does not allow


def _record_skip(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not _in_ci():
        return
    reason = _skip_reason(report)
    if not any(re.search(pattern, reason) for pattern in CI_ALLOWED_SKIPS):
        _CI_BAD_SKIPS.append((report.nodeid or "(collection)", reason))


def pytest_runtest_logreport(report) -> None:
    _record_skip(report)


def pytest_collectreport(report) -> None:  # a module-level importorskip skips at collection
    _record_skip(report)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _CI_BAD_SKIPS and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _CI_BAD_SKIPS:
        return
    terminalreporter.section("skips not allowed in CI", sep="=", red=True, bold=True)
    for nodeid, reason in _CI_BAD_SKIPS:
        terminalreporter.line(f"SKIPPED IN CI {nodeid}: {reason}")
    terminalreporter.line(f"{len(_CI_BAD_SKIPS)} skip(s) under CI=true: install what they name "
                          "(tools/setup.sh, tools/setup_arm.sh) or, for a platform-only skip, "
                          "add its reason to CI_ALLOWED_SKIPS in tests/conftest.py")


@pytest.fixture(scope="session")
def small_corpus() -> Path:
    """A few real prompts per speaker, one sentence per synthetic voice, all noise kinds."""
    from hwcompress.data.corpus import build_corpus

    from hwcompress.workdir import OutputLock

    out = CACHE / "small-corpus-v2"
    if not (out / "manifest.json").exists():
        with OutputLock(out, wait=True):  # another test run may be building it right now
            if not (out / "manifest.json").exists():
                build_corpus(out, seed=0, per_voice=1, n_valid=6, n_test=10, n_test_synth=5, real_limit=12)
    return out


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """The console entry point in this process (no second torch import): exit code and output."""
    from hwcompress.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exc.value.code, captured.out, captured.err)


def user_error(proc: subprocess.CompletedProcess, *fragments: str, only_line: bool = True) -> str:
    """Assert the run failed as bad input should: exit 2, no traceback or warning, exactly one
    `error: ` line (the only line, or with only_line=False the last one after progress lines)
    containing every fragment. Returns that line."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert len(lines) == 1 or not only_line, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def sigint_default() -> None:
    """Popen preexec_fn for the Ctrl-C tests: a child started from a shell's background job
    inherits SIGINT ignored (POSIX), and Python then never raises KeyboardInterrupt; the
    tests' SIGINT must reach the command as a user's Ctrl-C does."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
