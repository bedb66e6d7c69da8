"""The embedded synthetic streaming world and the tokenizer built for it.

No pretrained weights or licensed video can be fetched where this project trains by
default, so it ships a procedurally generated streaming dataset that a tiny model can
learn from scratch on a CPU in minutes:

- **Scene.** A plain dark background with two fixed *slots* (left and right half), and
  at most ``max_objects`` shapes on screen (1 by default, or 2). Each
  slot is empty or holds one large shape (circle / square / triangle) in one of four
  strongly distinct colours (red / green / blue / yellow). Shapes on screen always have
  different shape types, so "the circle" is never ambiguous. The geometry scales with
  ``frame_size`` and stays recognisable after the model's resize to about 32x32 px.
- **Events.** ``appear`` (an empty slot gets a shape), ``disappear``, ``recolour`` (a shape
  takes another colour) and ``move`` (the only shape on screen jumps to the other slot).
  Event times lie on the 0.5 s grid, never before ``min_event_time``, at least
  ``min_gap`` seconds apart and at least ``end_margin`` before the end. The scene is
  piecewise constant: the state changes exactly at the frame whose presentation time is
  the event time and stays, so a 2 fps sampler (frames at 0, 0.5, 1.0 ... s) sees the
  change first at the frame at ``t`` and the previous state at ``t - 0.5``.
- **Queries.** Eight fixed requests (`QUERIES`; seven by default, see ``move_queries``)
  select which events matter. The
  ground-truth turns of a video are exactly its events matching the query; every video
  has at least one matching event and at least one distractor, so a model must read the
  query. Replies are fixed templates filled from the event (`REPLY_TEMPLATES`), so the
  reply is fully determined by what is visible.
- **The long-memory world** (``long_memory``): one query, "Tell me when the shape that
  appeared first disappears.", whose events count only given the video's first appearance,
  minutes before. Shape A appears first and soon disappears (the first turn); then shapes
  visit one at a time (appear, maybe change colour, disappear), A among them, and every
  disappearance of A is a turn. At least one of A's later disappearances comes
  ``memory_gap`` seconds or more after A first appeared, and at least one other shape
  disappears in between (a distractor that looks the same in the moment). Events lie on a
  whole-second grid, so a 1 fps sampler sees each at its own frame. Every turn after the
  first needs a memory from before the previous reply, i.e. beyond a gate's turn context.
- **Files.** ``videos/{split}/{index:04d}.mp4`` (H.264, yuv420p, constant ``fps``),
  ``{split}.jsonl`` in the canonical annotation format of docs/design.md §4 (plus the extra fields
  ``id``, ``duration``, ``fps``, ``query_key``, ``initial`` and ``events``, the latter
  listing every event including distractors), and ``world.json`` with the generator
  settings and counts.

Determinism: every video draws from its own ``random.Random`` seeded by
``(seed, split, index)``, so annotation files are byte-identical for the same config
and changing a split's count does not change the other videos. The mp4 files are
encoded by libx264 with one thread and the muxer's ``bitexact`` flag; they are
byte-identical for the same PyAV/FFmpeg/x264 build (x264 writes its version into the
stream, so other builds give other bytes but the same scenes).

The tokenizer (`build_tokenizer`) is a byte-level BPE trained locally with
``tokenizers`` on every query and reply the world can produce plus the Llama-2 / Mistral
prompt fragments, wrapped as a transformers ``PreTrainedTokenizerFast``. It adds no
BOS/EOS on its own; the prompt renderer writes ``<s>`` / ``</s>`` explicitly.

Entry point: ``streammind world OUT_DIR [--seed 0] [--num_train 1200 ...]``
writes the world and ``OUT_DIR/tokenizer``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..errors import ArgumentParser, run_command
from ..fileio import atomic_write, write_json

try:  # PyAV is the optional "video" extra; only writing the mp4 files needs it
    import av
except ImportError:
    av = None

logger = logging.getLogger(__name__)

WORLD_FORMAT_VERSION = 1
TIME_GRID = 0.5  # seconds; the model samples 2 fps, so every event falls on a sampled frame
SPLITS = ("train", "val", "test")

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # RGB; far apart in hue and luminance from each other and from the background
    "red": (225, 35, 35),
    "green": (35, 200, 60),
    "blue": (45, 90, 240),
    "yellow": (245, 220, 35),
}
BACKGROUND = (28, 28, 28)
SLOTS = ("left", "right")
EVENT_TYPES = ("appear", "disappear", "recolour", "move")

REPLY_TEMPLATES = {
    "appear": "A {colour} {shape} appeared.",
    "disappear": "The {colour} {shape} disappeared.",
    "recolour": "The {old_colour} {shape} turned {colour}.",
    "move": "The {colour} {shape} moved to the {slot}.",
}

SYSTEM_PROMPT = "You watch a live video stream and reply briefly when the user's request happens."
PROMPT_FRAGMENTS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


# ----------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class WorldObject:
    """One shape on screen."""

    shape: str
    colour: str
    slot: str


@dataclass(frozen=True)
class Event:
    """One state change at ``time`` seconds.

    ``shape`` / ``colour`` / ``slot`` describe the object after the event (for
    ``disappear``: the object that vanished); ``old_colour`` is set only for ``recolour``
    and ``old_slot`` only for ``move``.
    """

    time: float
    type: str
    shape: str
    colour: str
    slot: str
    old_colour: str | None = None
    old_slot: str | None = None

    @property
    def text(self) -> str:
        """The reply describing this event."""
        return REPLY_TEMPLATES[self.type].format(shape=self.shape, colour=self.colour, slot=self.slot, old_colour=self.old_colour)

    def apply(self, objects: tuple[WorldObject, ...]) -> tuple[WorldObject, ...]:
        """Return the scene after this event, with objects ordered by slot."""
        if self.type == "appear":
            after = objects + (WorldObject(self.shape, self.colour, self.slot),)
        elif self.type == "disappear":
            after = tuple(o for o in objects if o.slot != self.slot)
        elif self.type == "recolour":
            after = tuple(WorldObject(o.shape, self.colour, o.slot) if o.slot == self.slot else o for o in objects)
        else:
            after = tuple(WorldObject(o.shape, o.colour, self.slot) if o.slot == self.old_slot else o for o in objects)
        return tuple(sorted(after, key=lambda o: SLOTS.index(o.slot)))

    def to_dict(self) -> dict:
        """JSON-ready record, with the reply text."""
        return {**dataclasses.asdict(self), "text": self.text}


@dataclass(frozen=True)
class Query:
    """A user request: it matches events of ``event_type`` (and, if set, of new ``colour``;
    with ``first_shape``, only events of the shape that appeared first in the video)."""

    key: str
    text: str
    event_type: str
    colour: str | None = None
    first_shape: bool = False

    def matches(self, event: Event, first_shape: str | None = None) -> bool:
        """Whether ``event`` must be answered under this query (``first_shape``: the shape that
        appeared first in the video, needed when the query refers to it)."""
        if self.first_shape and event.shape != first_shape:
            return False
        return event.type == self.event_type and (self.colour is None or event.colour == self.colour)


QUERIES = (
    Query("appear", "Tell me when a shape appears.", "appear"),
    Query("disappear", "Tell me when a shape disappears.", "disappear"),
    Query("recolour", "Tell me when something changes colour.", "recolour"),
    Query("move", "Tell me when a shape moves.", "move"),
) + tuple(Query(f"turns_{c}", f"Tell me when something turns {c}.", "recolour", c) for c in COLOURS)


# The long-memory world's query (kept out of QUERIES, which fix the tokenizer's corpus).
LONG_MEMORY_QUERY = Query("first_disappears", "Tell me when the shape that appeared first disappears.", "disappear", first_shape=True)


def all_queries() -> list[str]:
    """Every query string the world can produce, in `QUERIES` order."""
    return [q.text for q in QUERIES]


def all_replies() -> list[str]:
    """Every reply string the world can produce (84 = 12 appear + 12 disappear + 36 recolour + 24 move)."""
    replies = []
    for shape in SHAPES:
        for colour in COLOURS:
            replies.append(Event(0.0, "appear", shape, colour, "left").text)
            replies.append(Event(0.0, "disappear", shape, colour, "left").text)
            for old in COLOURS:
                if old != colour:
                    replies.append(Event(0.0, "recolour", shape, colour, "left", old_colour=old).text)
            for slot in SLOTS:
                other = SLOTS[1 - SLOTS.index(slot)]
                replies.append(Event(0.0, "move", shape, colour, slot, old_slot=other).text)
    return replies


def render_frame(objects: tuple[WorldObject, ...] | list[WorldObject], size: int) -> np.ndarray:
    """Draw a scene.

    Args:
        objects: shapes on screen (at most one per slot).
        size: frame height and width in pixels.

    Returns:
        uint8 array [size, size, 3] (RGB).
    """
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    r = 0.21 * size  # shape "radius": large, yet two shapes never touch
    cy = size / 2
    for obj in objects:
        cx = size * (0.25 if obj.slot == "left" else 0.75)
        fill = COLOURS[obj.colour]
        # The square fills the slot's box and the circle is a little smaller: at 32x32 px
        # circle vs square is the closest pair, and this keeps their corners clearly apart.
        if obj.shape == "circle":
            rc = 0.95 * r
            draw.ellipse([cx - rc, cy - rc, cx + rc, cy + rc], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - 1.1 * r, cy + r), (cx + 1.1 * r, cy + r)], fill=fill)
    return np.asarray(image)


# ----------------------------------------------------------------------------- config


def _on_grid(x: float) -> bool:
    """Whether ``x`` seconds is a multiple of the 0.5 s grid."""
    return abs(x / TIME_GRID - round(x / TIME_GRID)) < 1e-9


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a generated world (saved in ``world.json``)."""

    seed: int = 0
    num_train: int = 1200
    num_val: int = 40
    num_test: int = 60
    frame_size: int = 64  # pixels, square frames
    fps: int = 4  # encoded frame rate; must be even so that every 0.5 s grid point is a frame
    min_duration: float = 10.0  # seconds, drawn uniformly on the 0.5 s grid
    max_duration: float = 16.0
    min_event_time: float = 1.5  # no event in the first seconds: the model needs context
    min_gap: float = 2.0  # seconds between consecutive events, drawn on the grid
    max_gap: float = 4.0
    end_margin: float = 1.0  # no event in the last seconds
    match_prob: float = 0.4  # chance that an event is drawn from those matching the query
    # Shapes on screen at once. One (the default) keeps the embedded world learnable by the
    # tiny preset in minutes: with mean-pooled frame features, two shapes would ask a tiny
    # tower to bind each colour to its shape. Two gives a harder world.
    max_objects: int = 1
    # A move leaves a pooled frame vector almost unchanged (the same shape, colour and
    # area, only elsewhere), so with the paper's one-vector-per-frame design the "moves"
    # query is off by default: moves stay in the videos as distractors. On gives a
    # harder world whose move replies (left / right) need spatial features (measured with
    # the quick start's recipe: reply exact match 0.855, 10 of its 11 misses are the
    # direction of a move; trigger_acc 0.987).
    move_queries: bool = False
    # The long-memory world (module docstring): its one query needs what the video showed
    # ``memory_gap`` seconds or more before; events on whole seconds; durations must leave room.
    long_memory: bool = False
    memory_gap: float = 120.0
    crf: int = 12  # libx264 quality; low enough that colours survive yuv420p almost exactly

    def __post_init__(self):
        for name in ("min_duration", "max_duration", "min_event_time", "min_gap", "max_gap", "end_margin"):
            if not _on_grid(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a non-negative multiple of {TIME_GRID} s")
        if self.fps < 2 or self.fps % 2:
            raise ValueError(f"fps={self.fps} must be a positive even integer so that the 0.5 s grid hits frames")
        if self.frame_size < 16 or self.frame_size % 2:
            raise ValueError(f"frame_size={self.frame_size} must be even and at least 16")
        if not 0 < self.min_gap <= self.max_gap:
            raise ValueError(f"need 0 < min_gap ({self.min_gap}) <= max_gap ({self.max_gap})")
        if self.min_event_time < 1.0:
            raise ValueError(f"min_event_time={self.min_event_time} must be at least 1 s")
        if not 0 < self.min_duration <= self.max_duration:
            raise ValueError(f"need 0 < min_duration ({self.min_duration}) <= max_duration ({self.max_duration})")
        # Rejection sampling needs room for two events (one matching, one distractor).
        if self.min_event_time + self.max_gap + 1.0 + self.end_margin > self.min_duration:
            raise ValueError(
                f"min_duration={self.min_duration} s is too short for two events "
                f"(min_event_time + max_gap + 1 + end_margin = "
                f"{self.min_event_time + self.max_gap + 1.0 + self.end_margin} s)"
            )
        if not 0 < self.match_prob < 1:
            raise ValueError(f"match_prob={self.match_prob} must lie in (0, 1)")
        if self.max_objects not in (1, 2):
            raise ValueError(f"max_objects={self.max_objects} must be 1 or 2 (there are two slots)")
        if min(self.num_train, self.num_val, self.num_test) < 0:
            raise ValueError("split counts must be non-negative")
        if self.long_memory:
            if self.max_objects != 1 or self.move_queries:
                raise ValueError("the long-memory world shows one shape at a time and has its own query "
                                 "(max_objects=1, move_queries=False)")
            if not _on_grid(self.memory_gap) or self.memory_gap < 1:
                raise ValueError(f"memory_gap={self.memory_gap} must be a positive multiple of {TIME_GRID} s")
            if self.min_duration < self.min_event_time + self.memory_gap + 4 * self.max_gap + self.end_margin:
                raise ValueError(f"min_duration={self.min_duration} s leaves no room for a long-memory video: it needs at least "
                                 f"min_event_time + memory_gap + 4 * max_gap + end_margin = "
                                 f"{self.min_event_time + self.memory_gap + 4 * self.max_gap + self.end_margin} s")

    def queries(self) -> tuple[Query, ...]:
        """The queries videos are drawn with."""
        if self.long_memory:
            return (LONG_MEMORY_QUERY,)
        return tuple(q for q in QUERIES if self.move_queries or q.event_type != "move")

    def split_counts(self) -> dict[str, int]:
        """Number of videos per split."""
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}


