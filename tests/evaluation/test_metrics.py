"""Hand-computed cases for the pure scoring functions in `eval/metrics.py`.

Run: .venv/bin/python -m pytest tests/evaluation/test_metrics.py -q
"""

import itertools
import logging
import math
import random
import shutil

import pytest

from streammind.evaluation import metrics
from streammind.evaluation.metrics import (
    TeacherForcedTurn,
    TimedText,
    aggregate_stream_scores,
    aggregate_teacher_forced,
    caption_metrics,
    correct_prefix_length,
    fluency,
    frame_diff,
    lm_correctness,
    lm_perplexity,
    match_events,
    normalize_whitespace,
    score_stream_video,
    score_teacher_forced_record,
    score_teacher_forced_turn,
    score_teacher_forced_video,
    tokenize_caption,
)
from streammind.training.annotations import StreamAnnotation

# ---------------------------------------------------------------------------------------
# One-to-one matching
# ---------------------------------------------------------------------------------------


def test_match_keeps_more_pairs_than_greedy_nearest_first():
    # Greedy would pair 0.8 with 1.5 (|Δ| 0.7) and leave 2.4 without a partner.
    pairs = match_events(prediction=[0.8, 2.4], reference=[0.0, 1.5], tolerance=1.0)
    assert pairs == [(0, 0), (1, 1)]


def test_match_prefers_smaller_offset():
    assert match_events(prediction=[9.0, 10.4], reference=[10.0], tolerance=1.0) == [(1, 0)]
    assert match_events(prediction=[10.9], reference=[10.0, 11.0], tolerance=1.0) == [(0, 1)]


def test_match_ties_go_to_the_earlier_item():
    assert match_events(prediction=[0.5, 1.5], reference=[1.0], tolerance=1.0) == [(0, 0)]
    assert match_events(prediction=[1.0], reference=[0.5, 1.5], tolerance=1.0) == [(0, 0)]


def test_match_tolerance_is_inclusive_and_robust_to_float_noise():
    # 1.1 - 0.1 is 1.0000000000000002 in floating point; it still counts as 1 s.
    assert match_events(prediction=[1.1], reference=[0.1], tolerance=1.0) == [(0, 0)]
    assert match_events(prediction=[1.2], reference=[0.1], tolerance=1.0) == []


def test_match_returns_indices_into_unsorted_inputs():
    pairs = match_events(prediction=[20.0, 10.2], reference=[10.0, 20.5], tolerance=1.0)
    assert pairs == [(1, 0), (0, 1)]


def test_match_empty_and_invalid_inputs():
    assert match_events(prediction=[], reference=[1.0], tolerance=1.0) == []
    assert match_events(prediction=[1.0], reference=[], tolerance=1.0) == []
    with pytest.raises(ValueError):
        match_events(prediction=[float("nan")], reference=[1.0], tolerance=1.0)
    with pytest.raises(ValueError):
        match_events(prediction=[1.0], reference=[1.0], tolerance=-1.0)


def _brute_force_best(prediction, reference, tolerance):
    """(number of pairs, total |Δt|) of the best matching, by enumeration."""
    best = (0, 0.0)
    for size in range(1, min(len(prediction), len(reference)) + 1):
        for preds in itertools.combinations(range(len(prediction)), size):
            for refs in itertools.permutations(range(len(reference)), size):
                offsets = [abs(prediction[p] - reference[r]) for p, r in zip(preds, refs)]
                # Same microsecond comparison as the scorer, so float noise cannot differ.
                if all(round(offset * 1e6) <= round(tolerance * 1e6) for offset in offsets):
                    # More pairs first, then a smaller total offset.
                    if (size, -sum(offsets)) > (best[0], -best[1]):
                        best = (size, sum(offsets))
    return best


def test_match_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        prediction = [round(rng.uniform(0, 8), 1) for _ in range(rng.randint(0, 4))]
        reference = [round(rng.uniform(0, 8), 1) for _ in range(rng.randint(0, 4))]
        tolerance = rng.choice([0.5, 1.0, 2.0])
        pairs = match_events(prediction=prediction, reference=reference, tolerance=tolerance)
        assert len({p for p, _ in pairs}) == len({r for _, r in pairs}) == len(pairs)
        total = sum(abs(prediction[p] - reference[r]) for p, r in pairs)
        best_size, best_total = _brute_force_best(prediction, reference, tolerance)
        assert len(pairs) == best_size
        assert total == pytest.approx(best_total, abs=1e-9)


