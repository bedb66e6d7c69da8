"""Open-ended video QA (MSVD-QA, ActivityNet-QA) scored by an LLM judge (docs/design.md §6).

    export STREAMMIND_JUDGE_BASE_URL=https://api.openai.com/v1   # any OpenAI-compatible server
    export STREAMMIND_JUDGE_MODEL=gpt-4o-mini
    export OPENAI_API_KEY=...                                     # optional for local servers
    streammind eval qa_open --dataset msvd --model runs/stage1 --data-root data/msvd_qa --out runs/eval/msvd
    streammind eval qa_open --dataset msvd --data-root data/msvd_qa --out runs/eval/msvd_rescored \
        --predictions runs/eval/msvd/predictions.jsonl --judgements runs/eval/msvd/judgements.jsonl

Data layouts under --data-root (not shipped; the files as Video-ChatGPT's evaluation
distributes them, which the original release's QA scripts read):

    MSVD-QA (--dataset msvd)
        test_qa.json        [{"video_id": "-4wsuPCjDBc_5_15" or 1201, "question": "...",
                              "answer": "...", "id": ...}]
        videos/<video_id>.avi (or .mp4 ...; --video-dir overrides)
        youtube_mapping.txt optional, lines "<clip name> vid<N>": numeric video ids N are
                            then resolved to the clip names
    ActivityNet-QA (--dataset activitynet)
        test_q.json         [{"video_name": "...", "question": "...", "question_id": "..."}]
        test_a.json         [{"question_id": "...", "answer": "...", "type": 0..8}]
                            (matched by question_id, else by position)
        videos/v_<video_name>.mp4 (or <video_name>.*; without videos/, all_test/ is used, the
                            folder name of StreamMind's release; --video-dir overrides)

Repeated question ids get "#k" suffixes so every question is one record.

Answering: `streammind.evaluation.answering.answer` (32 uniform frames, greedy, up to 1024 new tokens as the
original's QA scripts).

Judge: any OpenAI-compatible chat-completions endpoint, configured only by environment
variables: STREAMMIND_JUDGE_BASE_URL (e.g. https://api.openai.com/v1; requests go to
<base>/chat/completions), STREAMMIND_JUDGE_MODEL, and OPENAI_API_KEY (sent as a bearer
token when set; never logged or written). Requests go through httpx. Redirects are
followed only within the endpoint's own origin (scheme, host and port) and only as 307 /
308 (which keep the POST); a redirect anywhere else is refused before anything is sent
there (`JudgeConfigError`: point STREAMMIND_JUDGE_BASE_URL at the final endpoint), so the
key never reaches another host. The prompt is
ours: it asks whether the prediction matches the correct answer and for an integer score
0-5, as one JSON object {"match": "yes"|"no", "score": n}. Temperature 0 by default (the
original used 0.7). Network errors, timeouts, HTTP 408/409/425/429 and 5xx, and malformed
replies are retried (--judge-attempts, 5) with exponential backoff from --judge-backoff
seconds (honouring Retry-After); other HTTP 4xx fail that judgement; HTTP 401/403/404
stop the run (a configuration error, raised as soon as a request meets it); an example
still failing after the retries is recorded with an error in judgements.jsonl and
counted. Requests run in a pool of --judge-workers threads while the model answers the
next questions. Verdicts go to judgements.jsonl; re-scoring saved answers
(--predictions) reuses the verdicts of --judgements (failed ones are retried; --rejudge
redoes all).

Metrics: accuracy = yes / questions and score = mean score over all questions, where a
failed video or a failed judgement counts as "no" with score 0 (nothing dropped);
accuracy_judged = yes / (yes + no) and score_judged (the Video-ChatGPT definitions, over
judged questions only) — equal to the former when nothing failed. ActivityNet-QA also
gets accuracy_judged per question "type". Outputs in --out: predictions.jsonl,
judgements.jsonl, metrics.json, metrics.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from streammind.errors import run_command
from streammind.evaluation.answering import answer
from streammind.evaluation.clip_sampling import find_video
from streammind.evaluation.judge import (
    Judge,
    JudgeConfig,
    JudgeConfigError,
    JudgeError,
    JudgeResponseError,
)
from streammind.evaluation.offline import OfflineTask, build_offline_parser, evaluate, load_saved_predictions, model_for
from streammind.evaluation.tasks import RecordError, setup_logging
from streammind.fileio import atomic_write, read_json, read_jsonl

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 1024
DATASETS = ("msvd", "activitynet")

JUDGE_SYSTEM = (
    "You grade short answers to questions about videos. You see a question, its correct answer and a predicted "
    "answer. Decide whether the predicted answer says the same thing as the correct answer: synonyms, paraphrases "
    "and extra detail that does not contradict it are fine; a different, vague or missing answer is not. Then rate "
    "the predicted answer with an integer from 0 (completely wrong) to 5 (fully correct)."
)
JUDGE_USER = (
    "Question: {question}\nCorrect answer: {reference}\nPredicted answer: {prediction}\n\n"
    'Reply with one JSON object and nothing else, for example {{"match": "yes", "score": 4}}: "match" is "yes" '
    'or "no", "score" an integer from 0 to 5.'
)


# ---------------------------------------------------------------------------------------
# The QA judge's verdicts
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict on one answer."""

    match: bool
    score: int


