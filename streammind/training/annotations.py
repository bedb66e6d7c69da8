"""Annotation records: the canonical stream annotation and the offline SFT/QA sample.

Stream annotation (docs/design.md §4), JSON Lines, one record per video x annotation pass::

    {"video": "<path relative to a data root>", "query": "<user request>",
     "turns": [{"time": <seconds>, "text": "<reply>"}, ...],
     "start": <seconds, optional>, "end": <seconds, optional>, "id": "<optional>"}

Rules checked on load (errors name ``file:line`` and the problem): ``video`` and ``query``
are non-empty strings; ``turns`` is a list of ``{"time", "text"}`` objects whose times are
finite, >= 0 and strictly increasing (one reply per moment) and whose texts are non-empty
strings; ``start``/``end`` are optional numbers with ``0 <= start < end`` and the turns
inside ``[start, end]``; ``id`` is an optional string. Any other top-level key is kept in
``StreamAnnotation.extra`` and written back unchanged. An empty ``turns`` list is valid on
load (an evaluation clip may have no reference reply); ``StreamAnnotation.issues()`` reports
it so that a training dataset can raise or skip and count.

Offline sample (LLaVA / VideoChatGPT style, for offline SFT and QA): a video or image path
(or neither, for text-only turns) and a conversation of ``{"role": "user" | "assistant",
"text"}`` messages, stored as JSON Lines by ``save_offline_samples``.
``load_llava_json`` reads the upstream format, a JSON list of ``{"id", "video" | "image",
"conversations": [{"from": "human" | "gpt", "value"}]}``, mapping ``human`` -> ``user``
and ``gpt`` -> ``assistant`` and keeping message texts verbatim (``<video>``/``<image>``
tags included; placing them is the processor's job).

References: docs/design.md §4 (the formats of the original release and of VideoLLM-online's
narration stream).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..fileio import FileFormatError, atomic_write, read_json, read_jsonl

STREAM_KEYS = ("video", "query", "turns", "start", "end", "id")
OFFLINE_KEYS = ("id", "video", "image", "conversations")
LLAVA_ROLES = {"human": "user", "gpt": "assistant"}


class AnnotationError(FileFormatError):
    """An annotation file or record is malformed; the message says where and why."""


def _is_number(x: Any) -> bool:
    """A JSON number (bool excluded) that is finite (an integer too large for a float is not)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _non_empty_str(record: Mapping[str, Any], key: str, where: str) -> str:
    """Fetch a required non-empty string field."""
    if key not in record:
        raise AnnotationError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise AnnotationError(f"{where}: {key!r} is empty")
    return value


