"""Run .tflite models on an emulated arm64 Debian (qemu-aarch64 user mode + chroot).

A functional stand-in for a Raspberry Pi 4 when none is attached: the same aarch64
ai-edge-litert wheel a Pi would install runs the model in an arm64 Debian bookworm
root through qemu-user-static, so ARM-only kernels (XNNPACK's NEON paths) are exercised
and their outputs can be compared with the x86 run. Its timings measure the emulator,
not the device: every info dict says `"latency_source": "emulated"`.

    root = ensure_arm_root()                     # built once (~3-5 min), then cached
    outputs, info = run_emulated(path, {"spec": frames, "state_0": s0}, n_runs=20)

Host requirements (tools/setup_arm.sh installs and registers them): Debian packages
qemu-user-static, binfmt-support and debootstrap, qemu-aarch64 registered with
binfmt_misc, and root (chroot). The root lives in ~/.cache/hwcompress/arm64-root, or
$HWCOMPRESS_ARM_ROOT; it is built in a scratch folder beside it and renamed into place
only when complete, so an interrupted build never leaves a root that looks finished.
/proc and /sys are deliberately not mounted inside it: XNNPACK's CPU detection then
reads the host's x86 /proc/cpuinfo and crashes under qemu.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hwcompress.errors import HwcError

ENV_ROOT = "HWCOMPRESS_ARM_ROOT"
ENV_MIRROR = "HWCOMPRESS_DEBIAN_MIRROR"
DEFAULT_ROOT = Path.home() / ".cache" / "hwcompress" / "arm64-root"
SUITE = "bookworm"
#: bookworm's python3 is 3.11: the wheels downloaded on the host must match it
PY_VERSION = "3.11"
WHEEL_PLATFORM = "manylinux_2_27_aarch64"
PACKAGES = ("ai-edge-litert", "numpy")
#: bump when the content of the root changes: a root with another value is rebuilt
ROOT_FORMAT = 1
MARKER = ".hwcompress-arm-root.json"
VENV = "/opt/hwcompress/venv"
WHEELS = "/opt/hwcompress/wheels"
RUNNER = Path(__file__).with_name("device_runner.py")
BINFMT_ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
SETUP_HINT = "run tools/setup_arm.sh"
EMULATED_NOTE = ("qemu-aarch64 user-mode emulation on an x86 host: these timings measure the emulator, "
                 "not a Raspberry Pi or any other device; use the run as a functional check only")


def _native_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.is_file()), None)


def _binfmt_interpreter() -> str:
    """Path of the registered qemu-aarch64 interpreter, or a HwcError naming what is missing."""
    if not BINFMT_ENTRY.exists():
        mounted = Path("/proc/sys/fs/binfmt_misc/status").exists()
        why = "is not registered with binfmt_misc" if mounted else "cannot run: binfmt_misc is not mounted"
        raise HwcError(f"emulated arm64 needs qemu-aarch64: it {why}; {SETUP_HINT}")
    lines = BINFMT_ENTRY.read_text().splitlines()
    if not lines or lines[0].strip() != "enabled":
        raise HwcError(f"emulated arm64 needs qemu-aarch64: its binfmt_misc entry is disabled; {SETUP_HINT}")
    fields = dict(ln.split(" ", 1) for ln in lines[1:] if " " in ln)
    interpreter = fields.get("interpreter", "").strip()
    if not interpreter or not Path(interpreter).exists():
        raise HwcError(f"emulated arm64 needs qemu-aarch64: interpreter {interpreter or '?'} is missing; {SETUP_HINT}")
    return interpreter


def _fix_binary() -> bool:
    """Whether the kernel opened the qemu interpreter at registration (flag F): then the
    chroot does not need its own copy."""
    for ln in BINFMT_ENTRY.read_text().splitlines():
        if ln.startswith("flags:"):
            return "F" in ln.split(":", 1)[1]
    return False


def check_host(build: bool = False) -> None:
    """A one-line HwcError unless this machine can run (and with build=True, build) the root."""
    if os.geteuid() != 0:
        raise HwcError("emulated arm64 runs in a chroot, which needs root: run as root (or via sudo)")
    if build and _which("debootstrap") is None:
        raise HwcError(f"building the arm64 root needs debootstrap: {SETUP_HINT}")
    if not _native_arm():
        _binfmt_interpreter()


def root_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser().absolute() if env else DEFAULT_ROOT


def root_info(root: Path) -> dict | None:
    """The marker of a complete root, or None."""
    try:
        info = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == ROOT_FORMAT else None


def root_python(root: Path) -> str:
    """The interpreter inside the root (as seen from the chroot)."""
    return f"{VENV}/bin/python"


# ---------------------------------------------------------------- building the root


def ensure_arm_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached arm64 Debian root with ai-edge-litert and numpy, built on first use.

    Checks the host first (root, debootstrap, qemu-aarch64 in binfmt_misc) and raises a
    one-line HwcError pointing at tools/setup_arm.sh when something is missing.
    """
    root = root_dir(cache_dir)
    if root_info(root) is not None:
        check_host()
        return root
    check_host(build=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root.parent / f".{root.name}.lock"):
        if root_info(root) is not None:  # another process finished it while we waited
            return root
        _clear_stale(root)
        stage = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
        try:
            stage.chmod(0o755)  # mkdtemp makes it 0700: a root file system is world-readable
            info = _build(stage, root)
            (stage / MARKER).write_text(json.dumps(info, indent=2) + "\n")
            old = None
            if root.exists() or root.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-old-", dir=root.parent))
                os.replace(root, old / "root")
            os.replace(stage, root)
            if old is not None:
                _remove_tree(old)
        except BaseException:
            _remove_tree(stage)
            raise
    return root


