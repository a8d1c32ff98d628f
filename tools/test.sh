#!/usr/bin/env bash
# Set up (tools/setup.sh, with the OpenVINO, TFLite and TFLite Micro extras the backend tests need,
# and Ray for the parallel fit's tests)
# and run the whole test suite, slow end-to-end checks included.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m "not slow"`. Everything runs
# from the project's .venv. -rs lists every skip; under CI=true (.ci/run) a skip other than
# a platform-only one fails the run (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
HWC_EXTRAS=${HWC_EXTRAS:-openvino,tflite,tflm,ray,dev} bash tools/setup.sh
# qemu-aarch64 + the cached arm64 root for tests/test_emulated_arm.py (a no-op once built)
bash tools/setup_arm.sh
export PATH="$PWD/.venv/bin:$PATH" VIRTUAL_ENV="$PWD/.venv"
python -m pytest -q -rs -p no:cacheprovider "$@"
