"""Tests for streammind.datasets.converters on fixtures that follow the upstream schemas.

Run: .venv/bin/python -m pytest tests/training/test_annotation_converters.py -q

Expected outputs below are worked out by hand from the fixture files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streammind.errors import run_command
from streammind.training.annotation_converters import (
    EGO4D_QUERY,
    convert_ego4d,
    convert_soccernet,
    main,
    narration_turns,
    parse_game_time,
)
from streammind.training.annotations import AnnotationError, Message, Turn, load_annotations, load_offline_samples

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROG = "python -m streammind.datasets.converters"
EGO4D = FIXTURES / "ego4d_narration_stream.json"
SOCCER = FIXTURES / "soccernet"
CHELSEA = "england_epl_2014-2015/2015-02-21 - 18-00 Chelsea 1 - 1 Burnley"
BARCA = "europe_uefa-champions-league_2016-2017/2017-03-08 - 22-45 Barcelona 6 - 1 Paris SG"

VIDEO_A = "3c0dffd0-e38e-4643-bc48-d513943dc20b"
VIDEO_B = "9a7c1e52-0b4d-4c8e-b6f1-2e3d4c5b6a79"
# Pass 1 of video A, by hand: -0.3 -> 0.0 (never below 0); 0.2 -> 0.5; 1.0 stays; 1.3 and 1.45
# both ceil to 1.5, the later text wins; 2.2 repeats the previous text and is dropped; the
# file lists 4.1 before 3.0, sorting restores time order; 4.1 -> 4.5.
PASS_A1 = [
    Turn(0.0, "You stand still."),
    Turn(0.5, "You look around the room."),
    Turn(1.0, "You pick up a knife with your right hand."),
    Turn(1.5, "You cut the onion into halves."),
    Turn(3.0, "You put the knife down."),
    Turn(4.5, "You wipe the knife."),
]
PASS_A2 = [Turn(0.5, "You open the fridge."), Turn(1.0, "You take out a bottle.")]  # 0.75 -> 1.0
PASS_B1 = [Turn(2.5, "You walk to the door.")]


# ------------------------------------------------------------------------------ Ego4D


def test_ego4d_all_passes():
    records = convert_ego4d(json.loads(EGO4D.read_text()), source=str(EGO4D))
    assert [r.id for r in records] == [
        f"{VIDEO_A}/2f5a8bd6-6a1c-4b1e-9f3e-0d6c2a7e5b11",
        f"{VIDEO_A}/8e41c7a0-93d2-4f8e-a5c4-7b2d9e1f0c3a",
        f"{VIDEO_B}/c4d2e1f0-1a2b-4c3d-8e9f-a0b1c2d3e4f5",
    ]  # video B's second pass is empty and skipped
    assert [r.turns for r in records] == [PASS_A1, PASS_A2, PASS_B1]
    assert [r.video for r in records] == [f"{VIDEO_A}.mp4", f"{VIDEO_A}.mp4", f"{VIDEO_B}.mp4"]
    assert all(r.query == EGO4D_QUERY == "Please concisely narrate the video in real time." for r in records)


def test_ego4d_first_pass_only_and_options():
    records = convert_ego4d(
        json.loads(EGO4D.read_text()), first_pass_only=True, video_template="ego4d/v2/full_scale/{video_uid}.mp4", query="Narrate."
    )
    assert [r.turns for r in records] == [PASS_A1, PASS_B1]
    assert records[0].video == f"ego4d/v2/full_scale/{VIDEO_A}.mp4" and records[0].query == "Narrate."


def test_narration_rules_in_isolation():
    items = [{"time": 0.9, "text": "A."}, {"time": 0.6, "text": "B."}, {"time": 1.2, "text": "A."}, {"time": 1.4, "text": "A."}]
    # sorted: B@0.6->1.0, A@0.9->1.0 replaces B (same slot, later), A@1.2 and A@1.4 repeat A -> dropped
    assert narration_turns(items, 2.0, "x") == [Turn(1.0, "A.")]
    # a repeat is dropped only when it follows the same text; A, B, A keeps all three
    items = [{"time": 0.5, "text": "A."}, {"time": 1.0, "text": "B."}, {"time": 1.5, "text": "A."}]
    assert [t.text for t in narration_turns(items, 2.0, "x")] == ["A.", "B.", "A."]
    assert narration_turns(items, 1.0, "x") == [Turn(1.0, "B."), Turn(2.0, "A.")]  # coarser grid merges more


@pytest.mark.parametrize(
    "streams, problem",
    [
        ([], "expected an object {video_uid"),
        ({"v": []}, "video v: expected an object {annotation_uid"),
        ({"v": {"p": {"time": 1}}}, "video v pass p: expected a list of narrations"),
        ({"v": {"p": [{"text": "A."}]}}, "video v pass p item 0: missing key 'time'"),
        ({"v": {"p": [{"time": 1.0}]}}, "video v pass p item 0: missing key 'text'"),
        ({"v": {"p": [{"time": "1.0", "text": "A."}]}}, "item 0: 'time' must be a finite number"),
        ({"v": {"p": [{"time": 1.0, "text": "A."}, {"time": 2.0, "text": " "}]}}, "item 1: 'text' must be a non-empty string"),
    ],
)
def test_ego4d_errors(streams, problem):
    with pytest.raises(AnnotationError) as err:
        convert_ego4d(streams, source="narration_stream_val.json")
    assert str(err.value).startswith("narration_stream_val.json: ") and problem in str(err.value)


# -------------------------------------------------------------------------- SoccerNet


def test_parse_game_time():
    assert parse_game_time("1 - 33:05", "x") == (1, 1985)
    assert parse_game_time("2 - 47:12", "x") == (2, 47 * 60 + 12)  # stoppage time runs past 45:00
    for bad in ("1 - 3:5", "33:05", "1 - 33:65", "1-", "", 1985, None):
        with pytest.raises(AnnotationError, match="malformed gameTime"):
            parse_game_time(bad, "Labels-caption.json: annotation 4")


def test_soccernet_one_match_sorted_by_half():
    labels = json.loads((SOCCER / CHELSEA / "Labels-caption.json").read_text())
    first, second = convert_soccernet(labels, match=CHELSEA)
    assert first.video == f"{CHELSEA}/1_224p.mkv" and second.video == f"{CHELSEA}/2_224p.mkv"
    assert (first.id, second.id) == (f"{CHELSEA}/1", f"{CHELSEA}/2")
    # Half 1, ascending (the file mixes orders): 02:15, 10:00, 33:05 (two captions merged in file order), 45:30.
    assert first.turns == [
        Turn(135.0, "A corner for [TEAM]."),
        Turn(600.0, "[PLAYER] tries a long shot, but it goes wide."),
        Turn(1985.0, "[PLAYER] ([TEAM]) scores! A header from close range. [TEAM] lead 1-0."),
        Turn(2730.0, "The first half is over."),
    ]
    # Half 2 holds only half-2 captions: 00:00, 12:03, 44:10.
    assert second.turns == [
        Turn(0.0, "The second half is underway."),
        Turn(723.0, "[TEAM] make a substitution: [PLAYER] comes on for [PLAYER]."),
        Turn(2650.0, "[PLAYER] ([TEAM]) is booked for a late challenge."),
    ]
    only_second = convert_soccernet(labels, match=CHELSEA, halves=[2], video_template="{match}/{half}_720p.mkv")
    assert [r.video for r in only_second] == [f"{CHELSEA}/2_720p.mkv"]


@pytest.mark.parametrize(
    "labels, problem",
    [
        ([], "expected an object with an 'annotations' list"),
        ({"annotations": {}}, "'annotations' must be a list"),
        ({"annotations": [{"gameTime": "1 - 00:10"}]}, "annotation 0: missing key 'anonymized'"),
        ({"annotations": [{"anonymized": "x"}]}, "annotation 0: missing key 'gameTime'"),
        (
            {"annotations": [{"gameTime": "1 - 00:10", "anonymized": "x"}, {"gameTime": "1 - 0:10", "anonymized": "y"}]},
            "annotation 1: malformed gameTime '1 - 0:10'",
        ),
        ({"annotations": [{"gameTime": "1 - 00:10", "anonymized": ""}]}, "annotation 0: 'anonymized' must be a non-empty string"),
    ],
)
def test_soccernet_errors(labels, problem):
    with pytest.raises(AnnotationError) as err:
        convert_soccernet(labels, match="m", source="m/Labels-caption.json")
    assert str(err.value).startswith("m/Labels-caption.json: ") and problem in str(err.value)


# -------------------------------------------------------------------------------- CLI


def test_cli_ego4d(tmp_path):
    out = tmp_path / "ego4d.jsonl"
    assert main(["ego4d", str(EGO4D), str(out), "--first-pass-only"]) == 0
    assert [r.turns for r in load_annotations(out)] == [PASS_A1, PASS_B1]


def test_cli_soccernet_walks_folders(tmp_path):
    out = tmp_path / "soccer.jsonl"
    assert main(["soccernet", str(SOCCER), str(out)]) == 0
    records = load_annotations(out)
    assert [r.video for r in records] == [f"{CHELSEA}/1_224p.mkv", f"{CHELSEA}/2_224p.mkv", f"{BARCA}/1_224p.mkv"]
    assert records[2].turns == [Turn(1.0, "Kick-off."), Turn(180.0, "[TEAM] start brightly.")]

    single = tmp_path / "single.jsonl"
    assert main(["soccernet", str(SOCCER / BARCA / "Labels-caption.json"), str(single), "--match", BARCA, "--halves", "1"]) == 0
    assert load_annotations(single)[0].video == f"{BARCA}/1_224p.mkv"


def test_cli_llava(tmp_path):
    out = tmp_path / "offline.jsonl"
    assert main(["llava", str(FIXTURES / "llava_videochatgpt.json"), str(out)]) == 0
    samples = load_offline_samples(out)
    assert samples[0].conversations[1] == Message("assistant", "The man is sharpening a kitchen knife on a whetstone.")


def test_cli_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "Labels-caption.json"
    bad.write_text(json.dumps({"annotations": [{"gameTime": "first half", "anonymized": "x"}]}))
    assert run_command(PROG, main, ["soccernet", str(bad), str(tmp_path / "out.jsonl")]) == 2
    assert f"{PROG}: error: {bad}: annotation 0: malformed gameTime 'first half'" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()

    assert run_command(PROG, main, ["soccernet", str(tmp_path / "empty_dir_missing"), str(tmp_path / "o.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_cli_help_documents_every_flag(capsys):
    for command in ("ego4d", "soccernet", "llava"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "SRC" in text.upper() and "OUT" in text.upper()
    with pytest.raises(SystemExit):
        main(["soccernet", "--help"])
    assert "--video-template" in capsys.readouterr().out
