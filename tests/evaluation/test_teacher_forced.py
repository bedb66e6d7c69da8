"""The teacher-forced protocol runner: hand-computed metrics with a stubbed gate and LLM,
the two-pass gate trick against one pass per turn, and the language scores against the
model's own loss.

Run: .venv/bin/python -m pytest tests/evaluation/test_teacher_forced.py -q
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from streammind.evaluation.tasks import run_task
from streammind.evaluation.teacher_forced import (
    TeacherForcedTask,
    parity_respond_masks,
    reply_token_scores,
    score_teacher_forced_record,
    teacher_forced_record,
    through_last_turn,
)
from streammind.training.annotations import StreamAnnotation, Turn, load_annotations
from streammind.training.collator import StreamCollator
from streammind.training.datasets import StreamDataset
from tests.helpers import make_tiny

QUERY = "Tell me when a shape appears."
# At 2 fps these turn times end turns at frames 3, 7, 13 and 15: |V| = 3, 4, 6, 2.
TURNS = [(1.0, "A red circle appeared."), (3.0, "The red circle disappeared."), (6.0, "A blue square appeared."),
         (7.0, "The blue square turned green.")]
FIRE_AT_COUNT = 4


def counter_gate(tokens, frame_mask, gate_labels, gate_prompt_ids, gate_prompt_mask=None, respond=None):
    """A stub gate that responds at the 4th frame since its turn context was last reset."""
    logits = torch.zeros(*tokens.shape[:2], 2)
    count = 0
    for t in range(tokens.shape[1]):
        if t > 0 and respond[0, t - 1]:
            count = 0
        count += 1
        logits[0, t, 1] = 10.0 if count == FIRE_AT_COUNT else -10.0
    return logits


def uniform_lm(inputs_embeds, **kwargs):
    """A stub LLM with all-zero logits: p = 1 / V per token and argmax = token 0."""
    vocab = uniform_lm.vocab
    return SimpleNamespace(logits=torch.zeros(*inputs_embeds.shape[:2], vocab), loss=None)


def record_on(small_world, turns=TURNS, **fields):
    video = load_annotations(small_world / "train.jsonl")[0].video
    return StreamAnnotation(video=video, query=QUERY, turns=[Turn(t, text) for t, text in turns], id="hand", **fields)


def test_hand_computed_early_on_time_and_late_turns(small_world, tiny, monkeypatch):
    model, processor = tiny
    monkeypatch.setattr(model, "gate_logits", counter_gate)
    uniform_lm.vocab = model.config.text_config.vocab_size
    monkeypatch.setattr(model.language_model, "forward", uniform_lm)
    prediction = teacher_forced_record(model, processor, record_on(small_world), small_world, threshold=0.5, fps=2.0)

    turns = prediction["turns"]
    assert [t["frames"] for t in turns] == [[0, 3], [3, 7], [7, 13], [13, 15]]
    # Turn 0: silent in V, late; its context is not reset at frame 2, so the count reaches
    # 4 on the next frame: the first following frame responds.
    assert turns[0]["decisions"] == [False] * 3
    assert turns[0]["following_decisions"] == [True, False]  # window |V| - 1 = 2
    # Turn 1: reset after frame 2, count 4 on its last frame: on time.
    assert turns[1]["decisions"] == [False, False, False, True]
    assert turns[1]["following_decisions"] == [False, False, False]  # counts 5, 6, 7
    # Turn 2: count 4 at its 4th of 6 frames: early by 2 frames.
    assert turns[2]["decisions"] == [False, False, False, True, False, False]
    # Turn 3: the last turn, silent: no following frames, frame_diff 0.
    assert turns[3]["decisions"] == [False, False]
    assert turns[3]["following_decisions"] == []

    lengths = [len(processor.encode_reply(text)) for _, text in TURNS]
    assert [len(t["token_logprobs"]) for t in turns] == lengths  # reply tokens + EOS
    assert all(ids[0] != 0 for ids in (processor.encode_reply(text) for _, text in TURNS))

    scores = score_teacher_forced_record(prediction=prediction, reference=record_on(small_world))
    assert scores["frame_diffs"] == [-1, 0, 2, 0]
    assert scores["time_diff"] == pytest.approx((0.5 + 0 + 1.0 + 0) / 4)
    assert scores["lm_ppl"] == pytest.approx(uniform_lm.vocab, rel=1e-5)
    assert scores["lm_correctness"] == 0.0
    expected_fluency = [(3 - 1) / (3 + lengths[0]), 4 / (4 + lengths[1]), (6 - 2) / (6 + lengths[2]), 2 / (2 + lengths[3])]
    assert scores["fluency"] == pytest.approx(sum(expected_fluency) / 4)
    assert scores["timing"] == {"early": 1, "on_time": 1, "late": 2}
    assert scores["token_accuracy"] == 0.0


def test_two_gate_passes_equal_one_pass_per_turn(small_world, tiny_tokenizer):
    """Each turn's V and late window equal a gate pass that resets after every other turn."""
    model, processor = make_tiny(tiny_tokenizer, gate_window=5)
    record = record_on(small_world)
    prediction = teacher_forced_record(model, processor, record, small_world, threshold=0.5)
    example = StreamDataset([through_last_turn(record, 2.0)], small_world, processor, stage="both")[0]
    batch = StreamCollator.from_processor(processor)([example])
    ends = example["turn_ends"]
    with torch.no_grad():
        tokens = model.get_perception_tokens(pixel_values=batch["pixel_values"])
        for k, turn in enumerate(prediction["turns"]):
            respond = torch.zeros(1, tokens.shape[1], dtype=torch.bool)
            for j, end in enumerate(ends):
                respond[0, end - 1] = j != k
            probs = model.gate_logits(tokens, batch["frame_mask"], None, batch["gate_prompt_ids"], batch["gate_prompt_mask"],
                                      respond=respond).softmax(-1)[0, :, 1]
            first, end = turn["frames"]
            following = len(turn["following_probs"])
            assert following == (min(ends[k + 1] - end, end - first - 1) if k + 1 < len(ends) else 0)
            assert torch.allclose(torch.tensor(turn["respond_probs"]), probs[first:end], atol=2e-6)
            assert torch.allclose(torch.tensor(turn["following_probs"]), probs[end : end + following], atol=2e-6)


