"""Multiple-choice QA: the prompt, the answer-letter parsing rule, the four dataset loaders,
and end-to-end runs with a tiny model on fixtures in each dataset's schema.

Run: .venv/bin/python -m pytest tests/eval/test_qa_mc.py -q
"""

import json

import numpy as np
import pytest

from streammind_eval.qa_mc import (
    format_question,
    is_correct,
    load_egoschema,
    load_mvbench,
    load_perceptiontest,
    load_videomme,
    main,
    parse_choice,
)
from tests.helpers import OFFLINE_FIXTURES as FIXTURES
from tests.helpers import data_root, save_tiny_model, world_video

OPTIONS = ["a red circle", "a blue square", "a green triangle", "nothing"]


def test_format_question():
    assert format_question(" What is shown? ", ["cat", "dog"]) == (
        "What is shown?\nOptions:\n(A) cat\n(B) dog\nAnswer with the option's letter only."
    )
    with pytest.raises(ValueError):
        format_question("Q", ["only one"])


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("B", 1), ("(C)", 2), ("D.", 3), ("B) a blue square", 1), ("[A]", 0), ("  C: because it is green", 2),  # rule 1
        ("The answer is C.", 2), ("Answer: (D)", 3), ("I choose option B", 1), ("the correct choice A", 0),  # rule 2
        ("a green triangle", 2), ("A green triangle.", 2),  # rule 3: equals an option
        ("A man is holding a blue square", 1),  # an article, not a letter; contains exactly one option
        ("E", None), ("Answer: E", None),  # letters beyond the options are not answers
        ("The answer is a", None), ("b", None), ("", None), ("I do not know", None),
    ],
)
def test_parse_choice(reply, choice):
    assert parse_choice(reply, OPTIONS) == choice


def test_parse_choice_ambiguous_text_and_correctness():
    assert parse_choice("the red ball", ["red", "red ball", "blue"]) is None  # two options contained
    assert parse_choice("blue", ["red", "red ball", "blue"]) == 2
    assert is_correct(prediction=1, reference=1) and not is_correct(prediction=None, reference=0)


