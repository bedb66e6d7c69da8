#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install StreamMind.
# CPU-only machines get the CPU torch build (pip install torch==2.13.0 first, so no
# multi-GB CUDA wheel is pulled); machines with an NVIDIA driver keep or get a CUDA build.
# Usage: scripts/setup_env.sh [--locked] [extras]   (default extras: video,train,eval,dev)
#   without --locked: the package with the version ranges of pyproject.toml (what CI tests);
#   with --locked: the exact versions of requirements.txt (the tested CPU environment; what the
#   quick start installs), then the package itself without resolving its dependencies again.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=ranges
if [[ "${1:-}" == "--locked" ]]; then
    MODE=locked
    shift
fi
EXTRAS="${1:-video,train,eval,dev}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=".venv/.streammind-installed-$(cat pyproject.toml requirements.txt | sha1sum | cut -c1-12)-${EXTRAS//,/_}-$MODE"
if [ ! -f "$STAMP" ]; then
    .venv/bin/pip install -q --upgrade pip
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            .venv/bin/pip install -q torch
        else
            .venv/bin/pip install -q torch==2.13.0
        fi
    fi
    if [ "$MODE" = locked ]; then
        .venv/bin/pip install -q -r requirements.txt
        .venv/bin/pip install -q --no-deps -e ".[${EXTRAS}]"
    else
        .venv/bin/pip install -q -e ".[${EXTRAS}]"
    fi
    rm -f .venv/.streammind-installed-*
    touch "$STAMP"
fi
