"""The Video-ChatGPT generative benchmark (Maaz et al., ACL 2024): five 0-5 scores from an LLM judge.

    export STREAMMIND_JUDGE_BASE_URL=https://api.openai.com/v1   # any OpenAI-compatible server
    export STREAMMIND_JUDGE_MODEL=gpt-4o-mini
    export OPENAI_API_KEY=...                                     # optional for local servers
    streammind eval videochatgpt --model runs/stage1 --data-root data/videochatgpt_gen --out runs/eval/vcgpt
    streammind eval videochatgpt --data-root data/videochatgpt_gen --out runs/eval/vcgpt_rescored \\
        --predictions runs/eval/vcgpt/predictions.jsonl --judgements runs/eval/vcgpt/judgements.jsonl

Data layout under --data-root (not shipped; the files as Video-ChatGPT publishes them for its
quantitative evaluation, gathered in one folder, `videochatgpt_gen` in StreamMind's release):

    Test_Videos/<video_name>.mp4   (or .mkv .avi .mov ...; "v_<video_name>" is tried too;
                                    --video-dir overrides)
    Test_Human_Annotated_Captions/ the human descriptions the questions were written from; not
                                    read (the judge compares with each question's answer)
    generic_qa.json                [{"video_name": "v_...", "Q": "question", "A": "answer"}]
    temporal_qa.json               [{"video_name": ..., "Q": ..., "A": ...}]
    consistency_qa.json            [{"video_name": ..., "Q1": "question", "Q2": "the same question
                                    asked differently", "A": "the answer to both"}]

Examples: one per record, with ids "generic/<video_name>", "temporal/<video_name>" and
"consistency/<video_name>" (a repeated one gets "#1", "#2", ...); --parts picks the files.

Answering: `streammind.evaluation.answering.answer` (32 uniform frames, greedy, up to 1024 new tokens, as for the
open-ended QA benchmarks). Both questions of a consistency record are answered from the same
frames, each in its own one-turn conversation.

Judging: one request per question and score, through the OpenAI-compatible client of
`eval.qa_open` (environment variables STREAMMIND_JUDGE_BASE_URL, STREAMMIND_JUDGE_MODEL,
OPENAI_API_KEY; temperature 0; retries with backoff; requests overlap with answering in a pool
of --judge-workers threads). The five scores, each an integer from 0 (worst) to 5 (best):

- correctness of information (generic questions): does the predicted answer state the facts
  of the correct answer, with nothing wrong or made up?
- detail orientation (generic): does it cover the correct answer's main points, with specific
  rather than generic content?
- contextual understanding (generic): does it fit the overall context of the video that the
  correct answer describes, without out-of-place content?
- temporal understanding (temporal questions): does it give the events in the order and time
  relations of the correct answer?
- consistency (consistency records): the two questions, their shared correct answer and the
  two predicted answers go to the judge together: do the two answers agree with each other and
  with the correct answer?

The prompts are ours and ask for the score alone. Parsing rule (`parse_score`): (1) if the
reply holds a JSON or Python-dict object with a "score" key (any case), its value; otherwise
(2) the reply, without code fences, surrounding spaces, a leading "score" label ("Score: 4",
"score = 4") and one trailing period, read as a bare number. The value must be an integer from
0 to 5 ("4" or 4.0; 4.5, 7 or "four" are refused). A refused reply is retried like a failed
request (--judge-attempts); a verdict is "unparsed" when the judge replied but never usably,
and a "judge_error" when no reply came (network or HTTP errors); both are counted and listed by
id per score.

Metrics, per score: <score> = the mean over all its questions, where a failed video and a
failed verdict count as 0 (nothing dropped); <score>_judged = the mean over the judged
questions only (Video-ChatGPT's definition; equal to the former when nothing failed); average
and average_judged = the mean of the five (when all five exist). Without a judge (--skip-judge)
answers are only written. Outputs in --out: predictions.jsonl ("prediction" is one text, or
the two texts of a consistency record), judgements.jsonl (one line per question and score:
{"id", "dimension", "score", "raw"}, or "error" and "reason" for a failed verdict),
metrics.json, metrics.md. Re-scoring saved answers (--predictions) reuses the verdicts of
--judgements (failed ones are asked again; --rejudge asks all again).

Differences from Video-ChatGPT's own scripts: temperature 0 (they left the API default); a
non-integer score is refused rather than truncated; a failed verdict is counted rather than
retried until it succeeds.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from streammind.evaluation.answering import answer
from streammind.evaluation.clip_sampling import find_video
from streammind.evaluation.judge import Judge, JudgeConfig, JudgeConfigError, JudgeError, JudgeResponseError
from streammind.evaluation.offline import OfflineTask, build_offline_parser, evaluate, load_saved_predictions, model_for
from streammind.evaluation.tasks import RecordError, setup_logging
from streammind.fileio import read_json, read_jsonl

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 1024
DIMENSIONS = ("correctness", "detail_orientation", "contextual_understanding", "temporal_understanding", "consistency")
# part -> (question file, the scores its questions get)
PARTS = {
    "generic": ("generic_qa.json", ("correctness", "detail_orientation", "contextual_understanding")),
    "temporal": ("temporal_qa.json", ("temporal_understanding",)),
    "consistency": ("consistency_qa.json", ("consistency",)),
}
TITLES = {
    "correctness": "correctness of information",
    "detail_orientation": "detail orientation",
    "contextual_understanding": "contextual understanding",
    "temporal_understanding": "temporal understanding",
    "consistency": "consistency",
}

# ---------------------------------------------------------------------------------------
# Prompts (ours) and the score parser (pure)
# ---------------------------------------------------------------------------------------

_ROLE = "You grade answers that a video assistant gave to questions about a video. "
_SCALE = "Score from 0 (not at all) to 5 (fully)."
JUDGE_SYSTEM = {
    "correctness": _ROLE + (
        "Grade correctness of information: compare the predicted answer with the correct answer and judge whether "
        "the facts it states are the facts of the correct answer, with nothing wrong, contradicted or made up. "
        "Different wording and synonyms are fine. " + _SCALE
    ),
    "detail_orientation": _ROLE + (
        "Grade detail orientation: compare the predicted answer with the correct answer and judge how completely it "
        "covers the main points of the correct answer and how specific it is, as opposed to vague or generic. "
        "Different wording and synonyms are fine. " + _SCALE
    ),
    "contextual_understanding": _ROLE + (
        "Grade contextual understanding: compare the predicted answer with the correct answer and judge whether it "
        "fits the overall context of the video that the correct answer describes, its main themes and situation, "
        "without content that is out of place. Different wording and synonyms are fine. " + _SCALE
    ),
    "temporal_understanding": _ROLE + (
        "Grade temporal understanding: compare the predicted answer with the correct answer and judge whether it "
        "gives the events in the same order and with the same time relations (before, after, while) as the correct "
        "answer. Different wording is fine only when the order is kept. " + _SCALE
    ),
    "consistency": _ROLE + (
        "Grade consistency: you see two questions that ask the same thing in different words, the correct answer "
        "they share, and the assistant's answer to each. Judge whether the two predicted answers agree with each "
        "other and with the correct answer, without contradictions or notable differences in what they say. "
        "Different wording and synonyms are fine. " + _SCALE
    ),
}
JUDGE_USER = "Question: {question}\nCorrect answer: {reference}\nPredicted answer: {prediction}\n\n"
JUDGE_USER_PAIR = (
    "Question 1: {question_1}\nQuestion 2: {question_2}\nCorrect answer (to both): {reference}\n"
    "Predicted answer to question 1: {prediction_1}\nPredicted answer to question 2: {prediction_2}\n\n"
)
JUDGE_REPLY = "Reply with the score only: one integer from 0 to 5 and nothing else."


def judge_messages(dimension: str, example: Mapping, prediction: str | Sequence[str]) -> list[dict]:
    """The chat messages asking for one score of one answer (two answers for consistency)."""
    if dimension not in JUDGE_SYSTEM:
        raise ValueError(f"unknown dimension {dimension!r}; choose from {DIMENSIONS}")
    if dimension == "consistency":
        first, second = example["questions"]
        answer_1, answer_2 = prediction
        user = JUDGE_USER_PAIR.format(question_1=first, question_2=second, reference=example["reference"],
                                      prediction_1=answer_1, prediction_2=answer_2)
    else:
        user = JUDGE_USER.format(question=example["question"], reference=example["reference"], prediction=prediction)
    return [{"role": "system", "content": JUDGE_SYSTEM[dimension]}, {"role": "user", "content": user + JUDGE_REPLY}]


_FENCE = re.compile(r"^```\w*\s*|\s*```$")
_BARE = re.compile(r"^(?:score\s*[:=]?\s*)?([-+]?\d+(?:\.\d+)?)\.?$", re.IGNORECASE)


def _integer_score(value) -> int:
    if isinstance(value, bool):
        raise JudgeResponseError(f"score must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise JudgeResponseError(f"score must be a number, got {value!r}") from None
    if number != int(number) or not 0 <= number <= 5:
        raise JudgeResponseError(f"score must be an integer from 0 to 5, got {value!r}")
    return int(number)


def parse_score(text: str) -> int:
    """The 0-5 integer score of a judge reply (rule in the module docstring).

    Raises:
        JudgeResponseError: no usable score in the reply.
    """
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        body = text[start : end + 1]
        for candidate in (body, body.replace("'", '"')):
            try:
                data = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                keys = {str(k).lower(): v for k, v in data.items()}
                if "score" in keys:
                    return _integer_score(keys["score"])
            break
    match = _BARE.match(_FENCE.sub("", text.strip()).strip())
    if match is None:
        raise JudgeResponseError(f"no score in the reply: {text[:200]!r}")
    return _integer_score(match.group(1))


def summarise(*, scores: Sequence[Mapping], num_questions: Mapping[str, int]) -> dict:
    """The benchmark's metrics from per-question verdicts (pure).

    Args:
        scores: one record per question that was answered: {"id", "part", "scores": {dimension:
            int or None}, "failed": {dimension: "unparsed" | "judge_error" | "not_judged"}}.
        num_questions: questions per part, failed videos included (they count 0).

    Returns:
        {"metrics": {<dimension>, <dimension>_judged, average, average_judged},
         "counts": {dimension: {questions, judged, unparsed, judge_errors, not_judged, not_answered}},
         "unparsed_ids": {dimension: [ids]}, "judge_error_ids": {dimension: [ids]}}
    """
    metrics, counts = {}, {}
    unparsed, errors = {}, {}
    for part, (_, dimensions) in PARTS.items():
        n = num_questions.get(part, 0)
        records = [s for s in scores if s["part"] == part]
        for dimension in dimensions:
            judged = [s["scores"][dimension] for s in records if s["scores"].get(dimension) is not None]
            reasons = [(s["id"], s["failed"].get(dimension)) for s in records]
            unparsed[dimension] = [key for key, reason in reasons if reason == "unparsed"]
            errors[dimension] = [key for key, reason in reasons if reason == "judge_error"]
            metrics[dimension] = sum(judged) / n if n else None
            metrics[f"{dimension}_judged"] = sum(judged) / len(judged) if judged else None
            counts[dimension] = {
                "questions": n, "judged": len(judged), "unparsed": len(unparsed[dimension]),
                "judge_errors": len(errors[dimension]),
                "not_judged": sum(reason == "not_judged" for _, reason in reasons), "not_answered": n - len(records),
            }
    for suffix in ("", "_judged"):
        values = [metrics[f"{d}{suffix}"] for d in DIMENSIONS]
        metrics[f"average{suffix}"] = sum(values) / len(values) if all(v is not None for v in values) else None
    ordered = {d: metrics[d] for d in DIMENSIONS} | {"average": metrics["average"]}
    ordered |= {f"{d}_judged": metrics[f"{d}_judged"] for d in DIMENSIONS} | {"average_judged": metrics["average_judged"]}
    return {"metrics": ordered, "counts": counts, "unparsed_ids": unparsed, "judge_error_ids": errors}


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _unique(ids: Sequence[str]) -> list[str]:
    """Repeated ids get "#1", "#2", ... suffixes in order of appearance."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for key in ids:
        out.append(key if seen[key] == 0 else f"{key}#{seen[key]}")
        seen[key] += 1
    return out