def test_reply_scores_match_the_model_loss(small_world, tiny):
    model, processor = tiny
    record = record_on(small_world)
    example = StreamDataset([through_last_turn(record, 2.0)], small_world, processor, stage=1)[0]
    batch = StreamCollator.from_processor(processor)([example])
    with torch.no_grad():
        out = model(**batch)
    replies = reply_token_scores(out.logits[0], batch["labels"][0])
    assert [r["target_ids"] for r in replies] == [processor.encode_reply(text) for _, text in TURNS]
    logprobs = [lp for r in replies for lp in r["token_logprobs"]]
    assert -sum(logprobs) / len(logprobs) == pytest.approx(float(out.lm_loss), rel=1e-5)


def test_clip_ends_after_the_last_turn():
    record = StreamAnnotation(video="v.mp4", query=QUERY, turns=[Turn(1.0, "a"), Turn(4.0, "b")])
    assert through_last_turn(record, 2.0).end == 4.25
    assert through_last_turn(StreamAnnotation(video="v.mp4", query=QUERY, turns=[Turn(1.0, "a")], end=1.1), 2.0).end == 1.1
    empty = StreamAnnotation(video="v.mp4", query=QUERY, turns=[])
    assert through_last_turn(empty, 2.0) is empty


def test_parity_masks():
    even, odd = parity_respond_masks([3, 7, 13], 15)
    assert torch.nonzero(even).flatten().tolist() == [2, 12]
    assert torch.nonzero(odd).flatten().tolist() == [6]


def test_failures_are_counted_not_dropped(small_world, tiny, tmp_path):
    model, processor = tiny
    good = record_on(small_world, turns=TURNS[:2])
    missing = StreamAnnotation(video="videos/nowhere.mp4", query=QUERY, turns=[Turn(1.0, "x")], id="missing")
    no_turns = StreamAnnotation(video=good.video, query=QUERY, turns=[], id="no-turns")
    past_end = StreamAnnotation(video=good.video, query=QUERY, turns=[Turn(99.0, "late")], id="past-end")
    task = TeacherForcedTask([good, missing, no_turns, past_end], small_world)
    metrics = run_task(task, model, processor, tmp_path)

    failures = metrics["failures"]
    assert failures["num_examples"] == 4 and failures["num_failed"] == 3
    assert failures["by_reason"] == {"missing_video": 1, "no_turns": 1, "turn_past_end": 1}
    assert [f["id"] for f in failures["failed"]] == ["missing", "no-turns", "past-end"]
    assert metrics["aggregate"]["num_videos"] == 1
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["hand", "missing", "no-turns", "past-end"]
    assert lines[1]["reason"] == "missing_video" and "error" in lines[1]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["failures"] == failures
    assert math.isfinite(saved["aggregate"]["lm_ppl"])
    assert (tmp_path / "metrics.md").is_file() and (tmp_path / "plots" / "hand.png").is_file()