# ----------------------------------------------------------------------------- sampling


def _grid(lo: float, hi: float) -> list[float]:
    """Grid points lo, lo + 0.5, ..., <= hi."""
    return [lo + TIME_GRID * i for i in range(int(round((hi - lo) / TIME_GRID)) + 1)]


def _candidate_events(objects: tuple[WorldObject, ...], t: float, max_objects: int = 2) -> list[Event]:
    """Every event that may happen in scene ``objects`` at time ``t``."""
    events = []
    used_slots = {o.slot for o in objects}
    used_shapes = {o.shape for o in objects}
    for slot in SLOTS:
        if slot in used_slots or len(objects) >= max_objects:
            continue
        for shape in SHAPES:
            if shape not in used_shapes:
                events += [Event(t, "appear", shape, colour, slot) for colour in COLOURS]
    for o in objects:
        events.append(Event(t, "disappear", o.shape, o.colour, o.slot))
        events += [Event(t, "recolour", o.shape, c, o.slot, old_colour=o.colour) for c in COLOURS if c != o.colour]
        other = SLOTS[1 - SLOTS.index(o.slot)]
        if other not in used_slots:
            events.append(Event(t, "move", o.shape, o.colour, other, old_slot=o.slot))
    return events


def _pick(rng: random.Random, events: list[Event]) -> Event:
    """Uniform over event types present, then uniform within the type (keeps types balanced)."""
    types = sorted({e.type for e in events}, key=EVENT_TYPES.index)
    kind = rng.choice(types)
    return rng.choice([e for e in events if e.type == kind])