def _video(video_dir: Path, name: str) -> str:
    """The video file of `name` (also tried as v_<name>), else the bare .mp4 path (it fails at run time, counted)."""
    stems = [name] if name.startswith("v_") else [name, f"v_{name}"]
    for stem in stems:
        path = find_video(video_dir, stem)
        if path is not None and path.is_file():
            return str(path)
    return str(video_dir / f"{name}.mp4")


def load_benchmark(root: str | Path, video_dir: str | Path | None = None, parts: Sequence[str] = tuple(PARTS)) -> list[dict]:
    """Examples of the selected parts, in the order generic, temporal, consistency: {"id", "part",
    "video", "reference", and "question" (generic, temporal) or "questions" (consistency, two)}."""
    root = Path(root)
    video_dir = Path(video_dir) if video_dir else root / "Test_Videos"
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {list(PARTS)}")
    out = []
    for part in PARTS:
        if part not in parts:
            continue
        path = root / PARTS[part][0]
        rows = read_json(path)
        ids = _unique([f"{part}/{row['video_name']}" for row in rows])
        for key, row in zip(ids, rows):
            example = {"id": key, "part": part, "video": _video(video_dir, str(row["video_name"])), "reference": str(row["A"])}
            if part == "consistency":
                example["questions"] = [str(row["Q1"]), str(row["Q2"])]
            else:
                example["question"] = str(row["Q"])
            out.append(example)
    return out