# ---------------------------------------------------------------------------------------
# Free-running per-video metrics
# ---------------------------------------------------------------------------------------

EVENTS = [
    TimedText(10.0, "You cut the onion."),
    TimedText(20.0, "You wash the pan."),
    TimedText(30.0, "You open the fridge."),
    TimedText(31.0, "You take milk."),
    TimedText(40.0, "You close the door."),
]
REPLIES = [
    TimedText(10.5, "  You cut  the\tonion. "),  # exact after whitespace normalisation
    TimedText(19.2, "you wash the pan."),  # matched, but the case differs
    TimedText(30.5, "You open the fridge."),  # matched to 30 (tie with 31 -> earlier)
    TimedText(33.5, "You take milk."),
    TimedText(41.5, "You close the door."),  # right text, but 1.5 s away
    TimedText(50.0, "Nothing."),
]


def test_score_stream_video_hand_computed():
    scores = score_stream_video(prediction=REPLIES, reference=EVENTS)
    assert scores["num_predictions"] == 6 and scores["num_references"] == 5
    # ±1 s: 10.5-10, 19.2-20, 30.5-30.
    assert (scores["tp@1s"], scores["fp@1s"], scores["fn@1s"]) == (3, 3, 2)
    assert scores["precision@1s"] == pytest.approx(3 / 6)
    assert scores["recall@1s"] == pytest.approx(3 / 5)
    assert scores["f1@1s"] == pytest.approx(6 / 11)
    # ±2 s adds 41.5-40.
    assert (scores["tp@2s"], scores["fp@2s"], scores["fn@2s"]) == (4, 2, 1)
    assert scores["f1@2s"] == pytest.approx(8 / 11)
    # ±5 s adds 33.5-31 (30.5 keeps 30: total |Δt| 3.0 beats 4.0).
    assert (scores["tp@5s"], scores["fp@5s"], scores["fn@5s"]) == (5, 1, 0)
    assert scores["precision@5s"] == pytest.approx(5 / 6)
    assert scores["recall@5s"] == pytest.approx(1.0)
    assert scores["f1@5s"] == pytest.approx(10 / 11)
    # TriggerAcc: 10, 20, 30 and 31 (30.5 is within 1 s of both) have a reply; 40 does not.
    assert scores["triggered_events"] == 4
    assert scores["trigger_acc"] == pytest.approx(4 / 5)
    # TimVal: 10.5, 19.2, 30.5 are within 1 s of an event.
    assert scores["valid_replies"] == 3
    assert scores["timval"] == pytest.approx(3 / 6)
    # Exact match: events 10 and 30; 20 differs in case; 31 and 40 are unmatched at ±1 s.
    assert scores["exact_matches"] == 2
    assert scores["reply_exact_match"] == pytest.approx(2 / 5)


def test_trigger_acc_and_timval_are_not_one_to_one():
    shared_reply = score_stream_video(
        prediction=[TimedText(10.5)], reference=[TimedText(10.0), TimedText(11.0)]
    )
    assert shared_reply["trigger_acc"] == 1.0
    assert shared_reply["recall@1s"] == 0.5
    shared_event = score_stream_video(
        prediction=[TimedText(9.5), TimedText(10.5)], reference=[TimedText(10.0)]
    )
    assert shared_event["timval"] == 1.0
    assert shared_event["precision@1s"] == 0.5


def test_normalize_whitespace():
    assert normalize_whitespace("  a \n b\tc  ") == "a b c"


def test_score_stream_video_without_replies():
    scores = score_stream_video(prediction=[], reference=[TimedText(1.0), TimedText(2.0)])
    assert scores["precision@1s"] is None
    assert scores["recall@1s"] == 0.0
    assert scores["f1@1s"] == 0.0
    assert scores["trigger_acc"] == 0.0
    assert scores["timval"] is None
    assert scores["reply_exact_match"] == 0.0


def test_score_stream_video_without_events():
    scores = score_stream_video(prediction=[TimedText(1.0)], reference=[])
    assert scores["precision@1s"] == 0.0
    assert scores["recall@1s"] is None
    assert scores["f1@1s"] == 0.0
    assert scores["trigger_acc"] is None
    assert scores["timval"] == 0.0
    assert scores["reply_exact_match"] is None


