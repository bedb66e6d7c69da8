#!/usr/bin/env bash
# The test suite (CPU, tiny models, minutes). Installs what it needs into .venv first.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/inference/test_streaming.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh video,train,eval,dev
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit "$status"
