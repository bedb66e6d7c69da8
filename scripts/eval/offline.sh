#!/usr/bin/env bash
# The offline suite: every offline benchmark found under --data-root (COIN, Ego4D LTA, MSVD-QA,
# ActivityNet-QA, MVBench, Video-MME, EgoSchema, PerceptionTest, Video-ChatGPT), one model, one
# summary table: `streammind eval offline` (also `streammind eval offline_suite` in the repository).
# Hardware: one GPU for the 7B preset (bf16, ~16 GB); the tiny preset runs on CPU.
# Folder names under --data-root and what counts as present: eval/offline_suite.py. Absent
# benchmarks are reported as skipped. The judged ones (MSVD-QA, ActivityNet-QA, Video-ChatGPT)
# need STREAMMIND_JUDGE_BASE_URL and STREAMMIND_JUDGE_MODEL (+ OPENAI_API_KEY); without them they
# are answered but not scored.
# Example: scripts/eval/offline.sh --data-root data/eval --model runs/stage1 --out runs/eval/offline --device cuda --dtype bfloat16
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval offline "$@"
