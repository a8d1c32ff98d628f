"""Where a fit's tasks run: in this process one after another (SerialEngine), or as Ray tasks on
a local Ray runtime (`--workers N`) or an existing cluster (`--ray-address ADDR`) (RayEngine).

A task is a module-level function and its arguments (`Call`). Every task writes what it computes
atomically into caches keyed by content (search/fit.py, search/sensitivity.py), so:
- a task whose worker dies is simply run again (Ray's `max_retries`), and the retry resumes from
  whatever its first attempt had cached;
- two workers never write one file half each (each write is a rename of a private temporary);
- an interrupted run resumes: the same command finds every finished task's results cached.

Ray is the engine because it is what teams already run for this (one `ray start` per machine,
autoscaling clusters, dashboards); a home-made scheduler would be one more thing to operate.
It is an optional extra (`pip install 'hwcompress[ray]'`): the serial engine needs nothing.

Each task records where and how long it ran (`TaskRecord`): the report's task table and the
scaling estimate of benchmarks/parallel_fit.md are made from these measurements.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from hwcompress.errors import HwcError
from hwcompress import hostlock

#: Ray's switch between a multi-node-capable runtime and a single-machine one (loopback only)
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: how often Ray re-runs a task whose worker process died (a crash, an OOM kill, a lost node)
TASK_RETRIES = 3


@dataclass
class Call:
    name: str  # unique within a run, e.g. "budget raspberrypi4 8ms"
    phase: str  # the run's stage: "analysis", "plan", "budgets"
    fn: Callable[..., Any]
    args: tuple = ()


@dataclass
class TaskRecord:
    name: str
    phase: str
    node: str  # the Ray node id, or "local"
    host: str  # the machine's host name
    pid: int
    started: float  # time.time() at start, seconds
    seconds: float
    attempt: int  # 1 for the first run of the task in this fit; more after a worker died
    error: str | None = None  # a task that failed with a user-facing error (HwcError) says why

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Outcome:
    result: Any
    record: TaskRecord


def quiet_lock_path() -> str:
    """The machine-wide lock of quiet timings (hostlock): one per user, in the temp folder."""
    return str(Path(tempfile.gettempdir()) / f"hwcompress-quiet-{os.getuid()}.lock")


def _attempt(tasks_dir: str | None, name: str) -> int:
    """Count this run of the task (a file per task under the run's .tasks folder): the number
    of times it has started, so a retry after a killed worker shows as attempt 2."""
    if not tasks_dir:
        return 1
    path = Path(tasks_dir) / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".attempts")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one short line per start: O_APPEND writes do not interleave
        fh.write(f"{os.getpid()} {socket.gethostname()} {time.time():.3f} {name}\n")
    return len(path.read_text().splitlines())


def execute(fn: Callable[..., Any], args: tuple, name: str, phase: str, tasks_dir: str | None,
            threads: int, quiet_lock: str | None, node: str = "local") -> tuple[Any, dict]:
    """Run one task here: its torch threads, the machine's quiet-timing lock, its record.
    A user-facing error (HwcError) is returned in the record, not raised: one target's or
    budget's failure is a report entry and the other tasks carry on."""
    import torch

    if node == "ray":
        import ray

        node = ray.get_runtime_context().get_node_id()
    if quiet_lock:
        os.environ[hostlock.ENV] = quiet_lock
    if threads:
        torch.set_num_threads(threads)
    attempt = _attempt(tasks_dir, name)
    started = time.time()
    error, result = None, None
    try:
        result = fn(*args)
    except HwcError as exc:
        error = str(exc)
    record = TaskRecord(name, phase, node, socket.gethostname(), os.getpid(), started, time.time() - started,
                        attempt, error)
    return result, record.to_dict()


class SerialEngine:
    """Every task in this process, in order: the default, no Ray needed."""

    kind = "serial"

    def __init__(self, threads: int = 0, tasks_dir: Path | None = None) -> None:
        self.threads, self.tasks_dir, self.workers = threads, tasks_dir, 1

    def describe(self) -> dict:
        import torch

        return {"kind": self.kind, "workers": 1, "torch_threads_per_task": self.threads or torch.get_num_threads(),
                "nodes": [{"node": "local", "host": socket.gethostname(), "cpus": os.cpu_count()}]}

    def run(self, calls: list[Call], log: Callable[[str], None]) -> list[Outcome]:
        out = []
        for c in calls:
            result, rec = execute(c.fn, c.args, c.name, c.phase, str(self.tasks_dir) if self.tasks_dir else None,
                                  self.threads, None)
            out.append(Outcome(result, TaskRecord(**rec)))
        return out

    def close(self) -> None:
        pass


def _check_address(address: str) -> None:
    """Fail in seconds, in one line, when nothing listens at a Ray address (ray.init would
    retry for a long time before it says so)."""
    if address in ("auto", "local"):
        return
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise HwcError(f"--ray-address must be HOST:PORT of a Ray cluster's head (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as exc:
        raise HwcError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc} "
                       "(start one with `ray start --head`, or check the address)") from None


