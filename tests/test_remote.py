"""`hwcompress profile --host` and the device pool (`--host a,b`, `--pool FILE`): measured over
SSH against sshd instances this test starts on loopback ports (their own host key, client key,
known_hosts and ssh config via $HWCOMPRESS_SSH_CONFIG; nothing of the machine's ssh setup is
touched): the measurements spread over the hosts, never two at once on one host (threads and
processes), a stopped host skipped and reported, every host down and a malformed pool one line."""

from __future__ import annotations

import functools
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
USER = os.environ.get("USER", "root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=600)


def start_sshd(d: Path, port: int) -> subprocess.Popen:
    """An sshd on 127.0.0.1:`port` with the host key, authorized keys and config in `d`
    (written by `sshd_keys`): nothing of the machine's ssh setup is touched."""
    (d / f"sshd_config.{port}").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / f'sshd.{port}.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation directory sshd insists on
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / f"sshd_config.{port}")], stderr=subprocess.PIPE, text=True)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"sshd did not start: {proc.stderr.read()}")


def sshd_keys(d: Path) -> None:
    if SSHD is None or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server/client not installed (tools/setup.sh installs them)")
    if os.geteuid() != 0:
        pytest.skip("the loopback sshd logs in as the current user only when run as root here")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)


@pytest.fixture(autouse=True)
def _private_locks(tmp_path, monkeypatch) -> None:
    """Device locks in the test's folder, not the user's cache (ssh_env shares one per module)."""
    monkeypatch.setenv("HWCOMPRESS_DEVICE_LOCKS", str(tmp_path / "locks"))


@pytest.fixture(scope="module")
def sshd_pool(tmp_path_factory):
    """Three sshd on three loopback ports sharing one host key; the third is stopped once it has
    answered, playing a device that went down. `env`: an ssh config whose known_hosts lists the
    three ($HWCOMPRESS_SSH_CONFIG) and a private device-lock folder ($HWCOMPRESS_DEVICE_LOCKS)."""
    d = tmp_path_factory.mktemp("sshd")
    sshd_keys(d)
    ports: list[int] = []
    while len(ports) < 3:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    procs = [start_sshd(d, port) for port in ports]
    procs[2].terminate()
    procs[2].wait(timeout=10)
    kind, key = (d / "host.pub").read_text().split()[:2]
    (d / "known_hosts").write_text("".join(f"[127.0.0.1]:{port} {kind} {key}\n" for port in ports))
    (d / "ssh_config").write_text(f"Host *\n  UserKnownHostsFile {d / 'known_hosts'}\n")
    hosts = [f"{USER}@127.0.0.1:{port}" for port in ports]
    yield {"ports": ports, "hosts": hosts, "up": hosts[:2], "down": hosts[2], "key": d / "client", "dir": d,
           "env": {"HWCOMPRESS_SSH_CONFIG": str(d / "ssh_config"), "HWCOMPRESS_DEVICE_LOCKS": str(d / "locks")}}
    for proc in procs[:2]:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def ssh_env(sshd_pool, monkeypatch):
    for k, v in sshd_pool["env"].items():
        monkeypatch.setenv(k, v)
    return sshd_pool


@pytest.fixture(scope="module")
def converter():
    pytest.importorskip("ai_edge_litert")
    from hwcompress.errors import HwcError
    from hwcompress.export.tflite import converter_python

    try:
        converter_python()
    except HwcError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tiny_tflite(converter, tmp_path_factory) -> Path:
    """tiny-crn exported once as a streaming fp32 .tflite (what the pool tests time)."""
    from hwcompress.export import get_backend
    from hwcompress.models.io import load_model

    return Path(get_backend("litert").export(load_model("tiny-crn"), tmp_path_factory.mktemp("tflite"), "stream"))


def _no_overlap(measurements: list[dict]) -> dict[str, int]:
    """Per host, no two measurements' [start, end] intersect; returns the count per host."""
    by_host: dict[str, list[tuple[float, float]]] = {}
    for m in measurements:
        assert m["start"] <= m["end"], m
        by_host.setdefault(m["host"], []).append((m["start"], m["end"]))
    for host, spans in by_host.items():
        spans.sort()
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert e0 <= s1, f"two measurements at once on {host}: [{s0}, {e0}] and [{s1}, {e1}]"
    return {h: len(v) for h, v in by_host.items()}