def test_score_stream_video_without_anything():
    scores = score_stream_video(prediction=[], reference=[])
    rates = ("precision@1s", "recall@1s", "f1@1s", "trigger_acc", "timval", "reply_exact_match")
    for name in rates:
        assert scores[name] is None


def test_aggregate_micro_and_per_video_mean():
    video_a = score_stream_video(prediction=REPLIES, reference=EVENTS)
    video_b = score_stream_video(prediction=[], reference=[TimedText(1.0), TimedText(2.0)])
    video_c = score_stream_video(prediction=[], reference=[])
    aggregated = aggregate_stream_scores([video_a, video_b, video_c])
    assert aggregated["num_videos"] == 3
    micro, mean, counts = (
        aggregated["micro"],
        aggregated["per_video_mean"],
        aggregated["per_video_mean_num_videos"],
    )
    assert micro["precision@1s"] == pytest.approx(3 / 6)
    assert micro["recall@1s"] == pytest.approx(3 / 7)
    assert micro["f1@1s"] == pytest.approx(6 / 13)
    assert micro["trigger_acc"] == pytest.approx(4 / 7)
    assert micro["timval"] == pytest.approx(3 / 6)
    assert micro["reply_exact_match"] == pytest.approx(2 / 7)
    assert mean["precision@1s"] == pytest.approx(0.5) and counts["precision@1s"] == 1
    assert mean["recall@1s"] == pytest.approx(0.3) and counts["recall@1s"] == 2
    assert mean["f1@1s"] == pytest.approx(3 / 11) and counts["f1@1s"] == 2
    assert mean["trigger_acc"] == pytest.approx(0.4) and counts["trigger_acc"] == 2
    assert mean["timval"] == pytest.approx(0.5) and counts["timval"] == 1


def test_aggregate_edge_cases():
    assert aggregate_stream_scores([])["num_videos"] == 0
    only_empty = aggregate_stream_scores([score_stream_video(prediction=[], reference=[])])
    assert only_empty["micro"]["f1@1s"] is None
    assert only_empty["per_video_mean"]["f1@1s"] is None
    assert only_empty["per_video_mean_num_videos"]["f1@1s"] == 0
    mixed = [
        score_stream_video(prediction=[], reference=[], tolerances=(1.0,)),
        score_stream_video(prediction=[], reference=[], tolerances=(2.0,)),
    ]
    with pytest.raises(ValueError):
        aggregate_stream_scores(mixed)


# ---------------------------------------------------------------------------------------
# Teacher-forced protocol
# ---------------------------------------------------------------------------------------

F, T = False, True


def test_frame_diff_early():
    # First respond at p = 1 of |V| = 4 frames: 4 - 1 - 1 = 2 frames early.
    assert frame_diff(decisions=[F, T, F, F], following_decisions=[F, F, F, T]) == 2


def test_frame_diff_on_time():
    assert frame_diff(decisions=[F, F, F, T], following_decisions=[T]) == 0


def test_frame_diff_late_found_in_window():
    # Window min(5, |V| - 1 = 3) = 3; first respond at j = 2 -> -(2 + 1).
    assert frame_diff(decisions=[F, F, F, F], following_decisions=[F, F, T, T, T]) == -3


def test_frame_diff_late_found_only_beyond_window():
    # Window min(2, |V| - 1 = 1) = 1: the respond at j = 1 is outside it -> -1.
    assert frame_diff(decisions=[F, F], following_decisions=[F, T]) == -1


def test_frame_diff_late_not_found():
    # Window capped by the next turn's length: min(2, 3) = 2, no respond -> -2.
    assert frame_diff(decisions=[F, F, F, F], following_decisions=[F, F]) == -2


def test_frame_diff_last_turn_and_single_frame_are_zero():
    assert frame_diff(decisions=[F, F, F], following_decisions=[]) == 0
    # |V| = 1 leaves a window of 0 frames.
    assert frame_diff(decisions=[F], following_decisions=[T]) == 0
    with pytest.raises(ValueError):
        frame_diff(decisions=[], following_decisions=[])


