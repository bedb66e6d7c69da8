#!/usr/bin/env bash
# Ego4D long-term action anticipation, ED@20 with 5 beams: `streammind eval ego4d_lta`.
# Hardware: one GPU for the 7B preset (bf16, ~20 GB with 5 beams); the tiny preset runs on CPU. Data layout: eval/ego4d_lta.py.
# Example: scripts/eval/ego4d_lta.sh --model runs/stage1 --data-root data/ego4d --out runs/eval/ego4d_lta --split val
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval ego4d_lta "$@"