@contextlib.contextmanager
def _lock(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clear_stale(root: Path) -> None:
    """Remove leftovers of interrupted builds (safe: we hold the build lock), and an
    outdated root of ours; refuse to delete a folder that is not ours."""
    for partial in root.parent.glob(f".{root.name}.partial-*"):
        _remove_tree(partial)
    if root.is_dir() and not root.is_symlink():
        if (root / MARKER).exists():  # ours, another ROOT_FORMAT: rebuilt, replaced at the end
            return
        if any(root.iterdir()):
            raise HwcError(f"{root} exists but is not a complete hwcompress arm64 root: remove it or set ${ENV_ROOT}")
        root.rmdir()
    elif root.exists() or root.is_symlink():
        raise HwcError(f"{root} exists and is not a folder: remove it or set ${ENV_ROOT}")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    out = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as fh:
        for line in fh:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix) or target + "/" == prefix:
                out.append(target)
    return sorted(out, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """rmtree that first unmounts anything a killed debootstrap left mounted inside
    (proc, sys), so it never recurses into the host's /proc or /dev."""
    if not path.exists():
        return
    for target in _mounts_under(path):
        subprocess.run(["umount", "-l", target], capture_output=True)
    left = _mounts_under(path)
    if left:
        raise HwcError(f"cannot remove {path}: {left[0]} is still mounted (umount it by hand)")
    shutil.rmtree(path, ignore_errors=True)


def _run_logged(cmd: list[str], log: Path, what: str, env: dict | None = None, timeout: float = 3600) -> None:
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HwcError(f"{what} timed out after {timeout:.0f} s (log: {log})") from None
        except OSError as exc:
            raise HwcError(f"{what} cannot start: {exc.strerror or exc} ({SETUP_HINT})") from None
    if proc.returncode != 0:
        tail = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        raise HwcError(f"{what} failed (exit {proc.returncode}): {tail[-1][:200] if tail else '?'} (log: {log})")


def chroot_env() -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": "/tmp"}


def _host_pins() -> list[str]:
    """ai-edge-litert pinned to the host's version (parity between the x86 and the arm
    run then compares one build); numpy left to pip."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}" if name == "ai-edge-litert" else name)
        except PackageNotFoundError:
            pins.append(name)
    return pins


def _build(stage: Path, root: Path) -> dict:
    log = root.parent / f"{root.name}.build.log"
    log.write_text(f"building {root} in {stage}\n")
    started = time.monotonic()
    mirror = os.environ.get(ENV_MIRROR, "http://deb.debian.org/debian")
    _run_logged([_which("debootstrap") or "debootstrap", "--arch=arm64", "--variant=minbase",
                 "--include=python3,python3-venv", SUITE, str(stage), mirror], log, "debootstrap (arm64 bookworm)")
    if _mounts_under(stage):
        for target in _mounts_under(stage):
            subprocess.run(["umount", "-l", target], capture_output=True)
    if not _native_arm() and not _fix_binary():
        interp = _binfmt_interpreter()
        dst = stage / interp.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interp, dst)
    # tidy: the package cache is not needed inside the root
    for cached in (stage / "var/cache/apt/archives").glob("*.deb"):
        cached.unlink()

    wheels = stage / WHEELS.lstrip("/")
    wheels.mkdir(parents=True)
    pins = _host_pins()
    _run_logged([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-cache-dir",
                 "--platform", WHEEL_PLATFORM, "--python-version", PY_VERSION, "--implementation", "cp",
                 "--only-binary=:all:", "--dest", str(wheels), *pins], log, "pip download (aarch64 wheels)")
    env = chroot_env()
    _run_logged(["chroot", str(stage), "/usr/bin/python3", "-m", "venv", VENV], log, "python3 -m venv (in the root)",
                env=env)
    _run_logged(["chroot", str(stage), f"{VENV}/bin/python", "-m", "pip", "install", "--no-index",
                 "--find-links", WHEELS, "--no-cache-dir", "--disable-pip-version-check", *PACKAGES],
                log, "pip install (in the root, offline)", env=env)
    probe = ("import json, platform, sys, numpy; from importlib.metadata import version; "
             "from ai_edge_litert.interpreter import Interpreter; "
             "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
             "'numpy': numpy.__version__, 'ai_edge_litert': version('ai-edge-litert')}))")
    proc = subprocess.run(["chroot", str(stage), f"{VENV}/bin/python", "-c", probe], capture_output=True, text=True,
                          env=env, timeout=600)
    if proc.returncode != 0:
        last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit {proc.returncode}")
        raise HwcError(f"the arm64 root does not import ai-edge-litert: {last.strip()[:200]}")
    probed = json.loads(proc.stdout.strip().splitlines()[-1])
    if not _native_arm() and probed["machine"] != "aarch64":
        raise HwcError(f"the arm64 root runs as {probed['machine']!r}, not aarch64: is qemu-aarch64 registered?")
    shutil.rmtree(wheels, ignore_errors=True)  # installed; keeps the root ~100 MB smaller
    return {"format": ROOT_FORMAT, "suite": SUITE, "arch": "arm64", "interpreter": f"{VENV}/bin/python",
            "wheels": pins, "wheel_platform": WHEEL_PLATFORM, **probed,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(time.monotonic() - started, 1)}


# ---------------------------------------------------------------- running a model


def _qemu_version() -> str | None:
    exe = _which("qemu-aarch64-static") or _which("qemu-aarch64")
    if exe is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        first = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
        return first[0].strip() if first else None
    return None


def run_emulated(
    tflite_path: str | os.PathLike,
    inputs: dict[str, np.ndarray],
    n_runs: int = 20,
    *,
    warmup: int = 0,
    threads: int = 1,
    carry: str | dict[str, str] = "auto",
    root: str | os.PathLike | None = None,
    timeout: float = 1800,
) -> tuple[dict[str, np.ndarray], dict]:
    """Run `tflite_path` n_runs times on emulated arm64 with device_runner.py.

    inputs: one array per model input, shaped as the input (fed to every invoke) or
    with a leading axis of n_runs (element t fed to invoke t). Carried inputs take the
    previous invoke's output: "auto" feeds `state_i` from `state_out_i` (a streaming
    graph's state), a dict maps input -> output names, "none" carries nothing.
    Returns (outputs stacked over the n_runs invokes, [n_runs, *shape] each; info with
    per-invoke latency, runtime, machine, and latency_source "emulated").
    The root is built first if it is missing (ensure_arm_root).
    """
    src = Path(tflite_path)
    if not src.is_file():
        raise HwcError(f"{src}: no such model file")
    if n_runs < 1:
        raise HwcError(f"n_runs must be at least 1, got {n_runs}")
    arm_root = ensure_arm_root(root)
    if isinstance(carry, dict):
        carry_arg = ",".join(f"{k}={v}" for k, v in carry.items()) or "none"
    elif carry in ("auto", "none"):
        carry_arg = carry
    else:
        raise HwcError(f"carry must be 'auto', 'none' or a dict of input -> output names, got {carry!r}")

    (arm_root / "tmp").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hwc-run-", dir=arm_root / "tmp"))
    inside = "/" + str(work.relative_to(arm_root))
    try:
        shutil.copy2(src, work / "model.tflite")
        shutil.copy2(RUNNER, work / "device_runner.py")
        np.savez(work / "inputs.npz", **{k: np.asarray(v) for k, v in inputs.items()})
        cmd = ["chroot", str(arm_root), root_python(arm_root), f"{inside}/device_runner.py",
               f"{inside}/model.tflite", f"{inside}/inputs.npz", f"{inside}/out",
               "--runs", str(n_runs), "--warmup", str(warmup), "--threads", str(threads),
               "--carry", carry_arg, "--latency-source", "device" if _native_arm() else "emulated"]
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=chroot_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HwcError(f"emulated run of {src.name} timed out after {timeout:.0f} s") from None
        wall = time.monotonic() - started
        if proc.returncode != 0 or not (work / "out" / "info.json").is_file():
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1][:300] if lines else f"exit code {proc.returncode}"
            raise HwcError(f"emulated run of {src.name} failed: {last}")
        info = json.loads((work / "out" / "info.json").read_text())
        with np.load(work / "out" / "outputs.npz") as data:
            outputs = {k: data[k] for k in data.files}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not _native_arm():
        info["latency_source"] = "emulated"
        info["latency_note"] = EMULATED_NOTE
        info["emulator"] = _qemu_version() or "qemu-aarch64"
    info["host_machine"] = platform.machine()
    info["wall_seconds"] = round(wall, 3)
    info["root"] = str(arm_root)
    return outputs, info
