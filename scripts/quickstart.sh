#!/usr/bin/env bash
# The main job on the embedded default: generate the synthetic world, pretrain the tiny vision
# tower on it (CLIP-style), train stage 1 and stage 2 of the tiny preset, evaluate the test
# split with the streaming runtime, stream one test video, and write
# runs/quickstart/test_metrics.json (targets: trigger_acc and reply exact match >= 0.90 within
# 10 minutes on 2 CPU cores).
# Hardware: 2 CPU cores, no GPU, no network beyond PyPI for the first install.
# Extra arguments go to `streammind quickstart` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh --locked video,train,eval,dev
exec .venv/bin/python -m streammind quickstart "$@"