@dataclass(frozen=True)
class VideoSpec:
    """The full script of one video."""

    duration: float
    query: Query
    initial: tuple[WorldObject, ...]
    events: tuple[Event, ...]

    @property
    def first_shape(self) -> str | None:
        """The shape that appeared first (on screen at the start, else the first appearance)."""
        if self.initial:
            return self.initial[0].shape
        return next((e.shape for e in self.events if e.type == "appear"), None)

    def turns(self) -> list[dict]:
        """Ground-truth turns: the events matching the query."""
        return [{"time": e.time, "text": e.text} for e in self.events if self.query.matches(e, self.first_shape)]

    def scene_at(self, t: float) -> tuple[WorldObject, ...]:
        """Objects on screen at time ``t`` (events at exactly ``t`` have happened)."""
        objects = self.initial
        for e in self.events:
            if e.time <= t + 1e-9:
                objects = e.apply(objects)
        return objects


def scene_from_record(record: dict, t: float) -> tuple[WorldObject, ...]:
    """Objects on screen at ``t`` seconds in a video, from its JSONL record (``initial`` + ``events``)."""
    if "initial" not in record or "events" not in record:
        raise KeyError(f"record {record.get('id', record.get('video'))!r} has no 'initial' / 'events': not written by the synthetic world")
    objects = tuple(WorldObject(**o) for o in record["initial"])
    for e in record["events"]:
        if e["time"] <= t + 1e-9:
            objects = Event(**{k: v for k, v in e.items() if k != "text"}).apply(objects)
    return objects


