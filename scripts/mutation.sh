#!/usr/bin/env bash
# Mutation testing of the core with mutmut, a module at a time, only that module's tests, one
# worker under nice (bounded time on 2 cores); writes runs/mutation/report.md. Not part of CI.
# Usage: scripts/mutation.sh [module ...] [--survivors] [--report PATH]   (--list names the modules)
# Needs the dev extra: .venv/bin/python -m pip install -e '.[dev]'. Details: docs/testing/mutation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "${PYTHON:-.venv/bin/python}" scripts/mutation.py "$@"