def test_profile_over_ssh_measures_on_the_device(ssh_env, converter) -> None:
    port = ssh_env["ports"][0]
    user = USER
    proc = run("profile", "--target", "raspberrypi4", "--model", "tiny-crn", "--host", f"{user}@127.0.0.1",
               "--port", str(port), "--identity", str(ssh_env["key"]), "--remote-python", sys.executable,
               "--runs", "40", "--warmup", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["latency_source"] == "measured" and r["runs"] == 40
    # the pool's name of the host carries the port: several devices may share an address
    assert r["device"]["host"] == f"{user}@127.0.0.1:{port}" and r["device"]["machine"] == os.uname().machine
    assert r["device"]["cpu"] and r["pool"]["used"] == [r["device"]["host"]] and r["pool"]["down"] == []
    assert 0 < r["peak_memory_bytes"] and "VmHWM" in r["peak_memory_method"]
    assert 0 < r["median_ms"] <= r["p90_ms"]
    assert r["runtime"] in ("ai-edge-litert", "tflite-runtime") and r["artifact"]["bytes"] > 0
    # loopback is x86_64, the target aarch64: the result says so instead of passing as a Pi figure
    assert "not of the target" in r["warning"]


def test_unreachable_host_is_one_line_error(tmp_path) -> None:
    port = _free_port()
    proc = run("profile", "--target", "raspberrypi4", "--model", "tiny-crn", "--host", "nobody@127.0.0.1",
               "--port", str(port))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: every pool host serving raspberrypi4 is down: "
                                                   f"nobody@127.0.0.1:{port}: SSH connection failed"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_host_needs_a_litert_target() -> None:
    proc = run("profile", "--target", "x86-openvino", "--model", "tiny-crn", "--host", "root@127.0.0.1")
    assert proc.returncode == 2 and "the device pool runs .tflite artifacts" in proc.stderr


# ---------------------------------------------------------------- the device pool


def _pool(ssh_env, tmp_path, hosts: list[str], logs: list[str]):
    from hwcompress.profile.pool import DevicePool, parse_hosts

    return DevicePool(parse_hosts(",".join(hosts), identity=str(ssh_env["key"]), python=sys.executable),
                      lock_dir=tmp_path / "locks", log=logs.append)


def test_pool_spreads_measurements_over_hosts_one_at_a_time(ssh_env, tiny_tflite, tmp_path) -> None:
    """Six measurements from four threads on two live hosts and a stopped one: both live hosts
    measure, never two things at once, the stopped one is down with its reason, one warning."""
    from hwcompress.targets import load_target

    logs: list[str] = []
    pool = _pool(ssh_env, tmp_path, ssh_env["hosts"], logs)
    tg = load_target("raspberrypi4")
    calls = [functools.partial(pool.measure, tg, tiny_tflite, 30, 3, f"m{i}") for i in range(6)]
    results = pool.parallel(tg, calls)
    assert {r.device["host"] for r in results} == set(ssh_env["up"])
    for r in results:
        assert r.latency_source == "measured" and r.runs == 30 and 0 < r.median_ms <= r.p90_ms
        assert r.device["machine"] == os.uname().machine and r.device["cpu"]
        assert "not of the target" in r.warning  # x86 loopback standing in for a Pi: said, not hidden
    state = pool.state()
    counts = _no_overlap(state["measurements"])
    assert set(counts) == set(ssh_env["up"]) and sum(counts.values()) == 6, counts
    assert state["used"] == ssh_env["up"]
    assert [d["host"] for d in state["down"]] == [ssh_env["down"]]
    assert "SSH connection failed" in state["down"][0]["reason"]
    assert len(logs) == 1 and logs[0].startswith(f"warning: pool host {ssh_env['down']} is down"), logs


def test_host_that_stops_mid_run_is_retried_elsewhere(ssh_env, tiny_tflite, tmp_path) -> None:
    """A host that answered the pool's probe and then stopped: the measurement that finds it gone
    is recorded as failed there, the host is down with its reason, and the figure comes from another."""
    from hwcompress.targets import load_target

    port = _free_port()
    while port in ssh_env["ports"]:
        port = _free_port()
    kind, key = (ssh_env["dir"] / "host.pub").read_text().split()[:2]
    with open(ssh_env["dir"] / "known_hosts", "a") as fh:
        fh.write(f"[127.0.0.1]:{port} {kind} {key}\n")
    proc = start_sshd(ssh_env["dir"], port)
    stopping = f"{USER}@127.0.0.1:{port}"
    logs: list[str] = []
    try:
        pool = _pool(ssh_env, tmp_path, [stopping, ssh_env["up"][0]], logs)
        tg = load_target("raspberrypi4")
        assert [h.name for h in pool.probe(tg)] == [stopping, ssh_env["up"][0]]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # both unused so far: the first listed, the stopped one, is tried first
    results = [pool.measure(tg, tiny_tflite, 20, 2, f"after the stop {i}") for i in range(2)]
    assert [r.device["host"] for r in results] == [ssh_env["up"][0]] * 2
    state = pool.state()
    assert [d["host"] for d in state["down"]] == [stopping] and "SSH connection failed" in state["down"][0]["reason"]
    failed = [m for m in state["measurements"] if not m["ok"]]
    assert [m["host"] for m in failed] == [stopping] and failed[0]["what"] == "after the stop 0"
    assert len(logs) == 1 and logs[0].startswith(f"warning: pool host {stopping} is down"), logs


def test_pool_sweep_rounds_name_their_hosts(ssh_env, converter, tmp_path) -> None:
    """profile --sweep's timing rounds spread over the pool; every round's figure names its host."""
    from hwcompress.profile.table import time_specs
    from hwcompress.targets import load_target

    pool = _pool(ssh_env, tmp_path, ssh_env["up"], [])
    tg = load_target("raspberrypi4")
    rows = time_specs([("tiny", "crn", {"channels": [4, 4, 8, 8, 8], "hidden": [16]})], "litert", tg.threads, 30,
                      repeats=2, weights=("fp32",), pool=pool, target=tg)
    assert len(rows) == 1 and len(rows[0]["repeat_ms"]) == 2 and set(rows[0]["repeat_hosts"]) <= set(ssh_env["up"])
    assert rows[0]["median_ms"] > 0
    _no_overlap(pool.state()["measurements"])


def test_two_processes_never_time_on_one_host_at_once(ssh_env, tiny_tflite) -> None:
    """Two `profile` runs at once on the same pool (three models each): the host locks hold across
    processes, each run names the stopped host in its JSON and in one warning line."""
    cmd = [sys.executable, "-m", "hwcompress", "profile", "--target", "raspberrypi4",
           *[a for _ in range(3) for a in ("--model", str(tiny_tflite))], "--host", ",".join(ssh_env["hosts"]),
           "--identity", str(ssh_env["key"]), "--remote-python", sys.executable, "--runs", "30", "--warmup", "3",
           "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    measurements = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
        warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1 and ssh_env["down"] in warnings[0], err
        r = json.loads(out)
        assert len(r["results"]) == 3 and all(x["device"]["host"] in ssh_env["up"] for x in r["results"])
        assert all(x["artifact"]["path"] == str(tiny_tflite) and x["weights"] == "fp32" for x in r["results"])
        assert [d["host"] for d in r["pool"]["down"]] == [ssh_env["down"]]
        measurements += r["pool"]["measurements"]
    counts = _no_overlap(measurements)
    assert set(counts) == set(ssh_env["up"]) and sum(counts.values()) == 6, counts


def test_every_host_down_is_one_line(ssh_env, tiny_tflite) -> None:
    down = [f"{USER}@127.0.0.1:{ssh_env['ports'][2]}", f"{USER}@127.0.0.1:{_free_port()}"]
    proc = run("profile", "--target", "raspberrypi4", "--model", str(tiny_tflite), "--host", ",".join(down),
               "--identity", str(ssh_env["key"]))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: every pool host serving raspberrypi4 is down: "), proc.stderr
    assert all(f"{h}: SSH connection failed" in lines[0] for h in down), lines[0]


@pytest.mark.parametrize("text, fragments", [
    ("[[host]\naddress = 1", ["not a valid TOML pool file"]),
    ("", ["no hosts"]),
    ("[lab]\nname = 'x'\n", ["unknown key(s) lab"]),
    ('[[host]]\naddress = "a b"\nport = "abc"\n[[host]]\naddress = "pi@10.0.0.2"\ncolour = "red"\n'
     '[[host]]\naddress = "pi@10.0.0.3"\narch = "arm64"\n[[host]]\naddress = "pi@10.0.0.4"\nport = 70000\n'
     '[[host]]\naddress = "pi@10.0.0.5"\nidentity = "missing-key"\n',
     ["5 bad host entries", "host 1 (a b): address must be", "host 2 (pi@10.0.0.2): unknown key(s) colour",
      "host 3 (pi@10.0.0.3): arch must be one of", "host 4 (pi@10.0.0.4): port must be a whole number 1..65535",
      "host 5 (pi@10.0.0.5): identity missing-key: no such key file"]),
    ('[[host]]\naddress = "pi@10.0.0.2"\n[[host]]\naddress = "root@10.0.0.2"\nport = 22\n', ["are the same device"]),
])
def test_malformed_pool_file_is_one_clear_error(tmp_path, text, fragments) -> None:
    from hwcompress.errors import HwcError
    from hwcompress.profile.pool import load_pool_file

    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(HwcError) as exc:
        load_pool_file(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)) and all(f in msg for f in fragments), msg


@pytest.mark.parametrize("args, fragment", [
    (["--pool", "{bad}"], "host 1 (pi@10.0.0.2): port must be a whole number"),
    (["--host", "root@127.0.0.1,,root@127.0.0.2"], "--host takes [user@]address[:port] entries"),
    (["--host", "root@127.0.0.1:ssh"], "port must be a whole number"),
    (["--host", "root@::1"], "expected [user@]address[:port]"),
])
def test_bad_pool_options_are_one_line(tmp_path, args, fragment) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[host]]\naddress = "pi@10.0.0.2"\nport = "ssh"\n')
    proc = run("profile", "--target", "raspberrypi4", "--model", "tiny-crn",
               *[a.replace("{bad}", str(bad)) for a in args])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], \
        proc.stderr