def package_digest() -> str:
    """Fingerprint of this hwcompress's source files: a cluster's workers must run the same code."""
    import hwcompress

    root = Path(hwcompress.__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _probe(out: str, marker: str) -> dict:
    return {"host": socket.gethostname(), "code": package_digest(), "python": sys.version.split()[0],
            "sees_out": (Path(out) / marker).is_file()}


class RayEngine:
    """Tasks as Ray tasks: `workers` starts a local Ray runtime with that many task slots on this
    machine; `address` joins an existing cluster (its resources decide the parallelism).
    Each task asks for `task_cpus` CPUs and runs torch with that many threads."""

    kind = "ray"

    def __init__(self, out: Path, workers: int | None = None, address: str | None = None, task_cpus: int = 1,
                 task_gpus: float = 0, log: Callable[[str], None] = print) -> None:
        if address is None:
            # a local runtime serves this machine only: Ray binds its ports to the loopback
            # address (Ray's own switch for single-machine runtimes; on Linux it otherwise
            # listens on the machine's network address). Set before Ray is imported, and on
            # its constants in case it was (the raylet and workers inherit the variable).
            os.environ[LOCAL_ONLY_ENV] = "0"
        try:
            import ray
        except ImportError:
            raise HwcError("--workers and --ray-address need Ray: pip install 'hwcompress[ray]' "
                           "(bash tools/setup.sh with HWC_EXTRAS including ray)") from None
        if address is None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        self.ray, self.out, self.log = ray, Path(out), log
        self.workers, self.address, self.task_cpus = workers, address, max(1, int(task_cpus))
        self.task_gpus = task_gpus
        # this run's attempt counters (a resumed run counts afresh)
        self.tasks_dir = str(self.out / ".tasks" / f"{os.getpid()}-{int(time.time())}")
        if address is not None:
            _check_address(address)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every task's own lines, not "repeated 2x"
        if not sys.stderr.isatty():
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no escape codes in log files
        try:
            if address is not None:
                ray.init(address=address, logging_level="ERROR", log_to_driver=True)
            else:
                ray.init(num_cpus=int(workers) * self.task_cpus, include_dashboard=False, logging_level="ERROR",
                         log_to_driver=True, object_store_memory=256 * 2**20)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"at {address}" if address else "here"
            raise HwcError(f"could not start or join a Ray runtime {where}: {str(exc).splitlines()[0][:300]}") from None
        self._remote = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(execute)
        self.nodes = self._check_nodes()

    def _check_nodes(self) -> list[dict]:
        """Every alive node runs this hwcompress and sees --out (a cluster needs a shared file
        system for the run folder and the corpus): checked with one task pinned to each node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        marker = f".node-probe-{os.getpid()}-{int(time.time() * 1e6)}"
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / marker).write_text("hwcompress\n")
        try:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            probe = ray.remote(num_cpus=0)(_probe)
            refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(self.out.resolve()), marker) for n in alive]
            answers = ray.get(refs, timeout=120)
        finally:
            (self.out / marker).unlink(missing_ok=True)
        mine = package_digest()
        nodes = []
        for n, a in zip(alive, answers):
            if a["code"] != mine:
                raise HwcError(f"Ray node {a['host']} ({n['NodeManagerAddress']}) runs another hwcompress "
                               f"(source {a['code']}, here {mine}): install the same version on every node")
            if not a["sees_out"]:
                raise HwcError(f"Ray node {a['host']} ({n['NodeManagerAddress']}) cannot see {self.out.resolve()}: "
                               "put --out (and --data) on a file system every node mounts at the same path")
            nodes.append({"node": n["NodeID"], "host": a["host"], "address": n["NodeManagerAddress"],
                          "cpus": n.get("Resources", {}).get("CPU")})
        return nodes

    def describe(self) -> dict:
        return {"kind": self.kind, "workers": self.workers, "address": self.address, "ray_version": self.ray.__version__,
                "task_cpus": self.task_cpus, "task_gpus": self.task_gpus, "torch_threads_per_task": self.task_cpus,
                "task_retries_on_worker_death": TASK_RETRIES, "nodes": self.nodes,
                "quiet_timings": "timings hold each machine alone (hostlock): other tasks pause at their next step"}

    def run(self, calls: list[Call], log: Callable[[str], None]) -> list[Outcome]:
        ray = self.ray
        refs = {}
        for i, c in enumerate(calls):
            ref = self._remote.options(name=c.name, num_cpus=self.task_cpus, num_gpus=self.task_gpus).remote(
                c.fn, c.args, c.name, c.phase, self.tasks_dir, self.task_cpus, quiet_lock_path(), "ray")
            refs[ref] = i
        results: list[Outcome | None] = [None] * len(calls)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=None)
            for ref in done:
                i = refs[ref]
                try:
                    result, rec = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # a bug in a task: its own traceback, not Ray's
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    raise cause from None
                except ray.exceptions.WorkerCrashedError:
                    raise HwcError(f"task {calls[i].name!r}: its worker died {TASK_RETRIES + 1} times; "
                                   "the finished work is cached, run the same command again to resume") from None
                results[i] = Outcome(result, TaskRecord(**rec))
                log(f"  task done: {calls[i].name} ({rec['seconds']:.1f} s on {rec['host']}"
                    f"{', attempt ' + str(rec['attempt']) if rec['attempt'] > 1 else ''})")
        return [r for r in results if r is not None]

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()