def test_lm_correctness_is_a_correct_prefix_ratio():
    assert correct_prefix_length([T, F, T]) == 1
    assert lm_correctness([T, F, T]) == pytest.approx(1 / 3)  # token accuracy would be 2/3
    assert lm_correctness([T, T]) == 1.0
    assert lm_correctness([F, T, T]) == 0.0


def test_lm_perplexity():
    # Mean cross-entropy (ln 2 + ln 4) / 2 = 1.5 ln 2 -> 2 ** 1.5.
    assert lm_perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(2**1.5)
    assert lm_perplexity([0.0]) == 1.0


def test_fluency_cases():
    # |V| = 4 frames, |L| = 3 tokens.
    on_time = fluency(frame_diff=0, num_frames=4, num_tokens=3, num_correct_prefix=1)
    early = fluency(frame_diff=2, num_frames=4, num_tokens=3, num_correct_prefix=1)
    late = fluency(frame_diff=-3, num_frames=4, num_tokens=3, num_correct_prefix=3)
    assert on_time == pytest.approx((4 + 1) / 7)
    assert early == pytest.approx((4 - 2) / 7)
    assert late == pytest.approx((4 - 1) / 7)


def test_score_turn_late_and_last():
    late = TeacherForcedTurn(
        decisions=[F, F, F, F],
        following_decisions=[F, F, T],
        token_logprobs=[math.log(0.5)] * 3,
        token_correct=[T, T, T],
    )
    scores = score_teacher_forced_turn(late, fps=2.0)
    assert scores["frame_diff"] == -3
    assert scores["time_diff"] == pytest.approx(1.5)
    assert scores["fluency"] == pytest.approx(3 / 7)
    assert scores["lm_ppl"] == pytest.approx(2.0)
    assert scores["lm_correctness"] == 1.0
    # A silent last turn is scored as on time, for TimeDiff and for Fluency.
    last = TeacherForcedTurn(
        decisions=[F, F, F], token_logprobs=[0.0, 0.0], token_correct=[T, T]
    )
    scores = score_teacher_forced_turn(last, fps=2.0)
    assert scores["frame_diff"] == 0 and scores["time_diff"] == 0.0
    assert scores["fluency"] == pytest.approx((3 + 2) / 5)