def test_pool_serves_only_its_targets(tmp_path) -> None:
    """A host serves the targets (or arch) its entry names; a LiteRT target only (the device runner)."""
    from hwcompress.errors import HwcError
    from hwcompress.profile.pool import DevicePool, load_pool_file
    from hwcompress.targets import load_target

    path = tmp_path / "lab.toml"
    path.write_text('[[host]]\naddress = "pi@10.0.0.2"\ntargets = ["x86-litert"]\n'
                    '[[host]]\naddress = "pi@10.0.0.3"\narch = "aarch64"\n')
    pool = DevicePool(load_pool_file(path), lock_dir=tmp_path / "locks")
    assert [h.name for h in pool.serving(load_target("raspberrypi4"))] == ["pi@10.0.0.3"]
    assert [h.name for h in pool.serving(load_target("x86-litert"))] == ["pi@10.0.0.2"]
    path.write_text('[[host]]\naddress = "pi@10.0.0.2"\ntargets = ["x86-litert"]\n')
    with pytest.raises(HwcError, match="no host of the pool serves target raspberrypi4 .*pi@10.0.0.2 serves targets "
                                       "x86-litert"):
        DevicePool(load_pool_file(path)).serving(load_target("raspberrypi4"))
    with pytest.raises(HwcError, match="target x86-openvino uses openvino"):
        pool.serving(load_target("x86-openvino"))


