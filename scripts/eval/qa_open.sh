#!/usr/bin/env bash
# Open-ended video QA (MSVD-QA, ActivityNet-QA) with an LLM judge: `streammind eval qa_open`.
# Hardware: one GPU for the 7B preset (bf16, ~16 GB); the tiny preset runs on CPU. Data layout: eval/qa_open.py.
# The judge is any OpenAI-compatible endpoint, from the environment only:
#   STREAMMIND_JUDGE_BASE_URL, STREAMMIND_JUDGE_MODEL, OPENAI_API_KEY (optional for local servers).
# Example: scripts/eval/qa_open.sh --dataset msvd --model runs/stage1 --data-root data/msvd_qa --out runs/eval/msvd
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval qa_open "$@"
