#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install StreamMind.
# CPU-only machines get the CPU torch build (pip install torch==2.13.0 first, so no
# multi-GB CUDA wheel is pulled); machines with an NVIDIA driver keep or get a CUDA build.
# Usage: source nothing; run `scripts/setup_env.sh [extras]` (default extras: video,train,eval,dev).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-video,train,eval,dev}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=".venv/.streammind-installed-$(sha1sum pyproject.toml | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$STAMP" ]; then
    .venv/bin/pip install -q --upgrade pip
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            .venv/bin/pip install -q torch
        else
            .venv/bin/pip install -q torch==2.13.0
        fi
    fi
    .venv/bin/pip install -q -e ".[${EXTRAS}]"
    touch "$STAMP"
fi
