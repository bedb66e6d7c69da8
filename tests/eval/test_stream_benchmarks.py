"""End-to-end runs of the streaming benchmarks (eval.synthetic, eval.ego4d_narration,
eval.soccernet) with a tiny saved model on tiny data that follows the real layouts.

Run: .venv/bin/python -m pytest tests/eval/test_stream_benchmarks.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from streammind import save_model
from streammind.training.annotations import load_annotations
from streammind_eval import ego4d_narration, soccernet, synthetic
from tests.helpers import make_tiny

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EGO4D_VIDEO = "3c0dffd0-e38e-4643-bc48-d513943dc20b"
EGO4D_MISSING_VIDEO = "9a7c1e52-0b4d-4c8e-b6f1-2e3d4c5b6a79"


@pytest.fixture(scope="module")
def saved_model(small_world, tmp_path_factory):
    """A tiny untrained model with short replies, saved with the world's tokenizer."""
    out = tmp_path_factory.mktemp("model")
    model, processor = make_tiny(AutoTokenizer.from_pretrained(small_world / "tokenizer"), max_reply_tokens=2)
    save_model(model, processor, out)
    return out


def common_args(model, data_root, out, *extra):
    return ["--model", str(model), "--data-root", str(data_root), "--out", str(out), "--device", "cpu", "--skip-meteor", *extra]


def read(path):
    return json.loads(Path(path).read_text())


def test_synthetic_both_protocols_write_everything(saved_model, small_world, tmp_path):
    assert synthetic.main(common_args(saved_model, small_world, tmp_path, "--split", "test", "--limit", "1")) == 0
    for protocol in ("free", "teacher"):
        folder = tmp_path / protocol
        for name in ("predictions.jsonl", "metrics.json", "metrics.md"):
            assert (folder / name).is_file(), f"{protocol}/{name}"
        assert len((folder / "predictions.jsonl").read_text().splitlines()) == 1
        assert len(list((folder / "plots").glob("*.png"))) == 1
    summary = read(tmp_path / "metrics.json")
    assert summary["protocols"] == ["free", "teacher"]
    assert summary["free"]["num_videos"] == 1 and summary["free"]["error_ids"] == []
    assert summary["teacher"]["num_videos"] == 1 and summary["teacher"]["num_failed"] == 0
    for name in ("lm_ppl", "time_diff", "fluency", "lm_correctness"):
        assert summary["teacher"][name] is not None
    teacher = read(tmp_path / "teacher" / "metrics.json")
    ids = [r.id for r in load_annotations(small_world / "test.jsonl")[:1]]
    assert [video["id"] for video in teacher["per_video"]] == ids
    assert (tmp_path / "metrics.md").read_text().startswith("# synthetic")


def test_synthetic_single_protocol(saved_model, small_world, tmp_path):
    synthetic.main(common_args(saved_model, small_world, tmp_path, "--protocol", "teacher", "--limit", "1"))
    assert read(tmp_path / "metrics.json")["protocols"] == ["teacher"]
    assert not (tmp_path / "free").exists()


def test_ego4d_narration_counts_missing_videos_and_annotations(saved_model, small_world, tmp_path):
    data = tmp_path / "videos"
    data.mkdir()
    source = load_annotations(small_world / "test.jsonl")[0].video
    shutil.copy(small_world / source, data / f"{EGO4D_VIDEO}.mp4")  # the other video is missing
    out = tmp_path / "out"
    # Threshold 1: the gate never fires, so the free-running stream stays fast.
    args = common_args(saved_model, data, out, "--annotations", str(FIXTURES / "ego4d_narration_stream.json"), "--threshold", "1")
    assert ego4d_narration.main(args) == 0

    summary = read(out / "metrics.json")
    empty_pass = f"{EGO4D_MISSING_VIDEO}/d5e6f7a8-b9c0-4d1e-9f2a-3b4c5d6e7f80"
    missing = f"{EGO4D_MISSING_VIDEO}/c4d2e1f0-1a2b-4c3d-8e9f-a0b1c2d3e4f5"
    assert summary["load_failures"]["failed_ids"] == [empty_pass]
    assert summary["free"]["num_videos"] == 3 and summary["free"]["error_ids"] == [missing]
    assert summary["teacher"]["num_videos"] == 2
    assert summary["teacher"]["failed_by_reason"] == {"missing_annotation": 1, "missing_video": 1}
    teacher = read(out / "teacher" / "metrics.json")
    assert sorted(f["id"] for f in teacher["failures"]["failed"]) == sorted([empty_pass, missing])
    free = read(out / "free" / "metrics.json")
    assert free["counts"]["error_ids"] == [missing]
    # Narration times are ceiled to the 0.5 s grid, as in VideoLLM-online.
    first = json.loads((out / "teacher" / "predictions.jsonl").read_text().splitlines()[0])
    assert [turn["time"] for turn in first["turns"]] == [0.0, 0.5, 1.0, 1.5, 3.0, 4.5]


