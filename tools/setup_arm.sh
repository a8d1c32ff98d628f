#!/usr/bin/env bash
# Emulated arm64 (Raspberry Pi 4 stand-in) for hwcompress.profile.emulate and
# tests/test_emulated_arm.py: Debian packages qemu-user-static, binfmt-support and
# debootstrap, qemu-aarch64 registered with binfmt_misc, then the cached arm64 bookworm
# root with ai-edge-litert + numpy (~3-5 min the first time, in
# ~/.cache/hwcompress/arm64-root or $HWCOMPRESS_ARM_ROOT). Idempotent: a second run
# installs and builds nothing and takes about a second. Needs root (chroot, binfmt_misc).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
native=0; case "$(uname -m)" in aarch64|arm64) native=1 ;; esac

APT_PACKAGES=(debootstrap)
[ "$native" -eq 1 ] || APT_PACKAGES+=(qemu-user-static binfmt-support)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$native" -eq 0 ]; then
  # containers often start without binfmt_misc mounted, so the package's trigger could not register
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if ! head -n1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null | grep -qx enabled; then
    echo "registering qemu-aarch64 with binfmt_misc"
    $SUDO update-binfmts --enable qemu-aarch64
  fi
  head -n1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null | grep -qx enabled \
    || { echo "error: qemu-aarch64 is still not registered with binfmt_misc" >&2; exit 1; }
fi

# the project's .venv (tools/setup.sh) when there is one: hwcompress and numpy live there
PY=${PYTHON:-python3}
[ -n "${PYTHON:-}" ] || [ ! -x .venv/bin/python ] || PY="$PWD/.venv/bin/python"
$SUDO env ${HWCOMPRESS_ARM_ROOT:+HWCOMPRESS_ARM_ROOT="$HWCOMPRESS_ARM_ROOT"} HOME="$HOME" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  "$(command -v "$PY")" -c "
import sys
from hwcompress.errors import HwcError
from hwcompress.profile.emulate import ensure_arm_root
try:
    print('arm64 root:', ensure_arm_root())
except HwcError as exc:
    sys.exit(f'error: {exc}')
"