def _yes_no(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true"):
        return True
    if text in ("no", "false"):
        return False
    raise JudgeResponseError(f"match must be yes or no, got {value!r}")


def _score(value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise JudgeResponseError(f"score must be a number, got {value!r}") from None
    if number != int(number) or not 0 <= number <= 5:
        raise JudgeResponseError(f"score must be an integer from 0 to 5, got {value!r}")
    return int(number)


def parse_judgement(text: str) -> Judgement:
    """Read {"match": yes|no, "score": 0..5} from a judge reply.

    Accepted: the JSON object anywhere in the reply (code fences and text around it are
    ignored), single-quoted (Python-dict style) objects, the key "pred" for "match" (the
    Video-ChatGPT name), keys in any case, booleans for yes/no and integral numbers or
    numeric strings for the score; failing all that, "match: yes ... score: 4" as plain text.

    Raises:
        JudgeResponseError: no usable match and score in the reply.
    """
    start, end = text.find("{"), text.rfind("}")
    data = None
    if 0 <= start < end:
        body = text[start : end + 1]
        for candidate in (body, body.replace("'", '"')):
            try:
                data = json.loads(candidate)
                break
            except json.JSONDecodeError:
                continue
    if isinstance(data, dict):
        keys = {str(k).lower(): v for k, v in data.items()}
        match = keys.get("match", keys.get("pred"))
        if match is None or "score" not in keys:
            raise JudgeResponseError(f"judge reply lacks match or score: {text[:200]!r}")
        return Judgement(_yes_no(match), _score(keys["score"]))
    found_match = re.search(r"\b(?:match|pred)\W+(yes|no)\b", text, re.IGNORECASE)
    found_score = re.search(r"\bscore\W+(\d+(?:\.\d+)?)", text, re.IGNORECASE)
    if not (found_match and found_score):
        raise JudgeResponseError(f"no judgement in the reply: {text[:200]!r}")
    return Judgement(_yes_no(found_match.group(1)), _score(found_score.group(1)))


class QAJudge(Judge):
    """The judge of open-ended QA: the prompt above, a verdict `Judgement` per answer."""

    def judge(self, *, question: str, prediction: str, reference: str) -> tuple[Judgement, str]:
        """Judge one answer; returns the judgement and the raw reply text.

        Raises:
            JudgeConfigError: HTTP 401/403/404 (fix the configuration).
            JudgeError: still failing after `max_attempts`.
        """
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(question=question, reference=reference, prediction=prediction)},
        ]
        return self.ask(messages, parse_judgement)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _unique_ids(ids: Sequence[str]) -> list[str]:
    """Repeated ids get "#1", "#2", ... suffixes in order of appearance."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for key in ids:
        out.append(key if seen[key] == 0 else f"{key}#{seen[key]}")
        seen[key] += 1
    return out


def _resolve(video_dir: Path, stems: Sequence[str]) -> str:
    """The first stem with a file; else the first stem's .mp4 path (fails at run time, counted)."""
    for stem in stems:
        path = find_video(video_dir, stem)
        if path is not None:
            return str(path)
    return str(video_dir / f"{stems[0]}.mp4")


