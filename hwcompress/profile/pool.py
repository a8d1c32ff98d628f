"""A device pool: several SSH hosts that measure a target, one measurement per host at a time.

`--host a,b` (comma-separated `[user@]address[:port]`, IPv6 as `[addr]:port`) or `--pool FILE`
names the hosts; `DevicePool.run(target, what, fn)` hands `fn` a free host that serves the
target and records which host ran it; `DevicePool.measure` times an exported streaming .tflite
there with the self-contained device runner (`remote.measure_tflite`). Pool file (TOML):

    [[host]]
    address = "pi@192.168.1.20"     # [user@]address as ssh takes it (an ~/.ssh/config alias works)
    port = 22                       # optional
    identity = "~/.ssh/id_ed25519"  # optional; a relative path is taken from the pool file's folder
    python = "python3"              # optional: the device's Python with ai-edge-litert or tflite-runtime
    targets = ["raspberrypi4"]      # the target names it serves, and/or
    arch = "aarch64"                # every target of this arch (neither: any target it is asked for)

A host that cannot be reached (ssh exit 255, a timeout) or cannot run the runner (its probe:
no such Python, no TFLite interpreter) is marked down for the rest of the run with the reason,
one `warning:` line says so, and the measurement is retried on another host; only when every
host serving the target is down is it an error, one line naming each host and why.

One measurement per host at a time, across threads and processes of this machine: each host
(address and port: two users of one device share it) has a lock file in the lock folder
(`$HWCOMPRESS_DEVICE_LOCKS`, default ~/.cache/hwcompress/device-locks), held with
`fcntl.flock` while anything runs there, the probe included. flock rather than the `filelock`
package because flock locks belong to an open file description, so two threads of one process
that each open the lock file exclude each other exactly as two processes do; the kernel drops
the lock when its holder dies (no stale locks after a kill); `workdir.OutputLock` already rests
on it; and it adds no dependency (filelock is only here as another package's requirement). The
lock files stay in place: unlinking one that a waiter has opened would split the lock in two.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, TypeVar

from hwcompress.errors import HwcError
from hwcompress.profile.measurement import Measurement
from hwcompress.profile.remote import DEVICE_RUNTIME, HostDown, SshDevice, measure_tflite
from hwcompress.targets import ARCHES, Target

T = TypeVar("T")

#: the runtimes a pool host can time: the device runner runs .tflite files
POOL_RUNTIMES = (DEVICE_RUNTIME,)
#: how long a measurement waits for a busy host (another process's measurements) to come free
WAIT_S = 3600.0
_POLL_S = 0.1
_HOST_KEYS = {"address", "port", "identity", "python", "targets", "arch"}


def default_lock_dir() -> Path:
    """`$HWCOMPRESS_DEVICE_LOCKS`, else `$HWCOMPRESS_CACHE/device-locks` (~/.cache/hwcompress/device-locks):
    every process that shares devices must use the same folder."""
    explicit = os.environ.get("HWCOMPRESS_DEVICE_LOCKS")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("HWCOMPRESS_CACHE", Path.home() / ".cache" / "hwcompress")) / "device-locks"


@dataclass(frozen=True)
class PoolHost:
    """One SSH host of a pool and what it serves."""

    address: str  # [user@]address, as ssh takes it (IPv6 without brackets)
    port: int | None = None
    identity: str | None = None
    python: str = "python3"
    targets: tuple[str, ...] = ()  # target names it serves
    arch: str | None = None  # serves every target of this arch

    @property
    def name(self) -> str:
        """`[user@]address[:port]`: how every figure and error names this host."""
        user, _, addr = self.address.rpartition("@")
        shown = f"[{addr}]" if ":" in addr and self.port else addr
        return f"{user + '@' if user else ''}{shown}{f':{self.port}' if self.port else ''}"

    @property
    def device_key(self) -> str:
        """The physical device (address and port, not the user): what the lock is held on."""
        return f"{self.address.rpartition('@')[2].lower()}:{self.port or 22}"

    def serves(self, target: Target) -> bool:
        if not self.targets and self.arch is None:
            return True
        return target.name in self.targets or (self.arch is not None and self.arch == target.arch)

    def serves_text(self) -> str:
        parts = ([f"targets {', '.join(self.targets)}"] if self.targets else []) + (
            [f"arch {self.arch}"] if self.arch else [])
        return " and ".join(parts) or "any target"

    def device(self, timeout: float = 900) -> SshDevice:
        return SshDevice(self.address, self.port, self.identity, self.python, timeout=timeout, label=self.name)


# ---------------------------------------------------------------- parsing: --host and --pool

_HOST_RE = re.compile(r"(?:(?P<user>[^@\s,\[\]]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<addr>[^@\s:,\[\]]+))"
                      r"(?::(?P<port>[^:]*))?")


def _port(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise HwcError(f"{where}: port must be a whole number 1..65535, got {value!r}")
    return value


def parse_hosts(text: str, port: int | None = None, identity: str | None = None,
                python: str = "python3") -> list[PoolHost]:
    """`--host`: comma-separated `[user@]address[:port]`; `port` is the default for the hosts
    without one (`--port`), `identity` and `python` apply to all. They serve any target."""
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise HwcError(f"--host takes [user@]address[:port] entries separated by single commas, got {text!r}")
    if port is not None:
        port = _port(port, "--port")
    if identity is not None and not Path(identity).expanduser().is_file():
        raise HwcError(f"--identity {identity}: no such key file")
    hosts = []
    for item in items:
        m = _HOST_RE.fullmatch(item)
        if not m:
            raise HwcError(f"--host entry {item!r}: expected [user@]address[:port] (IPv6: [user@][address]:port)")
        addr = m.group("v6") or m.group("addr")
        user = m.group("user")
        hosts.append(PoolHost(address=f"{user}@{addr}" if user else addr,
                              port=_port(m.group("port"), f"--host entry {item!r}") if m.group("port") is not None
                              else port,
                              identity=str(Path(identity).expanduser()) if identity else None, python=python))
    _check_unique(hosts, "--host")
    return hosts


def _check_unique(hosts: list[PoolHost], where: str) -> None:
    seen: dict[str, str] = {}
    for h in hosts:
        if h.device_key in seen:
            raise HwcError(f"{where}: {h.name} and {seen[h.device_key]} are the same device ({h.device_key}); "
                           "give each once")
        seen[h.device_key] = h.name


def _host_entry(i: int, raw: Any, base: Path) -> PoolHost:
    """One `[[host]]` table, validated (raises HwcError naming the field)."""
    if not isinstance(raw, dict):
        raise HwcError(f"host {i}: must be a table ([[host]]), got {type(raw).__name__}")
    label = f"host {i}" + (f" ({raw['address']})" if isinstance(raw.get("address"), str) else "")
    unknown = sorted(set(raw) - _HOST_KEYS)
    if unknown:
        raise HwcError(f"{label}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_HOST_KEYS))})")
    address = raw.get("address")
    if not isinstance(address, str) or not address or any(c.isspace() for c in address) or "," in address:
        raise HwcError(f"{label}: address must be [user@]address without spaces or commas, got {address!r}")
    address = address.replace("[", "").replace("]", "")
    port = _port(raw["port"], label) if "port" in raw else None
    identity = raw.get("identity")
    if identity is not None:
        if not isinstance(identity, str) or not identity:
            raise HwcError(f"{label}: identity must be a path to an SSH private key, got {identity!r}")
        key = Path(identity).expanduser()
        key = key if key.is_absolute() else base / key
        if not key.is_file():
            raise HwcError(f"{label}: identity {identity}: no such key file ({key})")
        identity = str(key)
    python = raw.get("python", "python3")
    if not isinstance(python, str) or not python.strip():
        raise HwcError(f"{label}: python must be the device's Python command, got {python!r}")
    targets = raw.get("targets", [])
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise HwcError(f"{label}: targets must be a list of target names, got {targets!r}")
    arch = raw.get("arch")
    if arch is not None and arch not in ARCHES:
        raise HwcError(f"{label}: arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    return PoolHost(address=address, port=port, identity=identity, python=python, targets=tuple(targets), arch=arch)


def load_pool_file(path: str | os.PathLike[str]) -> list[PoolHost]:
    """The hosts of a pool file; every bad entry named, all in one error line."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HwcError(f"{path}: no such pool file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HwcError(f"{path}: cannot read the pool file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise HwcError(f"{path}: not a valid TOML pool file ({exc})") from None
    unknown = sorted(set(raw) - {"host"})
    if unknown:
        raise HwcError(f"{path}: unknown key(s) {', '.join(unknown)}; a pool file holds [[host]] tables")
    entries = raw.get("host")
    if not isinstance(entries, list) or not entries:
        raise HwcError(f"{path}: no hosts; add [[host]] tables with at least an address")
    hosts, problems = [], []
    for i, entry in enumerate(entries, 1):
        try:
            hosts.append(_host_entry(i, entry, path.parent))
        except HwcError as exc:
            problems.append(str(exc))
    if problems:
        raise HwcError(f"{path}: {len(problems)} bad host entr{'y' if len(problems) == 1 else 'ies'}: "
                       + "; ".join(problems))
    _check_unique(hosts, str(path))
    return hosts


def build_pool(host: str | None = None, port: int | None = None, identity: str | os.PathLike[str] | None = None,
               python: str = "python3", pool_file: str | os.PathLike[str] | None = None,
               log: Callable[[str], None] | None = None) -> "DevicePool | None":
    """The pool of `--host` and/or `--pool` (None when neither is given)."""
    if host is None and pool_file is None:
        if port is not None or identity is not None:
            raise HwcError("--port and --identity apply to --host")
        return None
    hosts = load_pool_file(pool_file) if pool_file is not None else []
    if host is not None:
        hosts += parse_hosts(host, port, str(identity) if identity is not None else None, python)
    elif port is not None or identity is not None:
        raise HwcError("--port and --identity apply to --host; in a pool file give them per [[host]]")
    _check_unique(hosts, "--host and --pool")
    return DevicePool(hosts, log=log)


# ---------------------------------------------------------------- the pool


class DevicePool:
    """Hands out the hosts of a pool: one measurement per host at a time (threads and processes),
    down hosts skipped for the rest of the run, every use recorded with its host."""

    def __init__(self, hosts: list[PoolHost], lock_dir: str | os.PathLike[str] | None = None,
                 log: Callable[[str], None] | None = None, wait_s: float = WAIT_S, timeout: float = 900) -> None:
        if not hosts:
            raise HwcError("a device pool needs at least one host")
        _check_unique(hosts, "pool")
        self.hosts = list(hosts)
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.wait_s, self.timeout = wait_s, timeout
        self._mutex = threading.Lock()
        self._down: dict[str, str] = {}  # host name -> why
        self._facts: dict[str, dict] = {}  # host name -> its probe (machine, cpu, runtime)
        self._uses: list[dict] = []  # one per measurement: host, what, start, end, ok
        self._busy: dict[str, int] = {}  # host name -> measurements running on it in this process

    # ------------------------------------------------------------ which hosts

    def serving(self, target: Target) -> list[PoolHost]:
        """The hosts that serve `target`, or one line naming what the pool serves and what it runs."""
        if target.runtime not in POOL_RUNTIMES:
            litert = "LiteRT targets such as raspberrypi4 or x86-litert"
            raise HwcError(f"the device pool runs .tflite artifacts with the LiteRT device runner; target {target.name} "
                           f"uses {target.runtime} (supported: {litert})")
        hosts = [h for h in self.hosts if h.serves(target)]
        if not hosts:
            raise HwcError(f"no host of the pool serves target {target.name} ({target.arch}): "
                           + "; ".join(f"{h.name} serves {h.serves_text()}" for h in self.hosts))
        return hosts

    def serves(self, target: Target) -> bool:
        try:
            return bool(self.serving(target))
        except HwcError:
            return False

    def key(self, target: Target) -> list[str]:
        """What a cache of figures timed on this pool is keyed by: the hosts serving `target`."""
        return sorted(h.name for h in self.serving(target))

    def up(self, target: Target) -> list[PoolHost]:
        with self._mutex:
            return [h for h in self.serving(target) if h.name not in self._down]

    # ------------------------------------------------------------ locks

    def _lock_path(self, host: PoolHost) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", host.device_key)
        return self.lock_dir / f"{safe}-{hashlib.sha256(host.device_key.encode()).hexdigest()[:8]}.lock"

    def _try_lock(self, host: PoolHost) -> IO | None:
        """The host's lock, if free now (non-blocking); None when another measurement holds it."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self._lock_path(host), "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        return fh

    @staticmethod
    def _unlock(fh: IO) -> None:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()

    # ------------------------------------------------------------ state

    def _mark_down(self, host: PoolHost, exc: Exception, target: Target | None = None) -> None:
        """Down for the rest of the run, with the reason; one warning line when hosts serving
        `target` remain (when none does, the caller's error line names them all)."""
        why = str(exc).removeprefix(f"{host.name}: ")  # SshDevice's errors start with the host's name
        with self._mutex:
            if host.name in self._down:
                return
            self._down[host.name] = why
        if target is not None and self.up(target):
            self._warn_down(host)

    def _warn_down(self, host: PoolHost) -> None:
        self.log(f"warning: pool host {host.name} is down for the rest of this run ({self._down[host.name]}); "
                 "measuring on the others")

    def _probe(self, host: PoolHost) -> dict:
        """The host's facts, probed once per run (call with its lock held). HostDown on failure."""
        with self._mutex:
            facts = self._facts.get(host.name)
        if facts is None:
            facts = host.device(min(self.timeout, 120)).probe()
            with self._mutex:
                self._facts[host.name] = facts
        return facts

    def probe(self, target: Target) -> list[PoolHost]:
        """Check every host serving `target` now, in parallel (each under its lock; a host busy
        with another process's measurement is checked when first used): the hosts that are up,
        or one line naming each host and why when none is."""
        with self._mutex:
            known = set(self._facts)
        hosts = [h for h in self.up(target) if h.name not in known]

        def check(h: PoolHost) -> None:
            fh = self._try_lock(h)
            if fh is None:
                return
            try:
                self._probe(h)
            except HostDown as exc:
                self._mark_down(h, exc)  # warned below, once it is known whether any host is up
            finally:
                self._unlock(fh)

        if hosts:
            with ThreadPoolExecutor(max_workers=len(hosts)) as ex:
                list(ex.map(check, hosts))
        up = self.up(target)
        if not up:
            raise HwcError(self._all_down(target))
        for h in hosts:
            if h.name in self._down:
                self._warn_down(h)
        return up

    def _all_down(self, target: Target) -> str:
        with self._mutex:
            why = "; ".join(f"{h.name}: {self._down.get(h.name, 'down')}" for h in self.serving(target))
        return f"every pool host serving {target.name} is down: {why}"

    def state(self) -> dict[str, Any]:
        """The pool for a report: each host with its status (used: measured, idle: reachable but not
        needed, unchecked, down with the reason), what its probe reported, and every measurement
        (host, what, start and end as Unix times); `used`: the hosts that measured anything."""
        with self._mutex:
            uses = [dict(u) for u in self._uses]
            rows = []
            for h in self.hosts:
                count = sum(1 for u in uses if u["host"] == h.name and u["ok"])
                facts = self._facts.get(h.name) or {}
                status = ("down" if h.name in self._down else "used" if count else
                          "idle" if facts else "unchecked")
                rows.append({"host": h.name, "serves": h.serves_text(), "status": status,
                             "reason": self._down.get(h.name), "measurements": count,
                             "machine": facts.get("machine"), "cpu": facts.get("cpu"),
                             "runtime": (f"{facts['runtime']['name']} {facts['runtime']['version']}"
                                         if facts.get("runtime") else None),
                             "python": facts.get("python")})
        return {"hosts": rows, "used": [r["host"] for r in rows if r["measurements"]],
                "down": [{"host": r["host"], "reason": r["reason"]} for r in rows if r["status"] == "down"],
                "measurements": uses, "lock_dir": str(self.lock_dir),
                "how": ("one measurement per host at a time (an flock per device under lock_dir, across threads and "
                        "processes of this machine); a host that cannot be reached is down for the rest of the run "
                        "and its measurement retried on another")}

    def summary(self) -> str:
        """One line: the hosts used (measurement counts) and the hosts down (why)."""
        s = self.state()
        used = ", ".join(f"{r['host']} ({r['measurements']})" for r in s["hosts"] if r["measurements"]) or "none"
        down = "; ".join(f"{d['host']} ({d['reason']})" for d in s["down"])
        return f"pool: measured on {used}" + (f"; down: {down}" if down else "")

    # ------------------------------------------------------------ running

    def run(self, target: Target, what: str, fn: Callable[[SshDevice, dict], T]) -> T:
        """`fn(device, facts)` on a free host serving `target` that is up, under the host's lock.
        A host that turns out down (HostDown) is marked so and `fn` retried on another; every
        host down: one line. Waits up to `wait_s` for a host held by another process."""
        hosts = self.serving(target)
        deadline = time.monotonic() + self.wait_s
        while True:
            with self._mutex:
                up = [h for h in hosts if h.name not in self._down]
                # least busy in this process first, then least used: measurements spread over the hosts
                order = sorted(up, key=lambda h: (self._busy.get(h.name, 0),
                                                  sum(1 for u in self._uses if u["host"] == h.name)))
            if not up:
                raise HwcError(self._all_down(target))
            for h in order:
                fh = self._try_lock(h)
                if fh is None:
                    continue
                with self._mutex:
                    self._busy[h.name] = self._busy.get(h.name, 0) + 1
                start = None
                try:
                    if h.name in self._down:  # another thread found it down meanwhile
                        continue
                    facts = self._probe(h)
                    start = time.time()
                    result = fn(h.device(self.timeout), facts)
                    self._record(h, what, start, ok=True)
                    return result
                except HostDown as exc:
                    if start is not None:
                        self._record(h, what, start, ok=False)
                    self._mark_down(h, exc, target)
                finally:
                    with self._mutex:
                        self._busy[h.name] -= 1
                    self._unlock(fh)
                break  # a host went down: choose again among the others
            else:
                if time.monotonic() > deadline:
                    raise HwcError(f"no pool host serving {target.name} came free within {self.wait_s:g} s "
                                   f"({', '.join(h.name for h in up)} held by other measurements, lock folder "
                                   f"{self.lock_dir})")
                time.sleep(_POLL_S)

    def _record(self, host: PoolHost, what: str, start: float, ok: bool) -> None:
        end = time.time()
        with self._mutex:
            self._uses.append({"host": host.name, "what": what, "start": start, "end": end,
                               "seconds": round(end - start, 3), "ok": ok})

    def measure(self, target: Target, path: str | os.PathLike[str], runs: int, warmup: int = 50,
                what: str | None = None) -> Measurement:
        """Time the streaming .tflite at `path` on a pool host serving `target`, with its threads:
        `remote.measure_tflite`'s figures, the host named in `device`, and a `warning` when the
        host's machine is not the target's arch."""
        m = self.run(target, what or Path(path).name,
                     lambda device, facts: measure_tflite(device, Path(path), target.threads, runs, warmup))
        machine = m.device["machine"].lower()
        if {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine) != target.arch:
            m = m.with_(warning=f"pool host {m.device['host']} is {m.device['machine']}, the target {target.name} is "
                                f"{target.arch}: this is a measurement of that machine, not of the target")
        return m

    def parallel(self, target: Target, calls: list[Callable[[], T]],
                 progress: Callable[[], None] | None = None) -> list[T]:
        """Run `calls` (each measuring on this pool, e.g. `functools.partial(pool.measure, ...)`)
        at once, one thread per host serving `target` that is up, so that every host measures
        while none measures two things at a time: results in the order of `calls`. The first
        error (a measurement failing, or every host down) is raised once the running calls finish;
        the ones not started are dropped."""
        workers = max(1, len(self.probe(target)))

        def one(call: Callable[[], T]) -> T:
            try:
                return call()
            finally:
                if progress is not None:
                    progress()

        ex = ThreadPoolExecutor(max_workers=workers)
        futures = [ex.submit(one, call) for call in calls]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)  # nothing new starts; the running ones finish
            raise
        ex.shutdown(wait=True)
        return results


# ---------------------------------------------------------------- hwcompress profile --host/--pool


def _out_folder(out_dir: Path, spec: str, i: int, several: bool) -> Path:
    if not several:
        return out_dir
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(spec.split(":")[0]).stem or spec)
    return out_dir / f"{i + 1}-{stem}"


