#!/usr/bin/env bash
# Streaming benchmark on the synthetic world (free-running and teacher-forced protocols).
# Hardware: CPU for the tiny preset (a 60-video test split takes minutes on 2 cores);
# one GPU for a 7B model (--device cuda --dtype bfloat16).
# Arguments go to `streammind eval synthetic` (--help lists them). Example:
#   scripts/eval/synthetic.sh --model runs/quickstart/stage2 --data-root runs/world --split test --out runs/eval/synthetic
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval synthetic "$@"
