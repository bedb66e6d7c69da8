"""Ego4D long-term action anticipation, ED@20 (VideoLLM-online's protocol, docs/design.md §6).

    streammind eval ego4d_lta --model runs/stage1 --data-root data/ego4d --out runs/eval/lta \
        [--split val] [--num-frames 32 | --fps 2] [--num-beams 5] [--video-source full_scale|clips]

Data layout under --data-root (Ego4D v2, https://ego4d-data.org, not shipped):

    annotations/fho_lta_taxonomy.json    {"verbs": ["adjust_(regulate,_increase/reduce,_change)", ...],
                                          "nouns": ["apple", "bat_(sports)", ...]}
    annotations/fho_lta_{split}.json     {"clips": [{"clip_uid", "video_uid", "action_idx",
                                          "clip_parent_start_sec", "action_clip_start_sec",
                                          "action_clip_end_sec", "verb_label", "noun_label"}, ...]}
    v2/full_scale/<video_uid>.mp4        (--video-source full_scale, the default) or
    v2/clips/<clip_uid>.mp4              (--video-source clips); --video-dir overrides either

Protocol (VideoLLM-online's `data/ego4d/lta.py`, github.com/showlab/videollm-online):
- Examples. Actions are grouped by clip and sorted by action_idx; clips with fewer than
  8 + 20 actions are left out (that is the protocol's sample set, not a failure). Every
  run of 8 observed actions i .. i+7 followed by 20 future actions i+8 .. i+27 is one
  example. The observed window runs from the start of action i to the end of action
  i+7 (full-video time = clip_parent_start_sec + action_clip_*_sec; with
  `--video-source clips` the clip's own time), both rounded to the 2 fps grid, the end
  frame included: [round(s), round(e) + 0.5 s).
- Query: "After {n} video frames, anticipate the next 20 actions. ..." where n is the
  number of 2 fps frames of the window (the protocol's count, whatever number of frames
  is sampled for the model).
- Decoding: beam search, 5 beams, 5 returned sequences, up to 512 new tokens.
- Parsing each beam: for each line, the text after its first "<number>." (lines without
  one are skipped), lower-cased, trailing periods stripped. Each such action is mapped to
  the Levenshtein-nearest "verb noun" string over all taxonomy verb x noun pairs (exact
  strings map directly; ties go to the lexicographically smallest string) and so to a
  (verb_label, noun_label). Taxonomy names are cleaned as VideoLLM-online does: the part
  before "(", underscores as spaces, and eight fixed renames that keep names distinct
  (pot_(planter) -> flowerpot, bat_(sports) -> sport bat, bat_(tool) -> bat, nut_(food)
  -> nuts, nut_(tool) -> nut, chip_(food) -> snack, chip_(wood'_metal), -> chips,
  chip_(wood,_metal) -> chip). When two labels share a cleaned name the later label wins
  (so the earlier one can never be predicted) — a quirk kept for faithfulness.
  A beam with more than 20 actions is cut to 20; a shorter one is padded with its last
  action; a beam with none gets 20 copies of the "most common action", which in the
  reference code is simply the first verb paired with the first noun among the
  most-repeated cleaned names, not a data statistic — kept, documented.
- Metrics: ED@Z = mean over examples of min over beams of Levenshtein(pred[:Z],
  gt[:Z]) / Z, for verbs, nouns and actions (verb-noun pairs) separately, Z = 20 (the
  paper's ED@20); AUED = trapezoid area of ED@z over z = 1..20, divided by 19 (lower is
  better for both). Failed examples (missing or undecodable video) count as ED = 1 at
  every z; the "_ran" ED@20 is over the examples that ran.
- The split "test_unannotated" has no labels: only predictions are written, including
  `<split>_predictions.json` in the Ego4D challenge layout
  {"<clip_uid>_<last observed action_idx>": {"verb": [[20 ids] x 5], "noun": ...}}.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from streammind.errors import run_command
from streammind.evaluation.answering import answer_beams
from streammind.evaluation.clip_sampling import find_video
from streammind.evaluation.offline import OfflineTask, build_offline_parser, evaluate, model_for
from streammind.evaluation.tasks import setup_logging
from streammind.evaluation.text_matching import NearestMatcher, levenshtein
from streammind.fileio import read_json, write_text

NUM_OBSERVED = 8
NUM_FUTURE = 20  # Z
NUM_BEAMS = 5  # K
GRID_FPS = 2.0
MAX_NEW_TOKENS = 512

_RENAMES = {
    "pot_(planter)": "flowerpot",
    "bat_(sports)": "sport bat",
    "bat_(tool)": "bat",
    "nut_(food)": "nuts",
    "nut_(tool)": "nut",
    "chip_(food)": "snack",
    "chip_(wood'_metal),": "chips",
    "chip_(wood,_metal)": "chip",
}
_NUMBERED = re.compile(r"\d+\.\s*(.*)")


def query(num_frames: int, num_future: int = NUM_FUTURE) -> str:
    """The LTA question for a window of `num_frames` 2 fps frames."""
    return (f"After {num_frames} video frames, anticipate the next {num_future} actions. Format your answer concisely, "
            "listing each action on a new line with a number prefix. No extra text output.")


def taxonomy_name(row: str) -> str:
    """A taxonomy entry as the benchmark names it: "put_(place,_leave,_drop)" -> "put"."""
    if row in _RENAMES:
        return _RENAMES[row]
    if "(" in row:
        return re.sub(r"_$", "", row.split("(")[0]).replace("_", " ")
    return row.replace("_", " ")


def parse_actions(text: str) -> list[str]:
    """Numbered lines -> action strings (text after the first "<n>.", lower-case, no trailing periods)."""
    actions = []
    for line in text.strip(" \n").split("\n"):
        match = _NUMBERED.search(line)
        if match:
            actions.append(match.group(1).lower().rstrip("."))
    return actions


class Taxonomy:
    """Cleaned verb / noun names and the mapping of free text to (verb_label, noun_label)."""

    def __init__(self, verbs: Sequence[str], nouns: Sequence[str]):
        self.verbs = [taxonomy_name(v) for v in verbs]
        self.nouns = [taxonomy_name(n) for n in nouns]
        verb_label = {name: i for i, name in enumerate(self.verbs)}  # a repeated name keeps its last label
        noun_label = {name: j for j, name in enumerate(self.nouns)}
        self.action_labels = {f"{v} {n}": (verb_label[v], noun_label[n]) for v in verb_label for n in noun_label}
        self.matcher = NearestMatcher(self.action_labels)
        verb_counts, noun_counts = Counter(self.verbs), Counter(self.nouns)
        top_verb = next(v for v in self.verbs if verb_counts[v] == max(verb_counts.values()))
        top_noun = next(n for n in self.nouns if noun_counts[n] == max(noun_counts.values()))
        self.fallback_action = f"{top_verb} {top_noun}"

    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        data = read_json(path)
        return cls(data["verbs"], data["nouns"])

    def labels(self, action: str) -> tuple[int, int]:
        """(verb_label, noun_label) of the nearest "verb noun" string."""
        return self.action_labels[self.matcher.nearest(action)[0]]

    def beam_labels(self, text: str, num_future: int = NUM_FUTURE) -> list[tuple[int, int]]:
        """One beam's text -> exactly `num_future` (verb, noun) labels (cut, padded or fallback)."""
        labels = [self.labels(a) for a in parse_actions(text)][:num_future]
        if not labels:
            return [self.labels(self.fallback_action)] * num_future
        return labels + [labels[-1]] * (num_future - len(labels))


