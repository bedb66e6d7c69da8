#!/usr/bin/env bash
# Ego4D narration stream benchmark (VideoLLM-online's streaming narration; free-running and
# teacher-forced protocols). Data layout: see `streammind eval ego4d_narration --help`.
# Hardware: one GPU for a 7B model in bfloat16; the teacher-forced protocol holds one
# video's frames and dialogue at once, so long videos need a large GPU (80 GB class).
# Arguments go to `streammind eval ego4d_narration`. Example:
#   scripts/eval/ego4d_narration.sh --model runs/stage2 --data-root data/ego4d/videos \
#       --annotations data/ego4d/narration_stream_val.json --out runs/eval/ego4d_val --device cuda --dtype bfloat16
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval ego4d_narration "$@"