def test_score_video_averages_over_turns_where_defined():
    turns = [
        # frame_diff 2 -> 1 s at 2 fps; fluency 2/7; PPL 2; correctness 1/3.
        TeacherForcedTurn(
            decisions=[F, T, F, F],
            following_decisions=[F, F, F, T],
            token_logprobs=[math.log(0.5)] * 3,
            token_correct=[T, F, T],
        ),
        # On time; fluency (4 + 2) / 6; PPL 4; correctness 1.
        TeacherForcedTurn(
            decisions=[F, F, F, T],
            token_logprobs=[math.log(0.25)] * 2,
            token_correct=[T, T],
        ),
        # No frames (e.g. the first, unsupervised turn): language metrics only.
        TeacherForcedTurn(token_logprobs=[0.0], token_correct=[T]),
        # No reply tokens: timing only (last turn, silent -> 0).
        TeacherForcedTurn(decisions=[F, F, F]),
    ]
    scores = score_teacher_forced_video(turns, fps=2.0)
    assert scores["lm_ppl"] == pytest.approx((2 + 4 + 1) / 3)
    assert scores["lm_correctness"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert scores["time_diff"] == pytest.approx((1.0 + 0 + 0) / 3)
    assert scores["fluency"] == pytest.approx((2 / 7 + 1) / 2)
    assert (scores["num_turns"], scores["num_timed_turns"], scores["num_lm_turns"]) == (4, 3, 3)
    assert scores["defaulted"] == []


def test_video_without_scorable_turns_gets_reference_defaults():
    scores = score_teacher_forced_video([], fps=2.0)
    assert (scores["lm_ppl"], scores["time_diff"], scores["fluency"], scores["lm_correctness"]) == (
        1.0,
        0.0,
        1.0,
        1.0,
    )
    assert scores["defaulted"] == ["lm_ppl", "time_diff", "fluency", "lm_correctness"]
    frames_only = score_teacher_forced_video(
        [TeacherForcedTurn(decisions=[T, F], following_decisions=[F])], fps=2.0
    )
    assert frames_only["time_diff"] == pytest.approx(0.5)
    assert frames_only["lm_ppl"] == 1.0 and frames_only["fluency"] == 1.0
    assert frames_only["defaulted"] == ["lm_ppl", "fluency", "lm_correctness"]


def _record(turns: list[dict]) -> dict:
    """A saved teacher-forced prediction record with these turns (fps 2, threshold 0.5)."""
    defaults = {"decisions": [], "following_decisions": [], "token_logprobs": [], "token_correct": []}
    return {"fps": 2.0, "threshold": 0.5, "turns": [{**defaults, **turn} for turn in turns]}


def test_aggregate_teacher_forced_is_a_mean_over_videos():
    reference = StreamAnnotation(video="v.mp4", query="q", turns=[])
    first = score_teacher_forced_record(
        prediction=_record([{"decisions": [T, F], "token_logprobs": [math.log(0.5)], "token_correct": [F]}]), reference=reference)
    second = score_teacher_forced_record(prediction=_record([]), reference=reference)
    assert first["timing"] == {"early": 1, "on_time": 0, "late": 0} and first["frame_diffs"] == [1]
    result = aggregate_teacher_forced([first, second])
    assert result["protocol"] == "teacher_forced" and result["settings"] == {"fps": 2.0, "threshold": 0.5}
    assert result["extra"]["turns_early"] == 1 and result["extra"]["token_accuracy"] == 0.0
    aggregated = result["aggregate"]
    assert aggregated["num_videos"] == 2
    assert aggregated["lm_ppl"] == pytest.approx((2.0 + 1.0) / 2)
    assert aggregated["time_diff"] == pytest.approx((0.5 + 0.0) / 2)
    assert aggregated["fluency"] == pytest.approx((1 / 3 + 1.0) / 2)  # early: (2 - 1) / 3
    assert aggregated["lm_correctness"] == pytest.approx((0.0 + 1.0) / 2)
    assert aggregated["num_videos_defaulted"]["lm_ppl"] == 1
    assert aggregate_teacher_forced([])["aggregate"]["lm_ppl"] is None


def test_turn_rejects_mismatched_token_lists():
    with pytest.raises(ValueError):
        TeacherForcedTurn(token_logprobs=[0.0, 0.0], token_correct=[T])
    with pytest.raises(ValueError):
        score_teacher_forced_turn(TeacherForcedTurn(decisions=[T]), fps=0.0)


def _record_a() -> dict:
    """Six turns of every kind at 2 fps (frame diffs, early / on time / late by hand):
    no frames (language only), early by 1, on time, on time in one frame, late by 2 (found in
    the following frames), silent last turn (late although its frame diff is 0)."""
    return _record([
        {"token_logprobs": [0.0], "token_correct": [T]},  # not timed; PPL 1, accuracy 1
        {"decisions": [F, T, F], "token_logprobs": [math.log(0.5)] * 2, "token_correct": [T, F]},  # +1 early
        {"decisions": [F, F, T]},  # 0, on time
        {"decisions": [T]},  # 0, on time
        {"decisions": [F, F, F], "following_decisions": [F, T]},  # -2, late
        {"decisions": [F, F]},  # 0 but silent: late
    ])


def test_record_scores_by_value_with_every_timing_kind():
    """`score_teacher_forced_record` returns exactly these keys; `id` is the annotation's id (its
    video when it has none); a turn without frames is skipped (not the end of the scan); every
    timed turn adds one to its kind: early (diff > 0), on time (diff 0 with a respond decision),
    late (no respond decision in the turn, whatever its diff); the late diff reads the record's
    following decisions; token accuracy is the mean over turns with reply tokens."""
    reference = StreamAnnotation(video="a.mp4", query="q", turns=[], id="clip-7")
    scores = score_teacher_forced_record(prediction=_record_a(), reference=reference)
    assert list(scores) == [
        "id", "video", "fps", "threshold", "lm_ppl", "time_diff", "fluency", "lm_correctness",
        "num_turns", "num_timed_turns", "num_lm_turns", "defaulted", "token_accuracy", "frame_diffs", "timing",
    ]
    assert (scores["id"], scores["video"], scores["fps"], scores["threshold"]) == ("clip-7", "a.mp4", 2.0, 0.5)
    assert scores["frame_diffs"] == [1, 0, 0, -2, 0]
    assert scores["timing"] == {"early": 1, "on_time": 2, "late": 2}
    assert scores["token_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert scores["lm_ppl"] == pytest.approx((1.0 + 2.0) / 2)
    assert scores["time_diff"] == pytest.approx((0.5 + 0 + 0 + 1.0 + 0) / 5)  # |diff| / fps
    assert scores["fluency"] == pytest.approx((3 - 1) / (3 + 2))  # the only turn with frames and tokens
    assert scores["lm_correctness"] == pytest.approx((1.0 + 0.5) / 2)
    assert (scores["num_turns"], scores["num_timed_turns"], scores["num_lm_turns"], scores["defaulted"]) == (6, 5, 2, [])
    unnamed = StreamAnnotation(video="b.mp4", query="q", turns=[])
    assert score_teacher_forced_record(prediction=_record([]), reference=unnamed)["id"] == "b.mp4"


def test_aggregate_teacher_forced_extra_settings_and_per_video_by_value():
    """The dataset summary has exactly five keys; settings hold the one fps / threshold of every
    record or their sorted list when records differ (None without records); "extra" sums the
    timing counts over records and means the signed frame diffs over all timed turns and the
    token accuracy over records that have one (None when nothing defines them); "per_video"
    is the records, in order."""
    first = score_teacher_forced_record(prediction=_record_a(), reference=StreamAnnotation(video="a.mp4", query="q", turns=[]))
    second_record = {**_record([{"decisions": [F, T], "token_logprobs": [0.0], "token_correct": [F]}]), "fps": 1.0}
    second = score_teacher_forced_record(prediction=second_record, reference=StreamAnnotation(video="b.mp4", query="q", turns=[]))
    untimed = score_teacher_forced_record(prediction=_record([]), reference=StreamAnnotation(video="c.mp4", query="q", turns=[]))
    result = aggregate_teacher_forced([first, second, untimed])
    assert list(result) == ["protocol", "settings", "aggregate", "extra", "per_video"]
    assert result["settings"] == {"fps": [1.0, 2.0], "threshold": 0.5}
    extra = result["extra"]
    assert list(extra) == ["turns_early", "turns_on_time", "turns_late", "mean_signed_frame_diff", "token_accuracy"]
    assert (extra["turns_early"], extra["turns_on_time"], extra["turns_late"]) == (1, 3, 2)
    assert extra["mean_signed_frame_diff"] == pytest.approx((1 + 0 + 0 - 2 + 0 + 0) / 6)
    assert extra["token_accuracy"] == pytest.approx((0.75 + 0.0) / 2)  # the untimed record has none
    assert result["per_video"] == [first, second, untimed]
    assert aggregate_teacher_forced([first, first])["settings"] == {"fps": 2.0, "threshold": 0.5}
    assert aggregate_teacher_forced([untimed])["extra"] == {
        "turns_early": 0, "turns_on_time": 0, "turns_late": 0, "mean_signed_frame_diff": None, "token_accuracy": None,
    }
    empty = aggregate_teacher_forced([])
    assert empty["settings"] == {"fps": None, "threshold": None} and empty["per_video"] == []
    assert empty["extra"] == {"turns_early": 0, "turns_on_time": 0, "turns_late": 0, "mean_signed_frame_diff": None, "token_accuracy": None}


# ---------------------------------------------------------------------------------------
# Caption metrics
# ---------------------------------------------------------------------------------------


def test_tokenize_caption():
    tokens = tokenize_caption("You pick up the cup, then... C's hand!")
    assert tokens == "you pick up the cup then c's hand"


def test_caption_argument_order_is_prediction_then_references():
    short, long = "a man is running", "a man is running along the beach today"
    ours = caption_metrics(predictions={"x": short}, references={"x": [long]}, use_meteor=False)
    # 4 candidate words all in the reference, but the candidate is half as long:
    # precision 1, brevity penalty exp(1 - 8 / 4) = e^-1.
    assert ours["BLEU-1"] == pytest.approx(math.exp(-1), abs=1e-6)
    # ROUGE-L (beta 1.2): P = 1, R = 0.5 -> 2.44 * 0.5 / (0.5 + 1.44).
    assert ours["ROUGE-L"] == pytest.approx(1.22 / 1.94)
    swapped = caption_metrics(predictions={"x": long}, references={"x": [short]}, use_meteor=False)
    # The released code's order: precision 4/8 and no brevity penalty.
    assert swapped["BLEU-1"] == pytest.approx(0.5, abs=1e-6)
    assert swapped["ROUGE-L"] == pytest.approx(1.22 / 1.72)


def test_caption_identical_corpus_and_cider():
    captions = {"a": "a man is running fast", "b": "the dog sleeps on the sofa"}
    scores = caption_metrics(
        predictions=captions,
        references={key: [text] for key, text in captions.items()},
        use_meteor=False,
    )
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    # Identical captions: cosine 1 for every n-gram order, times CIDEr's factor 10.
    assert scores["CIDEr"] == pytest.approx(10.0)
    assert scores["skipped"] == {"METEOR": "disabled by the caller"} and scores["METEOR"] is None


def test_empty_predictions_are_scored_and_counted():
    scores = caption_metrics(
        predictions={"a": "", "b": "a man is running"},
        references={"a": ["the dog sleeps"], "b": ["a man is running"]},
        use_meteor=False,
    )
    assert scores["num_captions"] == 2 and scores["num_empty_predictions"] == 1
    # Pooled: 4 of 4 candidate words correct, candidate length 4 vs reference length 3 + 4.
    assert scores["BLEU-1"] == pytest.approx(math.exp(1 - 7 / 4), abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(0.5)
    assert scores["CIDEr"] == pytest.approx(5.0)


def test_caption_metrics_input_checks():
    with pytest.raises(ValueError):
        caption_metrics(predictions={"a": "x"}, references={"b": ["x"]})
    with pytest.raises(ValueError):
        caption_metrics(predictions={"a": "x"}, references={"a": []})
    empty = caption_metrics(predictions={}, references={})
    assert empty["num_captions"] == 0 and empty["BLEU-1"] is None and "CIDEr" in empty["skipped"]


def test_meteor_is_skipped_without_java(monkeypatch, caplog):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="eval.metrics"):
        scores = caption_metrics(predictions={"a": "a man runs"}, references={"a": ["a man runs"]})
    assert scores["METEOR"] is None
    assert "java" in scores["skipped"]["METEOR"]
    assert any("METEOR skipped" in record.getMessage() for record in caplog.records)
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java on PATH")
def test_meteor_with_java():
    # One call (each starts a JVM, several seconds). METEOR pools its statistics over the
    # corpus: two perfect candidates and one empty one land strictly between 0.5 and 1.
    scores = caption_metrics(
        predictions={"a": "a man is running on the beach", "b": "the dog sleeps", "c": ""},
        references={
            "a": ["a man is running on the beach"], "b": ["the dog sleeps"], "c": ["you sit"]
        },
    )
    assert scores["skipped"] == {}
    assert scores["num_empty_predictions"] == 1
    assert 0.5 < scores["METEOR"] < 1.0


# ---------------------------------------------------------------------------------------
# Boundaries and exact outputs
# ---------------------------------------------------------------------------------------


def test_zero_tolerance_matches_equal_times_only():
    assert match_events(prediction=[1.0, 2.0], reference=[2.0, 3.0], tolerance=0.0) == [(1, 0)]


def test_equal_times_tie_to_the_earliest_item_in_an_unsorted_list():
    # Twenty times drawn from {0, 1, 2} in no order: the 1.0 kept is the first one given (index 1),
    # which needs a stable sort (numpy's default sort leaves index 2 first here).
    times = [2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0]
    assert match_events(prediction=times, reference=[1.0], tolerance=0.0) == [(1, 0)]
    assert match_events(prediction=[1.0], reference=times, tolerance=0.0) == [(0, 1)]


def test_non_finite_times_are_named():
    for call, name in (
        (lambda: match_events(prediction=[math.nan], reference=[1.0], tolerance=1.0), "prediction"),
        (lambda: match_events(prediction=[1.0], reference=[math.inf], tolerance=1.0), "reference"),
        (lambda: score_stream_video(prediction=[TimedText(math.nan)], reference=[], tolerances=()), "prediction"),
        (lambda: score_stream_video(prediction=[], reference=[TimedText(math.inf)], tolerances=()), "reference"),
    ):
        with pytest.raises(ValueError, match=f"^{name} contains non-finite times"):
            call()


def test_trigger_window_is_inclusive_and_counts_single_items():
    """One reply exactly 1 s after one event: triggered and valid at trigger tolerance 1 s."""
    one = score_stream_video(prediction=[TimedText(3.0)], reference=[TimedText(2.0)], tolerances=(), trigger_tolerance=1.0)
    assert (one["triggered_events"], one["valid_replies"], one["trigger_acc"], one["timval"]) == (1, 1, 1.0, 1.0)
    off = score_stream_video(prediction=[TimedText(3.0)], reference=[TimedText(1.999)], tolerances=(), trigger_tolerance=1.0)
    assert (off["triggered_events"], off["valid_replies"]) == (0, 0)
    assert isinstance(one["triggered_events"], int) and isinstance(one["valid_replies"], int)


def test_aggregate_output_keys_by_value():
    assert aggregate_stream_scores([]) == {
        "num_videos": 0, "tolerances": [], "trigger_tolerance": None, "micro": {}, "per_video_mean": {}, "per_video_mean_num_videos": {},
    }
    video = score_stream_video(prediction=[TimedText(1.0, "a")], reference=[TimedText(1.5, "a")], tolerances=(1.0, 2.0), trigger_tolerance=0.5)
    assert video["tolerances"] == [1.0, 2.0] and video["trigger_tolerance"] == 0.5
    aggregated = aggregate_stream_scores([video, video])
    assert aggregated["tolerances"] == [1.0, 2.0] and aggregated["trigger_tolerance"] == 0.5 and aggregated["num_videos"] == 2
    assert aggregated["micro"]["reply_exact_match"] == 1.0


def test_fluency_boundaries():
    with pytest.raises(ValueError, match="at least one frame and one reply token"):
        fluency(frame_diff=0, num_frames=0, num_tokens=3, num_correct_prefix=0)
    with pytest.raises(ValueError, match="at least one frame and one reply token"):
        fluency(frame_diff=0, num_frames=3, num_tokens=0, num_correct_prefix=0)
    assert fluency(frame_diff=0, num_frames=1, num_tokens=1, num_correct_prefix=1) == 1.0
    assert fluency(frame_diff=1, num_frames=3, num_tokens=2, num_correct_prefix=2) == pytest.approx(2 / 5)  # early by one
    assert fluency(frame_diff=-1, num_frames=3, num_tokens=2, num_correct_prefix=2) == pytest.approx(2 / 5)  # late


def test_one_frame_turns_are_timed_and_fps_must_be_positive():
    turn = TeacherForcedTurn(decisions=[T], token_logprobs=[0.0], token_correct=[T])
    assert score_teacher_forced_turn(turn, fps=0.5)["time_diff"] == 0.0  # fps below 1 is fine
    assert score_teacher_forced_turn(turn, fps=2.0)["fluency"] == 1.0
    with pytest.raises(ValueError, match="fps must be > 0"):
        score_teacher_forced_turn(turn, fps=0.0)


def test_aggregate_teacher_forced_counts_defaulted_videos():
    timed = score_teacher_forced_video([TeacherForcedTurn(decisions=[F, T])], fps=2.0)
    assert timed["defaulted"] == ["lm_ppl", "fluency", "lm_correctness"]  # no reply tokens
    aggregated = metrics._mean_over_videos([timed, timed])
    assert aggregated["num_videos_defaulted"] == {"lm_ppl": 2, "time_diff": 0, "fluency": 2, "lm_correctness": 2}


def test_caption_id_mismatch_either_way_raises_and_reasons_are_exact(monkeypatch):
    with pytest.raises(ValueError, match=r"missing predictions \['b'\], predictions without references \[\]"):
        caption_metrics(predictions={"a": "x"}, references={"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match=r"missing predictions \[\], predictions without references \['b'\]"):
        caption_metrics(predictions={"a": "x", "b": "y"}, references={"a": ["x"]})
    assert caption_metrics(predictions={}, references={})["skipped"] == dict.fromkeys(metrics.CAPTION_METRIC_NAMES, "no captions to score")
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    scores = caption_metrics(predictions={"a": "a man runs"}, references={"a": ["a man runs"]})
    assert scores["skipped"] == {"METEOR": "java not found on PATH (METEOR runs a Java program)"}
    assert caption_metrics(predictions={"a": "x"}, references={"a": ["x"]}, use_meteor=False)["skipped"] == {"METEOR": "disabled by the caller"}