def test_ego4d_accepts_a_canonical_jsonl(saved_model, small_world, tmp_path):
    out = tmp_path / "out"
    args = common_args(saved_model, small_world, out, "--annotations", str(small_world / "val.jsonl"), "--protocol", "teacher")
    ego4d_narration.main(args)
    summary = read(out / "metrics.json")
    assert summary["teacher"]["num_videos"] == 1 and summary["load_failures"]["num_failed"] == 0


def write_labels(path: Path, annotations: list[tuple[str, str]]) -> None:
    """A Labels-caption.json with the SoccerNet-Caption fields (see tests/fixtures/soccernet)."""
    fixture = read(next((FIXTURES / "soccernet").rglob("Labels-caption.json")))
    template = fixture["annotations"][0]
    items = [{**template, "gameTime": game_time, "anonymized": text, "description": text} for game_time, text in annotations]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"UrlLocal": fixture["UrlLocal"], "annotations": items}))


def test_soccernet_tree_with_videos(saved_model, small_world, tmp_path):
    root = tmp_path / "SoccerNet"
    match_a = "england_epl_2014-2015/2015-02-21 - 18-00 Chelsea 1 - 1 Burnley"
    match_b = "europe_uefa-champions-league_2016-2017/2017-03-08 - 22-45 Barcelona 6 - 1 Paris SG"
    write_labels(root / match_a / "Labels-caption.json", [("1 - 00:06", "[TEAM] lead 1-0."), ("1 - 00:02", "A corner for [TEAM]."),
                                                        ("2 - 00:03", "The second half is underway.")])
    write_labels(root / match_b / "Labels-caption.json", [("1 - 00:01", "Kick-off.")])
    video = small_world / load_annotations(small_world / "test.jsonl")[0].video
    shutil.copy(video, root / match_a / "1_224p.mkv")  # an mp4 stream under SoccerNet's name
    shutil.copy(video, root / match_b / "1_224p.mkv")  # match A's second half has no video

    out = tmp_path / "out"
    assert soccernet.main(common_args(saved_model, root, out, "--threshold", "1")) == 0
    summary = read(out / "metrics.json")
    assert summary["load_failures"]["failed_ids"] == [f"{match_b}/2"]
    assert summary["free"]["num_videos"] == 3 and summary["free"]["error_ids"] == [f"{match_a}/2"]
    assert summary["teacher"]["num_videos"] == 2
    assert summary["teacher"]["failed_by_reason"] == {"missing_annotation": 1, "missing_video": 1}
    # Plots of the halves of one match do not overwrite each other.
    assert sorted(p.name for p in (out / "free" / "plots").glob("*.png")) == sorted(
        f"{m.replace('/', '__')}__{h}.png" for m, h in ((match_a, 1), (match_a, 2), (match_b, 1))
    )


def test_soccernet_fixture_records_and_missing_halves():
    records, failures = soccernet.load_commentary_records(FIXTURES / "soccernet")
    assert [r.id.rsplit("/", 1)[1] for r in records] == ["1", "2", "1"]
    assert [(f.id.rsplit("/", 1)[1], f.reason) for f in failures] == [("2", "missing_annotation")]
    records, failures = soccernet.load_commentary_records(FIXTURES / "soccernet", halves=[1])
    assert len(records) == 2 and failures == []
