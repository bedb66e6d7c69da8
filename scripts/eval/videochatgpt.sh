#!/usr/bin/env bash
# The Video-ChatGPT generative benchmark (five 0-5 scores from an LLM judge): `streammind eval videochatgpt`.
# Hardware: one GPU for the 7B preset (bf16, ~16 GB); the tiny preset runs on CPU. Data layout: eval/videochatgpt.py.
# The judge is any OpenAI-compatible endpoint, from the environment only:
#   STREAMMIND_JUDGE_BASE_URL, STREAMMIND_JUDGE_MODEL, OPENAI_API_KEY (optional for local servers).
# Example: scripts/eval/videochatgpt.sh --model runs/stage1 --data-root data/eval/videochatgpt_gen --out runs/eval/vcgpt
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval videochatgpt "$@"
