"""Re-scoring free-running predictions (`streammind score`) on a tiny fixture.

Run: .venv/bin/python -m pytest tests/evaluation/test_score.py -q
"""

import json

import pytest

from streammind.evaluation.score import load_predictions, main, score_predictions
from streammind.evaluation.tasks import RecordError, write_markdown_table

REFERENCES = [
    {
        "id": "v1#p0",
        "video": "v1.mp4",
        "query": "Narrate.",
        "turns": [
            {"time": 1.0, "text": "You pick up a cup."},
            {"time": 5.0, "text": "You drink water."},
        ],
    },
    # No "id": matched to the prediction with the same "video".
    {"video": "v2.mp4", "query": "Narrate.", "turns": [{"time": 2.0, "text": "You open a door."}]},
    # No prediction at all.
    {"id": "v3#p0", "video": "v3.mp4", "query": "N.", "turns": [{"time": 3.0, "text": "Sit."}]},
    # The prediction failed.
    {"id": "v4#p0", "video": "v4.mp4", "query": "N.", "turns": [{"time": 4.0, "text": "Stand."}]},
]
PREDICTIONS = [
    {
        "id": "v1#p0",
        "video": "v1.mp4",
        "replies": [
            {"time": 1.5, "text": "You pick up a cup.", "prob": 0.9},
            {"time": 9.0, "text": "", "prob": 0.7},
        ],
    },
    {
        "id": "run-7",
        "video": "v2.mp4",
        "replies": [{"time": 2.5, "text": "You open the door.", "prob": 0.8}],
    },
    {"id": "v4#p0", "video": "v4.mp4", "replies": [], "error": "CUDA out of memory"},
    {"id": "v9#p0", "video": "v9.mp4", "replies": []},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_cli_writes_metrics_and_table(tmp_path):
    predictions = _write_jsonl(tmp_path / "predictions.jsonl", PREDICTIONS)
    references = _write_jsonl(tmp_path / "references.jsonl", REFERENCES)
    out, table = tmp_path / "run" / "metrics.json", tmp_path / "run" / "metrics.md"
    code = main(
        [
            "--predictions", str(predictions),
            "--references", str(references),
            "--out", str(out),
            "--table", str(table),
            "--tolerances", "1", "5",
            "--skip-meteor",
        ]
    )
    assert code == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == {
        "protocol", "settings", "counts", "micro", "per_video_mean",
        "per_video_mean_num_videos", "captions", "per_video",
    }
    assert metrics["settings"] == {
        "tolerances": [1.0, 5.0], "trigger_tolerance": 1.0, "caption_tolerance": 1.0
    }

    counts = metrics["counts"]
    assert counts["num_videos"] == 4 and counts["num_prediction_records"] == 4
    assert counts["missing_prediction_ids"] == ["v3#p0"] and counts["num_missing_predictions"] == 1
    assert counts["error_ids"] == ["v4#p0"] and counts["num_errors"] == 1
    assert counts["empty_prediction_ids"] == ["v4#p0"] and counts["num_empty_predictions"] == 1
    assert counts["num_empty_reply_texts"] == 1
    assert counts["unmatched_prediction_ids"] == ["v9#p0"]
    assert counts["num_unmatched_predictions"] == 1
    assert counts["num_replies"] == 3 and counts["num_events"] == 5

    micro = metrics["micro"]
    # ±1 s: v1 1.5-1.0 and v2 2.5-2.0 match; 9.0 does not. 3 replies, 5 events.
    assert micro["precision@1s"] == pytest.approx(2 / 3)
    assert micro["recall@1s"] == pytest.approx(2 / 5)
    assert micro["f1@1s"] == pytest.approx(4 / 8)
    # ±5 s adds 9.0-5.0.
    assert micro["precision@5s"] == pytest.approx(1.0)
    assert micro["recall@5s"] == pytest.approx(3 / 5)
    assert micro["trigger_acc"] == pytest.approx(2 / 5)
    assert micro["timval"] == pytest.approx(2 / 3)
    # Only v1's first event has the exact text ("the door" != "a door").
    assert micro["reply_exact_match"] == pytest.approx(1 / 5)

    mean, mean_counts = metrics["per_video_mean"], metrics["per_video_mean_num_videos"]
    # Recall per video: v1 1/2, v2 1, v3 0 (missing), v4 0 (error).
    assert mean["recall@1s"] == pytest.approx(1.5 / 4) and mean_counts["recall@1s"] == 4
    # Precision is undefined for v3 and v4, which have no replies.
    assert mean["precision@1s"] == pytest.approx(0.75) and mean_counts["precision@1s"] == 2

    captions = metrics["captions"]
    assert captions["num_captions"] == 2 and captions["num_empty_predictions"] == 0
    # "you pick up a cup" (5/5) and "you open the door" vs "you open a door" (3/4).
    assert captions["BLEU-1"] == pytest.approx(8 / 9, abs=1e-6)
    assert captions["METEOR"] is None
    assert captions["skipped"] == {"METEOR": "disabled by the caller"}

    per_video = {video["key"]: video for video in metrics["per_video"]}
    assert set(per_video) == {"v1#p0", "v2.mp4", "v3#p0", "v4#p0"}
    assert per_video["v3#p0"]["missing_prediction"] is True
    assert per_video["v4#p0"]["error"] == "CUDA out of memory"

    text = table.read_text()
    assert text.startswith("# Free-running streaming metrics")
    assert "| trigger_acc | 0.4000 |" in text
    assert "v3#p0" in text and "4 entries (see the JSON file)" in text


def test_caption_pairs_use_the_caption_tolerance():
    metrics = score_predictions(
        predictions=PREDICTIONS, references=REFERENCES, caption_tolerance=5.0, use_meteor=False
    )
    # 9.0-5.0 now pairs an empty reply with "You drink water.": scored, and counted.
    assert metrics["captions"]["num_captions"] == 3
    assert metrics["captions"]["num_empty_predictions"] == 1


def test_duplicate_reference_keys_raise():
    duplicated = [REFERENCES[1], dict(REFERENCES[1])]
    with pytest.raises(ValueError, match="share a key"):
        score_predictions(predictions=[], references=duplicated, use_meteor=False)


def test_a_bad_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "replies": []}\n\n{oops\n', encoding="utf-8")
    with pytest.raises(RecordError, match="bad.jsonl:3: invalid JSON"):
        load_predictions(path)


def test_write_markdown_table_generic(tmp_path):
    path = write_markdown_table(
        {"accuracy": 0.5, "num_samples": 4, "judge": {"model": "x|y", "score": None}},
        tmp_path / "nested" / "table.md",
        title="Offline QA",
    )
    text = path.read_text()
    assert "# Offline QA" in text
    assert "| accuracy | 0.5000 |" in text
    assert "| model | x\\|y |" in text and "| score | n/a |" in text
