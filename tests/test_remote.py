"""`hwcompress profile --host`: measure over SSH against an sshd this test starts on
loopback (its own host key, client key and config; nothing of the machine's ssh setup is
touched), and a clear error for an unreachable host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if SSHD is None or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server/client not installed (tools/setup.sh installs them)")
    if os.geteuid() != 0:
        pytest.skip("the loopback sshd logs in as the current user only when run as root here")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation directory sshd insists on
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {proc.stderr.read()}")
    # a private known_hosts so the machine's ~/.ssh is left alone
    env_opts = ["-o", f"UserKnownHostsFile={d / 'known_hosts'}"]
    yield {"port": port, "key": d / "client", "opts": env_opts}
    proc.terminate()
    proc.wait(timeout=10)


def test_profile_over_ssh_measures_on_the_device(sshd, tmp_path, monkeypatch) -> None:
    pytest.importorskip("ai_edge_litert")
    from hwcompress.export.tflite import converter_python
    from hwcompress.errors import HwcError

    try:
        converter_python()
    except HwcError as exc:
        pytest.skip(str(exc))
    # ssh reads extra options from $HOME/.ssh/config only; point HOME at a scratch folder
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host 127.0.0.1\n  UserKnownHostsFile {tmp_path / 'known_hosts'}\n")
    monkeypatch.setenv("HOME", str(home))
    user = os.environ.get("USER", "root")
    proc = run("profile", "--target", "raspberrypi4", "--model", "tiny-crn", "--host", f"{user}@127.0.0.1",
               "--port", str(sshd["port"]), "--identity", str(sshd["key"]), "--remote-python", sys.executable,
               "--runs", "40", "--warmup", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["latency_source"] == "measured" and r["runs"] == 40
    assert r["device"]["host"] == f"{user}@127.0.0.1" and r["device"]["machine"] == os.uname().machine
    assert 0 < r["median_ms"] <= r["p90_ms"]
    assert r["runtime"] in ("ai-edge-litert", "tflite-runtime") and r["artifact"]["bytes"] > 0
    # loopback is x86_64, the target aarch64: the result says so instead of passing as a Pi figure
    assert "not of the target" in r["warning"]


def test_unreachable_host_is_one_line_error(tmp_path) -> None:
    proc = run("profile", "--target", "raspberrypi4", "--model", "tiny-crn", "--host", "nobody@127.0.0.1",
               "--port", str(_free_port()))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: nobody@127.0.0.1: SSH connection failed"), proc.stderr


def test_host_needs_a_litert_target() -> None:
    proc = run("profile", "--target", "x86-openvino", "--model", "tiny-crn", "--host", "root@127.0.0.1")
    assert proc.returncode == 2 and "--host runs .tflite artifacts" in proc.stderr