def all_scenes(max_objects: int = 2) -> list[tuple[WorldObject, ...]]:
    """Every scene the world can show with at most ``max_objects`` shapes (different shape types), slot-ordered."""
    singles = [WorldObject(s, c, slot) for slot in SLOTS for s in SHAPES for c in COLOURS]
    scenes: list[tuple[WorldObject, ...]] = [()] + [(o,) for o in singles]
    if max_objects >= 2:
        left = [o for o in singles if o.slot == "left"]
        right = [o for o in singles if o.slot == "right"]
        scenes += [(a, b) for a in left for b in right if a.shape != b.shape]
    return scenes


def _whole_seconds(lo: float, hi: float) -> list[float]:
    """Whole seconds in [lo, hi] (at least lo rounded up)."""
    return [float(t) for t in range(int(-(-lo // 1)), int(max(hi, -(-lo // 1))) + 1)]


def sample_long_memory_video(rng: random.Random, config: WorldConfig) -> VideoSpec:
    """Draw one long-memory script (module docstring): A appears first and soon disappears,
    then single-shape visits; A's disappearances are the turns, one of them at least
    ``memory_gap`` s after A appeared with another shape's disappearance before it."""
    query = LONG_MEMORY_QUERY
    duration = float(rng.choice(_whole_seconds(config.min_duration, config.max_duration)))
    gaps = _whole_seconds(config.min_gap, config.max_gap)
    colours = list(COLOURS)
    while True:
        first = rng.choice(SHAPES)
        t = float(rng.choice(_whole_seconds(config.min_event_time, config.min_event_time + 1.0)))
        appeared = t
        events = [Event(t, "appear", first, rng.choice(colours), "left")]
        shape = first
        while True:
            # The visiting shape (one at a time): maybe a colour change, then it leaves.
            current = events[-1]
            if rng.random() < 0.3:
                t += rng.choice(gaps)
                new_colour = rng.choice([c for c in colours if c != current.colour])
                events.append(Event(t, "recolour", shape, new_colour, current.slot, old_colour=current.colour))
                current = events[-1]
            t += rng.choice(gaps)
            events.append(Event(t, "disappear", shape, current.colour, current.slot))
            t += rng.choice(gaps)
            if t > duration - config.end_margin - 3 * config.max_gap:
                break
            shape = rng.choice(SHAPES)
            events.append(Event(t, "appear", shape, rng.choice(colours), rng.choice(SLOTS)))
        spec = VideoSpec(duration, query, (), tuple(events))
        disappear = [e for e in events if e.type == "disappear"]
        late = [e for e in disappear if e.shape == first and e.time >= appeared + config.memory_gap]
        distractor_before = late and any(e.shape != first and e.time < late[-1].time for e in disappear)
        if late and distractor_before and events[-1].time <= duration - config.end_margin:
            return spec


def sample_video(rng: random.Random, config: WorldConfig) -> VideoSpec:
    """Draw one video script with >= 1 event matching its query and >= 1 distractor."""
    if config.long_memory:
        return sample_long_memory_video(rng, config)
    query = rng.choice(config.queries())
    duration = rng.choice(_grid(config.min_duration, config.max_duration))
    while True:
        shapes = rng.sample(SHAPES, 2)
        slots = rng.sample(SLOTS, rng.choice(range(config.max_objects + 1)))
        initial = tuple(
            sorted(
                (WorldObject(shape, rng.choice(list(COLOURS)), slot) for shape, slot in zip(shapes, slots)),
                key=lambda o: SLOTS.index(o.slot),
            )
        )
        times = []
        t = rng.choice(_grid(config.min_event_time, config.min_event_time + 1.0))
        while t <= duration - config.end_margin + 1e-9:
            times.append(t)
            t += rng.choice(_grid(config.min_gap, config.max_gap))
        objects, events = initial, []
        for t in times:
            candidates = _candidate_events(objects, t, config.max_objects)
            matching = [e for e in candidates if query.matches(e)]
            others = [e for e in candidates if not query.matches(e)]
            pool = matching if matching and (not others or rng.random() < config.match_prob) else others
            event = _pick(rng, pool)
            events.append(event)
            objects = event.apply(objects)
        n_match = sum(query.matches(e) for e in events)
        if 1 <= n_match < len(events):
            return VideoSpec(duration, query, initial, tuple(events))


# ----------------------------------------------------------------------------- files


def write_video(path: Path, spec: VideoSpec, config: WorldConfig) -> None:
    """Encode ``spec`` as an H.264 / yuv420p mp4 with constant frame rate ``config.fps``."""
    if av is None:
        raise ImportError("writing the synthetic world's mp4 files needs PyAV: pip install av (or streammind[video])")
    num_frames = int(round(spec.duration * config.fps))
    cache: dict[tuple[WorldObject, ...], np.ndarray] = {}  # the scene is piecewise constant
    # bitexact keeps the library version string out of the container, threads=1 keeps x264 deterministic.
    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(
            "libx264",
            rate=config.fps,
            options={"crf": str(config.crf), "preset": "medium", "bf": "0", "threads": "1"},
        )
        stream.width = stream.height = config.frame_size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for k in range(num_frames):
            scene = spec.scene_at(k / config.fps)
            if scene not in cache:
                cache[scene] = render_frame(scene, config.frame_size)
            frame = av.VideoFrame.from_ndarray(cache[scene], format="rgb24")
            frame.pts = k
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def annotation_record(split: str, index: int, spec: VideoSpec, config: WorldConfig) -> dict:
    """The canonical JSONL record (docs/design.md §4) of one video, with all events attached."""
    return {
        "video": f"videos/{split}/{index:04d}.mp4",
        "query": spec.query.text,
        "turns": spec.turns(),
        "id": f"{split}-{index:04d}",
        "duration": spec.duration,
        "fps": config.fps,
        "query_key": spec.query.key,
        "initial": [dataclasses.asdict(o) for o in spec.initial],
        "events": [e.to_dict() for e in spec.events],
    }


def _world_header(config: WorldConfig) -> dict:
    """The part of ``world.json`` that decides whether an existing world can be reused."""
    return {"format_version": WORLD_FORMAT_VERSION, "config": dataclasses.asdict(config)}


def generate_world(out_dir: str | Path, config: WorldConfig | None = None, *, force: bool = False, progress: bool = False) -> dict:
    """Write the world's videos, annotations and ``world.json`` under ``out_dir``.

    Generation is skipped when ``out_dir/world.json`` was written for exactly this config
    (and format version) and every split's JSONL exists, unless ``force``. Otherwise the
    split video folders and JSONL files are replaced.

    Args:
        out_dir: output directory (created if missing).
        config: generator settings; defaults to ``WorldConfig()``.
        force: regenerate even if a matching world exists.
        progress: show a tqdm bar over videos.

    Returns:
        The content of ``world.json`` plus ``"out_dir"`` and ``"generated"`` (False if reused).
    """
    config = config or WorldConfig()
    out_dir = Path(out_dir)
    meta_path = out_dir / "world.json"
    header = _world_header(config)
    if not force and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in header} == header and all((out_dir / f"{s}.jsonl").is_file() for s in SPLITS):
            logger.info("reusing the world in %s (same config)", out_dir)
            return {**meta, "out_dir": str(out_dir), "generated": False}

    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written last: an interrupted run is never mistaken for a finished one
    counts = config.split_counts()
    start = time.perf_counter()
    split_stats = {}
    with tqdm(total=sum(counts.values()), desc="world", unit="video", disable=not progress) as bar:
        for split, count in counts.items():
            video_dir = out_dir / "videos" / split
            if video_dir.exists():
                shutil.rmtree(video_dir)
            video_dir.mkdir(parents=True)
            records = []
            for index in range(count):
                # String seeds go through SHA-512, so they do not depend on PYTHONHASHSEED.
                spec = sample_video(random.Random(f"{config.seed}/{split}/{index}"), config)
                write_video(video_dir / f"{index:04d}.mp4", spec, config)
                records.append(annotation_record(split, index, spec, config))
                bar.update(1)
            with atomic_write(out_dir / f"{split}.jsonl") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            split_stats[split] = {
                "videos": count,
                "events": sum(len(r["events"]) for r in records),
                "turns": sum(len(r["turns"]) for r in records),
                "seconds_of_video": sum(r["duration"] for r in records),
            }
    meta = {
        **header,
        "splits": split_stats,
        "queries": {q.key: q.text for q in QUERIES},
        "reply_templates": REPLY_TEMPLATES,
        "num_distinct_queries": len(config.queries()),
        "num_distinct_replies": len(all_replies()),
    }
    write_json(meta_path, meta)
    logger.info("generated the world in %s in %.1f s", out_dir, time.perf_counter() - start)
    return {**meta, "out_dir": str(out_dir), "generated": True}


# ----------------------------------------------------------------------------- tokenizer


def world_texts() -> list[str]:
    """The tokenizer's training corpus: prompt fragments, queries and replies, alone and in a prompt."""
    prompt_head = f"[INST] <<SYS>>\n{SYSTEM_PROMPT}\n<</SYS>>\n\n"
    texts = list(PROMPT_FRAGMENTS) + [SYSTEM_PROMPT, "\n", " ", "\n\n"]
    texts += [prompt_head + q + " [/INST]" for q in all_queries()]
    texts += all_queries() + all_replies() + [" " + r for r in all_replies()]
    return texts


def build_tokenizer(out_dir: str | Path | None = None, texts: list[str] | None = None, vocab_size: int = 512):
    """Train the world's byte-level BPE tokenizer and wrap it for transformers.

    Byte-level BPE never produces ``<unk>``: any string (a user's own query too) encodes
    and decodes back exactly. Encoding adds no special tokens. Special tokens take ids
    0-3: ``<unk>``, ``<s>``, ``</s>``, ``<pad>``.

    Args:
        out_dir: if given, ``save_pretrained`` there (``AutoTokenizer.from_pretrained``
            reloads it offline).
        texts: training corpus; defaults to `world_texts()`. The prompt fragments and the
            system prompt are always added.
        vocab_size: upper bound on the vocabulary (training stops earlier once every word
            of the corpus is a single token).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers v5).
    """
    # Imported here: transformers takes seconds to import and generating videos does not need it.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = world_texts() if texts is None else list(PROMPT_FRAGMENTS) + [SYSTEM_PROMPT] + list(texts)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)
    if out_dir is not None:
        wrapped.save_pretrained(str(out_dir))
    return wrapped


# ----------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """CLI flags: the output directory plus one ``--field`` per `WorldConfig` field."""
    parser = ArgumentParser(prog="streammind world", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="where to write videos/, {split}.jsonl, world.json and tokenizer/")
    for f in dataclasses.fields(WorldConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=f"default: {f.default}")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching world.json exists")
    parser.add_argument("--vocab_size", type=int, default=512, help="upper bound on the tokenizer vocabulary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`streammind world DIR`: generate the world and its tokenizer, print a summary per split; returns the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = WorldConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(WorldConfig)})
    start = time.perf_counter()
    summary = generate_world(args.out_dir, config, force=args.force, progress=True)
    tokenizer = build_tokenizer(Path(args.out_dir) / "tokenizer", vocab_size=args.vocab_size)
    verb = "generated" if summary["generated"] else "reused"
    print(f"{verb} world in {args.out_dir} ({time.perf_counter() - start:.1f} s)")
    for split, stats in summary["splits"].items():
        print(f"  {split:5s} {stats['videos']:4d} videos  {stats['events']:5d} events  {stats['turns']:4d} turns")
    print(f"  {summary['num_distinct_queries']} queries, {summary['num_distinct_replies']} replies, tokenizer vocab {len(tokenizer)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind world", main))