# ---------------------------------------------------------------------------------------
# Scoring (pure)
# ---------------------------------------------------------------------------------------


def edit_distance_at(*, prediction: Sequence[Sequence], reference: Sequence, z: int) -> float:
    """min over beams of Levenshtein(beam[:z], reference[:z]) / z.

    Args:
        prediction: K beams, each a sequence of labels (ids, or (verb, noun) pairs).
        reference: the ground-truth label sequence.
        z: the horizon.
    """
    if not prediction:
        raise ValueError("edit_distance_at needs at least one beam")
    return min(levenshtein(list(beam[:z]), list(reference[:z])) for beam in prediction) / z


def edit_distance_curve(*, prediction: Sequence[Sequence], reference: Sequence, num_future: int = NUM_FUTURE) -> list[float]:
    """[ED@1, ..., ED@num_future] of one example."""
    return [edit_distance_at(prediction=prediction, reference=reference, z=z) for z in range(1, num_future + 1)]


def aued(curve: Sequence[float]) -> float:
    """Trapezoid area under ED@1..ED@Z (unit spacing) divided by Z - 1."""
    if len(curve) < 2:
        raise ValueError("AUED needs at least two horizons")
    area = sum((a + b) / 2.0 for a, b in zip(curve[:-1], curve[1:]))
    return area / (len(curve) - 1)


