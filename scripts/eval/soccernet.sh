#!/usr/bin/env bash
# SoccerNet / MatchTime live-commentary benchmark (free-running and teacher-forced protocols).
# Data layout: see `streammind eval soccernet --help`.
# Hardware: one GPU for a 7B model in bfloat16; a half is ~45 min (5400 frames at 2 fps)
# and the teacher-forced protocol holds it in one forward, so it needs a large GPU (80 GB class).
# Arguments go to `streammind eval soccernet`. Example:
#   scripts/eval/soccernet.sh --model runs/stage2 --data-root data/SoccerNet \
#       --annotations data/MatchTime/valid --out runs/eval/soccernet_valid --device cuda --dtype bfloat16
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-.venv/bin/python}" -m streammind eval soccernet "$@"
