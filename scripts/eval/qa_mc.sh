#!/usr/bin/env bash
# Multiple-choice video QA (MVBench, Video-MME, EgoSchema, PerceptionTest): `streammind eval qa_mc`.
# Hardware: one GPU for the 7B preset (bf16, ~16 GB); the tiny preset runs on CPU. Data layouts: eval/qa_mc.py.
# Example: scripts/eval/qa_mc.sh --dataset mvbench --model runs/stage1 --data-root data/mvbench --out runs/eval/mvbench
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval qa_mc "$@"
