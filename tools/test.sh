#!/usr/bin/env bash
# Set up (tools/setup.sh) and run the whole test suite, slow end-to-end checks included.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
python3 -m pytest -q -p no:cacheprovider "$@"