@pytest.mark.slow
def test_fit_is_measured_through_the_pool(ssh_env, converter, small_corpus, tmp_path) -> None:
    """`fit --pool FILE` on the Raspberry Pi target (no Pi here: loopback hosts declared as serving
    it): calibration, floor, allocation probes and the verified latency are timed on the live pool
    hosts, each figure naming its host; the stopped host is reported down, the fit carries on."""
    pool = tmp_path / "lab.toml"
    pool.write_text("".join(
        f'[[host]]\naddress = "{USER}@127.0.0.1"\nport = {port}\nidentity = "{ssh_env["key"]}"\n'
        f'python = "{sys.executable}"\ntargets = ["raspberrypi4"]\n' for port in ssh_env["ports"]))
    out = tmp_path / "fit"
    proc = run("fit", "--target", "raspberrypi4", "--model", "tiny-crn", "--budget-ms", "50", "--pool", str(pool),
               "--data", str(small_corpus), "--out", str(out), "--prune-steps", "4", "--cluster-steps", "2",
               "--eval-items", "2", "--measure-runs", "30", "--no-dnsmos", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sum(ssh_env["down"] in ln and ln.startswith("warning:") for ln in proc.stderr.splitlines()) == 1, proc.stderr
    report = json.loads(proc.stdout)
    r = report["results"][0]
    assert r["latency_source"] == "measured" and report["calibration"]["measurable_here"]
    assert r["measured_on"]["host"] in ssh_env["up"] and r["measured_on"]["machine"] == os.uname().machine
    assert "not of the target" in r["measured_on"]["warning"] and r["measured_on"]["host"] in r["device"]
    assert r["peak_memory_source"] == "measured" and r["peak_memory_bytes"] > 0
    assert report["calibration"]["log"][0]["measured_on"] in ssh_env["up"]
    assert all(t["measured_on"] in ssh_env["up"] for t in r["allocation"]["measured_trials"] if "from" not in t)
    p = report["pool"]
    assert [d["host"] for d in p["down"]] == [ssh_env["down"]] and set(p["used"]) <= set(ssh_env["up"])
    counts = _no_overlap(p["measurements"])
    assert sum(counts.values()) >= 4, p["measurements"]  # calibration, floor, an allocation probe, the verified figure
    md = (out / "report.md").read_text()
    assert "## Device pool" in md and ssh_env["down"] in md and "timed on pool host" in md
