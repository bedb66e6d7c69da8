#!/usr/bin/env bash
# The paper's comparison at toy scale: StreamMind vs the per-frame-LLM baseline
# (VideoLLM-online's design) on the synthetic world, with the ablations, the frame-rate
# sweep, per-frame cost and memory, and the two harder worlds; one report in
# runs/reproduce/report.md (+ report.json, plots/).
# Hardware: 2 CPU cores, no GPU; about an hour (--quick: about 10 minutes) on an idle machine.
# Extra arguments go to `streammind reproduce toy` (--quick, --out DIR, --record).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh video,train,eval,dev
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m streammind reproduce toy "$@"
