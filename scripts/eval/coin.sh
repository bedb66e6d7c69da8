#!/usr/bin/env bash
# COIN step / next / task / procedure / procedure+ (VideoLLM-online protocol): `streammind eval coin`.
# Hardware: one GPU for the 7B preset (bf16, ~16 GB); the tiny preset runs on CPU. Data layout: eval/coin.py.
# Example: scripts/eval/coin.sh --model runs/stage1 --data-root data/coin --out runs/eval/coin --benchmarks step next
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval coin "$@"
