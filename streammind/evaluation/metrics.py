"""Pure, model-free scoring for the streaming benchmarks (docs/design.md §6).

Three families of metrics, each a set of pure functions with keyword-only arguments so
that a prediction can never be passed where a reference is expected:

1. Free-running protocol (the real streaming runtime replies at times it chooses).
   Times are seconds on the clock of the annotation (seconds from the video start), the
   same for predictions and references.

   - One-to-one matching (`match_events`): an optimal assignment between reply times and
     ground-truth event times. A pair may match when |Δt| <= tolerance (inclusive; times
     are compared at microsecond resolution so that float noise such as 1.1 - 0.1 does not
     decide a match). Among all valid matchings we take one with the largest number of
     pairs and, among those, the smallest total |Δt|; remaining ties go to the earlier
     reply, then to the earlier event. Greedy nearest-first matching is not used because it
     can lose pairs (events 0 and 1.5 s, replies 0.8 and 2.4 s, tolerance 1 s: greedy pairs
     0.8 with 1.5 and matches once; the optimum matches twice).
   - Precision / recall / F1 at each tolerance (1, 2, 5 s by default) from that matching:
     TP = matched pairs, FP = unmatched replies, FN = unmatched events,
     F1 = 2·TP / (2·TP + FP + FN).
   - TriggerAcc and TimVal. The StreamMind paper reports these names without defining
     them; the definitions here are ours:
       TriggerAcc = share of ground-truth events with at least one reply within ±1 s;
       TimVal     = share of replies within ±1 s of at least one ground-truth event.
     Neither is one-to-one: one reply between two close events triggers both, so
     TriggerAcc >= recall@1s and TimVal >= precision@1s, with equality when no reply or
     event is shared.
   - reply_exact_match = share of ground-truth events whose one-to-one matched reply
     (matching at ±1 s) has exactly the ground-truth text after whitespace normalisation
     (strip, collapse runs of whitespace; case and punctuation matter). Unmatched events
     count as wrong.
   - Edge cases, per video: a rate whose denominator is zero is undefined (None):
     precision and TimVal with no replies, recall, TriggerAcc and reply_exact_match with no
     events, F1 with neither. Nothing divides by zero.
   - Aggregation over videos (`aggregate_stream_scores`): "micro" pools the counts of all
     videos before dividing; "per_video_mean" averages each per-video rate over the videos
     where it is defined, and reports how many videos that was.

2. Teacher-forced protocol (VideoLLM-online's `stream_evaluate`, adapted for a gate as in
   docs/design.md §6). For each turn the caller supplies:
     V: the gate's respond/silent decision at each frame of the turn (True = respond);
        the last frame of V is the ground-truth respond frame;
     the decisions on the frames that follow the turn, computed without the ground-truth
        reply in context (for a gate that never sees replies these are simply the next
        turn's decisions); empty for the last turn;
     L: per reply token, log p(target) and whether the argmax equals the target, under
        teacher forcing with ground-truth timing. Which tokens form L is the caller's
        choice; VideoLLM-online includes the "Assistant:" header tokens.
   Per turn:
     frame_diff: if some frame of V responds, the first one at index p gives
        |V| - 1 - p (> 0 early, 0 on time). Otherwise the reply is late: the window is
        m = min(len(following decisions), |V| - 1) frames; the first respond at index j of
        the window gives -(j + 1), none gives -m. m = 0 (which includes the last turn)
        gives 0, assuming an external end-of-stream signal, as the reference does (such a
        turn then also counts as on time for Fluency).
     TimeDiff = |frame_diff| / fps seconds.
     Fluency (share of the turn's |V| + |L| decisions right before the first error):
        on time (|V| + correct prefix of L) / (|V| + |L|); early (|V| - frame_diff) /
        (|V| + |L|); late (|V| - 1) / (|V| + |L|). Defined when V and L are non-empty.
     LM-PPL = exp(mean cross-entropy over L) (not exp of pooled cross-entropy).
     LM-Correctness = length of the correct prefix of L / |L| (not token accuracy).
   Per video each metric is the mean over the turns where it is defined; a video with no
   such turn gets the reference's defaults (PPL 1, TimeDiff 0, Fluency 1, Correctness 1),
   which biases averages slightly but keeps the numbers comparable with VideoLLM-online.
   The dataset value is the mean over videos. All of the protocol's scoring is here, one
   function per level: `score_teacher_forced_turn` (a turn), `score_teacher_forced_video` (a
   video's turns), `score_teacher_forced_record` (a saved prediction record of
   `teacher_forced.teacher_forced_record`: the video's scores plus the early / on time / late
   counts and the released code's token accuracy), `aggregate_teacher_forced` (the dataset).

3. Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap with the
   prediction as the candidate and the references as references (the released StreamMind
   code swapped the two, which changes every one of these scores). Captions are
   lower-cased and split into words and punctuation in Python, and punctuation tokens are
   dropped; this approximates the COCO PTB tokenisation without its Java tokenizer, and is
   applied identically to both sides. METEOR runs a Java program: without `java` on PATH
   it is skipped, logged, and reported as None with a note under "skipped". Scores are on
   a 0-1 scale (papers usually print them ×100). CIDEr's IDF weights come from the scored
   references, so it is a corpus statistic (a single caption always scores 0).

References: docs/design.md §6; VideoLLM-online's `models/modeling_live.py` (`stream_evaluate`,
github.com/showlab/videollm-online); pycocoevalcap.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCES = (1.0, 2.0, 5.0)
TRIGGER_TOLERANCE = 1.0
CAPTION_METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

_MICROSECONDS_PER_SECOND = 1_000_000
# Added to infeasible pairs in the matching table; far below any reachable score but
# still safe from int64 overflow when added to one.
_INFEASIBLE = -(2**62)


# ---------------------------------------------------------------------------------------
# Free-running protocol
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimedText:
    """A reply or a ground-truth event: seconds from the video start and its text."""

    time: float
    text: str = ""


def _to_microseconds(times: Sequence[float], name: str) -> np.ndarray:
    """Times in seconds -> int64 microseconds; raises on non-finite values."""
    array = np.asarray(times, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite times: {list(times)}")
    return np.round(array * _MICROSECONDS_PER_SECOND).astype(np.int64)


def tolerance_key(tolerance: float) -> str:
    """The label used in result keys for a tolerance, e.g. 1.0 -> '1s', 0.5 -> '0.5s'."""
    return f"{tolerance:g}s"


def match_events(
    *, prediction: Sequence[float], reference: Sequence[float], tolerance: float
) -> list[tuple[int, int]]:
    """One-to-one matching of reply times to ground-truth event times.

    Rule (see the module docstring): maximum number of pairs with |Δt| <= tolerance, then
    minimum total |Δt|, then ties towards the earlier reply and the earlier event.

    Optimal matchings of points on a line can be taken non-crossing (swapping two crossed
    pairs keeps both within tolerance and does not increase the total |Δt|), so a
    longest-common-subsequence style table over the two sorted sequences finds one.
    Scores are integers (count · BIG - total µs) so the comparison is exact.

    Args:
        prediction: n reply times in seconds, any order.
        reference: m ground-truth event times in seconds, any order.
        tolerance: maximum |Δt| in seconds for a pair (inclusive), >= 0.

    Returns:
        (prediction index, reference index) pairs into the inputs as given, sorted by
        reference index. Memory is O(n · m).
    """
    if not tolerance >= 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    pred_us = _to_microseconds(prediction, "prediction")
    ref_us = _to_microseconds(reference, "reference")
    if pred_us.size == 0 or ref_us.size == 0:
        return []
    tol_us = int(round(tolerance * _MICROSECONDS_PER_SECOND))

    pred_order = np.argsort(pred_us, kind="stable")
    ref_order = np.argsort(ref_us, kind="stable")
    cost = np.abs(pred_us[pred_order][:, None] - ref_us[ref_order][None, :])  # [n, m] µs
    feasible = cost <= tol_us
    if not feasible.any():
        return []
    n, m = cost.shape
    # One more pair must outweigh any difference in total |Δt| (at most min(n, m) · tol).
    pair_value = min(n, m) * tol_us + 1
    gain = np.where(feasible, pair_value - cost, _INFEASIBLE)  # [n, m]

    # table[i, j]: best score using the first i sorted replies and the first j events.
    table = np.zeros((n + 1, m + 1), dtype=np.int64)
    for i in range(1, n + 1):
        best_without_skipping_event = np.maximum(table[i - 1, 1:], table[i - 1, :-1] + gain[i - 1])
        table[i, 1:] = np.maximum.accumulate(best_without_skipping_event)

    # Walk back from the end, dropping later items first so that ties keep earlier ones.
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        if table[i, j] == table[i - 1, j]:
            i -= 1
        elif table[i, j] == table[i, j - 1]:
            j -= 1
        else:
            pairs.append((int(pred_order[i - 1]), int(ref_order[j - 1])))
            i -= 1
            j -= 1
    return sorted(pairs, key=lambda pair: pair[1])


def _any_within(times: np.ndarray, others: np.ndarray, tol_us: int) -> np.ndarray:
    """For each time, whether some time in `others` lies within ±tol_us (not one-to-one)."""
    if times.size == 0 or others.size == 0:
        return np.zeros(times.shape, dtype=bool)
    return (np.abs(times[:, None] - others[None, :]) <= tol_us).any(axis=1)


def _ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None when the denominator is zero."""
    return numerator / denominator if denominator > 0 else None