def load_msvd(root: Path, video_dir: Path, questions: Path | None = None) -> list[dict]:
    """MSVD-QA examples (layout in the module docstring)."""
    rows = read_json(questions or root / "test_qa.json")
    mapping = {}
    if (root / "youtube_mapping.txt").exists():
        for line in (root / "youtube_mapping.txt").read_text(encoding="utf-8").splitlines():
            if line.strip():
                name, vid = line.split()
                mapping[vid] = name
    ids = _unique_ids([str(r.get("id", i)) for i, r in enumerate(rows)])
    out = []
    for key, row in zip(ids, rows):
        video_id = str(row["video_id"])
        stem = mapping.get(video_id, mapping.get(f"vid{video_id}", video_id))
        out.append({"id": key, "video": _resolve(video_dir, [stem]), "question": row["question"], "reference": str(row["answer"])})
    return out


def load_activitynet(root: Path, video_dir: Path, questions: Path | None = None) -> list[dict]:
    """ActivityNet-QA examples (layout in the module docstring); answers from test_a.json beside the questions."""
    questions = questions or root / "test_q.json"
    q_rows, a_rows = read_json(questions), read_json(questions.parent / "test_a.json")
    if all("question_id" in a for a in a_rows) and all("question_id" in q for q in q_rows):
        by_id = {str(a["question_id"]): a for a in a_rows}
        missing = [str(q["question_id"]) for q in q_rows if str(q["question_id"]) not in by_id]
        if missing:
            raise ValueError(f"test_a.json has no answer for {len(missing)} questions, e.g. {missing[:3]}")
        paired = [(q, by_id[str(q["question_id"])]) for q in q_rows]
    else:
        if len(q_rows) != len(a_rows):
            raise ValueError(f"{questions.name} has {len(q_rows)} questions but test_a.json {len(a_rows)} answers")
        paired = list(zip(q_rows, a_rows))
    ids = _unique_ids([str(q.get("question_id", i)) for i, (q, _) in enumerate(paired)])
    out = []
    for key, (q, a) in zip(ids, paired):
        name = str(q["video_name"])
        stems = [name] if name.startswith("v_") else [f"v_{name}", name]
        example = {"id": key, "video": _resolve(video_dir, stems), "question": q["question"], "reference": str(a["answer"])}
        if "type" in a:
            example["type"] = str(a["type"])
        out.append(example)
    return out


def load_judgements(path: str | Path) -> dict[str, dict]:
    """A judgements.jsonl of an earlier run, by id (a bad line raises RecordError naming ``file:line``)."""
    out = {}
    for where, record in read_jsonl(path, RecordError):
        if not isinstance(record, dict) or "id" not in record:
            raise RecordError(f"{where}: expected a judgement object with an 'id'")
        out[str(record["id"])] = record
    return out


# ---------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------


