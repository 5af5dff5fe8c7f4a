#!/usr/bin/env bash
# Sets everything up (tools/setup.sh: Debian packages and the .venv) and runs the whole test suite with
# the venv's Python. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export CI="${CI:-}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