def normalize_whitespace(text: str) -> str:
    """Strip and collapse runs of whitespace to one space (used by reply_exact_match)."""
    return " ".join(text.split())


def score_stream_video(
    *,
    prediction: Sequence[TimedText],
    reference: Sequence[TimedText],
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    trigger_tolerance: float = TRIGGER_TOLERANCE,
) -> dict:
    """Free-running metrics for one video.

    Args:
        prediction: the model's replies (time in seconds, text).
        reference: the ground-truth events (time in seconds, text).
        tolerances: seconds for one-to-one precision / recall / F1.
        trigger_tolerance: the ±window in seconds of TriggerAcc, TimVal and
            reply_exact_match (1 s by default).

    Returns:
        A flat dict of counts and rates (None where undefined, see the module docstring):
        num_predictions, num_references, tolerances, trigger_tolerance; for each tolerance
        t (key suffix "@1s", "@2s", ...): tp, fp, fn, precision, recall, f1;
        triggered_events, trigger_acc; valid_replies, timval; exact_matches,
        reply_exact_match.
    """
    pred_times = [event.time for event in prediction]
    ref_times = [event.time for event in reference]
    counts = {"num_predictions": len(pred_times), "num_references": len(ref_times)}
    for tolerance in tolerances:
        key = tolerance_key(tolerance)
        tp = len(match_events(prediction=pred_times, reference=ref_times, tolerance=tolerance))
        counts[f"tp@{key}"] = tp
        counts[f"fp@{key}"] = len(pred_times) - tp
        counts[f"fn@{key}"] = len(ref_times) - tp

    tol_us = int(round(trigger_tolerance * _MICROSECONDS_PER_SECOND))
    pred_us = _to_microseconds(pred_times, "prediction")
    ref_us = _to_microseconds(ref_times, "reference")
    counts["triggered_events"] = int(_any_within(ref_us, pred_us, tol_us).sum())
    counts["valid_replies"] = int(_any_within(pred_us, ref_us, tol_us).sum())

    pairs = match_events(prediction=pred_times, reference=ref_times, tolerance=trigger_tolerance)
    counts["exact_matches"] = sum(
        normalize_whitespace(prediction[p].text) == normalize_whitespace(reference[r].text)
        for p, r in pairs
    )
    return {
        "tolerances": [float(t) for t in tolerances],
        "trigger_tolerance": float(trigger_tolerance),
        **counts,
        **_pooled_rates(counts, tolerances),
    }


