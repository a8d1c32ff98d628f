"""`hwcompress fit` over several targets and budgets as tasks (search/multi.py, search/engine.py).

One serial run is the reference. The same fit then runs on Ray twice: on a two-node Ray cluster
(a head and a second node, each with one CPU) that the test starts on loopback inside a network
namespace of its own (`unshare --net`: only `lo` exists there, so no Ray port can listen or
connect anywhere else), with the worker of one budget's task killed mid-task; and one target on
a local Ray runtime (`--workers 2`). Both must give the serial run's results: the same
allocation, codebooks, .hwc bytes, runtime artifact bytes and quality (to 1e-9: see _same).

The fit is made deterministic where it can be: a size budget forces pruning on both targets
(the allocation is then decided by the size constraint, not by timings: the tiny
model's artifacts are 45-48 KB dense, mostly fixed overhead, so the budget is just under them), latency budgets the
tiny model meets with room, one torch thread per task.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="ray is not installed (HWC_EXTRAS with ray: bash tools/setup.sh)")

RAY = Path(sys.executable).with_name("ray")
TARGETS = "generic-onnx,raspberrypi4"
FAST = ["--model", "tiny-crn", "--budget-ms", "5,2", "--budget-kb", "44.5", "--prune-steps", "4", "--cluster-steps", "2",
        "--eval-items", "3", "--measure-runs", "50", "--no-dnsmos", "--no-emulate", "--torch-threads", "1"]


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwcompress", *args], capture_output=True, text=True, timeout=timeout)


def _user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outcome(out: Path, target: str, budget: float, one: bool = False) -> dict:
    """What must not depend on where the tasks ran: read back from the run's files."""
    folder = (out if one else out / target) / f"budget-{budget:g}ms"
    report = json.loads(((out if one else out / target) / "report.json").read_text())
    r = next(r for r in report["results"] if r["budget_ms"] == budget)
    return {"ratios": r["allocation"]["ratios"], "codebooks": report["codebooks"], "hwc": _sha(folder / "model.hwc"),
            "runtime": {Path(f).name: _sha(folder / "export" / Path(f).name) for f in r["files"]["runtime"]},
            "quality": r["quality"]["compressed"], "size_bytes": r["size_bytes"]}


def _same(a: dict, b: dict) -> bool:
    """Equal outcomes: the files bit for bit; the quality scores to 1e-9 (numpy's BLAS runs with
    other thread counts in a Ray worker than in the serial process, which moves SI-SDR's last
    digits: 1.2699926232792853 vs ...864 for the same audio)."""
    qa, qb = a["quality"], b["quality"]
    return ({k: v for k, v in a.items() if k != "quality"} == {k: v for k, v in b.items() if k != "quality"}
            and qa.keys() == qb.keys() and all(math.isclose(qa[k], qb[k], rel_tol=1e-9) for k in qa))


def _no_half_files(out: Path) -> None:
    for p in out.rglob("*.json"):
        json.loads(p.read_text())  # every cache and report parses: nothing half-written under its name


