"""COIN benchmarks: names, queries, windows, the faithful scoring with its quirks, and an
end-to-end run with a tiny model on a fixture in COIN's schema.

Run: .venv/bin/python -m pytest tests/eval/test_coin.py -q
"""

import json

import pytest

from streammind.evaluation.text_matching import NearestMatcher
from streammind.media.video import ceil_to_grid
from streammind_eval.coin import (
    GRID_FPS,
    COINTask,
    main,
    procedure_lines,
    query_procedure,
    score_procedure,
    score_single,
    step_name,
    task_name,
)
from tests.helpers import data_root, save_tiny_model, world_video

STEPS = NearestMatcher(["grind coffee beans", "pour water", "stir", "crop and fold paper"])


def test_names_queries_and_grid():
    assert task_name("MakeCoffee") == "make coffee"
    assert task_name("ReplaceSIMCard") == "replace SIM card"
    assert task_name("ChangeTVChannel") == "change TV channel"
    assert task_name("InstallRJ45Connector") == "install RJ45 connector"
    assert step_name("process (crop, fold) paper") == "crop and fold paper"
    assert step_name("stir") == "stir"
    assert query_procedure(3) == ("What is the next 3 actions for the video? Format your answer concisely, listing each "
                                  "action on a new line with a number prefix. No extra text output.")
    assert query_procedure(1, "make coffee") == (
        "To make coffee, what is the next action for the video? Format your answer concisely. No extra text output."
    )
    assert [ceil_to_grid(t, GRID_FPS) for t in (3.1, 3.0, 0.01, -0.2)] == [3.5, 3.0, 0.5, 0.0]


def test_score_single_exact_nearest_and_argument_order():
    assert score_single(prediction="Pour water.", reference="pour water", matcher=STEPS)
    assert score_single(prediction="Stirr.", reference="stir", matcher=STEPS)  # nearest category
    assert score_single(prediction="pour the water", reference="pour water", matcher=STEPS)
    assert not score_single(prediction="Grind coffee beans.", reference="pour water", matcher=STEPS)
    # Only the prediction is normalised: swapping the arguments changes the verdict.
    assert not score_single(prediction="pour water", reference="Pour water.", matcher=STEPS)


def test_score_procedure_faithful_pairs_and_quirks():
    reference = ["pour water", "stir", "crop and fold paper"]
    full = "1. Pour water.\n2. Stir.\n3. Crop and fold paper."
    assert procedure_lines(full) == ["Pour water.", "Stir.", "Crop and fold paper."]
    assert score_procedure(prediction=full, reference=reference, matcher=STEPS) == (3, 3)
    # Quirk 1: fewer lines than label steps shrink the denominator (zip) ...
    assert score_procedure(prediction="1. Pour water.", reference=reference, matcher=STEPS) == (1, 1)
    # ... unless the corrected denominator counts every label step.
    assert score_procedure(prediction="1. Pour water.", reference=reference, matcher=STEPS, denominator="labels") == (1, 3)
    # An empty answer is one empty line: nearest to the shortest category ("stir").
    assert score_procedure(prediction="", reference=["stir", "pour water"], matcher=STEPS) == (1, 1)
    assert score_procedure(prediction="", reference=reference, matcher=STEPS) == (0, 1)
    # Extra lines are ignored.
    assert score_procedure(prediction=full + "\n4. Stir.", reference=reference[:2], matcher=STEPS) == (2, 2)
    # Quirk 3: everything before the last ". " of a line is dropped.
    assert procedure_lines("1. Pour water. Then stir.") == ["Then stir."]
    assert score_procedure(prediction="1. Pour water. Then stir.", reference=["pour water"], matcher=STEPS) == (0, 1)
    # Quirk 2: lines keep their case, so the (case-sensitive) nearest match can flip a verdict
    # that the lower-cased single-step rule gets right.
    tiny = NearestMatcher(["ba", "a"])
    assert score_single(prediction="Ba", reference="ba", matcher=tiny)
    assert score_procedure(prediction="1. Ba", reference=["ba"], matcher=tiny) == (0, 1)
    with pytest.raises(ValueError):
        score_procedure(prediction="x", reference=["x"], matcher=tiny, denominator="other")