def _pooled_rates(totals: Mapping[str, int], tolerances: Sequence[float]) -> dict:
    """Every rate of `score_stream_video`, computed from (pooled) counts."""
    rates = {}
    for tolerance in tolerances:
        key = tolerance_key(tolerance)
        tp, fp, fn = totals[f"tp@{key}"], totals[f"fp@{key}"], totals[f"fn@{key}"]
        rates[f"precision@{key}"] = _ratio(tp, totals["num_predictions"])
        rates[f"recall@{key}"] = _ratio(tp, totals["num_references"])
        rates[f"f1@{key}"] = _ratio(2 * tp, 2 * tp + fp + fn)
    rates["trigger_acc"] = _ratio(totals["triggered_events"], totals["num_references"])
    rates["timval"] = _ratio(totals["valid_replies"], totals["num_predictions"])
    rates["reply_exact_match"] = _ratio(totals["exact_matches"], totals["num_references"])
    return rates


def aggregate_stream_scores(per_video: Sequence[Mapping]) -> dict:
    """Aggregate `score_stream_video` outputs over videos.

    Args:
        per_video: one dict per video from `score_stream_video`, all with the same
            tolerances and trigger_tolerance.

    Returns:
        {"num_videos", "tolerances", "trigger_tolerance",
         "micro": {rate: pooled value or None},
         "per_video_mean": {rate: mean over videos where defined, or None},
         "per_video_mean_num_videos": {rate: number of videos in that mean}}.
        Micro rates divide pooled counts (F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN)).
    """
    if not per_video:
        return {
            "num_videos": 0,
            "tolerances": [],
            "trigger_tolerance": None,
            "micro": {},
            "per_video_mean": {},
            "per_video_mean_num_videos": {},
        }
    tolerances = per_video[0]["tolerances"]
    trigger_tolerance = per_video[0]["trigger_tolerance"]
    for scores in per_video:
        if scores["tolerances"] != tolerances or scores["trigger_tolerance"] != trigger_tolerance:
            raise ValueError(
                "all videos must be scored with the same tolerances: "
                f"{tolerances}/{trigger_tolerance} vs "
                f"{scores['tolerances']}/{scores['trigger_tolerance']}"
            )

    count_keys = [
        "num_predictions", "num_references", "triggered_events", "valid_replies", "exact_matches"
    ]
    for tolerance in tolerances:
        count_keys += [f"{name}@{tolerance_key(tolerance)}" for name in ("tp", "fp", "fn")]
    totals = {key: sum(int(scores[key]) for scores in per_video) for key in count_keys}
    micro = _pooled_rates(totals, tolerances)
    mean, mean_counts = {}, {}
    for rate in micro:
        defined = [scores[rate] for scores in per_video if scores[rate] is not None]
        mean[rate] = float(np.mean(defined)) if defined else None
        mean_counts[rate] = len(defined)
    return {
        "num_videos": len(per_video),
        "tolerances": list(tolerances),
        "trigger_tolerance": trigger_tolerance,
        "micro": micro,
        "per_video_mean": mean,
        "per_video_mean_num_videos": mean_counts,
    }


