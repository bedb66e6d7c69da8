#!/usr/bin/env bash
# Stage 2 (gate: only the cognition gate learns, from the stage-1 checkpoint in `init_from`).
# Hardware: 7B preset: one or more 80 GB GPUs (the gate is ~1 B parameters; the rest runs frozen).
# Frame features come from the config's feature_cache_dir: stage 1's entries when the tower and
# its dtype (torch_dtype) match, else this run first extracts them on the training device
# (streammind features --help).
# Tiny preset (configs/tiny/stage2.yaml): 2 CPU cores.
# Example: scripts/finetune_stage2.sh configs/stage2.yaml --init_from runs/stage1 --deepspeed configs/deepspeed/zero2.json
# Launch variables (NPROC_PER_NODE, WORLD_SIZE = nodes, RANK, MASTER_ADDR, MASTER_PORT): see launch_train.sh.
exec "$(dirname "$0")/launch_train.sh" "${1:-configs/stage2.yaml}" "${@:2}"
