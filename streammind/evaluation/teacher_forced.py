"""The teacher-forced streaming protocol (VideoLLM-online's `stream_evaluate`) with the gate
making the frame decisions (docs/design.md §6).

Notation: T frames of one record sampled at `fps`, K ground-truth turns, turn k covers the
frames [e_{k-1}, e_k) (e_{-1} = 0) and ends at its respond frame e_k - 1 (the frame at, or
last before, the reply time; `streammind.training.datasets.turn_end_frames`).

Per record (one video x annotation pass), batch size 1:

1. Frames. The record's clip is cut after the last turn's frame (`end` = last reply time
   + half a frame), as VideoLLM-online's frame range ends at the last narration: nothing
   after the last turn is scored. The clip is built by `StreamDataset(stage="both")`, so
   frames, placeholders, labels and turn ends are exactly what training sees. A record
   that cannot be built (missing or undecodable video, no turns, a turn past the video's
   end, two turns on one frame) raises `BadSample` with the dataset's reason; the runner
   counts it.
2. Language (LM-PPL, LM-Correctness). One teacher-forced forward `model(...)` over the
   whole ground-truth dialogue: every turn's frames (perception tokens sampled per turn
   exactly as in training and as the streaming runtime does after a correct response) and
   every ground-truth reply at its ground-truth time. L of turn k = the supervised labels
   of reply k, i.e. the reply tokens **and the EOS that ends it** (the model must stop, and
   VideoLLM-online's L ends with its EOS too). Our template has no "Assistant:" header
   inside the supervised span (the " [/INST]" that precedes a reply is prompt, never a
   target), so unlike VideoLLM-online, L holds no easy header tokens; LM-Correctness is
   not inflated by them. Per token: log p(target) (log-softmax in fp32) and whether the
   argmax equals the target; the argmax decode of each reply is kept for reading.
3. Gate decisions. The gate runs on the same perception tokens with
   `model.gate_logits(..., respond=R)`, where R marks the frames after which the gate's
   turn context restarts from its prompt (as the streaming runtime does after a reply).
   A frame decides "respond" when p(respond) > threshold (the streaming runtime's rule).
   Turn k needs its context reset after e_{k-1} - 1 (the previous turn ended correctly)
   and, for lateness, *not* reset after its own end e_k - 1 (a late model has not replied
   there, so the frames that follow continue the same gate context). Two gate passes
   serve every turn: pass p resets only after the respond frames of the turns with
   parity p. Turn k reads pass (k + 1) mod 2, which resets after turn k - 1 and not after
   turn k:
     V_k (`decisions`)           = pass decisions on frames [e_{k-1}, e_k);
     following (`following_decisions`) = pass decisions on the next turn's frames
                                   [e_k, e_{k+1}), cut to the window |V_k| - 1.
   The reset of the gate's attention window (`gate_window`) applies as in streaming. The
   EPFE state never depends on replies, so the perception tokens are shared. For a gate in
   per-frame mode R changes nothing. (`tests/evaluation/test_teacher_forced.py` checks this
   against one pass per turn.)
   The per-frame-LLM baseline (`streammind.modeling_perframe`) makes steps 2 and 3
   VideoLLM-online's way, on its KV cache (`streammind.streaming_perframe.teacher_forced`):
   the ground-truth dialogue is prefilled turn by turn, and after each turn's last frame the
   frames that follow are fed without the reply to time a late decision, then cut back. Its L
   is the same as StreamMind's (reply and EOS; its separators and the turn close "\n [/INST]"
   that carries its speak decision are masked out of L), so LM-PPL and LM-Correctness compare
   like with like. `teacher_forced_record` picks the model's part through one dispatch.
4. Scoring (`metrics.py`, all of it in one place): the window rule min(next turn length, |V| - 1); the last turn
   has no following frames, so a silent last turn counts as frame_diff 0; TimeDiff =
   |frame_diff| / fps; Fluency, LM-PPL and LM-Correctness per turn; mean over turns, then
   over records (`score_teacher_forced_video`, `aggregate_teacher_forced`).

Differences from VideoLLM-online, on purpose: every turn is timed, including the first
(VideoLLM-online's first narration gets one unlearned frame; our gate decides on every
frame of the stream from the start), and a failed record is counted under "failures",
never given default values.

Also reported (StreamMind-specific, under "extra"): how many turns were early / on time /
late, the mean signed frame_diff, and `token_accuracy`, the released StreamMind code's
"Correctness" (per turn the share of reply tokens whose argmax is right, mean over turns,
then over records), a different quantity from LM-Correctness (docs/design.md §6).

Outputs of one record (`teacher_forced_record`, one JSON line in `predictions.jsonl`):
{"video", "query", "fps", "threshold", "start", "num_frames", "turns": [{"time", "text",
"frames": [first, end), "respond_probs", "decisions", "following_probs",
"following_decisions", "token_logprobs", "token_correct", "argmax_text"}]} — everything
`score_teacher_forced_record` needs, so the metrics can be recomputed without the model.

Memory: one record is one forward, so a record's frames ([T, 3, S, S] pixels) and its
whole dialogue are in memory at once; very long records need a large GPU.

Reference: docs/design.md §6; VideoLLM-online's `models/modeling_live.py` (github.com/showlab/videollm-online).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..processing import IGNORE_INDEX
from ..streaming_perframe import default_threshold, is_per_frame_llm
from ..streaming_perframe import teacher_forced as per_frame_teacher_forced
from ..training.annotations import StreamAnnotation
from ..training.collator import StreamCollator
from ..training.datasets import StreamDataset
from .metrics import aggregate_teacher_forced, score_teacher_forced_record
from .plots import plot_filename, plot_timeline
from .tasks import Failure, Task

_ROUND = 6


def through_last_turn(record: StreamAnnotation, fps: float) -> StreamAnnotation:
    """The record with its clip ending half a frame after the last turn (unchanged if no turns)."""
    if not record.turns:
        return record
    end = record.turns[-1].time + 0.5 / fps
    if record.end is not None:
        end = min(end, record.end)
    return dataclasses.replace(record, end=end)


def reply_token_scores(logits: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Per reply: log p(target), argmax correctness and argmax ids of its supervised tokens.

    Args:
        logits: [S, V] next-token logits of the dialogue.
        labels: [S] targets, IGNORE_INDEX outside replies.
    Returns:
        One dict per contiguous run of supervised labels (one reply and its EOS), in order:
        {"token_logprobs", "token_correct", "argmax_ids", "target_ids"}.
    """
    targets = labels[1:]
    keep = targets != IGNORE_INDEX
    positions = torch.nonzero(keep).flatten().tolist()
    if not positions:
        return []
    log_probs = torch.log_softmax(logits[:-1][keep].float(), dim=-1)  # [N, V]
    chosen = targets[keep]
    token_logprobs = log_probs.gather(1, chosen[:, None])[:, 0].tolist()
    argmax = log_probs.argmax(-1)
    correct = (argmax == chosen).tolist()
    argmax, chosen = argmax.tolist(), chosen.tolist()
    runs, start = [], 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or positions[i] != positions[i - 1] + 1:
            runs.append(slice(start, i))
            start = i
    return [
        {
            "token_logprobs": token_logprobs[run],
            "token_correct": correct[run],
            "argmax_ids": argmax[run],
            "target_ids": chosen[run],
        }
        for run in runs
    ]