# ---------------------------------------------------------------------------------------
# Teacher-forced protocol
# ---------------------------------------------------------------------------------------

TEACHER_FORCED_METRICS = ("lm_ppl", "time_diff", "fluency", "lm_correctness")
# Values the reference reports for a video with no turn defining a metric.
_TEACHER_FORCED_DEFAULTS = {"lm_ppl": 1.0, "time_diff": 0.0, "fluency": 1.0, "lm_correctness": 1.0}


@dataclass(frozen=True)
class TeacherForcedTurn:
    """What the teacher-forced protocol needs from one turn (see the module docstring).

    decisions: gate decision per frame of V (True = respond); the last is the ground-truth
        respond frame. Empty when the turn has no supervised frames.
    following_decisions: gate decisions on the frames after the turn, without the
        ground-truth reply in context; empty for the last turn. Only the first
        min(len, |V| - 1) are used.
    token_logprobs: log p(target token) for each reply token of L (natural log).
    token_correct: whether argmax equals the target for each token of L.
    """

    decisions: Sequence[bool] = ()
    following_decisions: Sequence[bool] = ()
    token_logprobs: Sequence[float] = ()
    token_correct: Sequence[bool] = ()

    def __post_init__(self):
        if len(self.token_logprobs) != len(self.token_correct):
            raise ValueError(
                f"token_logprobs has {len(self.token_logprobs)} entries but token_correct "
                f"has {len(self.token_correct)}; both describe the same reply tokens L"
            )