def profile_models(models: list[str], target: Target, pool: DevicePool, runs: int = 500, warmup: int = 50,
                   weights: str = "fp32", out_dir: str | os.PathLike[str] | None = None,
                   model_weights: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """`hwcompress profile --host a,b` / `--pool FILE`: each model (a spec profile exports to
    LiteRT, or a streaming .tflite timed as it is) timed on the pool's hosts serving `target`,
    the models spread over the hosts, each host timing one at a time. Returns {"target",
    "results": one per model, as measure_local's measured result plus `device.host`, "pool"}."""
    import tempfile

    from hwcompress.export import ARTIFACT_KINDS, backend_for_artifact, get_backend, is_artifact
    from hwcompress.export.probe import artifact_bytes, stored_weights
    from hwcompress.models.io import load_model
    from hwcompress.progress import progress_bar

    if runs < 1 or warmup < 0:
        raise HwcError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for spec in models:
        if is_artifact(spec):
            kind = backend_for_artifact(Path(spec))
            if kind not in POOL_RUNTIMES:
                raise HwcError(f"{spec}: pool hosts run LiteRT (.tflite) models with the device runner, not an "
                               f"{ARTIFACT_KINDS[kind]}")
            if not Path(spec).is_file():
                raise HwcError(f"{spec}: no such artifact file")
    pool.probe(target)  # every host down, or the target not served: one line before the slow exports
    several = len(models) > 1
    with tempfile.TemporaryDirectory(prefix="hwc-pool-export-") as tmp:
        items = []
        with progress_bar() as bar:
            todo = [m for m in models if not is_artifact(m)]
            task = bar.add_task(f"export {len(todo)} model(s) to LiteRT", total=len(todo)) if todo else None
            for i, spec in enumerate(models):
                if is_artifact(spec):
                    path = Path(spec)
                    items.append({"model": spec, "path": path, "weights": stored_weights(path) or "unknown",
                                  "weights_source": "read from the artifact", "kept": True})
                    continue
                folder = _out_folder(Path(out_dir), spec, i, several) if out_dir else Path(tmp) / str(i)
                net = load_model(spec, model_weights)
                if callable(getattr(net, "analyze", None)):  # as profile here: the probes make 161-bin STFT hops
                    raise HwcError(f"{spec}: profile times hops of hwcompress's 161-bin STFT, not yet a model with "
                                   "its own front end (DeepFilterNet3's 481 bins); predict gives its roofline")
                path = get_backend(DEVICE_RUNTIME).export(net, folder, "stream", weights=weights)
                items.append({"model": spec, "path": Path(path), "weights": weights, "kept": out_dir is not None})
                bar.advance(task)
            task = bar.add_task(f"time {len(items)} model(s) on the pool", total=len(items))
            timed = pool.parallel(target, [functools.partial(pool.measure, target, it["path"], runs, warmup, it["model"])
                                           for it in items], progress=lambda: bar.advance(task))
        results = []
        for it, m in zip(items, timed):
            r = {"model": it["model"], "target": target.name, "target_runtime": target.runtime,
                 "weights": it["weights"], **({"weights_source": it["weights_source"]} if "weights_source" in it else {}),
                 "latency_ms": m.median_ms, **m.to_json(),
                 "artifact": {"path": str(it["path"]), "bytes": artifact_bytes(it["path"]), "kept": it["kept"]}}
            r["fits_latency"] = bool(m.median_ms <= target.latency_budget_ms)
            r["latency_budget_ms"] = target.latency_budget_ms
            results.append(r)
    return {"target": target.name, "results": results, "pool": pool.state()}
