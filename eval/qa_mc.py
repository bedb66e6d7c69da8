"""Multiple-choice video QA: MVBench, Video-MME, EgoSchema, PerceptionTest (docs/design.md §6).

    streammind eval qa_mc --dataset mvbench --model runs/stage1 --data-root data/mvbench --out runs/eval/mvbench
    streammind eval qa_mc --dataset videomme --model runs/stage1 --data-root data/videomme --out runs/eval/videomme

Data layouts under --data-root (not shipped):

    MVBench (--dataset mvbench; OpenGVLab/MVBench as distributed)
        json/<task>.json    [{"video": "xxx.mp4", "question": "...", "candidates": ["...", ...],
                              "answer": "<the correct candidate's text>",
                              "start": s, "end": s (tasks with a time bound)}]
        video/<folder>/<video>   the folder per task is MVBENCH_TASKS below; "Episodic
                            Reasoning" uses frame directories (images at 3 fps) instead
                            of files. --tasks selects tasks by json stem.
    Video-MME (--dataset videomme; lmms-lab/Video-MME)
        videomme.json       a list of records {"videoID": "fFjv93ACGo8", "duration": "short",
                            "domain": ..., "sub_category": ..., "task_type": ..., "question_id":
                            "001-1", "question": ..., "options": ["A. ...", "B. ...", ...],
                            "answer": "C"} (the parquet's rows, e.g. `pandas.read_parquet(
                            "videomme/test-00000-of-00001.parquet").to_json("videomme.json",
                            orient="records")`; .jsonl also read). Records grouped per video
                            with a "questions" list are flattened. Subtitles are not used.
        data/<videoID>.mp4  (or videos/<videoID>.mp4 when there is no data/, as in StreamMind's release)
    EgoSchema (--dataset egoschema)
        questions.json      [{"q_uid": ..., "question": ..., "option 0": ..., ..., "option 4": ...}]
        subset_answers.json optional {q_uid: correct option index} (the public 500-question
                            subset); questions without one are answered and written but not
                            scored; every answer also goes to egoschema_submission.csv
                            ("q_uid,answer", -1 when unparsed) for the evaluation server
        videos/<q_uid>.mp4  (or good_clips_git/<q_uid>.mp4 when there is no videos/, as in
                            StreamMind's release)
    PerceptionTest (--dataset perceptiontest; multiple-choice video QA)
        mc_question_<split>.json  {video_id: {"mc_question": [{"id": ..., "question": ...,
                            "options": [3 strings], "answer_id": i, "area": ..., "reasoning": ...}]}}
                            (--split valid by default; answer_id absent on test: not scored)
        videos/<video_id>.mp4

Prompt (ours): the question, then "Options:" and one "(A) text" line per option, then
"Answer with the option's letter only." Options keep their dataset order; Video-MME's
"A. " prefixes are stripped before re-lettering.

Answer parsing (`parse_choice`), first rule that yields a valid letter (A .. the n-th):
1. the reply starts with the letter, bare or as "(B)", "[B]", "B.", "B)", "B:" (a letter
   followed by a space and a word, as in "A man ...", is not taken as an answer);
2. "answer is B", "answer: (B)", "option B", "choice B" anywhere (case-insensitive words,
   upper-case letter);
3. the reply, lower-cased with punctuation and spaces collapsed, equals one option's
   text, or contains exactly one option's text;
otherwise unparsed (counted, scored wrong).

Metrics: accuracy over questions with an answer (failed videos and unparsed replies count
as wrong; accuracy_ran is over those that ran), accuracy per category value (MVBench: task; Video-MME: duration, domain,
task_type; PerceptionTest: area, reasoning) with the macro mean over each category's
values, and counts of failed videos, empty and unparsed replies, unscored questions.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from streammind.errors import run_command
from streammind.evaluation.answering import answer
from streammind.evaluation.clip_sampling import find_video
from streammind.evaluation.offline import OfflineTask, build_offline_parser, evaluate, model_for
from streammind.evaluation.tasks import setup_logging
from streammind.fileio import read_json, read_jsonl, write_text

DATASETS = ("mvbench", "videomme", "egoschema", "perceptiontest")
LETTERS = string.ascii_uppercase
MAX_NEW_TOKENS = 32
MVBENCH_FRAME_FPS = 3.0  # frame directories of the frame-type task

# MVBench task -> (json file, video folder under video/, "video" or "frame", has a time bound)
MVBENCH_TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video", "video", False),
    "Action Count": ("action_count.json", "perception/videos", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation", "video", False),
    "State Change": ("state_change.json", "perception/videos", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd", "video", False),
    "Character Order": ("character_order.json", "perception/videos", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame", True),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation", "video", False),
}
CATEGORY_KEYS = {
    "mvbench": ("task",),
    "videomme": ("duration", "domain", "task_type"),
    "egoschema": (),
    "perceptiontest": ("area", "reasoning"),
}


# ---------------------------------------------------------------------------------------
# Prompt and parsing (pure)
# ---------------------------------------------------------------------------------------


def format_question(question: str, options: Sequence[str]) -> str:
    """The question with lettered options and the answer instruction."""
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"need 2 to {len(LETTERS)} options, got {len(options)}")
    lines = [question.strip(), "Options:"] + [f"({LETTERS[i]}) {str(o).strip()}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter only."


def _normalise(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


_LEADING = re.compile(r"^\s*[(\[]?([A-Z])(?:[)\].:]|\s*$)")
_PHRASE = re.compile(r"\b(?:answer\s*(?:is|:)|option|choice)\s*:?\s*[(\[]?([A-Z])(?![A-Za-z])", re.IGNORECASE)


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """The option index a reply chooses, or None (rules in the module docstring)."""
    n = len(options)

    def valid(letter: str) -> int | None:
        index = LETTERS.find(letter)
        return index if 0 <= index < n else None

    match = _LEADING.match(text)
    if match and valid(match.group(1)) is not None:
        return valid(match.group(1))
    for match in _PHRASE.finditer(text):
        letter = match.group(1)
        if letter.isupper() and valid(letter) is not None:
            return valid(letter)
    reply = _normalise(text)
    if not reply:
        return None
    normalised = [_normalise(str(o)) for o in options]
    exact = [i for i, o in enumerate(normalised) if o and o == reply]
    if len(exact) == 1:
        return exact[0]
    contained = [i for i, o in enumerate(normalised) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", reply)]
    return contained[0] if len(contained) == 1 else None


def is_correct(*, prediction: int | None, reference: int) -> bool:
    """Whether the parsed choice is the correct option (None is wrong)."""
    return prediction is not None and prediction == reference


# ---------------------------------------------------------------------------------------
# Loaders: each returns examples {"id", "video", "question", "options", "reference"
# (correct index or None), "category": {...}, optional "start", "end", "frame_dir_fps"}
# ---------------------------------------------------------------------------------------


def _read_records(path: Path) -> list:
    """A JSON list (or a JSON Lines file of records)."""
    if path.suffix == ".jsonl":
        return [record for _, record in read_jsonl(path)]
    return read_json(path)


def _video(directory: Path, name: str) -> str:
    """The video file (any usual suffix), else the bare path (it then fails at run time, counted)."""
    return str(find_video(directory, name) or directory / name)


def _video_dir(root: Path, *names: str) -> Path:
    """The first of root/<name> that is a directory, else root/<first name> (its videos then fail, counted)."""
    return next((root / name for name in names if (root / name).is_dir()), root / names[0])


def load_mvbench(root: Path, tasks: Sequence[str] | None = None) -> list[dict]:
    """MVBench examples; `tasks` are json stems ("action_sequence", ...), default all 20."""
    known = {spec[0][: -len(".json")]: name for name, spec in MVBENCH_TASKS.items()}
    selected = list(known) if tasks is None else list(tasks)
    unknown = [t for t in selected if t not in known]
    if unknown:
        raise ValueError(f"unknown MVBench tasks {unknown}; known: {sorted(known)}")
    out = []
    for stem in selected:
        name = known[stem]
        json_name, folder, kind, bounded = MVBENCH_TASKS[name]
        for k, item in enumerate(_read_records(root / "json" / json_name)):
            options = [str(c) for c in item["candidates"]]
            if str(item["answer"]) not in options:
                raise ValueError(f"MVBench {json_name}[{k}]: the answer {item['answer']!r} is not a candidate")
            example = {
                "id": f"{stem}/{k}", "video": _video(root / "video" / folder, item["video"]), "question": item["question"],
                "options": options, "reference": options.index(str(item["answer"])), "category": {"task": name},
            }
            if bounded and "start" in item and "end" in item:
                example |= {"start": float(item["start"]), "end": float(item["end"])}
            if kind == "frame":
                example["frame_dir_fps"] = MVBENCH_FRAME_FPS
            out.append(example)
    return out


_OPTION_PREFIX = re.compile(r"^\s*[(\[]?[A-Z][.)\]:]\s*")


def load_videomme(root: Path) -> list[dict]:
    """Video-MME examples from videomme.json / .jsonl."""
    path = next((p for p in (root / "videomme.json", root / "videomme.jsonl") if p.exists()), None)
    if path is None:
        raise FileNotFoundError(f"no videomme.json or videomme.jsonl in {root}")
    rows = []
    for record in _read_records(path):
        if "questions" in record:  # grouped per video
            video_fields = {k: v for k, v in record.items() if k != "questions"}
            rows += [video_fields | q for q in record["questions"]]
        else:
            rows.append(record)
    out = []
    for row in rows:
        options = [_OPTION_PREFIX.sub("", str(o)) for o in row["options"]]
        answer_letter = str(row["answer"]).strip().upper()[:1]
        video_key = str(row.get("videoID") or row["video_id"])
        out.append({
            "id": str(row["question_id"]), "video": _video(_video_dir(root, "data", "videos"), video_key), "question": row["question"],
            "options": options, "reference": LETTERS.index(answer_letter) if answer_letter else None,
            "category": {k: str(row[k]) for k in CATEGORY_KEYS["videomme"] if k in row},
        })
    return out


def load_egoschema(root: Path) -> list[dict]:
    """EgoSchema examples; answers from subset_answers.json where present."""
    answers = _read_records(root / "subset_answers.json") if (root / "subset_answers.json").exists() else {}
    out = []
    for row in _read_records(root / "questions.json"):
        options = [str(row[f"option {i}"]) for i in range(5)]
        q_uid = str(row["q_uid"])
        out.append({
            "id": q_uid, "video": _video(_video_dir(root, "videos", "good_clips_git"), q_uid), "question": row["question"], "options": options,
            "reference": int(answers[q_uid]) if q_uid in answers else None, "category": {},
        })
    return out


def load_perceptiontest(root: Path, split: str = "valid") -> list[dict]:
    """PerceptionTest multiple-choice examples of mc_question_<split>.json."""
    data = _read_records(root / f"mc_question_{split}.json")
    out = []
    for video_id, entry in data.items():
        for q in entry["mc_question"]:
            out.append({
                "id": f"{video_id}/{q['id']}", "video": _video(root / "videos", video_id), "question": q["question"],
                "options": [str(o) for o in q["options"]],
                "reference": int(q["answer_id"]) if q.get("answer_id") is not None else None,
                "category": {k: str(q[k]) for k in CATEGORY_KEYS["perceptiontest"] if k in q},
            })
    return out


# ---------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------


class MultipleChoiceTask(OfflineTask):
    """Multiple-choice QA on one dataset (layouts and rules in the module docstring).

    Args:
        dataset: one of DATASETS.
        data_root: the dataset's layout.
        tasks: MVBench tasks by json stem (default all).
        split: PerceptionTest split.
        **sampling: `OfflineTask` arguments (num_frames, fps, max_frames, limit, shard).
    """

    def __init__(
        self,
        dataset: str,
        data_root: str | Path,
        *,
        tasks: Sequence[str] | None = None,
        split: str = "valid",
        max_new_tokens: int = MAX_NEW_TOKENS,
        **sampling,
    ):
        super().__init__(max_new_tokens=max_new_tokens, **sampling)
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
        self.dataset = dataset
        self.name = f"qa_mc_{dataset}"
        self.title = {"mvbench": "MVBench", "videomme": "Video-MME", "egoschema": "EgoSchema",
                      "perceptiontest": "PerceptionTest (multiple choice)"}[dataset]
        self.root = Path(data_root)
        self.tasks, self.split = tasks, split

    def load_examples(self) -> list[dict]:
        if self.dataset == "mvbench":
            return load_mvbench(self.root, self.tasks)
        if self.dataset == "videomme":
            return load_videomme(self.root)
        if self.dataset == "egoschema":
            return load_egoschema(self.root)
        return load_perceptiontest(self.root, self.split)

    def run(self, model, processor, example: Mapping) -> dict:
        clip = self.load_clip(example)
        prompt = format_question(example["question"], example["options"])
        text = answer(model, processor, clip.frames, prompt, max_new_tokens=self.max_new_tokens)
        return {"prediction": text, "num_frames": len(clip.times)}

    def score(self, *, prediction: Mapping, reference: Mapping) -> dict:
        choice = parse_choice(prediction["prediction"], reference["options"])
        out = {"id": str(reference["id"]), "choice": choice, "category": reference["category"]}
        if reference["reference"] is not None:
            out["correct"] = is_correct(prediction=choice, reference=reference["reference"])
        return out

    def aggregate(self, scores: Sequence[Mapping]) -> dict:
        """Accuracy over answered questions (failed videos and unparsed replies wrong), per category."""
        with_answer = [e for e in self.examples() if e["reference"] is not None]
        ran = [s for s in scores if "correct" in s]
        correct = sum(s["correct"] for s in ran)
        unparsed = [s["id"] for s in scores if s["choice"] is None]
        out = {
            "metrics": {
                "accuracy": correct / len(with_answer) if with_answer else None,
                "accuracy_ran": correct / len(ran) if ran else None,
                "num_correct": correct,
                "num_with_answer": len(with_answer),
                "num_without_answer": self.num_examples - len(with_answer),
                "num_unparsed": len(unparsed),
            },
            "unparsed_ids": unparsed,
            "settings": self.settings(),
        }
        ran_by_id = {s["id"]: s["correct"] for s in ran}
        for key in CATEGORY_KEYS[self.dataset]:
            groups: dict[str, list[bool]] = defaultdict(list)
            for example in with_answer:
                if key in example["category"]:  # failed examples count as wrong
                    groups[example["category"][key]].append(ran_by_id.get(str(example["id"]), False))
            if groups:
                table = {value: sum(v) / len(v) for value, v in sorted(groups.items())}
                out[f"accuracy_by_{key}"] = table | {"macro_mean": sum(table.values()) / len(table)}
        return out

    def settings(self) -> dict:
        return super().settings() | {"dataset": self.dataset, "split": self.split if self.dataset == "perceptiontest" else None,
                                     "tasks": list(self.tasks) if self.tasks else None}

    def after_run(self, predictions: Sequence[Mapping], out_dir: Path) -> None:
        """EgoSchema: egoschema_submission.csv, "q_uid,answer" for every question (-1: failed or unparsed)."""
        if self.dataset != "egoschema":
            return
        options = {str(e["id"]): e["options"] for e in self.examples()}
        lines = ["q_uid,answer"]
        for record in predictions:
            choice = None if "error" in record else parse_choice(record["prediction"], options[record["id"]])
            lines.append(f"{record['id']},{-1 if choice is None else choice}")
        write_text(Path(out_dir) / "egoschema_submission.csv", "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Answer every question and write predictions, metrics and a table into --out."""
    parser = build_offline_parser("streammind eval qa_mc", __doc__, max_new_tokens=MAX_NEW_TOKENS)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--tasks", nargs="+", default=None, help="MVBench tasks by json stem (default: all 20)")
    parser.add_argument("--split", default="valid", help="PerceptionTest split, mc_question_<split>.json (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    model, processor = model_for(args, parser)
    task = MultipleChoiceTask(args.dataset, args.data_root, tasks=args.tasks, split=args.split,
                              max_new_tokens=args.max_new_tokens, num_frames=args.num_frames, fps=args.fps,
                              max_frames=model.config.max_turn_frames if model is not None else None,
                              limit=args.limit, shard=tuple(args.shard) if args.shard else None)
    evaluate(task, model, processor, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind eval qa_mc", main))