@pytest.fixture(scope="module")
def serial(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    proc = run("fit", "--target", TARGETS, "--data", str(small_corpus), "--out", str(out), "--json", *FAST)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_serial_multi_target_report(serial) -> None:
    out, report = serial
    assert report["kind"] == "multi-target fit" and report["targets"] == ["generic-onnx", "raspberrypi4"]
    assert report["engine"]["kind"] == "serial"
    for t in report["targets"]:
        pt = report["per_target"][t]
        assert pt["error"] is None and [r["budget_ms"] for r in pt["budgets"]] == [5.0, 2.0]
        for r in pt["budgets"]:
            assert r["budget_met"] and r["runtime_bytes"] <= 44.5 * 1024
            assert any(v > 0 for v in r["ratios"].values())  # the size budget made it prune
        assert any(r["pareto"] for r in pt["budgets"])
        assert (out / t / "report.json").is_file() and (out / t / "report.html").is_file()
    # the analysis is made once for both targets: one shared sensitivity folder, none per target
    assert (out / "sensitivity" / "structured.json").is_file() and (out / "sensitivity" / "codebooks.json").is_file()
    assert not (out / "generic-onnx" / "sensitivity" / "structured.json").exists()
    phases = {t["phase"] for t in report["tasks"]}
    assert phases == {"analysis", "plan", "budgets"}
    assert sum(t["name"].startswith("budget ") for t in report["tasks"]) == 4
    md = (out / "report.md").read_text()
    assert "## generic-onnx" in md and "## raspberrypi4" in md and "Pareto" in md
    _no_half_files(out)


NETNS_SCRIPT = r"""
set -e
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$TOKEN"
trap '"$RAY" stop --force >/dev/null 2>&1 || true' EXIT
"$RAY" start --head --port=6379 --num-cpus=1 --include-dashboard=false --disable-usage-stats --temp-dir="$RAYTMP" >"$LOGS/head.log" 2>&1
"$RAY" start --address=127.0.0.1:6379 --num-cpus=1 --disable-usage-stats >"$LOGS/node.log" 2>&1
"$PYTHON" -m hwcompress fit --target "$TARGETS" --ray-address 127.0.0.1:6379 "$@"
"""


def test_two_node_ray_cluster_with_a_killed_worker_equals_serial(serial, small_corpus, tmp_path) -> None:
    """A head and a second node on loopback in their own network namespace; the worker running
    one budget's task is killed (SIGKILL) mid-task; Ray re-runs it and the results are the serial run's."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("the loopback Ray cluster runs in a network namespace of its own: needs unshare (util-linux) and root")
    ref_out, _ = serial
    out = tmp_path / "cluster"
    raytmp = Path(tempfile.mkdtemp(prefix="hwcray-"))  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY": str(RAY), "PYTHON": sys.executable, "TARGETS": TARGETS, "RAYTMP": str(raytmp),
           "LOGS": str(tmp_path), "TOKEN": hashlib.sha256(os.urandom(32)).hexdigest()}
    proc = subprocess.Popen(["unshare", "--net", "bash", "-c", NETNS_SCRIPT, "netns", "--data", str(small_corpus),
                             "--out", str(out), "--json", *FAST],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.time() + 600
        while killed is None and proc.poll() is None and time.time() < deadline:
            for f in (out / ".tasks").glob("*/*.attempts") if (out / ".tasks").is_dir() else []:
                lines = f.read_text().splitlines()
                if len(lines) == 1 and lines[0].endswith("budget raspberrypi4 2ms"):
                    time.sleep(3)  # into the task: allocation done, fine-tuning or export under way
                    pid = int(lines[0].split()[0])
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True)
        shutil.rmtree(raytmp, ignore_errors=True)
    assert killed is not None, f"the task to kill never started: {stderr[-3000:]}"
    assert proc.returncode == 0, stderr[-5000:] + (tmp_path / "node.log").read_text()[-2000:]
    report = json.loads(stdout)
    assert report["engine"]["kind"] == "ray" and len(report["engine"]["nodes"]) == 2
    assert {n["address"] for n in report["engine"]["nodes"]} == {"127.0.0.1"}
    assert len({t["node"] for t in report["tasks"]}) == 2  # tasks ran on both nodes
    rerun = [t for t in report["tasks"] if t["name"] == "budget raspberrypi4 2ms"]
    assert len(rerun) == 1 and rerun[0]["attempt"] == 2 and rerun[0]["pid"] != killed  # re-run after the kill
    for t in ("generic-onnx", "raspberrypi4"):
        for b in (5.0, 2.0):
            assert _same(_outcome(out, t, b), _outcome(ref_out, t, b)), (t, b, _outcome(out, t, b), _outcome(ref_out, t, b))
    _no_half_files(out)


def test_local_ray_workers_one_target_equals_serial(serial, small_corpus, tmp_path) -> None:
    ref_out, _ = serial
    out = tmp_path / "local"
    args = [a if a != TARGETS else "raspberrypi4" for a in FAST]
    proc = run("fit", "--target", "raspberrypi4", "--workers", "2", "--data", str(small_corpus), "--out", str(out),
               "--json", *args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["engine"]["kind"] == "ray" and report["engine"]["workers"] == 2
    assert [n["address"] for n in report["engine"]["nodes"]] == ["127.0.0.1"]  # a local runtime: loopback only
    assert report["target"] == "raspberrypi4" and (out / "report.html").is_file()  # a one-target layout
    for b in (5.0, 2.0):
        assert _same(_outcome(out, "raspberrypi4", b, one=True), _outcome(ref_out, "raspberrypi4", b)), b


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--target", "generic-onnx", "--workers", "0"], "--workers must be at least 1"),
        (["--target", "generic-onnx", "--workers", "2", "--ray-address", "127.0.0.1:6379"], "give one of the two"),
        (["--target", "generic-onnx", "--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--target", "generic-onnx", "--ray-address", "headnode"], "--ray-address must be HOST:PORT"),
        (["--target", "generic-onnx,,raspberrypi4"], "--target takes names separated by single commas"),
        (["--target", "generic-onnx,pdp11"], "unknown target"),
        (["--target", "generic-onnx,generic-onnx"], "lists a target twice"),
    ],
)
def test_parallel_fit_bad_input(tmp_path, small_corpus, args, fragment) -> None:
    started = time.time()
    _user_error(run("fit", *args, "--data", str(small_corpus), "--out", str(tmp_path / "out"), "--no-dnsmos",
                    timeout=120), fragment)
    assert time.time() - started < 60  # refused before any long work


# ---------------------------------------------------------------- quiet timings (hostlock)


def _share(lock: str, seconds: float, label: str, q) -> None:
    os.environ["HWC_QUIET_LOCK"] = lock
    from hwcompress.hostlock import cpu_share

    with cpu_share():
        q.put((f"{label}-start", time.time()))
        time.sleep(seconds)
        q.put((f"{label}-end", time.time()))


def _quiet(lock: str, seconds: float, q) -> None:
    os.environ["HWC_QUIET_LOCK"] = lock
    from hwcompress.hostlock import quiet

    with quiet():
        q.put(("timing-start", time.time()))
        time.sleep(seconds)
        q.put(("timing-end", time.time()))


def test_a_timing_waits_for_running_steps_and_holds_later_ones(tmp_path) -> None:
    """Processes that share nothing but the lock file: a timing starts only after the step in
    flight ends, and a step that arrives while the timing waits runs only after it."""
    lock = str(tmp_path / "quiet.lock")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    first = ctx.Process(target=_share, args=(lock, 1.5, "first", q))
    first.start()
    assert q.get(timeout=60)[0] == "first-start"
    timing = ctx.Process(target=_quiet, args=(lock, 1.0, q))
    timing.start()
    time.sleep(0.5)  # the timing is waiting for the first step now
    later = ctx.Process(target=_share, args=(lock, 0.1, "later", q))
    later.start()
    for p in (first, timing, later):
        p.join(timeout=60)
        assert p.exitcode == 0
    events = dict(q.get(timeout=5) for _ in range(5))
    assert events["timing-start"] >= events["first-end"]  # waited for the step in flight
    assert events["later-start"] >= events["timing-end"]  # the later step waited for the whole timing


def _spin(seconds: float):
    """A process that keeps one core busy for `seconds` and takes no lock (a worker starting,
    an import, a daemon)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"])


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_a_timing_waits_for_a_busy_process_that_takes_no_lock(tmp_path, monkeypatch) -> None:
    from hwcompress import hostlock

    monkeypatch.setenv("HWC_QUIET_LOCK", str(tmp_path / "quiet.lock"))
    spinner = _spin(2.0)
    time.sleep(0.5)  # running now
    started = time.monotonic()
    with hostlock.quiet():
        seen = hostlock.settled()
        began = time.monotonic()
    spinner.wait(timeout=30)
    assert seen["others_cores_at_start"] > 0.5, seen  # it saw the spinner's core...
    # ...and began once it ended (under the settle threshold, or, on a machine whose own
    # background never falls under it, at least with the spinner's core gone)
    assert (seen["quiet"] and seen["others_cores"] <= hostlock.SETTLE_CORES) or seen["others_cores"] < 0.5, seen
    assert began - started >= 1.0 and seen["waited_s"] >= 1.0, seen
    assert hostlock.settled() is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_a_timing_waits_for_a_busy_machine_at_most_settle_max(tmp_path, monkeypatch) -> None:
    from hwcompress import hostlock

    monkeypatch.setenv("HWC_QUIET_LOCK", str(tmp_path / "quiet.lock"))
    monkeypatch.setattr(hostlock, "SETTLE_MAX_S", 0.6)
    spinner = _spin(4.0)
    time.sleep(0.5)
    try:
        with hostlock.quiet():
            seen = hostlock.settled()
    finally:
        spinner.kill()
        spinner.wait()
    assert not seen["quiet"] and seen["others_cores"] > hostlock.SETTLE_CORES, seen
    assert 0.6 <= seen["waited_s"] < 2.0, seen


def test_hostlock_is_a_no_op_without_the_variable(monkeypatch) -> None:
    from hwcompress import hostlock

    monkeypatch.delenv("HWC_QUIET_LOCK", raising=False)
    with hostlock.cpu_share(), hostlock.cpu_share():
        pass
    with hostlock.quiet(), hostlock.cpu_share():
        pass
