"""COIN step / next / task / procedure / procedure+ (VideoLLM-online's protocol, docs/design.md §6).

    streammind eval coin --model runs/stage1 --data-root data/coin --out runs/eval/coin \
        [--benchmarks step next task procedure taskprocedure] [--split test] \
        [--num-frames 32 | --fps 2] [--procedure-denominator faithful|labels] \
        [--skip-missing-videos] [--limit N] [--predictions runs/eval/coin/*/predictions.jsonl]

Data layout under --data-root (COIN itself, https://coin-dataset.github.io, not shipped):

    COIN.json (or coin.json)   {"database": {video_id: {"class": "PutOnHairExtensions",
                                 "subset": "training" | "testing", "start": s, "end": s,
                                 "annotation": [{"segment": [s, e], "label": "..."}]}}}
    videos/<video_id>.mp4      (any of .mp4 .mkv .webm .avi .mov; --video-dir overrides)

Examples (VideoLLM-online's `data/coin/benchmarks.py`): the split is every video whose "subset" contains
--split ("test" matches "testing"). Step names are the annotation labels (two labels are
renamed as in VideoLLM-online: "process (crop, fold) paper" -> "crop and fold paper",
"try to press gun head, spray residual old grease" -> "try to press gun head to spray
residual old grease"); task names split the CamelCase class into lower-case words
(acronyms TV, CD, SIM, NBA, SSD, RJ45 kept for the Proc.+ query). Times are ceiled to the
2 fps grid; a segment [s, e] covers the frames at ceil(s) .. ceil(e), i.e. the window
[ceil(s), ceil(e) + 0.5 s), clamped to the video.

- step: each step segment; "What is the action in the video? ..."; answer: its step.
- next: each step segment but the last; "What is the next action for the video? ...";
  answer: the following step.
- task: the whole annotated span [start, end]; "What is the overall activity in the
  video? ..."; answer: the task name.
- procedure: each step segment but the last; answer: the next min(5, remaining) steps,
  asked with "What is the next {n} actions for the video? ..." (when only one step
  remains, the single-step "next" query is used, as in VideoLLM-online).
- taskprocedure (Proc.+): the same with the goal in the query, "To {task}, what is the
  next ...".

The query strings are the benchmark's inputs as VideoLLM-online defines them (a model
trained on them expects them verbatim).

Scoring, faithful to VideoLLM-online's `data/coin/benchmarks.py` (in %):
- step / next / task: the prediction is lower-cased and trailing periods stripped; it is
  correct when it equals the label or its Levenshtein-nearest category equals the label.
  Categories: the lower-cased step (or task) names of the split; distance ties go to the
  lexicographically smallest category (as Python's `min` over (distance, name) does).
- procedure / Proc.+: the prediction is split at newlines; each line keeps what follows
  its last ". " (this drops the "N. " prefix) and is paired with the label steps in
  order; a pair is correct by the same exact-or-nearest rule. Quirks kept (and counted):
  1. pairing is a zip, so when the model writes fewer lines than there are label steps the
     missing steps are not counted in the denominator (an empty prediction is one empty
     line, one pair); `--procedure-denominator labels` divides by all label steps instead;
  2. lines are neither lower-cased nor stripped of their final period, so "Crop paper."
     never equals "crop paper" exactly and only the (case-sensitive) nearest-category
     match can make it correct;
  3. a line containing ". " in its text loses everything before the last one.
- Failed examples (missing or undecodable video) count as wrong in `accuracy`: one wrong
  answer, or all of their label steps for procedure, in both denominator modes;
  `accuracy_ran` is over the examples that ran. With --skip-missing-videos, missing
  videos are left out of the examples and the categories, as VideoLLM-online lists only
  the videos it has, and are counted as load failures.

Outputs: <out>/<benchmark>/{predictions.jsonl, metrics.json, metrics.md} and a summary
of the benchmarks run in <out>/metrics.json and <out>/metrics.md.

Deviations: frames are sampled uniformly (32 by default; `--fps 2` feeds the 2 fps grid
of the segment as VideoLLM-online does, up to the model's max_turn_frames) and decoding
is greedy up to 512 new tokens, as there.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from streammind.errors import run_command
from streammind.evaluation.answering import answer
from streammind.evaluation.clip_sampling import find_video
from streammind.evaluation.offline import OfflineTask, build_offline_parser, evaluate, model_for
from streammind.evaluation.tasks import Failure, setup_logging, write_json, write_markdown_table
from streammind.evaluation.text_matching import NearestMatcher
from streammind.fileio import read_json
from streammind.media.video import ceil_to_grid

BENCHMARKS = ("step", "next", "task", "procedure", "taskprocedure")
GRID_FPS = 2.0  # VideoLLM-online's frame rate: segment times are ceiled to its grid
MAX_NEXT_STEPS = 5
MAX_NEW_TOKENS = 512

_FORMAT = "Format your answer concisely. No extra text output."
_FORMAT_LIST = "Format your answer concisely, listing each action on a new line with a number prefix. No extra text output."
QUERY_STEP = f"What is the action in the video? {_FORMAT}"
QUERY_NEXT = f"What is the next action for the video? {_FORMAT}"
QUERY_TASK = f"What is the overall activity in the video? {_FORMAT}"

_STEP_RENAMES = {
    "process (crop, fold) paper": "crop and fold paper",
    "try to press gun head, spray residual old grease": "try to press gun head to spray residual old grease",
}
_ACRONYMS = {"t v": "TV", "c d": "CD", "s i m": "SIM", "n b a": "NBA", "s s d": "SSD", "r j45": "RJ45"}


def query_procedure(num_steps: int, task: str | None = None) -> str:
    """The procedure (task=None) or Proc.+ query for `num_steps` next steps."""
    goal = f"To {task}, w" if task else "W"
    if num_steps == 1:
        return f"{goal}hat is the next action for the video? {_FORMAT}"
    return f"{goal}hat is the next {num_steps} actions for the video? {_FORMAT_LIST}"


def step_name(label: str) -> str:
    """A COIN step label as the benchmark names it."""
    return _STEP_RENAMES.get(label, label)


def task_name(cls: str) -> str:
    """CamelCase COIN class -> words: "ReplaceSIMCard" -> "replace SIM card"."""
    text = re.sub(r"([A-Z])", r" \1", cls).lower().strip()
    for spaced, acronym in _ACRONYMS.items():
        text = re.sub(rf"(?<![a-z]){spaced}(?![a-z])", acronym, text)
    return text


# ---------------------------------------------------------------------------------------
# Scoring (pure)
# ---------------------------------------------------------------------------------------


def is_correct(*, prediction: str, reference: str, matcher: NearestMatcher) -> bool:
    """Exact-or-nearest rule on a prediction as given (no normalisation here)."""
    return prediction == reference or matcher.nearest(prediction)[0] == reference


def score_single(*, prediction: str, reference: str, matcher: NearestMatcher) -> bool:
    """Step / next / task: lower-case, strip trailing periods, exact-or-nearest."""
    return is_correct(prediction=prediction.lower().rstrip("."), reference=reference, matcher=matcher)


def procedure_lines(prediction: str) -> list[str]:
    """The prediction's lines, each cut to what follows its last ". " (faithful; no lower-casing)."""
    return [line.split(". ")[-1] for line in prediction.split("\n")]


