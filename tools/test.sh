#!/usr/bin/env bash
# Sets everything up (tools/setup.sh) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export CI="${CI:-}"
exec python3 -m pytest -q "$@"