def parity_respond_masks(turn_ends: Sequence[int], num_frames: int) -> list[torch.Tensor]:
    """The two gate reset masks [T] bool: pass p resets after the respond frame of turns k ≡ p (mod 2)."""
    masks = []
    for parity in (0, 1):
        mask = torch.zeros(num_frames, dtype=torch.bool)
        for k, end in enumerate(turn_ends):
            if k % 2 == parity:
                mask[end - 1] = True
        masks.append(mask)
    return masks


def late_windows(turn_ends: Sequence[int]) -> list[int]:
    """For each turn, the end (exclusive) of the frames that time a late reply: the next turn's
    frames, cut to |V| - 1 of them (the turn's own end for the last turn)."""
    windows = []
    for k, end in enumerate(turn_ends):
        first = turn_ends[k - 1] if k else 0
        windows.append(min(turn_ends[k + 1] if k + 1 < len(turn_ends) else end, end + (end - first - 1)))
    return windows


def streammind_teacher_forced(model, processor, batch: dict, turn_ends: list[int], windows: list[int]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """StreamMind's part of the protocol: one forward for the replies' logits, two gate passes
    for the decisions (steps 2 and 3 of the module docstring).

    Returns:
        logits [S, V] of the dialogue, its reply labels [S] (the supervised labels: the
        replies and their EOS), and per turn p(respond) at its frames and at the frames of
        its late window (as `streaming_perframe.teacher_forced` returns them).
    """
    out = model(
        pixel_values=batch["pixel_values"],
        frame_mask=batch["frame_mask"],
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        turn_ends=batch["turn_ends"],
    )
    tokens = out.perception_tokens
    probs = []
    for mask in parity_respond_masks(turn_ends, tokens.shape[1]):
        logits = model.gate_logits(
            tokens, batch["frame_mask"], None, batch["gate_prompt_ids"], batch["gate_prompt_mask"], respond=mask[None].to(tokens.device)
        )
        probs.append(logits.float().softmax(-1)[0, :, 1].cpu().numpy())
    starts = [0] + list(turn_ends[:-1])
    turn_probs = [(probs[(k + 1) % 2][first:end], probs[(k + 1) % 2][end:window])
                  for k, (first, end, window) in enumerate(zip(starts, turn_ends, windows))]
    return out.logits[0], batch["labels"][0], turn_probs


@torch.inference_mode()
def teacher_forced_record(
    model,
    processor,
    record: StreamAnnotation,
    data_root: str | Path,
    *,
    threshold: float | None = None,
    fps: float | None = None,
) -> dict:
    """Run the teacher-forced protocol on one record (module docstring); raises BadSample."""
    fps = fps or model.config.frames_per_second
    threshold = default_threshold(model) if threshold is None else threshold
    clip = through_last_turn(record, fps)
    dataset = StreamDataset([clip], data_root, processor, stage="both", fps=fps, on_error="raise")
    example = dataset.example(0)  # a record that cannot be built raises BadSample (counted by the runner)
    if is_per_frame_llm(model):  # no gate: its decisions are the LLM's own, from the dialogue
        example = {key: value for key, value in example.items() if not key.startswith("gate_")}
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in StreamCollator.from_processor(processor)([example]).items()}
    ends = list(example["turn_ends"])
    windows = late_windows(ends)
    forced = per_frame_teacher_forced if is_per_frame_llm(model) else streammind_teacher_forced
    logits, reply_labels, turn_probs = forced(model, processor, batch, ends, windows)
    replies = reply_token_scores(logits, reply_labels)
    if len(replies) != len(ends):
        raise RuntimeError(f"{len(replies)} supervised replies for {len(ends)} turns: the processor's labels and the turns disagree")
    num_frames = batch["frame_mask"].shape[1]

    turns = []
    for k, (turn, reply, (in_turn, following)) in enumerate(zip(clip.turns, replies, turn_probs)):
        turns.append(
            {
                "time": turn.time,
                "text": turn.text,
                "frames": [ends[k - 1] if k else 0, ends[k]],
                "respond_probs": _rounded(in_turn),
                "decisions": [bool(p > threshold) for p in in_turn],
                "following_probs": _rounded(following),
                "following_decisions": [bool(p > threshold) for p in following],
                "token_logprobs": reply["token_logprobs"],
                "token_correct": reply["token_correct"],
                "argmax_text": processor.decode(reply["argmax_ids"]),
            }
        )
    return {
        "video": record.video,
        "query": record.query,
        "fps": float(fps),
        "threshold": float(threshold),
        "start": float(clip.start or 0.0),
        "num_frames": int(num_frames),
        "turns": turns,
    }


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), _ROUND) for v in values]