def load_verdicts(path: str | Path) -> dict[tuple[str, str], dict]:
    """A judgements.jsonl of an earlier run, by (id, dimension) (a bad line raises RecordError naming ``file:line``)."""
    out = {}
    for where, record in read_jsonl(path, RecordError):
        if not isinstance(record, dict) or "id" not in record or "dimension" not in record:
            raise RecordError(f"{where}: expected a judgement object with an 'id' and a 'dimension'")
        out[(str(record["id"]), str(record["dimension"]))] = record
    return out


# ---------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------


class VideoChatGPTTask(OfflineTask):
    """The generative benchmark: answers, then one verdict per question and score.

    Judging overlaps with answering: `run` submits the verdict requests of each answer to a
    thread pool, `score` collects them (the pure parts are `parse_score` and `summarise`). A
    saved verdict is reused unless `rejudge`; verdicts go to judgements.jsonl beside the
    predictions. Without a judge (None) answers are only written.

    Args:
        data_root: the layout of the module docstring.
        judge: the Judge, or None.
        parts: which question files to evaluate (default all three).
        video_dir: default data_root/Test_Videos.
        judge_workers: concurrent judge requests.
        saved_judgements: {(id, dimension): verdict record} of an earlier run.
        rejudge: ignore saved verdicts.
        **sampling: `OfflineTask` arguments (num_frames, fps, max_frames, limit, shard).
    """

    name = "videochatgpt"
    title = "Video-ChatGPT generative benchmark (scores 0-5)"

    def __init__(
        self,
        data_root: str | Path,
        *,
        judge: Judge | None,
        parts: Sequence[str] = tuple(PARTS),
        video_dir: str | Path | None = None,
        judge_workers: int = 4,
        saved_judgements: Mapping[tuple[str, str], Mapping] | None = None,
        rejudge: bool = False,
        max_new_tokens: int = MAX_NEW_TOKENS,
        **sampling,
    ):
        super().__init__(max_new_tokens=max_new_tokens, **sampling)
        self.root = Path(data_root)
        self.parts = tuple(parts)
        self.video_dir = Path(video_dir) if video_dir else None
        self.judge = judge
        self.judge_workers = judge_workers
        self.saved = {} if rejudge or saved_judgements is None else dict(saved_judgements)
        self.verdicts: dict[tuple[str, str], dict] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[tuple[str, str], Future] = {}

    def load_examples(self) -> list[dict]:
        return load_benchmark(self.root, self.video_dir, self.parts)

    # ---- judging ----------------------------------------------------------------------

    def _usable_saved(self, key: tuple[str, str]) -> dict | None:
        saved = self.saved.get(key)
        return saved if saved and "error" not in saved else None

    def _ask(self, dimension: str, example: Mapping, prediction) -> dict:
        """One verdict record; JudgeConfigError propagates (the run stops)."""
        replies: list[str] = []

        def parse(text: str) -> int:
            replies.append(text)
            return parse_score(text)

        record = {"id": str(example["id"]), "dimension": dimension}
        try:
            score, raw = self.judge.ask(judge_messages(dimension, example, prediction), parse)
        except JudgeError as error:
            reason = "unparsed" if replies else "judge_error"
            logger.warning("judging %s (%s) failed (%s): %s", record["id"], dimension, reason, error)
            return record | {"error": str(error), "reason": reason} | ({"reply": replies[-1]} if replies else {})
        return record | {"score": score, "raw": raw}

    def submit(self, example: Mapping, prediction) -> None:
        """Start the verdict requests of one answer (none without a judge, none for saved verdicts)."""
        if self.judge is None:
            return
        for dimension in PARTS[example["part"]][1]:
            key = (str(example["id"]), dimension)
            if self._usable_saved(key) or key in self._futures:
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.judge_workers))
            self._futures[key] = self._pool.submit(self._ask, dimension, example, prediction)

    def prefetch(self, records: Mapping[str, Mapping]) -> None:
        """Submit the saved answers of the selected examples (re-scoring with --predictions)."""
        for example in self.examples():
            record = records.get(str(example["id"]))
            if record is not None and "error" not in record:
                self.submit(example, record["prediction"])

    def _raise_configuration_errors(self) -> None:
        for future in self._futures.values():
            if future.done() and isinstance(future.exception(), JudgeConfigError):
                raise future.exception()

    def _verdict(self, example: Mapping, dimension: str, prediction) -> dict | None:
        key = (str(example["id"]), dimension)
        saved = self._usable_saved(key)
        if saved is not None:
            return saved
        if self.judge is None:  # a saved failure keeps its reason; nothing saved: not judged
            return self.saved.get(key)
        if key not in self._futures:
            self.submit(example, prediction)
        return self._futures.pop(key).result()

    # ---- Task -------------------------------------------------------------------------

    def run(self, model, processor, example: Mapping) -> dict:
        self._raise_configuration_errors()
        clip = self.load_clip(example)
        questions = example["questions"] if example["part"] == "consistency" else [example["question"]]
        texts = [answer(model, processor, clip.frames, q, max_new_tokens=self.max_new_tokens) for q in questions]
        prediction = texts if example["part"] == "consistency" else texts[0]
        self.submit(example, prediction)
        return {"prediction": prediction, "num_frames": len(clip.times)}

    def score(self, *, prediction: Mapping, reference: Mapping) -> dict:
        out = {"id": str(reference["id"]), "part": reference["part"], "scores": {}, "failed": {}}
        for dimension in PARTS[reference["part"]][1]:
            verdict = self._verdict(reference, dimension, prediction["prediction"])
            if verdict is None:
                out["scores"][dimension], out["failed"][dimension] = None, "not_judged"
                continue
            self.verdicts[(out["id"], dimension)] = dict(verdict)
            if "error" in verdict:
                out["scores"][dimension], out["failed"][dimension] = None, verdict.get("reason", "judge_error")
            else:
                out["scores"][dimension] = int(verdict["score"])
        return out

    def aggregate(self, scores: Sequence[Mapping]) -> dict:
        num_questions = defaultdict(int)
        for example in self.examples():
            num_questions[example["part"]] += 1
        return summarise(scores=scores, num_questions=num_questions) | {"settings": self.settings()}

    def after_run(self, predictions: Sequence[Mapping], out_dir: Path) -> None:
        """judgements.jsonl (one line per question and score); stops the request pool."""
        with open(Path(out_dir) / "judgements.jsonl", "w", encoding="utf-8") as handle:
            for verdict in self.verdicts.values():
                handle.write(json.dumps(verdict, ensure_ascii=False) + "\n")
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def settings(self) -> dict:
        judge = self.judge.config if self.judge else None
        return super().settings() | {
            "parts": list(self.parts), "judge_model": judge.model if judge else None,
            "judge_base_url": judge.base_url if judge else None, "judge_temperature": judge.temperature if judge else None,
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Answer (or load saved answers), judge, and write predictions, verdicts, metrics and a table into --out."""
    parser = build_offline_parser("streammind eval videochatgpt", __doc__, max_new_tokens=MAX_NEW_TOKENS)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS),
                        help="question files to evaluate (default: all three)")
    parser.add_argument("--video-dir", type=Path, default=None, help="default: <data-root>/Test_Videos")
    parser.add_argument("--skip-judge", action="store_true", help="write answers only (judge later with --predictions)")
    parser.add_argument("--judgements", type=Path, default=None, help="judgements.jsonl of an earlier run to reuse")
    parser.add_argument("--rejudge", action="store_true", help="judge again even where --judgements has a verdict")
    parser.add_argument("--judge-workers", type=int, default=4, help="concurrent judge requests (default: %(default)s)")
    parser.add_argument("--judge-temperature", type=float, default=0.0)
    parser.add_argument("--judge-attempts", type=int, default=5, help="tries per verdict (default: %(default)s)")
    parser.add_argument("--judge-backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    try:  # a missing judge configuration fails before any time is spent on the model
        judge = None if args.skip_judge else Judge(JudgeConfig.from_env(
            temperature=args.judge_temperature, max_attempts=args.judge_attempts, backoff_s=args.judge_backoff))
    except JudgeConfigError as error:
        parser.exit(2, f"error: {error}\n")
    model, processor = model_for(args, parser)
    task = VideoChatGPTTask(args.data_root, judge=judge, parts=args.parts, video_dir=args.video_dir,
                            judge_workers=args.judge_workers, rejudge=args.rejudge,
                            saved_judgements=load_verdicts(args.judgements) if args.judgements else None,
                            max_new_tokens=args.max_new_tokens, num_frames=args.num_frames, fps=args.fps,
                            max_frames=model.config.max_turn_frames if model is not None else None,
                            limit=args.limit, shard=tuple(args.shard) if args.shard else None)
    if args.predictions:
        task.prefetch(load_saved_predictions(args.predictions))
    evaluate(task, model, processor, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