def _optional_time(record: Mapping[str, Any], key: str, where: str) -> float | None:
    """Fetch an optional non-negative number of seconds."""
    value = record.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise AnnotationError(f"{where}: {key!r} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise AnnotationError(f"{where}: {key!r} is negative ({value})")
    return float(value)


# ------------------------------------------------------------------ stream annotation


def _check_stream(
    where: str,
    video: Any,
    query: Any,
    turns: Any,
    start: Any,
    end: Any,
    id: Any,
    extra: Any,
) -> None:
    """All schema rules of a stream annotation; raise AnnotationError prefixed with ``where``."""
    _non_empty_str({"video": video}, "video", where)
    _non_empty_str({"query": query}, "query", where)
    _optional_time({"start": start}, "start", where)
    _optional_time({"end": end}, "end", where)
    if start is not None and end is not None and not start < end:
        raise AnnotationError(f"{where}: start ({start}) must be < end ({end})")
    if id is not None and not isinstance(id, str):
        raise AnnotationError(f"{where}: 'id' must be a string, got {type(id).__name__}")
    if not isinstance(extra, dict):
        raise AnnotationError(f"{where}: 'extra' must be a dict, got {type(extra).__name__}")
    clash = set(extra) & set(STREAM_KEYS)
    if clash:
        raise AnnotationError(f"{where}: extra fields shadow schema keys {sorted(clash)}")
    if not isinstance(turns, list):
        raise AnnotationError(f"{where}: 'turns' must be a list, got {type(turns).__name__}")
    previous = None
    for k, turn in enumerate(turns):
        at = f"{where}: turn {k}"
        if not isinstance(turn, Turn):
            raise AnnotationError(f"{at}: expected a Turn, got {type(turn).__name__}")
        if not _is_number(turn.time):
            raise AnnotationError(f"{at}: 'time' must be a finite number of seconds, got {turn.time!r}")
        if turn.time < 0:
            raise AnnotationError(f"{at}: negative time {turn.time}")
        if previous is not None and not turn.time > previous:
            raise AnnotationError(f"{at}: time {turn.time} is not after the previous turn's {previous} (times must strictly increase)")
        if start is not None and turn.time < start:
            raise AnnotationError(f"{at}: time {turn.time} is before start {start}")
        if end is not None and turn.time > end:
            raise AnnotationError(f"{at}: time {turn.time} is after end {end}")
        _non_empty_str({"text": turn.text}, "text", at)
        previous = turn.time


@dataclass(frozen=True)
class Turn:
    """One assistant reply at a time (seconds from the video's first frame)."""

    time: float
    text: str


@dataclass
class StreamAnnotation:
    """One video x annotation pass: the user's request and the timed replies.

    Attributes:
        video: video path relative to a data root.
        query: the user's request, e.g. "Please concisely narrate the video in real time."
        turns: replies with strictly increasing times.
        start, end: optional window of the video the record covers (seconds).
        id: optional identifier.
        extra: any other fields of the source record, kept verbatim.
    """

    video: str
    query: str
    turns: list[Turn]
    start: float | None = None
    end: float | None = None
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "StreamAnnotation") -> None:
        """Raise AnnotationError (prefixed with ``where``) if a rule of the schema is broken."""
        _check_stream(where, self.video, self.query, self.turns, self.start, self.end, self.id, self.extra)

    def issues(self) -> list[str]:
        """Problems that leave the record valid but unusable for training (empty if none)."""
        return [] if self.turns else ["no turns"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: schema keys first (optional ones only when set), then ``extra``."""
        out: dict[str, Any] = {
            "video": self.video,
            "query": self.query,
            "turns": [{"time": t.time, "text": t.text} for t in self.turns],
        }
        for key in ("start", "end", "id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, record: Any, where: str = "record") -> StreamAnnotation:
        """Parse and validate one JSON object; errors are prefixed with ``where``."""
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {type(record).__name__}")
        video = _non_empty_str(record, "video", where)
        query = _non_empty_str(record, "query", where)
        if "turns" not in record:
            raise AnnotationError(f"{where}: missing key 'turns'")
        raw_turns = record["turns"]
        if not isinstance(raw_turns, list):
            raise AnnotationError(f"{where}: 'turns' must be a list, got {type(raw_turns).__name__}")
        turns = []
        for k, raw in enumerate(raw_turns):
            at = f"{where}: turn {k}"
            if not isinstance(raw, dict):
                raise AnnotationError(f"{at}: expected an object with 'time' and 'text', got {type(raw).__name__}")
            unknown = set(raw) - {"time", "text"}
            if unknown:
                raise AnnotationError(f"{at}: unexpected keys {sorted(unknown)} (a turn has only 'time' and 'text')")
            if "time" not in raw:
                raise AnnotationError(f"{at}: missing key 'time'")
            if not _is_number(raw["time"]):
                raise AnnotationError(f"{at}: 'time' must be a finite number of seconds, got {raw['time']!r}")
            turns.append(Turn(time=float(raw["time"]), text=_non_empty_str(raw, "text", at)))
        record_id = record.get("id")
        if record_id is not None and not isinstance(record_id, str):
            raise AnnotationError(f"{where}: 'id' must be a string, got {type(record_id).__name__}")
        fields = dict(
            video=video,
            query=query,
            turns=turns,
            start=_optional_time(record, "start", where),
            end=_optional_time(record, "end", where),
            id=record_id,
            extra={k: v for k, v in record.items() if k not in STREAM_KEYS},
        )
        _check_stream(where, **fields)
        return cls(**fields)


def _write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write one compact JSON object per line (UTF-8, non-ASCII kept) atomically; return the count."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def load_annotations(path: str | os.PathLike) -> list[StreamAnnotation]:
    """Read and validate a stream-annotation JSON Lines file.

    Raises:
        AnnotationError: naming ``file:line`` and the problem (bad JSON, missing key,
            wrong type, empty text, negative or non-increasing times).
    """
    return [StreamAnnotation.from_dict(obj, where) for where, obj in read_jsonl(path, AnnotationError)]


def save_annotations(records: Iterable[StreamAnnotation], path: str | os.PathLike) -> int:
    """Validate and write records as JSON Lines (parent folders created); return the count."""
    rows = []
    for k, record in enumerate(records):
        record.validate(f"record {k}")
        rows.append(record.to_dict())
    return _write_jsonl(rows, path)


# -------------------------------------------------------------------- offline samples


def _check_offline(where: str, conversations: Any, video: Any, image: Any, id: Any, extra: Any) -> None:
    """All rules of an offline sample; raise AnnotationError prefixed with ``where``."""
    if video is not None and image is not None:
        raise AnnotationError(f"{where}: has both 'video' and 'image'; expected at most one")
    if video is not None:
        _non_empty_str({"video": video}, "video", where)
    if image is not None:
        _non_empty_str({"image": image}, "image", where)
    if id is not None and not isinstance(id, str):
        raise AnnotationError(f"{where}: 'id' must be a string, got {type(id).__name__}")
    if not isinstance(extra, dict):
        raise AnnotationError(f"{where}: 'extra' must be a dict, got {type(extra).__name__}")
    clash = set(extra) & set(OFFLINE_KEYS)
    if clash:
        raise AnnotationError(f"{where}: extra fields shadow schema keys {sorted(clash)}")
    if not isinstance(conversations, list) or not conversations:
        raise AnnotationError(f"{where}: 'conversations' must be a non-empty list")
    for k, msg in enumerate(conversations):
        if not isinstance(msg, Message):
            raise AnnotationError(f"{where}: message {k}: expected a Message, got {type(msg).__name__}")
        if msg.role not in ("user", "assistant"):
            raise AnnotationError(f"{where}: message {k}: role must be 'user' or 'assistant', got {msg.role!r}")
        _non_empty_str({"text": msg.text}, "text", f"{where}: message {k}")


@dataclass(frozen=True)
class Message:
    """One conversation message of an offline sample."""

    role: Literal["user", "assistant"]
    text: str


@dataclass
class OfflineSample:
    """An offline SFT/QA sample: a video or image (or neither) and a conversation.

    Attributes:
        conversations: messages in order; roles are "user" or "assistant".
        video: video path relative to a data root, or None.
        image: image path relative to a data root, or None (at most one of video/image).
        id: optional identifier (upstream ids are kept as strings).
        extra: any other fields of the source record, kept verbatim.
    """

    conversations: list[Message]
    video: str | None = None
    image: str | None = None
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "OfflineSample") -> None:
        """Raise AnnotationError if the sample breaks a rule (see the module docstring)."""
        _check_offline(where, self.conversations, self.video, self.image, self.id, self.extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: id, video/image (when set), conversations, then ``extra``."""
        out: dict[str, Any] = {}
        for key in ("id", "video", "image"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["conversations"] = [{"role": m.role, "text": m.text} for m in self.conversations]
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, record: Any, where: str = "sample") -> OfflineSample:
        """Parse our JSONL form (``{"role", "text"}`` messages); errors are prefixed with ``where``."""
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {type(record).__name__}")
        messages = _messages(record, where, role_key="role", text_key="text", roles={"user": "user", "assistant": "assistant"})
        return cls._build(record, messages, where)

    @classmethod
    def from_llava(cls, record: Any, where: str = "item") -> OfflineSample:
        """Parse one LLaVA / VideoChatGPT item (``{"from": "human"|"gpt", "value"}`` messages)."""
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: expected a JSON object, got {type(record).__name__}")
        messages = _messages(record, where, role_key="from", text_key="value", roles=LLAVA_ROLES)
        return cls._build(record, messages, where)

    @classmethod
    def _build(cls, record: dict[str, Any], messages: list[Message], where: str) -> OfflineSample:
        """Common field extraction for both input forms."""
        paths = {}
        for key in ("video", "image"):
            if record.get(key) is not None:
                paths[key] = _non_empty_str(record, key, where)
        record_id = record.get("id")
        if record_id is not None:
            if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
                raise AnnotationError(f"{where}: 'id' must be a string or integer, got {type(record_id).__name__}")
            record_id = str(record_id)
        fields = dict(
            conversations=messages,
            video=paths.get("video"),
            image=paths.get("image"),
            id=record_id,
            extra={k: v for k, v in record.items() if k not in OFFLINE_KEYS},
        )
        _check_offline(where, **fields)
        return cls(**fields)


def _messages(record: Mapping[str, Any], where: str, role_key: str, text_key: str, roles: Mapping[str, str]) -> list[Message]:
    """Parse a ``conversations`` list, mapping source roles through ``roles``."""
    if "conversations" not in record:
        raise AnnotationError(f"{where}: missing key 'conversations'")
    raw = record["conversations"]
    if not isinstance(raw, list) or not raw:
        raise AnnotationError(f"{where}: 'conversations' must be a non-empty list")
    out = []
    for k, msg in enumerate(raw):
        at = f"{where}: message {k}"
        if not isinstance(msg, dict):
            raise AnnotationError(f"{at}: expected an object, got {type(msg).__name__}")
        if role_key not in msg:
            raise AnnotationError(f"{at}: missing key {role_key!r}")
        if msg[role_key] not in roles:
            raise AnnotationError(f"{at}: {role_key!r} must be one of {sorted(roles)}, got {msg[role_key]!r}")
        out.append(Message(role=roles[msg[role_key]], text=_non_empty_str(msg, text_key, at)))
    return out


def load_offline_samples(path: str | os.PathLike) -> list[OfflineSample]:
    """Read and validate an offline-sample JSON Lines file (errors name ``file:line``)."""
    return [OfflineSample.from_dict(obj, where) for where, obj in read_jsonl(path, AnnotationError)]


def save_offline_samples(samples: Iterable[OfflineSample], path: str | os.PathLike) -> int:
    """Validate and write offline samples as JSON Lines; return the count."""
    rows = []
    for k, sample in enumerate(samples):
        sample.validate(f"sample {k}")
        rows.append(sample.to_dict())
    return _write_jsonl(rows, path)


def load_llava_json(path: str | os.PathLike) -> list[OfflineSample]:
    """Read a LLaVA / VideoChatGPT JSON list into offline samples.

    Raises:
        AnnotationError: naming the file and the item index (and id when present).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    items = read_json(path, AnnotationError)
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: expected a JSON list of samples, got {type(items).__name__}")
    samples = []
    for k, item in enumerate(items):
        where = f"{path}: item {k}"
        if isinstance(item, dict) and "id" in item:
            where += f" (id {item['id']!r})"
        samples.append(OfflineSample.from_llava(item, where))
    return samples