def frame_diff(*, decisions: Sequence[bool], following_decisions: Sequence[bool]) -> int:
    """Signed frame offset of the first respond decision: > 0 early, 0 on time, < 0 late.

    Args:
        decisions: respond decisions over the turn's frames V (non-empty); the last frame
            is the ground-truth respond frame.
        following_decisions: respond decisions on the frames after the turn (may be empty).
    """
    if len(decisions) == 0:
        raise ValueError("frame_diff needs at least one frame decision in the turn")
    num_frames = len(decisions)
    for index, respond in enumerate(decisions):
        if respond:
            return num_frames - 1 - index
    # Late: look ahead symmetrically, at most |V| - 1 frames (and no further than given).
    window = min(len(following_decisions), num_frames - 1)
    for index in range(window):
        if following_decisions[index]:
            return -(index + 1)
    return -window


def correct_prefix_length(token_correct: Sequence[bool]) -> int:
    """Number of leading tokens predicted correctly before the first wrong one."""
    length = 0
    for correct in token_correct:
        if not correct:
            break
        length += 1
    return length


def lm_correctness(token_correct: Sequence[bool]) -> float:
    """Correct-prefix ratio over the reply tokens L (not token accuracy)."""
    if len(token_correct) == 0:
        raise ValueError("lm_correctness needs at least one reply token")
    return correct_prefix_length(token_correct) / len(token_correct)


def lm_perplexity(token_logprobs: Sequence[float]) -> float:
    """exp(mean cross-entropy) over the reply tokens L, given log p(target) per token."""
    if len(token_logprobs) == 0:
        raise ValueError("lm_perplexity needs at least one reply token")
    return math.exp(-math.fsum(token_logprobs) / len(token_logprobs))


def fluency(*, frame_diff: int, num_frames: int, num_tokens: int, num_correct_prefix: int) -> float:
    """Share of a turn's |V| + |L| decisions that are right before the first error.

    The early case counts |V| - frame_diff positions, i.e. p + 1 for a first respond at
    frame p; that includes the wrong respond frame itself. Kept as the reference defines
    it so the numbers stay comparable.
    """
    if num_frames <= 0 or num_tokens <= 0:
        raise ValueError("fluency needs at least one frame and one reply token")
    denominator = num_frames + num_tokens
    if frame_diff == 0:
        return (num_frames + num_correct_prefix) / denominator
    if frame_diff > 0:
        return (num_frames - frame_diff) / denominator
    return (num_frames - 1) / denominator