# ---------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------


def _round_to_grid(t: float, fps: float = GRID_FPS) -> float:
    return max(round(t * fps) / fps, 0.0)


class Ego4DLTATask(OfflineTask):
    """Ego4D LTA on one split (layout and protocol in the module docstring).

    Args:
        data_root: the layout of the module docstring.
        split: "val", "train" or "test_unannotated".
        annotation: the split's annotation file (default annotations/fho_lta_<split>.json).
        video_source: "full_scale" (video_uid files, parent time) or "clips".
        video_dir: default data_root/v2/<video_source>.
        num_beams: beams, all returned.
        **sampling: `OfflineTask` arguments (num_frames, fps, max_frames, limit, shard).
    """

    name = "ego4d_lta"
    title = "Ego4D LTA"

    def __init__(
        self,
        data_root: str | Path,
        *,
        split: str = "val",
        annotation: str | Path | None = None,
        video_source: str = "full_scale",
        video_dir: str | Path | None = None,
        num_beams: int = NUM_BEAMS,
        max_new_tokens: int = MAX_NEW_TOKENS,
        **sampling,
    ):
        super().__init__(max_new_tokens=max_new_tokens, **sampling)
        if video_source not in ("full_scale", "clips"):
            raise ValueError(f"video_source must be 'full_scale' or 'clips', got {video_source!r}")
        self.root = Path(data_root)
        self.split = split
        self.annotation = Path(annotation) if annotation else self.root / "annotations" / f"fho_lta_{split}.json"
        self.video_source = video_source
        self.video_dir = Path(video_dir) if video_dir else self.root / "v2" / video_source
        self.num_beams = num_beams
        self.taxonomy = Taxonomy.from_file(self.root / "annotations" / "fho_lta_taxonomy.json")
        self.labelled = "unannotated" not in split

    def load_examples(self) -> list[dict]:
        rows = read_json(self.annotation)["clips"]
        by_clip: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_clip[row["clip_uid"]].append(row)
        span = NUM_OBSERVED + NUM_FUTURE
        full = self.video_source == "full_scale"
        out = []
        for clip_uid, actions in by_clip.items():
            if len(actions) < span:
                continue
            actions.sort(key=lambda a: a["action_idx"])
            stem = actions[0]["video_uid"] if full else clip_uid
            video = str(find_video(self.video_dir, stem) or self.video_dir / f"{stem}.mp4")
            for i in range(len(actions) - span + 1):
                first, last = actions[i], actions[i + NUM_OBSERVED - 1]
                start = _round_to_grid((first["clip_parent_start_sec"] if full else 0.0) + first["action_clip_start_sec"])
                end = _round_to_grid((last["clip_parent_start_sec"] if full else 0.0) + last["action_clip_end_sec"])
                num_grid_frames = int(end * GRID_FPS) + 1 - int(start * GRID_FPS)
                future = actions[i + NUM_OBSERVED : i + span]
                out.append({
                    "id": f"{clip_uid}_{last['action_idx']}", "video": video, "start": start, "end": end + 1.0 / GRID_FPS,
                    "question": query(num_grid_frames),
                    "reference": [[a["verb_label"], a["noun_label"]] for a in future] if self.labelled else None,
                })
        return out

    def run(self, model, processor, example: Mapping) -> dict:
        clip = self.load_clip(example)
        beams = answer_beams(model, processor, clip.frames, example["question"], max_new_tokens=self.max_new_tokens,
                             num_beams=self.num_beams, num_return_sequences=self.num_beams)
        return {"prediction": beams, "num_frames": len(clip.times)}

    def predicted_labels(self, prediction: Mapping) -> list[list[tuple[int, int]]]:
        """[K][Z] (verb, noun) labels of a prediction's beams."""
        return [self.taxonomy.beam_labels(text) for text in prediction["prediction"]]

    def score(self, *, prediction: Mapping, reference: Mapping) -> dict:
        gt = reference["reference"]
        if gt is None:
            return {}
        beams = self.predicted_labels(prediction)
        gt_pairs = [tuple(p) for p in gt]
        return {
            "verb": edit_distance_curve(prediction=[[v for v, _ in b] for b in beams], reference=[v for v, _ in gt_pairs]),
            "noun": edit_distance_curve(prediction=[[n for _, n in b] for b in beams], reference=[n for _, n in gt_pairs]),
            "action": edit_distance_curve(prediction=beams, reference=gt_pairs),
        }

    def aggregate(self, scores: Sequence[Mapping]) -> dict:
        """ED@20 and AUED per verb / noun / action; failed examples count as ED = 1 at every horizon."""
        if not self.labelled:
            return {"metrics": {"note": f"split {self.split} has no labels: see {self.split}_predictions.json"},
                    "settings": self.settings()}
        n, num_failed = self.num_examples, self.num_examples - len(scores)
        metrics = {}
        for kind in ("verb", "noun", "action"):
            curves = [s[kind] for s in scores]
            ed = [c[-1] for c in curves]
            area = [aued(c) for c in curves]
            metrics[f"{kind}_ED@{NUM_FUTURE}"] = (sum(ed) + num_failed) / n if n else None
            metrics[f"{kind}_AUED"] = (sum(area) + num_failed) / n if n else None
            metrics[f"{kind}_ED@{NUM_FUTURE}_ran"] = sum(ed) / len(ed) if ed else None
        return {"metrics": metrics, "settings": self.settings()}

    def settings(self) -> dict:
        return super().settings() | {
            "split": self.split, "video_source": self.video_source, "num_observed": NUM_OBSERVED, "num_future": NUM_FUTURE,
            "num_beams": self.num_beams, "fallback_action": self.taxonomy.fallback_action,
        }

    def after_run(self, predictions: Sequence[Mapping], out_dir: Path) -> None:
        """<split>_predictions.json in the Ego4D challenge layout (failed examples are absent; see metrics)."""
        submission = {}
        for record in predictions:
            if "error" not in record:
                beams = self.predicted_labels(record)
                submission[record["id"]] = {"verb": [[v for v, _ in b] for b in beams], "noun": [[n for _, n in b] for b in beams]}
        write_text(Path(out_dir) / f"{self.split}_predictions.json", json.dumps(submission) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run Ego4D LTA and write predictions, metrics and the challenge-format file into --out."""
    parser = build_offline_parser("streammind eval ego4d_lta", __doc__, max_new_tokens=MAX_NEW_TOKENS,
                                  annotations_help="the split's annotation (default: <data-root>/annotations/fho_lta_<split>.json)")
    parser.add_argument("--split", default="val", help="val, train or test_unannotated (default: %(default)s)")
    parser.add_argument("--video-source", choices=["full_scale", "clips"], default="full_scale")
    parser.add_argument("--video-dir", type=Path, default=None, help="default: <data-root>/v2/<video-source>")
    parser.add_argument("--num-beams", type=int, default=NUM_BEAMS, help="beams, all returned (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    model, processor = model_for(args, parser)
    task = Ego4DLTATask(args.data_root, split=args.split, annotation=args.annotations, video_source=args.video_source,
                        video_dir=args.video_dir, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                        num_frames=args.num_frames, fps=args.fps, max_frames=model.config.max_turn_frames if model is not None else None,
                        limit=args.limit, shard=tuple(args.shard) if args.shard else None)
    evaluate(task, model, processor, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind eval ego4d_lta", main))