def plot_teacher_forced(prediction: dict, path: str | Path) -> Path:
    """Timeline of one record: p(respond) over each turn's frames (context reset at the
    ground-truth replies), the threshold, the ground-truth reply times, and the frame of
    each turn's first respond decision (in the turn, or in its late window)."""
    fps, start = prediction["fps"], prediction["start"]
    probs, replies = [], []
    for turn in prediction["turns"]:
        first, end = turn["frames"]
        probs += turn["respond_probs"]
        fired = [i for i, d in enumerate(turn["decisions"] + turn["following_decisions"]) if d]
        if fired:
            replies.append(start + (first + fired[0]) / fps)
    times = [start + i / fps for i in range(len(probs))]
    gt_times = [start + (turn["frames"][1] - 1) / fps for turn in prediction["turns"]]
    return plot_timeline(
        times, probs, prediction["threshold"], gt_times, replies, path, title=f"{prediction['id']}: {prediction['query']} (teacher-forced)"
    )


class TeacherForcedTask(Task):
    """A stream benchmark under the teacher-forced protocol; subclasses name it and load records.

    Args:
        records: the canonical stream annotations to evaluate.
        data_root: directory the records' video paths are relative to.
        threshold: gate threshold (default: the model config's).
        fps: sampling rate (default: the model config's).
        num_plots: timeline plots drawn for the first records.
        load_failures: records lost while reading the benchmark's data (counted).
    """

    name = "stream"

    def __init__(
        self,
        records: Sequence[StreamAnnotation],
        data_root: str | Path,
        *,
        threshold: float | None = None,
        fps: float | None = None,
        num_plots: int = 8,
        load_failures: Sequence[Failure] = (),
    ):
        super().__init__()
        self.load_failures = list(load_failures)
        self.records = list(records)
        self.data_root = Path(data_root)
        self.threshold = threshold
        self.fps = fps
        self.num_plots = num_plots

    def examples(self) -> list[StreamAnnotation]:
        return self.records

    def example_id(self, example: StreamAnnotation) -> str:
        return example.id or example.video

    def run(self, model, processor, example: StreamAnnotation) -> dict:
        return teacher_forced_record(model, processor, example, self.data_root, threshold=self.threshold, fps=self.fps)

    def score(self, *, prediction: dict, reference: StreamAnnotation) -> dict:
        return score_teacher_forced_record(prediction=prediction, reference=reference)

    def aggregate(self, scores: Sequence[dict]) -> dict:
        return aggregate_teacher_forced(scores)

    def after_run(self, predictions: Sequence[dict], out_dir: Path) -> None:
        """Timeline plots of the first `num_plots` scored records."""
        scored = [p for p in predictions if "error" not in p][: self.num_plots]
        for prediction in scored:
            plot_teacher_forced(prediction, out_dir / "plots" / plot_filename(prediction["id"]))


__all__ = [
    "TeacherForcedTask",
    "late_windows",
    "streammind_teacher_forced",
    "parity_respond_masks",
    "plot_teacher_forced",
    "reply_token_scores",
    "teacher_forced_record",
    "through_last_turn",
]
