#!/usr/bin/env bash
# Stage 1 (language: EPFE + LLM learn the replies; CLIP and gate frozen).
# Hardware: 7B preset: 8 x A100/H100 80 GB with ZeRO-2, or one 80 GB GPU with `--lora true`
# (measured on one H100: 2.24 s per optimizer step, peak 22.1 GiB; docs/benchmarks/README.md),
# random 7B weights, LoRA r 64 + EPFE, ZeRO-2, bf16, gradient checkpointing, 1 video x GA 2:
#   PYTHON=python3 NPROC_PER_NODE=1 scripts/finetune_stage1.sh configs/stage1.yaml \
#     --deepspeed configs/deepspeed/zero2.json --clip_path null --llm_path null \
#     --preset streammind-7b --tokenizer_path runs/world/tokenizer --torch_dtype bfloat16 \
#     --lora true --trainable '[perception, "*lora_*"]' \
#     --train_annotations runs/world/train.jsonl --data_root runs/world --feature_cache_dir null \
#     --max_steps 12 --logging_steps 1 --output_dir /tmp/s1 --save_strategy no --report_to none
# That measurement ran frames through the tower in every step (--feature_cache_dir null); with
# the config's feature cache, the clips missing from it are first extracted on the GPU in the
# main process (`streammind features`; each rank its shard), then training reads cached features:
# scripts/gpu_check.sh measures it, cold and warm (docs/benchmarks/gpu_check.md).
# Tiny preset (configs/tiny/stage1.yaml): 2 CPU cores, after `streammind pretrain-tower`.
# Example: scripts/finetune_stage1.sh configs/stage1.yaml --deepspeed configs/deepspeed/zero2.json
# Launch variables (NPROC_PER_NODE, WORLD_SIZE = nodes, RANK, MASTER_ADDR, MASTER_PORT): see launch_train.sh.
exec "$(dirname "$0")/launch_train.sh" "${1:-configs/stage1.yaml}" "${@:2}"
