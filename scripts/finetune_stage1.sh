#!/usr/bin/env bash
# Stage 1 (language: EPFE + LLM learn the replies; CLIP and gate frozen).
# Hardware: 7B preset: 8 x A100/H100 80 GB with ZeRO-2, or one 80 GB GPU with `--lora true`
# (measured on one H100: 2.24 s per optimizer step, peak 22.1 GiB; docs/benchmarks/README.md).
# Tiny preset (configs/tiny/stage1.yaml): 2 CPU cores.
# Example: scripts/finetune_stage1.sh configs/stage1.yaml --deepspeed configs/deepspeed/zero2.json
# Launch variables (NPROC_PER_NODE, WORLD_SIZE = nodes, RANK, MASTER_ADDR, MASTER_PORT): see launch_train.sh.
exec "$(dirname "$0")/launch_train.sh" "${1:-configs/stage1.yaml}" "${@:2}"
