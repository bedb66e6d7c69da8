#!/usr/bin/env bash
# GPU check of the training paths, in one call of under 10 minutes (default budget 540 s).
# Hardware: one NVIDIA GPU with >= 80 GB (measured on one H200), 16 CPU cores, ~40 GB free disk
# or /dev/shm for the 7B outputs. Needs torch with CUDA, transformers >= 5.24, peft, PyAV,
# deepspeed and pytest importable by $PYTHON (default .venv/bin/python, else python3); the
# repository is put on PYTHONPATH here (with eval/ linked as `streammind_eval`, the name an
# install gives it), so no install of the package is needed.
#
#   scripts/gpu_check.sh                  # on the GPU machine; OUT=<dir> also receives the summary
#   scripts/gpu_check.sh --cpu-dry-run    # the same steps at toy sizes on the CPU (checks the script)
#
# What it runs, each step under `timeout` (a hang costs its limit, not the call), in order:
#   world  python -m streammind world: 24 train / 4 val / 4 test videos and the tokenizer
#   tower  python -m streammind pretrain-tower: the tiny preset's tower, 60 steps
#   (i)    configs/tiny/stage1.yaml through scripts/finetune_stage1.sh (torchrun), bf16,
#          --dataloader_num_workers 2, a cold feature cache
#   (ii)   configs/tiny/stage2.yaml through scripts/finetune_stage2.sh with the deepspeed
#          launcher and configs/deepspeed/zero2.json, bf16, 2 workers, from (i)
#   (iii)  configs/stage1.yaml with --preset streammind-7b --lora true (random weights, bf16,
#          ZeRO-2; the command of scripts/finetune_stage1.sh's header) WITH the feature cache:
#          cold, then warm; 6 optimizer steps each
#   (iv)   python -m streammind features with the 7B tower (read from (iii)'s saved model) over
#          every clip of the world at 8 fps: the extraction pass's frames/s
#   (v)    python -m pytest -m gpu tests (tests/test_gpu.py, the engine's GPU test)
# The shipped configs run unchanged apart from data paths, step counts, output directories and
# the flags named above.
#
# Everything printed goes to $GPU_CHECK_DIR/gpu_check.log (default runs/gpu_check), each step's
# output also to logs/<step>.log. The summary (per step: status, rc, seconds; losses, seconds
# per optimizer step, peak CUDA memory, extraction frames/s, per-test pytest outcomes) is
# written to summary.json and printed; with OUT set, summary.json, the log and the pytest
# report are copied there.
set -uo pipefail  # no -e: a failed step is recorded and the next one still runs
cd "$(dirname "$0")/.."

MODE=gpu
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
    MODE=cpu
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--cpu-dry-run]" >&2
    exit 2
fi
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON
RUN="${GPU_CHECK_DIR:-runs/gpu_check}"
mkdir -p "$RUN/pythonpath"
IMPORT_NAMES="$(cd "$RUN/pythonpath" && pwd)"
ln -sfn "$PWD/eval" "$IMPORT_NAMES/streammind_eval"
export PYTHONPATH="$PWD:$IMPORT_NAMES${PYTHONPATH:+:$PYTHONPATH}"
export NPROC_PER_NODE=1
export TOKENIZERS_PARALLELISM=false

BUDGET="${GPU_CHECK_BUDGET:-540}"
find "$RUN" -mindepth 1 -maxdepth 1 ! -name pythonpath -exec rm -rf {} +
mkdir -p "$RUN/logs"
LOG="$RUN/gpu_check.log"
STEPS="$RUN/steps.tsv"
: > "$STEPS"
START=$(date +%s)
RESERVE=0  # seconds kept back for later steps (the pytest suite) while the 7B steps run

if [[ $MODE == gpu ]]; then
    NUM_TRAIN=24 NUM_EVAL=4 TOWER_STEPS=60 TINY1_STEPS=60 TINY2_STEPS=30 BIG_STEPS=6 BIG_PRESET=streammind-7b BENCH_FPS=8 CAP_SCALE=1
else  # toy sizes; slower steps on a CPU (DeepSpeed's first CPU run also compiles its shm op, ~1-2 min)
    NUM_TRAIN=6 NUM_EVAL=1 TOWER_STEPS=5 TINY1_STEPS=4 TINY2_STEPS=2 BIG_STEPS=2 BIG_PRESET=tiny BENCH_FPS=4 CAP_SCALE=4
fi

# The 7B run saves its merged model (~17 GB): on /dev/shm when it has room (faster), else in $RUN.
BIG="$RUN/big"
if [[ $MODE == gpu ]] && [[ -d /dev/shm ]] && (( $(df -k --output=avail /dev/shm | tail -1) > 45 * 1024 * 1024 )); then
    BIG=/dev/shm/streammind_gpu_check_$$
    trap 'rm -rf "$BIG"' EXIT
