"""Tests for streammind.datasets.annotations: schema, validation errors, round trips.

Run: .venv/bin/python -m pytest tests/training/test_annotations.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streammind.training.annotations import (
    AnnotationError,
    Message,
    OfflineSample,
    StreamAnnotation,
    Turn,
    load_annotations,
    load_llava_json,
    load_offline_samples,
    save_annotations,
    save_offline_samples,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = '{"video": "a.mp4", "query": "Narrate.", "turns": [{"time": 0.5, "text": "You sit."}]}'


# ------------------------------------------------------------------ stream annotations


def test_load_fixture_keeps_extra_fields_and_allows_empty_turns():
    records = load_annotations(FIXTURES / "stream_annotations.jsonl")  # has a blank line
    assert len(records) == 3
    first = records[0]
    assert first.video == "ego4d/3c0dffd0-e38e-4643-bc48-d513943dc20b.mp4"
    assert first.turns == [Turn(0.5, "You look around the room."), Turn(1.5, "You cut the onion into halves.")]
    assert (first.start, first.end, first.id) == (0.0, 120.0, "3c0dffd0-e38e-4643-bc48-d513943dc20b/2f5a8bd6")
    assert first.extra == {"split": "val", "source": {"dataset": "ego4d", "refined": True}}
    assert first.issues() == []

    empty = records[1]
    assert empty.turns == [] and empty.issues() == ["no turns"]
    assert records[2].turns == [Turn(3.0, "You are chopping an onion.")]
    assert (records[2].start, records[2].end, records[2].id) == (None, None, None)


def test_round_trip_is_lossless(tmp_path):
    records = load_annotations(FIXTURES / "stream_annotations.jsonl")
    out = tmp_path / "nested" / "out.jsonl"
    assert save_annotations(records, out) == 3
    again = load_annotations(out)
    assert again == records
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == ["video", "query", "turns", "start", "end", "id", "split", "source"]
    assert "start" not in json.loads(out.read_text(encoding="utf-8").splitlines()[2])


def test_to_dict_from_dict():
    ann = StreamAnnotation("v.mp4", "Narrate.", [Turn(0.0, "Hi."), Turn(1.0, "Bye.")], end=2.0, id="x", extra={"lang": "en"})
    d = ann.to_dict()
    assert d == {
        "video": "v.mp4",
        "query": "Narrate.",
        "turns": [{"time": 0.0, "text": "Hi."}, {"time": 1.0, "text": "Bye."}],
        "end": 2.0,
        "id": "x",
        "lang": "en",
    }
    assert StreamAnnotation.from_dict(d) == ann


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"video": "a.mp4", "query": "q", "turns": [', "invalid JSON"),
        ('["a.mp4"]', "expected a JSON object"),
        ('{"query": "q", "turns": []}', "missing key 'video'"),
        ('{"video": "a.mp4", "turns": []}', "missing key 'query'"),
        ('{"video": "a.mp4", "query": "q"}', "missing key 'turns'"),
        ('{"video": 3, "query": "q", "turns": []}', "'video' must be a string"),
        ('{"video": "a.mp4", "query": "  ", "turns": []}', "'query' is empty"),
        ('{"video": "a.mp4", "query": "q", "turns": {"time": 1}}', "'turns' must be a list"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"text": "x"}]}', "turn 0: missing key 'time'"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": 1}]}', "turn 0: missing key 'text'"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": "1.5", "text": "x"}]}', "'time' must be a finite number"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": true, "text": "x"}]}', "'time' must be a finite number"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": -0.5, "text": "x"}]}', "negative time"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": 1, "text": ""}]}', "turn 0: 'text' is empty"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": 1, "text": 5}]}', "'text' must be a string"),
        (
            '{"video": "a.mp4", "query": "q", "turns": [{"time": 2, "text": "x"}, {"time": 1, "text": "y"}]}',
            "turn 1: time 1.0 is not after",
        ),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": 1, "text": "x"}, {"time": 1, "text": "y"}]}', "strictly increase"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": 1, "text": "x", "role": "assistant"}]}', "unexpected keys ['role']"),
        ('{"video": "a.mp4", "query": "q", "turns": [], "start": 5, "end": 2}', "start (5.0) must be < end (2.0)"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": 1, "text": "x"}], "start": 2}', "before start"),
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": 9, "text": "x"}], "end": 5}', "after end"),
        ('{"video": "a.mp4", "query": "q", "turns": [], "start": "0"}', "'start' must be a finite number"),
        ('{"video": "a.mp4", "query": "q", "turns": [], "id": 7}', "'id' must be a string"),
    ],
)
def test_load_errors_name_file_line_and_problem(tmp_path, line, problem):
    path = _write_lines(tmp_path / "ann.jsonl", GOOD, "", line)
    with pytest.raises(AnnotationError) as err:
        load_annotations(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert problem in str(err.value)


def test_missing_file_and_direct_construction_are_checked(tmp_path):
    with pytest.raises(AnnotationError, match="file not found"):
        load_annotations(tmp_path / "none.jsonl")
    with pytest.raises(AnnotationError, match="negative time"):
        StreamAnnotation("a.mp4", "q", [Turn(-1.0, "x")])
    with pytest.raises(AnnotationError, match="shadow schema keys"):
        StreamAnnotation("a.mp4", "q", [], extra={"turns": []})
    ann = StreamAnnotation("a.mp4", "q", [Turn(1.0, "x")])
    ann.turns.append(Turn(0.5, "y"))  # mutated after construction: caught when saving
    with pytest.raises(AnnotationError, match="record 0: turn 1"):
        save_annotations([ann], tmp_path / "out.jsonl")


# ------------------------------------------------------------------- offline samples


def test_llava_json_maps_roles_and_keeps_text_verbatim():
    samples = load_llava_json(FIXTURES / "llava_videochatgpt.json")
    assert len(samples) == 3
    video, image, text_only = samples
    assert (video.id, video.video, video.image) == ("v_k_ZXmr8pmrs", "v_k_ZXmr8pmrs.mp4", None)
    assert video.conversations == [
        Message("user", "<video>\nWhat is the man doing in the video?"),
        Message("assistant", "The man is sharpening a kitchen knife on a whetstone."),
    ]
    assert (image.video, image.image) == (None, "coco/train2017/000000033471.jpg")
    assert [m.role for m in image.conversations] == ["user", "assistant", "user", "assistant"]
    assert (text_only.id, text_only.video, text_only.image) == ("12345", None, None)  # integer id kept as text
    assert text_only.extra == {"model": "gpt-3.5-turbo"}


def test_offline_round_trip(tmp_path):
    samples = load_llava_json(FIXTURES / "llava_videochatgpt.json")
    out = tmp_path / "offline.jsonl"
    assert save_offline_samples(samples, out) == 3
    assert load_offline_samples(out) == samples
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first == {
        "id": "v_k_ZXmr8pmrs",
        "video": "v_k_ZXmr8pmrs.mp4",
        "conversations": [
            {"role": "user", "text": "<video>\nWhat is the man doing in the video?"},
            {"role": "assistant", "text": "The man is sharpening a kitchen knife on a whetstone."},
        ],
    }


@pytest.mark.parametrize(
    "item, problem",
    [
        ({"id": "a", "video": "a.mp4"}, "missing key 'conversations'"),
        ({"id": "a", "video": "a.mp4", "conversations": []}, "'conversations' must be a non-empty list"),
        ({"id": "a", "video": "a.mp4", "conversations": [{"from": "system", "value": "x"}]}, "'from' must be one of ['gpt', 'human']"),
        ({"id": "a", "video": "a.mp4", "conversations": [{"value": "x"}]}, "message 0: missing key 'from'"),
        ({"id": "a", "video": "a.mp4", "conversations": [{"from": "gpt", "value": ""}]}, "message 0: 'value' is empty"),
        ({"id": "a", "video": "a.mp4", "image": "a.jpg", "conversations": [{"from": "human", "value": "x"}]}, "both 'video' and 'image'"),
        ({"id": "a", "video": 12, "conversations": [{"from": "human", "value": "x"}]}, "'video' must be a string"),
        ("not an object", "expected a JSON object"),
    ],
)
def test_llava_errors_name_file_and_item(tmp_path, item, problem):
    good = {"id": "ok", "video": "ok.mp4", "conversations": [{"from": "human", "value": "<video>\nHi"}, {"from": "gpt", "value": "Hello."}]}
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([good, item]), encoding="utf-8")
    with pytest.raises(AnnotationError) as err:
        load_llava_json(path)
    assert str(err.value).startswith(f"{path}: item 1")
    assert problem in str(err.value)


def test_llava_file_level_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(AnnotationError, match="invalid JSON"):
        load_llava_json(bad)
    obj = tmp_path / "obj.json"
    obj.write_text("{}", encoding="utf-8")
    with pytest.raises(AnnotationError, match="expected a JSON list"):
        load_llava_json(obj)


def test_offline_jsonl_rejects_llava_roles(tmp_path):
    path = _write_lines(tmp_path / "off.jsonl", '{"video": "a.mp4", "conversations": [{"role": "human", "text": "x"}]}')
    with pytest.raises(AnnotationError, match=r"off.jsonl:1: message 0: 'role' must be one of \['assistant', 'user'\]"):
        load_offline_samples(path)


def _stream(**fields):
    return StreamAnnotation(**{"video": "v.mp4", "query": "Q?", "turns": [Turn(1.0, "a")], **fields})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _stream(video=""), "StreamAnnotation: 'video' is empty"),
        (lambda: _stream(query=" "), "StreamAnnotation: 'query' is empty"),
        (lambda: _stream(start="0"), "StreamAnnotation: 'start' must be a finite number of seconds, got '0'"),
        (lambda: _stream(end=-1.0), "StreamAnnotation: 'end' is negative (-1.0)"),
        (lambda: _stream(start=1.0, end=1.0), "StreamAnnotation: start (1.0) must be < end (1.0)"),
        (lambda: _stream(id=3), "StreamAnnotation: 'id' must be a string, got int"),
        (lambda: _stream(start=1.5), "StreamAnnotation: turn 0: time 1.0 is before start 1.5"),
        (lambda: _stream(end=0.5), "StreamAnnotation: turn 0: time 1.0 is after end 0.5"),
        (lambda: _stream(turns=[Turn(1.0, "")]), "StreamAnnotation: turn 0: 'text' is empty"),
        (lambda: StreamAnnotation.from_dict({"video": "v", "query": "q", "turns": [], "end": "x"}), "record: 'end' must be a finite number"),
        (lambda: StreamAnnotation.from_dict({"video": "v", "query": "q", "turns": [{"time": 1, "text": ""}]}), "record: turn 0: 'text' is empty"),
        (lambda: OfflineSample([Message("user", "hi")], video=""), "OfflineSample: 'video' is empty"),
        (lambda: OfflineSample([Message("user", "hi")], image=""), "OfflineSample: 'image' is empty"),
        (lambda: OfflineSample([Message("user", "hi")], id=7), "OfflineSample: 'id' must be a string, got int"),
        (lambda: OfflineSample([Message("user", "")]), "OfflineSample: message 0: 'text' is empty"),
        (lambda: OfflineSample("not a list"), "OfflineSample: 'conversations' must be a non-empty list"),
        (lambda: OfflineSample([Message("user", "hi")], extra={"video": "v"}), "OfflineSample: extra fields shadow schema keys ['video']"),
        (lambda: OfflineSample.from_dict({"conversations": "x"}), "sample: 'conversations' must be a non-empty list"),
        (lambda: OfflineSample.from_dict({"conversations": [{"role": "user", "text": "t"}], "id": True}), "sample: 'id' must be a string or integer, got bool"),
        (lambda: OfflineSample.from_llava({"conversations": [{"from": "human", "value": ""}]}), "item: message 0: 'value' is empty"),
    ],
)
def test_errors_name_where_and_what(make, message):
    with pytest.raises(AnnotationError) as exc:
        make()
    assert str(exc.value).startswith(message)


def test_window_edges_are_inside():
    assert _stream(start=1.0, end=2.0).turns[0].time == 1.0
    assert _stream(start=0.0, end=1.0).turns[0].time == 1.0
    assert OfflineSample.from_dict({"conversations": [{"role": "user", "text": "t"}], "id": 7}).id == "7"


def test_save_validates_with_the_index_and_writes_utf8(tmp_path):
    record = _stream(turns=[Turn(1.0, "café — déjà vu")])
    path = tmp_path / "new" / "nested" / "anns.jsonl"
    assert save_annotations([record, record], path) == 2
    text = path.read_bytes().decode("utf-8")
    assert "café — déjà vu" in text  # non-ASCII kept, not \\u-escaped
    assert load_annotations(path)[1].turns[0].text == "café — déjà vu"
    record.turns.append(Turn(0.5, "earlier"))
    with pytest.raises(AnnotationError, match=r"^record 1: turn 1: time 0.5 is not after"):
        save_annotations([_stream(), record], tmp_path / "bad.jsonl")
    sample = OfflineSample([Message("user", "hi")])
    sample.conversations.append("not a message")
    with pytest.raises(AnnotationError, match=r"^sample 0: message 1: expected a Message"):
        save_offline_samples([sample], tmp_path / "bad_samples.jsonl")


def test_llava_items_are_named_by_index_and_id(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([
        {"id": "v1", "conversations": [{"from": "human", "value": "hi"}]},
        {"id": "v2", "conversations": [{"from": "human", "value": ""}]},
    ]), encoding="utf-8")
    with pytest.raises(AnnotationError, match=rf"^{path}: item 1 \(id 'v2'\): message 0: 'value' is empty"):
        load_llava_json(path)
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": ""}]}]), encoding="utf-8")
    with pytest.raises(AnnotationError, match=rf"^{path}: item 0: message 0"):
        load_llava_json(path)
    path.write_text(json.dumps(["not an object"]), encoding="utf-8")
    with pytest.raises(AnnotationError, match=rf"^{path}: item 0: expected a JSON object, got str"):
        load_llava_json(path)
    path.write_text(json.dumps([{"id": "é", "conversations": [{"from": "gpt", "value": "ü"}]}], ensure_ascii=False), encoding="utf-8")
    assert load_llava_json(path)[0].conversations[0].text == "ü"


def test_offline_file_errors_are_annotation_errors_naming_file_and_line(tmp_path):
    """A missing offline-sample file, a line that is not JSON and bytes that are not UTF-8 raise
    `AnnotationError` itself (not only its `FileFormatError` base), naming ``file[:line]``."""
    missing = tmp_path / "none.jsonl"
    with pytest.raises(AnnotationError, match=rf"^{missing}: file not found$"):
        load_offline_samples(missing)
    bad = _write_lines(tmp_path / "off.jsonl", '{"conversations": [{"role": "user", "text": "t"}]}', "{not json")
    with pytest.raises(AnnotationError, match=rf"^{bad}:2: invalid JSON"):
        load_offline_samples(bad)
    bad.write_bytes(b'\xff\xfe\n')
    with pytest.raises(AnnotationError, match=rf"^{bad}:1: not UTF-8 text"):
        load_offline_samples(bad)


def test_integers_too_large_for_a_float_are_not_finite_times(tmp_path):
    """JSON integers are unbounded: one beyond float range (10**400) is rejected as a time like
    inf would be, with the usual message, for a turn's time and for start / end."""
    huge = "1" + "0" * 400
    for line, problem in [
        ('{"video": "a.mp4", "query": "q", "turns": [{"time": %s, "text": "x"}]}' % huge, "turn 0: 'time' must be a finite number of seconds"),
        ('{"video": "a.mp4", "query": "q", "turns": [], "start": %s}' % huge, "'start' must be a finite number of seconds"),
        ('{"video": "a.mp4", "query": "q", "turns": [], "end": %s}' % huge, "'end' must be a finite number of seconds"),
    ]:
        path = _write_lines(tmp_path / "ann.jsonl", line)
        with pytest.raises(AnnotationError) as err:
            load_annotations(path)
        assert str(err.value).startswith(f"{path}:1: ") and problem in str(err.value)
    with pytest.raises(AnnotationError, match="'time' must be a finite number of seconds"):
        StreamAnnotation("a.mp4", "q", [Turn(10**400, "x")])
