#!/usr/bin/env bash
# Set up a fresh Debian machine for hwcompress: system packages (speech, noise and
# codecs for the offline corpus, ssh, chromium) and the project's own virtual environment
# .venv holding the package with the extras named in $HWC_EXTRAS (default "openvino,dev").
# The Python that makes .venv ($PYTHON, default python3, >= 3.11) is left untouched:
# nothing is pip-installed into it. Idempotent: a second run installs nothing.
# Opt-in LiteRT: HWC_EXTRAS=openvino,tflite,dev also installs the ai-edge-litert runtime
# into .venv and the litert-torch converter into .venv-tflite (see below).
# Opt-in TFLite Micro: HWC_EXTRAS=...,tflm,... adds the tflite-micro interpreter to .venv and
# everything the tflite extra brings (its export starts from the LiteRT float .tflite).
# Afterwards: `source .venv/bin/activate` (or call .venv/bin/hwcompress).
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(
  ffmpeg sox espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  asterisk-core-sounds-en-g722 asterisk-core-sounds-es-g722 asterisk-core-sounds-fr-g722
  asterisk-moh-opsound-g722 sound-theme-freedesktop
  asterisk-core-sounds-it-g722 asterisk-core-sounds-ru-g722 festvox-ca-ona-hts
  openssh-client openssh-server
  chromium
)
BASE_PY=${PYTHON:-python3}
VENV=.venv
"$BASE_PY" -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)" 2>/dev/null \
  || { echo "error: $BASE_PY is not Python >= 3.11 (set \$PYTHON to one)" >&2; exit 1; }
# Debian's python3 makes venvs only with python3-venv (it ships ensurepip)
[ -x "$VENV/bin/python" ] || "$BASE_PY" -c "import ensurepip" 2>/dev/null || APT_PACKAGES+=(python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# (re)made when missing or half-made (an interrupted creation leaves python without pip)
if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('pip')" >/dev/null 2>&1; then
  echo "creating $VENV with $("$BASE_PY" -c 'import sys; print(sys.executable)')"
  "$BASE_PY" -m venv --clear "$VENV"
fi
PY="$PWD/$VENV/bin/python"
# pip in .venv reads the same pip configuration (find-links, constraints) as $BASE_PY's.
# The CPU wheel: any other torch version pulls a multi-GB CUDA build.
# (checked from its metadata: importing torch takes seconds)
"$PY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').startswith('2.13.0') else 1)" 2>/dev/null \
  || "$PY" -m pip install -q torch==2.13.0
EXTRAS=${HWC_EXTRAS:-openvino,dev}
# skip pip (an editable build, seconds) when this checkout's pyproject.toml and the extras
# are what .venv last installed and hwcompress still imports from here
STAMP="$VENV/.hwcompress-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$EXTRAS"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] \
   || ! "$PY" -c "import hwcompress, pathlib, sys; sys.exit(pathlib.Path(hwcompress.__file__).resolve().parent.parent != pathlib.Path.cwd().resolve())" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[${EXTRAS}]"
  echo "$want" > "$STAMP"
fi
# The litert-torch converter would downgrade typing_extensions and pydantic in .venv and
# adds ~1 GB (jax, transformers), so it gets its own venv .venv-tflite that also sees .venv's
# packages (torch 2.13, hwcompress) through a .pth file, its own packages first;
# hwcompress/export/tflite.py runs the conversion there in a subprocess. ~0.95 GB on disk.
case ",$EXTRAS," in
  *,tflite,*|*,tflm,*|*,all,*)
    TVENV=.venv-tflite
    # one made by the earlier setup saw the system Python's packages instead of .venv's
    if grep -qs '^include-system-site-packages = true' "$TVENV/pyvenv.cfg"; then
      echo "recreating $TVENV on top of $VENV"; rm -rf "$TVENV"
    fi
    [ -x "$TVENV/bin/python" ] || "$PY" -m venv "$TVENV"
    "$TVENV/bin/python" - "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" <<'EOF'
import pathlib, sys, sysconfig
pth = pathlib.Path(sysconfig.get_paths()["purelib"]) / "_hwcompress_main_venv.pth"
line = f"import site; site.addsitedir({sys.argv[1]!r})\n"  # addsitedir: .venv's own .pth files too
if not pth.is_file() or pth.read_text() != line:
    pth.write_text(line)
EOF
    "$TVENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(not m.version('litert-torch').startswith('0.10.'))" 2>/dev/null \
      || "$TVENV/bin/python" -m pip install -q "litert-torch>=0.10,<0.11"
    ;;
esac