def score_procedure(
    *, prediction: str, reference: Sequence[str], matcher: NearestMatcher, denominator: str = "faithful"
) -> tuple[int, int]:
    """(correct steps, counted steps) of one procedure answer.

    Args:
        prediction: the model's text.
        reference: the label steps, lower-case, in order.
        matcher: nearest-category matcher over the split's step names.
        denominator: "faithful" counts only the zipped pairs (VideoLLM-online);
            "labels" counts every label step.
    """
    if denominator not in ("faithful", "labels"):
        raise ValueError(f"denominator must be 'faithful' or 'labels', got {denominator!r}")
    pairs = list(zip(procedure_lines(prediction), reference))
    correct = sum(is_correct(prediction=line, reference=label, matcher=matcher) for line, label in pairs)
    return correct, len(pairs) if denominator == "faithful" else len(reference)


# ---------------------------------------------------------------------------------------
# Data and task
# ---------------------------------------------------------------------------------------


def load_coin(data_root: str | Path, annotation: str | Path | None = None) -> dict:
    """The COIN database dict {video_id: entry}."""
    root = Path(data_root)
    if annotation is None:
        annotation = next((p for p in (root / "COIN.json", root / "coin.json") if p.exists()), None)
        if annotation is None:
            raise FileNotFoundError(f"no COIN.json or coin.json in {root}")
    return read_json(annotation)["database"]


