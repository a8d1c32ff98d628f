#!/usr/bin/env bash
# Set up a fresh Debian machine for hwcompress: system packages (speech, noise and
# codecs for the offline corpus) and the Python package with the extras named in
# $HWC_EXTRAS (default "openvino,dev"). Idempotent: a second run installs nothing.
# Opt-in LiteRT: HWC_EXTRAS=openvino,tflite,dev also installs the ai-edge-litert runtime
# here and the litert-torch converter into .venv-tflite (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(
  ffmpeg sox espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  asterisk-core-sounds-en-g722 asterisk-core-sounds-es-g722 asterisk-core-sounds-fr-g722
  asterisk-moh-opsound-g722 sound-theme-freedesktop
  openssh-client openssh-server
)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
# the CPU wheel: any other torch version pulls a multi-GB CUDA build
$PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || $PY -m pip install -q torch==2.13.0
EXTRAS=${HWC_EXTRAS:-openvino,dev}
$PY -m pip install -q -e ".[${EXTRAS}]"
# The litert-torch converter would downgrade typing_extensions and pydantic in this
# environment and adds ~1 GB (jax, transformers), so it gets its own venv that sees the
# system packages (torch 2.13, hwcompress); hwcompress/export/tflite.py runs the
# conversion there in a subprocess. ~0.95 GB on disk.
case ",$EXTRAS," in
  *,tflite,*|*,all,*)
    VENV=.venv-tflite
    [ -x "$VENV/bin/python" ] || $PY -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip show litert-torch >/dev/null 2>&1 \
      || "$VENV/bin/python" -m pip install -q "litert-torch>=0.10,<0.11"
    ;;
esac
