"""Measure a .tflite on a real device over SSH with the self-contained device runner.

Copies the artifact, device_runner.py and the input frames to a fresh temporary folder on
the device (scp), runs the runner there with the device's own Python and TFLite interpreter
(ai-edge-litert or tflite-runtime), copies the results back and removes the folder. Uses
the system `ssh`/`scp` clients, so keys, agents and ~/.ssh/config work as they do for the
user; BatchMode means a missing key fails at once instead of prompting.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from hwcompress.errors import HwcError

RUNNER = Path(__file__).with_name("device_runner.py")


class SshDevice:
    def __init__(self, host: str, port: int | None = None, identity: str | None = None, python: str = "python3",
                 timeout: float = 900) -> None:
        if not host or any(c.isspace() for c in host):
            raise HwcError(f"--host must be [user@]address, got {host!r}")
        self.host, self.python, self.timeout = host, python, timeout
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=accept-new"]
        if identity:
            opts += ["-i", str(identity)]
        self.ssh = ["ssh", *opts] + (["-p", str(port)] if port else [])
        self.scp = ["scp", "-q", *opts] + (["-P", str(port)] if port else [])

    def _run(self, cmd: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            raise HwcError(f"{cmd[0]} not found: install an OpenSSH client (Debian: openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise HwcError(f"{self.host}: {what} timed out after {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1][:300] if lines else f"exit code {proc.returncode}"
            if proc.returncode == 255 and cmd[0] in ("ssh", "scp"):
                raise HwcError(f"{self.host}: SSH connection failed ({last})")
            raise HwcError(f"{self.host}: {what} failed: {last}")
        return proc

    def shell(self, command: str, what: str) -> str:
        return self._run([*self.ssh, self.host, command], what).stdout

    def run_tflite(self, tflite: Path, inputs: dict[str, np.ndarray], runs: int, warmup: int = 0,
                   threads: int = 1) -> tuple[dict[str, np.ndarray], dict]:
        tflite = Path(tflite)
        if not tflite.is_file():
            raise HwcError(f"{tflite}: no such model file")
        remote = self.shell("mktemp -d /tmp/hwc-run-XXXXXX", "creating a work folder").strip()
        if not remote.startswith("/tmp/hwc-run-"):
            raise HwcError(f"{self.host}: unexpected reply to mktemp: {remote[:100]!r}")
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
        info["host"] = self.host
        return outputs, info


def measure_over_ssh(model, target, device: SshDevice, runs: int = 500, warmup: int = 50, weights: str = "fp32",
                     out_dir: Path | None = None) -> dict:
    """Export `model` for a LiteRT target and time it on `device`: latency_source measured."""
    from hwcompress.export import _graph as g
    from hwcompress.export import get_backend
    from hwcompress.export.probe import artifact_bytes, speech_like_frames

    if target.runtime != "litert":
        raise HwcError(f"--host runs .tflite artifacts with the device runner; target {target.name} uses "
                       f"{target.runtime} (use a LiteRT target such as raspberrypi4)")
    device.shell("true", "connecting")  # an unreachable device fails before the slow export
    with tempfile.TemporaryDirectory(prefix="hwc-ssh-export-") as tmp:
        path = get_backend("litert").export(model, Path(out_dir) if out_dir else Path(tmp), "stream", weights=weights)
        n = runs
        frames = speech_like_frames(min(n, 200))
        seq = np.stack([frames[i % len(frames)] for i in range(n)])
        feeds = {g.SPEC: seq}
        for i, s in enumerate(model.state_shapes()):
            feeds[g.state_name(i)] = np.zeros((1, *s), np.float32)
        _, info = device.run_tflite(path, feeds, runs=n, warmup=warmup, threads=target.threads)
        nbytes = artifact_bytes(path)
    lat = info["latency_ms"]
    result = {
        "target": target.name, "runtime": info["runtime"]["name"], "runtime_version": info["runtime"]["version"],
        "threads": info["threads"], "weights": weights, "latency_source": "measured",
        "device": {"host": device.host, "machine": info["machine"], "platform": info["platform"]},
        "how": (f"{n} streaming hops after {warmup} warm-up hops on {device.host} ({info['machine']}) with the "
                f"self-contained device runner over SSH; one timed invoke = {info['latency_scope']}"),
        "latency_ms": lat["median"], "median_ms": lat["median"], "p90_ms": lat["p90"], "mean_ms": lat["mean"],
        "min_ms": lat["min"], "runs": n, "artifact": {"path": str(path), "bytes": nbytes, "kept": out_dir is not None},
    }
    if info["machine"] not in (target.arch, "arm64" if target.arch == "aarch64" else target.arch):
        result["warning"] = (f"the device at {device.host} is {info['machine']}, the target {target.name} is "
                             f"{target.arch}: this is a measurement of that machine, not of the target")
    return result
