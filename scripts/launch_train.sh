#!/usr/bin/env bash
# Launch `streammind train <config.yaml> [--key value ...]` (the module streammind.training.train) on one or many processes.
# Used by finetune_stage1.sh / finetune_stage2.sh; the stage is whatever the YAML says.
# Multi-GPU / multi-node through the usual variables:
#   NPROC_PER_NODE (default: all visible GPUs, or 1 on CPU), WORLD_SIZE (number of nodes),
#   RANK (this node's rank), MASTER_ADDR, MASTER_PORT; PYTHON (default .venv/bin/python).
# With --deepspeed <json> among the arguments the deepspeed launcher is used, else torchrun.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:?usage: $0 <config.yaml> [--key value ...]}"; shift
PY="${PYTHON:-.venv/bin/python}"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
NPROC_PER_NODE="${NPROC_PER_NODE:-$(( GPUS > 0 ? GPUS : 1 ))}"
NNODES="${WORLD_SIZE:-1}"
NODE_RANK="${RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [[ " $* " == *" --deepspeed "* ]]; then
    exec "$PY" -m deepspeed.launcher.runner --num_gpus "$NPROC_PER_NODE" --num_nodes "$NNODES" --node_rank "$NODE_RANK" \
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module streammind.training.train "$CONFIG" "$@"
fi
exec "$PY" -m torch.distributed.run --nproc_per_node "$NPROC_PER_NODE" --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m streammind.training.train "$CONFIG" "$@"
