"""Measure a .tflite on a real device over SSH with the self-contained device runner.

Copies the artifact, device_runner.py and the input frames to a fresh temporary folder on
the device (scp), runs the runner there with the device's own Python and TFLite interpreter
(ai-edge-litert or tflite-runtime), copies the results back and removes the folder. Uses
the system `ssh`/`scp` clients, so keys, agents and ~/.ssh/config work as they do for the
user; BatchMode means a missing key fails at once instead of prompting. `$HWCOMPRESS_SSH_CONFIG`
names an ssh config file used instead of ~/.ssh/config and /etc/ssh/ssh_config (`ssh -F`):
ssh finds ~/.ssh through the password database, not $HOME, so this is how a test (or a lab
setup) keeps its own known_hosts and options without touching the user's.

A device that cannot be reached (ssh/scp exit 255: refused, unreachable, authentication,
a connection dropped mid-run) or that does not answer within the timeout raises `HostDown`,
so that a device pool (`hwcompress.profile.pool`) can mark it down and measure elsewhere;
any other failure (the runner rejecting the model) is an ordinary HwcError.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hwcompress.errors import HwcError
from hwcompress.profile.measurement import Measurement

RUNNER = Path(__file__).with_name("device_runner.py")
#: the backend whose artifacts the device runner runs (.tflite files, with ai-edge-litert or
#: tflite-runtime on the device): the one runtime a pool host or a remote device times
DEVICE_RUNTIME = "litert"


class HostDown(HwcError):
    """The device cannot be reached or cannot run the device runner."""


class SshDevice:
    def __init__(self, host: str, port: int | None = None, identity: str | None = None, python: str = "python3",
                 timeout: float = 900, label: str | None = None) -> None:
        if not host or any(c.isspace() for c in host):
            raise HwcError(f"--host must be [user@]address, got {host!r}")
        self.host, self.python, self.timeout = host, python, timeout
        #: how errors and results name this device: the pool's host name (address:port)
        self.label = label or host
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=accept-new"]
        config = os.environ.get("HWCOMPRESS_SSH_CONFIG")
        if config:
            opts = ["-F", config, *opts]
        if identity:
            opts += ["-i", str(identity)]
        self.ssh = ["ssh", *opts] + (["-p", str(port)] if port else [])
        self.scp = ["scp", "-q", *opts] + (["-P", str(port)] if port else [])

    def _run(self, cmd: list[str], what: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        try:
            # stdin: the given text, else nothing (ssh would otherwise read this process's stdin,
            # which several threads measuring at once must not share)
            feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, **feed)
        except FileNotFoundError:
            raise HwcError(f"{cmd[0]} not found: install an OpenSSH client (Debian: openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise HostDown(f"{self.label}: {what} timed out after {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1][:300] if lines else f"exit code {proc.returncode}"
            if proc.returncode == 255 and cmd[0] in ("ssh", "scp"):
                raise HostDown(f"{self.label}: SSH connection failed ({last})")
            raise HwcError(f"{self.label}: {what} failed: {last}")
        return proc

    def shell(self, command: str, what: str) -> str:
        return self._run([*self.ssh, self.host, command], what).stdout

    def probe(self) -> dict[str, Any]:
        """What the device is and runs (device_runner --probe, the script fed on stdin): machine,
        cpu, load_avg, python, numpy, runtime {name, version}. HostDown when it cannot be reached
        or has no TFLite interpreter (the runner exits non-zero)."""
        cmd = [*self.ssh, self.host, f"{shlex.quote(self.python)} - --probe"]
        try:
            proc = self._run(cmd, "probing the device", stdin=RUNNER.read_text())
        except HostDown:
            raise
        except HwcError as exc:  # no such Python, no numpy, no TFLite interpreter: this host cannot measure
            raise HostDown(str(exc)) from None
        try:
            facts = json.loads(proc.stdout.strip().splitlines()[-1])
            facts["machine"], facts["runtime"]["name"]  # noqa: B018 (the keys every measurement reports)
        except (IndexError, ValueError, KeyError, TypeError):
            raise HostDown(f"{self.label}: unexpected reply to the device runner's probe: "
                           f"{proc.stdout.strip()[:100]!r}") from None
        return facts

    def run_tflite(self, tflite: Path, inputs: dict[str, np.ndarray], runs: int, warmup: int = 0,
                   threads: int = 1) -> tuple[dict[str, np.ndarray], dict]:
        tflite = Path(tflite)
        if not tflite.is_file():
            raise HwcError(f"{tflite}: no such model file")
        remote = self.shell("mktemp -d /tmp/hwc-run-XXXXXX", "creating a work folder").strip()
        if not remote.startswith("/tmp/hwc-run-"):
            raise HwcError(f"{self.label}: unexpected reply to mktemp: {remote[:100]!r}")
        try:
            with tempfile.TemporaryDirectory(prefix="hwc-ssh-") as tmp:
                local = Path(tmp)
                np.savez(local / "inputs.npz", **{k: np.asarray(v) for k, v in inputs.items()})
                self._run([*self.scp, str(tflite), str(RUNNER), str(local / "inputs.npz"), f"{self.host}:{remote}/"],
                          "copying the model and runner")
                cmd = " ".join(shlex.quote(a) for a in [
                    self.python, f"{remote}/device_runner.py", f"{remote}/{tflite.name}", f"{remote}/inputs.npz",
                    f"{remote}/out", "--runs", str(runs), "--warmup", str(warmup), "--threads", str(threads),
                    "--latency-source", "device"])
                self.shell(cmd, "running the model")
                self._run([*self.scp, f"{self.host}:{remote}/out/info.json", f"{self.host}:{remote}/out/outputs.npz",
                           str(local)], "fetching the results")
                info = json.loads((local / "info.json").read_text())
                with np.load(local / "outputs.npz") as data:
                    outputs = {k: data[k] for k in data.files}
        finally:
            try:
                self.shell(f"rm -rf {shlex.quote(remote)}", "cleaning up")
            except HwcError:
                pass  # the run's result (or its error) matters more than a leftover temp folder
        info["host"] = self.label
        return outputs, info


def measure_tflite(device: SshDevice, path: Path, threads: int, runs: int, warmup: int = 50) -> Measurement:
    """Time an exported streaming .tflite on `device`: `runs` hops of speech-like frames with the
    state carried, after `warmup` untimed ones. The keys `measure.measure_artifact` returns
    (median_ms, p90_ms, mean_ms, min_ms, max_ms, runs, warmup, peak_memory_bytes,
    peak_memory_method, host {cpu, arch, load_avg}), plus the device {host, machine, cpu,
    platform}, runtime and version, threads and `how`."""
    from hwcompress.export import _graph as g
    from hwcompress.export import get_backend
    from hwcompress.export.probe import speech_like_frames

    path = Path(path)
    # its state shapes, read here; a foreign or whole-utterance file fails in one line before any copy
    session = get_backend(DEVICE_RUNTIME).load(path, threads=1)
    if session.frames != 1:
        raise HwcError(f"{path}: a whole-utterance .tflite (T={session.frames}); a device times one 10 ms hop per "
                       "invoke: give the streaming export (*-stream*.tflite)")
    frames = speech_like_frames(min(runs, 200))
    feeds = {g.SPEC: np.stack([frames[i % len(frames)] for i in range(runs)])}
    for i, s in enumerate(session.state_shapes):
        feeds[g.state_name(i)] = np.zeros((1, *s), np.float32)
    del session
    _, info = device.run_tflite(path, feeds, runs=runs, warmup=warmup, threads=threads)
    lat = info["latency_ms"]
    return Measurement.from_json({
        "median_ms": lat["median"], "p90_ms": lat["p90"], "mean_ms": lat["mean"], "min_ms": lat["min"],
        "max_ms": lat["max"], "runs": runs, "warmup": warmup, "load_seconds": info["load_ms"] / 1e3,
        "latency_source": "measured",
        "runtime": info["runtime"]["name"], "runtime_version": info["runtime"]["version"], "threads": info["threads"],
        "peak_memory_bytes": info.get("peak_memory_bytes"),
        "peak_memory_method": f"on {device.label}: {info.get('peak_memory_method', 'not reported by the runner')}",
        "host": {"cpu": info.get("cpu", "unknown"), "arch": info["machine"], "load_avg": info.get("load_avg"),
                 "load_avg_after": info.get("load_avg_after"), "where": f"{device.label} over SSH"},
        "device": {"host": device.label, "machine": info["machine"], "cpu": info.get("cpu", "unknown"),
                   "platform": info["platform"]},
        "harness": f"device runner: {info['latency_scope']}",
        "how": (f"{runs} streaming hops after {warmup} warm-up hops on {device.label} ({info['machine']}, "
                f"{info.get('cpu', 'unknown CPU')}) with the self-contained device runner over SSH, "
                f"{info['runtime']['name']} {info['runtime']['version']}, {info['threads']} thread(s), device load "
                f"{info.get('load_avg')}; one timed invoke = {info['latency_scope']}"),
    })