fi
mkdir -p "$BIG"

say() { echo "$*" | tee -a "$LOG"; }

# step NAME CAP_SECONDS COMMAND... : run under timeout (the cap, or what is left of the budget).
step() {
    local name=$1 cap=$(( $2 * CAP_SCALE ))
    shift 2
    local left=$(( BUDGET - ($(date +%s) - START) - 5 - RESERVE ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 15 )); then
        say "=== $name: SKIPPED (out of time: ${left}s left after keeping ${RESERVE}s for the test suite)"
        printf '%s\tskipped\t-\t0\n' "$name" >> "$STEPS"
        return 1
    fi
    say "=== $name (limit ${limit}s): $*"
    local t0 rc status secs
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" > "$RUN/logs/$name.log" 2>&1
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    cat "$RUN/logs/$name.log" >> "$LOG"
    if (( rc == 0 )); then status=ok; elif (( rc == 124 || rc == 137 )); then status=TIMEOUT; else status=FAILED; fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" >> "$STEPS"
    say "=== $name: $status (rc $rc, ${secs}s)"
    [[ $status == ok ]]
}

say "StreamMind GPU check ($MODE mode), $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s, run dir $RUN, 7B outputs in $BIG"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
"$PYTHON" - "$RUN/versions.json" <<'EOF' 2>> "$LOG" | tee -a "$LOG"
import importlib, json, platform, sys
versions = {"python": platform.python_version()}
for name in ("torch", "transformers", "peft", "deepspeed", "av", "pytest"):
    try:
        versions[name] = importlib.import_module(name).__version__
    except Exception as e:  # report, do not stop: the step that needs it fails with its own message
        versions[name] = f"unavailable ({type(e).__name__})"
