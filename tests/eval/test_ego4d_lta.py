"""Ego4D LTA: taxonomy names, parsing and mapping, edit distance with the min over beams,
AUED, the example windows, and end-to-end runs with a tiny model on fixtures in Ego4D's schema.

Run: .venv/bin/python -m pytest tests/eval/test_ego4d_lta.py -q
"""

import json

import pytest

from streammind_eval.ego4d_lta import (
    NUM_FUTURE,
    Ego4DLTATask,
    Taxonomy,
    aued,
    edit_distance_at,
    edit_distance_curve,
    main,
    parse_actions,
    taxonomy_name,
)
from tests.helpers import OFFLINE_FIXTURES as FIXTURES
from tests.helpers import data_root, save_tiny_model, world_video


@pytest.mark.parametrize(
    ("row", "name"),
    [("put_(place,_leave,_drop)", "put"), ("bat_(sports)", "sport bat"), ("bat_(tool)", "bat"), ("nut_(food)", "nuts"),
     ("turn_on_(switch)", "turn on"), ("cutting_board", "cutting board"), ("apple", "apple")],
)
def test_taxonomy_names(row, name):
    assert taxonomy_name(row) == name


def test_parse_actions():
    text = "1. Take knife.\n2. put cup\nno number here\nStep 3. Cut bat.\n4."
    assert parse_actions(text) == ["take knife", "put cup", "cut bat", ""]
    assert parse_actions("") == []


def test_taxonomy_mapping_duplicates_and_fallback():
    taxonomy = Taxonomy.from_file(FIXTURES / "ego4d_lta" / "annotations" / "fho_lta_taxonomy.json")
    assert taxonomy.verbs == ["take", "put", "cut", "take"] and taxonomy.nouns == ["knife", "sport bat", "bat", "cup"]
    assert taxonomy.labels("take knife") == (3, 0)  # a repeated name keeps its last label
    assert taxonomy.labels("put sport bat") == (1, 1)
    assert taxonomy.labels("puts cup") == (1, 3)  # Levenshtein-nearest "verb noun"
    assert taxonomy.fallback_action == "take knife"
    assert taxonomy.beam_labels("1. Put cup.") == [(1, 3)] * NUM_FUTURE  # padded with the last action
    long = "\n".join(f"{i}. cut bat" for i in range(1, 26))
    assert taxonomy.beam_labels(long) == [(2, 2)] * NUM_FUTURE  # cut to 20
    assert taxonomy.beam_labels("1. put cup\n2. cut bat", num_future=3) == [(1, 3), (2, 2), (2, 2)]
    assert taxonomy.beam_labels("") == taxonomy.beam_labels("no numbered line") == [(3, 0)] * NUM_FUTURE


def test_edit_distance_min_over_beams_and_aued():
    beams = [[1, 2, 3], [1, 1, 1]]
    assert edit_distance_at(prediction=beams, reference=[1, 2, 4], z=3) == pytest.approx(1 / 3)
    assert edit_distance_at(prediction=beams, reference=[1, 2, 4], z=2) == 0.0
    assert edit_distance_at(prediction=beams, reference=[1, 1, 4], z=3) == pytest.approx(1 / 3)  # the second beam
    assert edit_distance_curve(prediction=[[5, 6]], reference=[6, 5], num_future=2) == [1.0, 1.0]
    assert edit_distance_at(prediction=[[(0, 1), (2, 3)]], reference=[(0, 1), (2, 4)], z=2) == 0.5  # actions are pairs
    assert aued([0.0, 1.0]) == 0.5
    assert aued([0.0, 0.5, 1.0]) == 0.5
    assert aued([1.0] * 20) == 1.0
    with pytest.raises(ValueError):
        edit_distance_at(prediction=[], reference=[1], z=1)


def test_examples_follow_the_protocol(tmp_path):
    root = data_root(tmp_path, "ego4d_lta", {})
    examples = Ego4DLTATask(root).examples()
    assert [e["id"] for e in examples] == ["clipA_7", "clipA_8", "clipB_7"]  # clipC has too few actions
    first = examples[0]
    # actions 0..7 of clipA (parent offset 1 s): [1.0 + 0.0, 1.0 + 2.1 + 0.25] rounded to the 2 fps grid
    assert (first["start"], first["end"]) == (1.0, 4.0)
    assert first["question"].startswith("After 6 video frames, anticipate the next 20 actions.")
    assert first["reference"] == [[k % 3, (k // 2) % 4] for k in range(8, 28)]
    assert examples[1]["reference"][-1] == [28 % 3, (28 // 2) % 4]
    clips = Ego4DLTATask(root, video_source="clips").examples()
    assert (clips[0]["start"], clips[0]["end"]) == (0.0, 3.0) and clips[0]["video"].endswith("v2/clips/clipA.mp4")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return save_tiny_model(tmp_path_factory.mktemp("lta_model"), tiny_tokenizer_dir)


def test_end_to_end_val(tmp_path, small_world, model_dir):
    root = data_root(tmp_path, "ego4d_lta", {"v2/full_scale/vidA.mp4": world_video(small_world, 0)})
    out = tmp_path / "out"
    assert main(["--model", str(model_dir), "--data-root", str(root), "--out", str(out), "--num-frames", "4",
                 "--max-new-tokens", "4", "--num-beams", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == ["clipA_7", "clipA_8", "clipB_7"]
    assert predictions[2]["reason"] == "missing_video" and metrics["failures"]["num_failed"] == 1
    assert all(len(p["prediction"]) == 2 for p in predictions[:2])
    # Recompute verb ED@20 from the saved beams; the failed example counts as 1.
    task = Ego4DLTATask(root)
    references = {e["id"]: e["reference"] for e in task.examples()}
    ed = []
    for p in predictions[:2]:
        beams = [[v for v, _ in task.taxonomy.beam_labels(text)] for text in p["prediction"]]
        ed.append(edit_distance_at(prediction=beams, reference=[v for v, _ in references[p["id"]]], z=20))
    assert metrics["metrics"]["verb_ED@20"] == pytest.approx((sum(ed) + 1.0) / 3)
    assert metrics["metrics"]["verb_ED@20_ran"] == pytest.approx(sum(ed) / 2)
    submission = json.loads((out / "val_predictions.json").read_text())
    assert set(submission) == {"clipA_7", "clipA_8"}
    assert len(submission["clipA_7"]["verb"]) == 2 and len(submission["clipA_7"]["noun"][0]) == 20


def test_end_to_end_unannotated_split_writes_the_challenge_file(tmp_path, small_world, model_dir):
    root = data_root(tmp_path, "ego4d_lta", {"v2/full_scale/vidA.mp4": world_video(small_world, 0)})
    out = tmp_path / "out"
    main(["--model", str(model_dir), "--data-root", str(root), "--out", str(out), "--split", "test_unannotated",
          "--num-frames", "2", "--max-new-tokens", "3", "--num-beams", "5"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert "no labels" in metrics["metrics"]["note"]
    submission = json.loads((out / "test_unannotated_predictions.json").read_text())
    assert list(submission) == ["clipA_7"]
    assert len(submission["clipA_7"]["verb"]) == 5 and all(len(beam) == 20 for beam in submission["clipA_7"]["noun"])