def score_teacher_forced_turn(turn: TeacherForcedTurn, *, fps: float) -> dict:
    """Per-turn teacher-forced metrics; a metric the turn cannot define is None.

    Returns:
        {"frame_diff": int | None, "time_diff": seconds | None, "fluency", "lm_ppl",
         "lm_correctness"}.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    scores = dict.fromkeys(("frame_diff", "time_diff", "fluency", "lm_ppl", "lm_correctness"))
    has_frames, has_tokens = len(turn.decisions) > 0, len(turn.token_logprobs) > 0
    if has_tokens:
        scores["lm_ppl"] = lm_perplexity(turn.token_logprobs)
        scores["lm_correctness"] = lm_correctness(turn.token_correct)
    if has_frames:
        diff = frame_diff(decisions=turn.decisions, following_decisions=turn.following_decisions)
        scores["frame_diff"] = diff
        scores["time_diff"] = abs(diff) / fps
        if has_tokens:
            scores["fluency"] = fluency(
                frame_diff=diff,
                num_frames=len(turn.decisions),
                num_tokens=len(turn.token_logprobs),
                num_correct_prefix=correct_prefix_length(turn.token_correct),
            )
    return scores


def score_teacher_forced_video(turns: Sequence[TeacherForcedTurn], *, fps: float) -> dict:
    """Per-video teacher-forced metrics: the mean over turns of each per-turn metric.

    A metric no turn defines takes the reference's default (PPL 1, TimeDiff 0, Fluency 1,
    Correctness 1).

    Returns:
        {"lm_ppl", "time_diff" (seconds), "fluency", "lm_correctness", "num_turns",
         "num_timed_turns" (turns with frames), "num_lm_turns" (turns with reply tokens),
         "defaulted": names of metrics that took the default}.
    """
    per_turn = [score_teacher_forced_turn(turn, fps=fps) for turn in turns]
    scores: dict = {}
    defaulted = []
    for name in TEACHER_FORCED_METRICS:
        values = [turn[name] for turn in per_turn if turn[name] is not None]
        if values:
            scores[name] = float(np.mean(values))
        else:
            scores[name] = _TEACHER_FORCED_DEFAULTS[name]
            defaulted.append(name)
    scores["num_turns"] = len(per_turn)
    scores["num_timed_turns"] = sum(turn["frame_diff"] is not None for turn in per_turn)
    scores["num_lm_turns"] = sum(turn["lm_ppl"] is not None for turn in per_turn)
    scores["defaulted"] = defaulted
    return scores


def _mean_over_videos(per_video: Sequence[Mapping]) -> dict:
    """VideoLLM-online's four metrics of a dataset: the mean over videos of each per-video value.

    Returns:
        {"lm_ppl", "time_diff", "fluency", "lm_correctness", "num_videos",
         "num_videos_defaulted": {metric: videos that contributed the default}}; the
        metrics are None when there is no video.
    """
    aggregated: dict = {}
    for name in TEACHER_FORCED_METRICS:
        values = [video[name] for video in per_video]
        aggregated[name] = float(np.mean(values)) if values else None
    aggregated["num_videos"] = len(per_video)
    aggregated["num_videos_defaulted"] = {
        name: sum(name in video["defaulted"] for video in per_video)
        for name in TEACHER_FORCED_METRICS
    }
    return aggregated


def turns_of(prediction: Mapping) -> list[TeacherForcedTurn]:
    """The `TeacherForcedTurn`s of one prediction record (a `teacher_forced.teacher_forced_record` output)."""
    return [
        TeacherForcedTurn(
            decisions=turn["decisions"],
            following_decisions=turn["following_decisions"],
            token_logprobs=turn["token_logprobs"],
            token_correct=turn["token_correct"],
        )
        for turn in prediction["turns"]
    ]


def score_teacher_forced_record(*, prediction: Mapping, reference: Any) -> dict:
    """Teacher-forced scores of one record: a prediction (a `teacher_forced.teacher_forced_record`
    output) against its `StreamAnnotation` (for the id and video).

    Returns:
        {"id", "video", "fps", "threshold", VideoLLM-online's "lm_ppl", "time_diff",
         "fluency", "lm_correctness" (and the counts of `score_teacher_forced_video`),
         "token_accuracy", "frame_diffs" (per timed turn), "timing" (early / on_time /
         late turn counts; late = no respond decision within the turn)}.
    """
    fps = prediction["fps"]
    turns = turns_of(prediction)
    frame_diffs, timing = [], {"early": 0, "on_time": 0, "late": 0}
    for turn in turns:
        diff = score_teacher_forced_turn(turn, fps=fps)["frame_diff"]
        if diff is None:
            continue
        frame_diffs.append(diff)
        timing["late" if not any(turn.decisions) else "early" if diff > 0 else "on_time"] += 1
    accuracies = [float(np.mean(turn.token_correct)) for turn in turns if len(turn.token_correct)]
    return {
        "id": reference.id or reference.video,
        "video": reference.video,
        "fps": fps,
        "threshold": prediction["threshold"],
        **score_teacher_forced_video(turns, fps=fps),
        "token_accuracy": float(np.mean(accuracies)) if accuracies else None,
        "frame_diffs": frame_diffs,
        "timing": timing,
    }


def aggregate_teacher_forced(per_video: Sequence[dict]) -> dict:
    """Dataset metrics from the scores of the records that ran (failures are not scored).

    Returns:
        {"protocol", "settings": {"fps", "threshold"}, "aggregate" (VideoLLM-online's four
         metrics, mean over records), "extra" (StreamMind-specific numbers), "per_video"}.
    """
    signed = [diff for video in per_video for diff in video["frame_diffs"]]
    accuracies = [video["token_accuracy"] for video in per_video if video["token_accuracy"] is not None]
    return {
        "protocol": "teacher_forced",
        "settings": {
            "fps": _single({video["fps"] for video in per_video}),
            "threshold": _single({video["threshold"] for video in per_video}),
        },
        "aggregate": _mean_over_videos(per_video),
        "extra": {
            **{f"turns_{name}": sum(video["timing"][name] for video in per_video) for name in ("early", "on_time", "late")},
            "mean_signed_frame_diff": float(np.mean(signed)) if signed else None,
            "token_accuracy": float(np.mean(accuracies)) if accuracies else None,
        },
        "per_video": list(per_video),
    }


def _single(values: set):
    """The one value used by every record, a sorted list when they differ, None if none."""
    if not values:
        return None
    return next(iter(values)) if len(values) == 1 else sorted(values)


# ---------------------------------------------------------------------------------------
# Caption metrics
# ---------------------------------------------------------------------------------------

# Words (keeping inner apostrophes) or single punctuation characters.
_TOKEN_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize_caption(text: str) -> str:
    """Lower-case, split into words and punctuation, drop punctuation; space-joined."""
    tokens = _TOKEN_PATTERN.findall(text.lower())
    return " ".join(token for token in tokens if re.search(r"\w", token))


def caption_metrics(
    *,
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    use_meteor: bool = True,
) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of predicted captions against references.

    The prediction is scored as the candidate and the references as references. Empty
    predictions are scored as empty strings (they score 0) and counted.

    Args:
        predictions: caption id -> predicted caption.
        references: caption id -> one or more reference captions. Must have exactly the
            ids of `predictions`.
        use_meteor: False skips METEOR (it starts a Java process), noted under "skipped".

    Returns:
        {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr" (floats in
         [0, 1] except CIDEr, or None), "num_captions", "num_empty_predictions",
         "skipped": {metric: reason}}. With no captions every metric is None.
    """
    missing = sorted(set(references) - set(predictions), key=str)
    extra = sorted(set(predictions) - set(references), key=str)
    if missing or extra:
        raise ValueError(
            f"predictions and references must share ids; missing predictions {missing[:10]}, "
            f"predictions without references {extra[:10]}"
        )
    for key, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings")

    results: dict = dict.fromkeys(CAPTION_METRIC_NAMES)
    results["num_captions"] = len(predictions)
    results["num_empty_predictions"] = sum(not text.strip() for text in predictions.values())
    results["skipped"] = {}
    if not predictions:
        results["skipped"] = {name: "no captions to score" for name in CAPTION_METRIC_NAMES}
        return results

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    # pycocoevalcap's naming: gts = references, res = candidates (one per id).
    ids = list(predictions)
    res = {key: [tokenize_caption(predictions[key])] for key in ids}
    gts = {key: [tokenize_caption(ref) for ref in references[key]] for key in ids}

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        results[f"BLEU-{n}"] = float(value)
    rouge, _ = Rouge().compute_score(gts, res)
    results["ROUGE-L"] = float(rouge)
    cider, _ = Cider().compute_score(gts, res)
    results["CIDEr"] = float(cider)

    if not use_meteor:
        results["skipped"]["METEOR"] = "disabled by the caller"
    elif shutil.which("java") is None:
        reason = "java not found on PATH (METEOR runs a Java program)"
        logger.warning("METEOR skipped and reported as null: %s", reason)
        results["skipped"]["METEOR"] = reason
    else:
        results["METEOR"] = _meteor(gts, res)
    return results


def _meteor(gts: dict, res: dict) -> float:
    """METEOR through pycocoevalcap's Java wrapper; the Java process is closed afterwards."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    except ValueError as error:
        raise RuntimeError(
            "METEOR's Java process returned no score; check `java -version`"
        ) from error
    finally:
        del scorer
    return float(score)