def test_examples_follow_the_protocol(tmp_path):
    root = data_root(tmp_path, "coin", {})
    step = COINTask("step", root).examples()
    assert [e["id"] for e in step][:4] == ["vidA/step/0", "vidA/step/1", "vidA/step/2", "vidA/step/3"]
    assert len(step) == 8  # 4 + 2 + 2 test steps; the training video is left out
    first = step[0]
    assert (first["start"], first["end"]) == (0.5, 4.0)  # [ceil(0.4), ceil(3.1) + 0.5)
    assert first["reference"] == "grind coffee beans" and first["question"].startswith("What is the action in the video?")
    assert step[2]["reference"] == "crop and fold paper"  # renamed label
    nxt = COINTask("next", root).examples()
    assert [e["reference"] for e in nxt] == ["pour water", "crop and fold paper", "stir", "insert the sim card", "press the button"]
    task = COINTask("task", root).examples()
    assert [e["reference"] for e in task] == ["make coffee", "replace sim card", "change tv channel"]
    assert (task[0]["start"], task[0]["end"]) == (0.5, 12.0)
    proc = COINTask("taskprocedure", root).examples()
    assert proc[0]["reference"] == ["pour water", "crop and fold paper", "stir"]
    assert proc[0]["question"].startswith("To make coffee, what is the next 3 actions")
    assert proc[3]["reference"] == ["insert the sim card"]
    assert proc[3]["question"].startswith("To replace SIM card, what is the next action for the video?")
    assert COINTask("procedure", root).matcher.choices == sorted(
        ["grind coffee beans", "pour water", "crop and fold paper", "stir", "open the card slot", "insert the sim card",
         "pick up the remote", "press the button"]
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_model(tmp_path_factory.mktemp("coin_model"), tiny_tokenizer_dir)


@pytest.fixture
def coin_root(tmp_path, small_world):
    return data_root(tmp_path, "coin", {"videos/vidA.mp4": world_video(small_world, 0), "videos/vidB.mp4": world_video(small_world, 1)})


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_end_to_end_counts_failures_and_rescoring(coin_root, model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["--model", str(model_dir), "--data-root", str(coin_root), "--out", str(out), "--num-frames", "4",
                 "--max-new-tokens", "4"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary) == {"step", "next", "task", "procedure", "taskprocedure"}
    assert (summary["step"]["num_examples"], summary["step"]["num_failed"]) == (8, 2)
    assert (summary["task"]["num_examples"], summary["task"]["num_failed"]) == (3, 1)
    assert (out / "metrics.md").exists()

    metrics = json.loads((out / "step" / "metrics.json").read_text())
    predictions = _lines(out / "step" / "predictions.jsonl")
    assert len(predictions) == 8
    failed = [p for p in predictions if "error" in p]
    assert [p["id"] for p in failed] == ["vidMissing/step/0", "vidMissing/step/1"]
    assert {p["reason"] for p in failed} == {"missing_video"}
    assert metrics["failures"]["by_reason"] == {"missing_video": 2}
    references = {e["id"]: e["reference"] for e in COINTask("step", coin_root).examples()}
    matcher = COINTask("step", coin_root).matcher
    correct = sum(score_single(prediction=p["prediction"], reference=references[p["id"]], matcher=matcher)
                  for p in predictions if "error" not in p)
    assert metrics["metrics"]["num_correct"] == correct
    assert metrics["metrics"]["accuracy"] == pytest.approx(100 * correct / 8)  # failures count as wrong
    assert metrics["metrics"]["accuracy_ran"] == pytest.approx(100 * correct / 6)

    proc = json.loads((out / "procedure" / "metrics.json").read_text())["metrics"]
    labels = {e["id"]: e["reference"] for e in COINTask("procedure", coin_root).examples()}
    ran = [p for p in _lines(out / "procedure" / "predictions.jsonl") if "error" not in p]
    pairs = sum(min(len(p["prediction"].split("\n")), len(labels[p["id"]])) for p in ran)  # the faithful zip
    assert proc["num_counted_ran"] == pairs and proc["num_counted"] == pairs + 1  # + the failed example's label step

    # Re-scoring the saved predictions (no model) reproduces the metrics.
    rescored = tmp_path / "rescored"
    assert main(["--data-root", str(coin_root), "--out", str(rescored), "--benchmarks", "step", "procedure",
                 "--predictions", str(out / "step" / "predictions.jsonl"), str(out / "procedure" / "predictions.jsonl")]) == 0
    again = json.loads((rescored / "step" / "metrics.json").read_text())
    assert again["metrics"] == metrics["metrics"] and again["failures"] == metrics["failures"]


def test_skip_missing_videos_and_corrected_denominator(coin_root, model_dir, tmp_path):
    out = tmp_path / "out"
    main(["--model", str(model_dir), "--data-root", str(coin_root), "--out", str(out), "--num-frames", "2", "--max-new-tokens", "3",
          "--benchmarks", "step", "procedure", "--skip-missing-videos", "--procedure-denominator", "labels"])
    step = json.loads((out / "step" / "metrics.json").read_text())
    assert step["failures"]["num_examples"] == 8 and step["failures"]["num_failed"] == 2  # counted as load failures
    assert len(_lines(out / "step" / "predictions.jsonl")) == 6
    assert step["metrics"]["accuracy"] == step["metrics"]["accuracy_ran"]
    assert step["settings"]["num_categories"] == 6  # the missing video's steps are not categories
    proc = json.loads((out / "procedure" / "metrics.json").read_text())
    assert proc["metrics"]["num_counted"] == proc["metrics"]["num_counted_ran"] == 3 + 2 + 1 + 1  # every label step


def test_shards_merge_to_the_full_run(coin_root, model_dir, tmp_path):
    common = ["--data-root", str(coin_root), "--benchmarks", "step", "--num-frames", "2", "--max-new-tokens", "2"]
    main(common + ["--model", str(model_dir), "--out", str(tmp_path / "full")])
    for index in (0, 1):
        main(common + ["--model", str(model_dir), "--out", str(tmp_path / f"shard{index}"), "--shard", str(index), "2"])
    assert len(_lines(tmp_path / "shard1" / "step" / "predictions.jsonl")) == 4
    main(common + ["--out", str(tmp_path / "merged"), "--predictions",
                   str(tmp_path / "shard0" / "step" / "predictions.jsonl"), str(tmp_path / "shard1" / "step" / "predictions.jsonl")])
    merged = json.loads((tmp_path / "merged" / "step" / "metrics.json").read_text())
    full = json.loads((tmp_path / "full" / "step" / "metrics.json").read_text())
    assert merged["metrics"] == full["metrics"] and merged["failures"]["num_failed"] == 2