class OpenQATask(OfflineTask):
    """Open-ended QA on MSVD-QA or ActivityNet-QA with an LLM judge.

    Judging overlaps with answering: `run` submits each answer to a thread pool of
    `judge_workers` requests, `score` collects the verdict (the pure parts are
    `parse_judgement` and `aggregate`). A verdict in `saved_judgements` is reused unless
    `rejudge`; verdicts go to judgements.jsonl beside the predictions. Without a judge
    (None) answers are only written (match and score None, not counted as judged).

    Args:
        dataset: "msvd" or "activitynet".
        data_root: the layout of the module docstring.
        judge: the Judge, or None.
        questions: the question file (default per layout).
        video_dir: default data_root/videos (ActivityNet-QA: all_test/ when there is no videos/).
        judge_workers: concurrent judge requests.
        saved_judgements: {id: judgement record} of an earlier run.
        rejudge: ignore saved judgements.
        **sampling: `OfflineTask` arguments (num_frames, fps, max_frames, limit, shard).
    """

    def __init__(
        self,
        dataset: str,
        data_root: str | Path,
        *,
        judge: Judge | None,
        questions: str | Path | None = None,
        video_dir: str | Path | None = None,
        judge_workers: int = 4,
        saved_judgements: Mapping[str, Mapping] | None = None,
        rejudge: bool = False,
        max_new_tokens: int = MAX_NEW_TOKENS,
        **sampling,
    ):
        super().__init__(max_new_tokens=max_new_tokens, **sampling)
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
        self.dataset = dataset
        self.name = f"qa_open_{dataset}"
        self.title = {"msvd": "MSVD-QA", "activitynet": "ActivityNet-QA"}[dataset]
        self.root = Path(data_root)
        self.questions = Path(questions) if questions else None
        if video_dir is None:
            video_dir = self.root / "videos"
            if dataset == "activitynet" and not video_dir.is_dir() and (self.root / "all_test").is_dir():
                video_dir = self.root / "all_test"
        self.video_dir = Path(video_dir)
        self.judge = judge
        self.judge_workers = judge_workers
        self.saved_judgements = {} if rejudge or saved_judgements is None else dict(saved_judgements)
        self.judgements: dict[str, dict] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}

    def load_examples(self) -> list[dict]:
        loader = load_msvd if self.dataset == "msvd" else load_activitynet
        return loader(self.root, self.video_dir, self.questions)

    # ---- judging ----------------------------------------------------------------------

    def _usable_saved(self, key: str) -> dict | None:
        saved = self.saved_judgements.get(key)
        return saved if saved and "error" not in saved else None

    def submit(self, example: Mapping, prediction: str) -> None:
        """Start judging one answer in the background (no-op without a judge or with a saved verdict)."""
        key = str(example["id"])
        if self.judge is None or self._usable_saved(key) or key in self._futures:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.judge_workers))
        self._futures[key] = self._pool.submit(self.judge.judge, question=example["question"], prediction=prediction,
                                               reference=example["reference"])

    def prefetch(self, records: Mapping[str, Mapping]) -> None:
        """Submit the saved answers of the selected examples (re-scoring with --predictions)."""
        for example in self.examples():
            record = records.get(str(example["id"]))
            if record is not None and "error" not in record:
                self.submit(example, record["prediction"])

    def _raise_configuration_errors(self) -> None:
        """Stop early when a finished judge request found the endpoint misconfigured."""
        for future in self._futures.values():
            if future.done() and isinstance(future.exception(), JudgeConfigError):
                raise future.exception()

    def _verdict(self, example: Mapping, prediction: str) -> dict | None:
        """The judgement record of one answer: saved, collected from its request, or None without a judge."""
        key = str(example["id"])
        saved = self._usable_saved(key)
        if saved is not None:
            return saved
        if self.judge is None:
            return None
        if key not in self._futures:
            self.submit(example, prediction)
        try:
            verdict, raw = self._futures.pop(key).result()
        except JudgeError as error:
            logger.warning("judging %s failed: %s", key, error)
            return {"id": key, "error": str(error)}
        return {"id": key, "match": "yes" if verdict.match else "no", "score": verdict.score, "raw": raw}

    # ---- Task -------------------------------------------------------------------------

    def run(self, model, processor, example: Mapping) -> dict:
        self._raise_configuration_errors()
        clip = self.load_clip(example)
        text = answer(model, processor, clip.frames, example["question"], max_new_tokens=self.max_new_tokens)
        self.submit(example, text)
        return {"prediction": text, "num_frames": len(clip.times)}

    def score(self, *, prediction: Mapping, reference: Mapping) -> dict:
        verdict = self._verdict(reference, prediction["prediction"])
        out = {"id": str(reference["id"]), "match": None, "score": None, "type": reference.get("type")}
        if verdict is not None:
            self.judgements[out["id"]] = verdict
            if "error" not in verdict:
                out |= {"match": verdict["match"] == "yes", "score": int(verdict["score"])}
        return out

    def aggregate(self, scores: Sequence[Mapping]) -> dict:
        """Accuracy and score over all examples (failed videos and judgements count as no / 0) and over the judged."""
        n = self.num_examples
        yes = sum(s["match"] is True for s in scores)
        no = sum(s["match"] is False for s in scores)
        judged_scores = [s["score"] for s in scores if s["score"] is not None]
        not_judged = [s["id"] for s in scores if s["match"] is None]
        metrics = {
            "accuracy": yes / n if n else None,
            "score": sum(judged_scores) / n if n else None,
            "accuracy_judged": yes / (yes + no) if yes + no else None,
            "score_judged": sum(judged_scores) / len(judged_scores) if judged_scores else None,
            "num_yes": yes,
            "num_no": no,
            "num_not_judged": len(not_judged),
        }
        out = {"metrics": metrics, "not_judged_ids": not_judged, "settings": self.settings()}
        types = sorted({s["type"] for s in scores if s["type"] is not None})
        if types:
            out["accuracy_judged_by_type"] = {}
            for t in types:
                group = [s for s in scores if s["type"] == t and s["match"] is not None]
                out["accuracy_judged_by_type"][t] = sum(s["match"] for s in group) / len(group) if group else None
        return out

    def after_run(self, predictions: Sequence[Mapping], out_dir: Path) -> None:
        """judgements.jsonl (one line per judged answer, failures with "error"); stops the request pool."""
        with atomic_write(Path(out_dir) / "judgements.jsonl") as handle:
            for verdict in self.judgements.values():
                handle.write(json.dumps(verdict, ensure_ascii=False) + "\n")
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def settings(self) -> dict:
        judge = self.judge.config if self.judge else None
        return super().settings() | {
            "dataset": self.dataset, "judge_model": judge.model if judge else None,
            "judge_base_url": judge.base_url if judge else None, "judge_temperature": judge.temperature if judge else None,
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Answer (or load saved answers), judge, and write predictions, judgements, metrics and a table into --out."""
    parser = build_offline_parser("streammind eval qa_open", __doc__, max_new_tokens=MAX_NEW_TOKENS,
                                  annotations_help="question file (default: test_qa.json / test_q.json under --data-root)")
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--video-dir", type=Path, default=None, help="default: <data-root>/videos (ActivityNet-QA: all_test/ when there is no videos/)")
    parser.add_argument("--skip-judge", action="store_true", help="write answers only (judge later with --predictions)")
    parser.add_argument("--judgements", type=Path, default=None, help="judgements.jsonl of an earlier run to reuse")
    parser.add_argument("--rejudge", action="store_true", help="judge again even where --judgements has a verdict")
    parser.add_argument("--judge-workers", type=int, default=4, help="concurrent judge requests (default: %(default)s)")
    parser.add_argument("--judge-temperature", type=float, default=0.0)
    parser.add_argument("--judge-attempts", type=int, default=5, help="tries per judgement (default: %(default)s)")
    parser.add_argument("--judge-backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    # A missing judge configuration (JudgeConfigError) fails before any time is spent on the model.
    judge = None if args.skip_judge else QAJudge(JudgeConfig.from_env(
        temperature=args.judge_temperature, max_attempts=args.judge_attempts, backoff_s=args.judge_backoff))
    model, processor = model_for(args, parser)
    task = OpenQATask(args.dataset, args.data_root, judge=judge, questions=args.annotations, video_dir=args.video_dir,
                      judge_workers=args.judge_workers, rejudge=args.rejudge,
                      saved_judgements=load_judgements(args.judgements) if args.judgements else None,
                      max_new_tokens=args.max_new_tokens, num_frames=args.num_frames, fps=args.fps,
                      max_frames=model.config.max_turn_frames if model is not None else None,
                      limit=args.limit, shard=tuple(args.shard) if args.shard else None)
    if args.predictions:
        task.prefetch(load_saved_predictions(args.predictions))
    evaluate(task, model, processor, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind eval qa_open", main))