class COINTask(OfflineTask):
    """One of the five COIN benchmarks.

    Args:
        benchmark: one of BENCHMARKS.
        data_root: the layout of the module docstring.
        split: "test" or "train" (substring of the "subset" field).
        video_dir: videos (default data_root/videos).
        annotation: COIN.json (default: under data_root).
        procedure_denominator: "faithful" or "labels".
        skip_missing_videos: leave out the examples whose video file is absent, and their
            names out of the categories, as VideoLLM-online does (it only lists videos it
            has); they are counted as load failures ("missing_video").
        **sampling: `OfflineTask` arguments (num_frames, fps, max_frames, limit, shard).
    """

    def __init__(
        self,
        benchmark: str,
        data_root: str | Path,
        *,
        split: str = "test",
        video_dir: str | Path | None = None,
        annotation: str | Path | None = None,
        procedure_denominator: str = "faithful",
        skip_missing_videos: bool = False,
        max_new_tokens: int = MAX_NEW_TOKENS,
        **sampling,
    ):
        super().__init__(max_new_tokens=max_new_tokens, **sampling)
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown COIN benchmark {benchmark!r}; choose from {BENCHMARKS}")
        if procedure_denominator not in ("faithful", "labels"):
            raise ValueError(f"procedure_denominator must be 'faithful' or 'labels', got {procedure_denominator!r}")
        self.benchmark = benchmark
        self.name = f"coin_{benchmark}"
        self.title = f"COIN {benchmark}"
        self.root = Path(data_root)
        self.split = split
        self.video_dir = Path(video_dir) if video_dir else self.root / "videos"
        self.procedure_denominator = procedure_denominator
        self.skip_missing_videos = skip_missing_videos
        self._videos = self._load_videos(annotation)
        available = [v for v in self._videos if v["exists"] or not skip_missing_videos]
        if not available:
            raise ValueError(f"no COIN video of split {split!r} under {self.video_dir}")
        if benchmark == "task":
            names = [v["task"].lower() for v in available]
        else:
            names = [step for v in available for step in v["steps_lower"]]
        self.matcher = NearestMatcher(names)

    @property
    def is_procedure(self) -> bool:
        return self.benchmark in ("procedure", "taskprocedure")

    def _load_videos(self, annotation) -> list[dict]:
        videos = []
        for video_id, entry in load_coin(self.root, annotation).items():
            if self.split not in entry["subset"].lower():
                continue
            path = find_video(self.video_dir, video_id)
            steps = [
                {"start": float(a["segment"][0]), "end": float(a["segment"][1]), "text": step_name(a["label"])}
                for a in entry["annotation"]
            ]
            videos.append({
                "video_id": video_id, "path": str(path or self.video_dir / f"{video_id}.mp4"), "exists": path is not None,
                "task": task_name(entry["class"]), "start": float(entry["start"]), "end": float(entry["end"]),
                "steps": steps, "steps_lower": [s["text"].lower() for s in steps],
            })
        if not videos:
            raise ValueError(f"no COIN video in split {self.split!r} of the annotation under {self.root}")
        return videos

    @staticmethod
    def _window(start: float, end: float) -> tuple[float, float]:
        """[ceil(start), ceil(end) + one grid step): the frames VideoLLM-online feeds."""
        return ceil_to_grid(start, GRID_FPS), ceil_to_grid(end, GRID_FPS) + 1.0 / GRID_FPS

    def load_examples(self) -> list[dict]:
        out = []
        for video in self._videos:
            common = {"video": video["path"], "video_id": video["video_id"]}
            steps, lower = video["steps"], video["steps_lower"]
            if self.benchmark == "task":
                start, end = self._window(video["start"], video["end"])
                out.append({"id": f"{video['video_id']}/task", **common, "start": start, "end": end,
                            "question": QUERY_TASK, "reference": video["task"].lower()})
                continue
            last = len(steps) if self.benchmark == "step" else len(steps) - 1
            for i in range(last):
                start, end = self._window(steps[i]["start"], steps[i]["end"])
                example = {"id": f"{video['video_id']}/{self.benchmark}/{i}", **common, "start": start, "end": end}
                if self.benchmark == "step":
                    example |= {"question": QUERY_STEP, "reference": lower[i]}
                elif self.benchmark == "next":
                    example |= {"question": QUERY_NEXT, "reference": lower[i + 1]}
                else:
                    following = lower[i + 1 : i + 1 + MAX_NEXT_STEPS]
                    task = video["task"] if self.benchmark == "taskprocedure" else None
                    example |= {"question": query_procedure(len(following), task), "reference": following}
                out.append(example)
        return out

    def keep(self, examples: list[dict]) -> list[dict]:
        if not self.skip_missing_videos:
            return examples
        kept = []
        for example in examples:
            if Path(example["video"]).exists():
                kept.append(example)
            else:
                self.load_failures.append(Failure(example["id"], "missing_video", f"skipped, video not found: {example['video']}"))
        return kept

    def run(self, model, processor, example: Mapping) -> dict:
        clip = self.load_clip(example)
        text = answer(model, processor, clip.frames, example["question"], max_new_tokens=self.max_new_tokens)
        return {"prediction": text, "num_frames": len(clip.times)}

    def score(self, *, prediction: Mapping, reference: Mapping) -> dict:
        label, text = reference["reference"], prediction["prediction"]
        if self.is_procedure:
            correct, total = score_procedure(prediction=text, reference=label, matcher=self.matcher,
                                             denominator=self.procedure_denominator)
            return {"correct": correct, "total": total, "num_label_steps": len(label)}
        correct = score_single(prediction=text, reference=label, matcher=self.matcher)
        return {"correct": int(correct), "total": 1, "nearest": self.matcher.nearest(text.lower().rstrip("."))[0]}

    def aggregate(self, scores: Sequence[Mapping]) -> dict:
        """Accuracy (%) with failed examples counted as wrong, and over the examples that ran."""
        correct = sum(s["correct"] for s in scores)
        total_ran = sum(s["total"] for s in scores)
        if self.is_procedure:
            all_steps = sum(len(e["reference"]) for e in self.examples())
            failed = all_steps - sum(s["num_label_steps"] for s in scores)  # every step of a failed example
        else:
            failed = self.num_examples - len(scores)
        total = total_ran + failed

        def percent(a, b):
            return 100.0 * a / b if b else None

        metrics = {"accuracy": percent(correct, total), "accuracy_ran": percent(correct, total_ran),
                   "num_correct": correct, "num_counted": total, "num_counted_ran": total_ran}
        return {"metrics": metrics, "settings": self.settings()}

    def settings(self) -> dict:
        return super().settings() | {
            "benchmark": self.benchmark, "split": self.split, "procedure_denominator": self.procedure_denominator,
            "skip_missing_videos": self.skip_missing_videos, "num_categories": len(self.matcher.choices),
        }


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected COIN benchmarks; each writes into <out>/<benchmark>/, a summary into <out>."""
    parser = build_offline_parser("streammind eval coin", __doc__, max_new_tokens=MAX_NEW_TOKENS,
                                  annotations_help="COIN.json (default: <data-root>/COIN.json or coin.json)")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--split", default="test", help="subset to evaluate (default: %(default)s)")
    parser.add_argument("--video-dir", type=Path, default=None, help="default: <data-root>/videos")
    parser.add_argument("--procedure-denominator", choices=["faithful", "labels"], default="faithful",
                        help="faithful: VideoLLM-online's zip pairing; labels: divide by every label step")
    parser.add_argument("--skip-missing-videos", action="store_true",
                        help="leave out videos not on disk, as VideoLLM-online does (counted as load failures)")
    args = parser.parse_args(argv)
    setup_logging()
    model, processor = model_for(args, parser)
    summary = {}
    for benchmark in args.benchmarks:
        task = COINTask(benchmark, args.data_root, split=args.split, video_dir=args.video_dir, annotation=args.annotations,
                        procedure_denominator=args.procedure_denominator, skip_missing_videos=args.skip_missing_videos,
                        max_new_tokens=args.max_new_tokens, num_frames=args.num_frames, fps=args.fps,
                        max_frames=model.config.max_turn_frames if model is not None else None,
                        limit=args.limit, shard=tuple(args.shard) if args.shard else None)
        bench_args = argparse.Namespace(**{**vars(args), "out": args.out / benchmark})
        metrics = evaluate(task, model, processor, bench_args)
        failures = metrics["failures"]
        summary[benchmark] = {"accuracy": metrics["metrics"]["accuracy"], "accuracy_ran": metrics["metrics"]["accuracy_ran"],
                              "num_examples": failures["num_examples"], "num_failed": failures["num_failed"],
                              "num_empty_predictions": failures["num_empty_predictions"]}
    write_json(summary, args.out / "metrics.json")
    write_markdown_table(summary, args.out / "metrics.md", title="COIN (accuracy %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind eval coin", main))