import torch
versions["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
open(sys.argv[1], "w").write(json.dumps(versions))
print("versions:", versions)
EOF

W="$RUN/world"
DATA=(--train_annotations "$W/train.jsonl" --data_root "$W")
step world 60 "$PYTHON" -m streammind world "$W" --num_train "$NUM_TRAIN" --num_val "$NUM_EVAL" --num_test "$NUM_EVAL" --seed 0
step tower 60 "$PYTHON" -m streammind pretrain-tower "$W" "$RUN/tower" --steps "$TOWER_STEPS" --batch_size 64

step tiny_stage1_torchrun 90 env MASTER_PORT=29511 scripts/finetune_stage1.sh configs/tiny/stage1.yaml \
    "${DATA[@]}" --tokenizer_path "$W/tokenizer" --clip_path "$RUN/tower" --feature_cache_dir "$RUN/tiny_cache" \
    --output_dir "$RUN/tiny_stage1" --max_steps "$TINY1_STEPS" --logging_steps 5 --bf16 true --dataloader_num_workers 2

step tiny_stage2_deepspeed 120 env MASTER_PORT=29512 scripts/finetune_stage2.sh configs/tiny/stage2.yaml \
    --deepspeed configs/deepspeed/zero2.json "${DATA[@]}" --init_from "$RUN/tiny_stage1" --feature_cache_dir "$RUN/tiny_cache" \
    --output_dir "$RUN/tiny_stage2" --max_steps "$TINY2_STEPS" --logging_steps 5 --bf16 true --dataloader_num_workers 2

big_stage1() {  # big_stage1 NAME PORT: the measured 7B LoRA command, with the feature cache
    step "$1" 150 env MASTER_PORT="$2" scripts/finetune_stage1.sh configs/stage1.yaml \
        --deepspeed configs/deepspeed/zero2.json --clip_path null --llm_path null \
        --preset "$BIG_PRESET" --tokenizer_path "$W/tokenizer" --torch_dtype bfloat16 \
        --lora true --trainable '[perception, "*lora_*"]' \
        "${DATA[@]}" --feature_cache_dir "$RUN/big_cache" \
        --max_steps "$BIG_STEPS" --logging_steps 1 --output_dir "$BIG/$1" --save_strategy no --report_to none
}
RESERVE=$(( 200 * CAP_SCALE ))
big_stage1 big_stage1_cold 29513
rm -rf "$BIG/big_stage1_cold"
big_stage1 big_stage1_warm 29514

step features_big 60 "$PYTHON" -m streammind features "$W/train.jsonl" "$W/val.jsonl" "$W/test.jsonl" --data-root "$W" \
    --model "$BIG/big_stage1_warm" --dtype bfloat16 --fps "$BENCH_FPS" --out "$RUN/bench_cache" --num-workers 4 \
    --batch-size 64 --no-progress --summary "$RUN/features_big.json"
rm -rf "$BIG/big_stage1_warm"

RESERVE=0
step pytest_gpu 330 "$PYTHON" -m pytest -m gpu -v -rA -p no:cacheprovider --continue-on-collection-errors tests --junitxml "$RUN/pytest_gpu.xml"

"$PYTHON" - "$RUN" "$MODE" "$(( $(date +%s) - START ))" <<'EOF' 2>&1 | tee -a "$LOG"
"""Summarise the step logs into summary.json and a few lines."""
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

run, mode, wall = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def num(pattern, text, last=True, cast=float):
    found = re.findall(pattern, text)
    return cast(found[-1] if last else found[0]) if found else None


def training(name):
    path = run / "logs" / f"{name}.log"
    if not path.exists():
        return None
    text = path.read_text(errors="replace")
    losses = [float(x) for x in re.findall(r"'loss': '?([0-9.]+(?:e-?[0-9]+)?)", text)]
    extraction = re.search(r"feature extraction \(rank 0\): (\d+) clips: (\d+) extracted, (\d+) already cached, (\d+) failed.*?; "
                           r"(\d+) frames in ([0-9.]+) s \(([0-9]+) frames/s\)", text)
    return {
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "optimizer_steps": num(r"optimizer steps: (\d+),", text, cast=int),
        "first_step_s": num(r"optimizer steps: \d+, first ([0-9.]+) s", text),
        "median_step_s": num(r"then median ([0-9.]+) s per step", text),
        "peak_cuda_gib": num(r"peak CUDA memory ([0-9.]+) GiB", text),
        "extraction": None if extraction is None else dict(zip(
            ("clips", "extracted", "cached", "failed", "frames", "seconds", "frames_per_s"),
            [int(extraction[i]) for i in range(1, 6)] + [float(extraction[6]), int(extraction[7])])),
    }


steps = []
for line in (run / "steps.tsv").read_text().splitlines():
    name, status, rc, secs = line.split("\t")
    steps.append({"name": name, "status": status, "rc": rc, "seconds": float(secs)})
summary = {
    "mode": mode,
    "versions": json.loads((run / "versions.json").read_text()),
    "wall_s": wall,
    "steps": steps,
    **{name: training(name) for name in ("tiny_stage1_torchrun", "tiny_stage2_deepspeed", "big_stage1_cold", "big_stage1_warm")},
    "features_big": json.loads((run / "features_big.json").read_text()) if (run / "features_big.json").exists() else None,
}
report = run / "pytest_gpu.xml"
pytest_log = run / "logs" / "pytest_gpu.log"
if not report.exists() and pytest_log.exists():  # killed before the report: the -v lines so far
    done = re.findall(r"tests/test_gpu\.py::(\w+) (PASSED|FAILED|ERROR|SKIPPED)", pytest_log.read_text(errors="replace"))
    summary["pytest_gpu"] = {"incomplete": True, "tests": {name: {"outcome": outcome.lower()} for name, outcome in done}}
if report.exists():
    tests, counts = {}, {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(report).iter("testcase"):
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else \
                  "skipped" if case.find("skipped") is not None else "passed"
        counts[outcome] += 1
        tests[case.get("name")] = {"outcome": outcome, "seconds": round(float(case.get("time", 0)), 1)}
    summary["pytest_gpu"] = {**counts, "tests": tests}
(run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

print(f"\nGPU check summary ({mode} mode, {wall} s): {run / 'summary.json'}")
for s in steps:
    print(f"  {s['name']:<24}{s['status']:<9}{s['seconds']:>7.1f} s")
for name in ("tiny_stage1_torchrun", "tiny_stage2_deepspeed", "big_stage1_cold", "big_stage1_warm"):
    t = summary[name]
    if t:
        ex = t["extraction"]
        print(f"  {name}: loss {t['first_logged_loss']} -> {t['last_logged_loss']}, median {t['median_step_s']} s/step "
              f"(first {t['first_step_s']} s), peak {t['peak_cuda_gib']} GiB"
              + (f", extraction {ex['extracted']} clips {ex['frames']} frames {ex['frames_per_s']} frames/s" if ex else ""))
if summary["features_big"]:
    f = summary["features_big"]
    print(f"  features_big: {f['extracted']} clips, {f['frames']} frames in {f['seconds']} s = {f['frames_per_s']} frames/s")
if "pytest_gpu" in summary:
    p = summary["pytest_gpu"]
    outcomes = [t["outcome"] for t in p["tests"].values()]
    print(f"  pytest -m gpu: {outcomes.count('passed')} passed, {len(outcomes) - outcomes.count('passed') - outcomes.count('skipped')} "
          f"failed or errors, {outcomes.count('skipped')} skipped" + (" (incomplete: the step was stopped)" if p.get("incomplete") else ""))
EOF

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    cp "$RUN/summary.json" "$OUT/gpu_check_summary.json" 2> /dev/null
    cp "$LOG" "$OUT/gpu_check.log"
    cp "$RUN/pytest_gpu.xml" "$OUT/" 2> /dev/null
fi
! grep -qv $'\tok\t' "$STEPS"