def test_loaders(tmp_path):
    mvbench = load_mvbench(FIXTURES / "mvbench", ["action_sequence", "episodic_reasoning"])
    assert [e["id"] for e in mvbench] == ["action_sequence/0", "action_sequence/1", "episodic_reasoning/0"]
    first = mvbench[0]
    assert first["video"].endswith("video/star/Charades_v1_480/AB12C.mp4") and (first["start"], first["end"]) == (1.0, 9.0)
    assert first["reference"] == 1 and first["category"] == {"task": "Action Sequence"}
    assert mvbench[2]["frame_dir_fps"] == 3.0 and mvbench[2]["video"].endswith("tvqa/frames_fps3_hq/s01e01_seg01_clip_00")
    assert "start" not in load_mvbench(FIXTURES / "mvbench", ["action_antonym"])[0]  # an unbounded task
    with pytest.raises(ValueError, match="unknown MVBench tasks"):
        load_mvbench(FIXTURES / "mvbench", ["no_such_task"])

    videomme = load_videomme(FIXTURES / "videomme")
    assert [e["id"] for e in videomme] == ["001-1", "001-2", "002-1"]
    assert videomme[0]["options"] == ["One.", "Two.", "Three.", "Four."] and videomme[1]["reference"] == 2
    assert videomme[0]["category"] == {"duration": "short", "domain": "Knowledge", "task_type": "Counting Problem"}
    grouped = [{"video_id": "001", "videoID": "abc", "duration": "medium", "domain": "Film & Television",
                "questions": [{"question_id": "001-1", "task_type": "OCR Problems", "question": "Q?",
                               "options": ["A. x", "B. y", "C. z", "D. w"], "answer": "D"}]}]
    (tmp_path / "videomme.json").write_text(json.dumps(grouped))
    flat = load_videomme(tmp_path)
    assert flat[0]["reference"] == 3 and flat[0]["category"]["duration"] == "medium" and flat[0]["video"].endswith("data/abc")

    egoschema = load_egoschema(FIXTURES / "egoschema")
    assert [(e["id"], e["reference"]) for e in egoschema] == [("q-001", 1), ("q-002", 0), ("q-003", None)]
    assert len(egoschema[0]["options"]) == 5

    perception = load_perceptiontest(FIXTURES / "perceptiontest")
    assert [e["id"] for e in perception] == ["video_1/0", "video_1/1", "video_2/0"]
    assert perception[0]["reference"] == 2 and perception[0]["category"] == {"area": "semantics", "reasoning": "descriptive"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_model(tmp_path_factory.mktemp("qa_mc_model"), tiny_tokenizer_dir)


def _frame_dir(directory, small_world):
    """3 s of frames at 3 fps from a world video, as MVBench's frame-type task stores them."""
    from PIL import Image

    from streammind.evaluation.clip_sampling import load_frames

    clip = load_frames(world_video(small_world, 2), fps=3.0, start=0.0, end=3.0)
    directory.mkdir(parents=True)
    for i, frame in enumerate(clip.frames):
        Image.fromarray(np.asarray(frame)).save(directory / f"{i + 1:05d}.jpg")


def _run(dataset, root, model_dir, out, *extra):
    assert main(["--dataset", dataset, "--model", str(model_dir), "--data-root", str(root), "--out", str(out),
                 "--num-frames", "3", "--max-new-tokens", "3", *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return metrics, predictions


def test_end_to_end_mvbench(tmp_path, small_world, model_dir):
    root = data_root(tmp_path, "mvbench", {"video/star/Charades_v1_480/AB12C.mp4": world_video(small_world, 0),
                                           "video/ssv2_video/1234.webm": world_video(small_world, 1)})
    _frame_dir(root / "video" / "tvqa" / "frames_fps3_hq" / "s01e01_seg01_clip_00", small_world)
    metrics, predictions = _run("mvbench", root, model_dir, tmp_path / "out",
                                "--tasks", "action_sequence", "episodic_reasoning", "action_antonym")
    assert [p["id"] for p in predictions if "error" in p] == ["action_sequence/1"]  # XY34Z.mp4 is missing
    assert metrics["failures"]["by_reason"] == {"missing_video": 1}
    examples = {e["id"]: e for e in load_mvbench(root, ["action_sequence", "episodic_reasoning", "action_antonym"])}
    correct = sum(is_correct(prediction=parse_choice(p["prediction"], examples[p["id"]]["options"]), reference=examples[p["id"]]["reference"])
                  for p in predictions if "error" not in p)
    assert metrics["metrics"]["num_correct"] == correct and metrics["metrics"]["accuracy"] == pytest.approx(correct / 4)
    assert set(metrics["accuracy_by_task"]) == {"Action Sequence", "Episodic Reasoning", "Action Antonym", "macro_mean"}
    assert metrics["metrics"]["num_unparsed"] == len(metrics["unparsed_ids"])


@pytest.mark.parametrize("dataset", ["videomme", "egoschema", "perceptiontest"])
def test_end_to_end_other_datasets(dataset, tmp_path, small_world, model_dir):
    videos = {
        "videomme": {"data/fFjv93ACGo8.mp4": 0},
        "egoschema": {"videos/q-001.mp4": 0, "videos/q-002.mp4": 1, "videos/q-003.mp4": 2},
        "perceptiontest": {"videos/video_1.mp4": 0},
    }[dataset]
    root = data_root(tmp_path, dataset, {k: world_video(small_world, v) for k, v in videos.items()})
    out = tmp_path / "out"
    metrics, predictions = _run(dataset, root, model_dir, out)
    assert len(predictions) == 3
    m = metrics["metrics"]
    if dataset == "videomme":
        assert metrics["failures"]["num_failed"] == 1 and m["num_with_answer"] == 3
        assert {"accuracy_by_duration", "accuracy_by_domain", "accuracy_by_task_type"} <= set(metrics)
        assert set(metrics["accuracy_by_duration"]) == {"short", "long", "macro_mean"}
        assert metrics["accuracy_by_duration"]["long"] == 0.0  # its only question failed: counted as wrong
    if dataset == "egoschema":
        assert (m["num_with_answer"], m["num_without_answer"]) == (2, 1)
        lines = (out / "egoschema_submission.csv").read_text().splitlines()
        assert lines[0] == "q_uid,answer" and [line.split(",")[0] for line in lines[1:]] == ["q-001", "q-002", "q-003"]
    if dataset == "perceptiontest":
        assert metrics["failures"]["num_failed"] == 1
        assert set(metrics["accuracy_by_area"]) == {"semantics", "physics", "macro_mean"}
        assert set(metrics["accuracy_by_reasoning"]) == {"descriptive", "counterfactual", "macro_mean"}
