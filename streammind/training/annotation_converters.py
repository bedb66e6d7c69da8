"""Converters from upstream annotation formats to StreamMind's canonical records.

Usage::

    streammind convert-annotations ego4d narration_stream_val.json OUT.jsonl [--first-pass-only]
    streammind convert-annotations soccernet MatchTime/train OUT.jsonl
    streammind convert-annotations llava videochatgpt_tune.json OUT.jsonl

Sources and rules (docs/design.md §4):

- Ego4D narration stream, as VideoLLM-online caches it (``narration_stream_{split}.json``
  or the refined ``refined_narration_stream_{split}.json``):
  ``{video_uid: {annotation_uid: [{"time", "text"}, ...]}}`` (VideoLLM-online's `data/ego4d/narration.py`).
  One record per (video, annotation pass), ``id = "<video_uid>/<annotation_uid>"``.
  Narrations are sorted by time (stable), each time is ceiled to the fps grid
  (``max(ceil(t * fps) / fps, 0)``), a narration whose text equals the previous kept
  turn's is dropped, and of two narrations landing on the same grid slot the later text
  is kept (VideoLLM-online's rules). Passes with no narration are skipped.
  ``--first-pass-only`` keeps only each video's first pass, as the original StreamMind
  evaluation did (docs/design.md §4).
- SoccerNet / MatchTime ``Labels-caption.json`` (one file per match):
  ``{"annotations": [{"gameTime": "H - MM:SS", "anonymized": text, ...}]}``
  (docs/design.md §4). One record per half present in the file, turns
  sorted ascending by ``MM * 60 + SS`` (the file order is not trusted; the original
  reversed the list assuming newest-first). Captions falling on the same second are
  merged into one turn, their texts joined with a space in file order, because a record
  holds one reply per moment. The video path is ``--video-template`` with ``{match}``
  (the match folder relative to the walked root) and ``{half}``. Given a directory, every
  ``Labels-caption.json`` below it is converted.
- LLaVA / VideoChatGPT offline JSON (a list of ``{"id", "video" | "image",
  "conversations": [{"from": "human" | "gpt", "value"}]}``) -> OfflineSample JSON Lines.

Every malformed input raises ``AnnotationError`` naming the file and the item. The command
line refuses an OUT that is SRC, never replaces an existing OUT without ``--overwrite``,
fails without touching OUT when the conversion yields no record, and writes OUT
atomically (a temporary file renamed at the end).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ArgumentParser, UserError, run_command
from ..fileio import read_json
from ..media.video import ceil_to_grid
from .annotations import AnnotationError, StreamAnnotation, Turn, load_llava_json, save_annotations, save_offline_samples

logger = logging.getLogger(__name__)

EGO4D_QUERY = "Please concisely narrate the video in real time."
SOCCER_QUERY = "Please commentate on this soccer match in real time."
EGO4D_VIDEO_TEMPLATE = "{video_uid}.mp4"
SOCCER_VIDEO_TEMPLATE = "{match}/{half}_224p.mkv"
SOCCER_LABELS_NAME = "Labels-caption.json"

_GAME_TIME = re.compile(r"^\s*(\d+)\s*-\s*(\d{2,3}):([0-5]\d)\s*$")


def _read_json(path: Path) -> Any:
    """Load a JSON file; I/O, encoding and syntax problems are an AnnotationError naming it."""
    return read_json(path, AnnotationError)


# -------------------------------------------------------------------------------- Ego4D


def narration_turns(narrations: Sequence[Mapping[str, Any]], fps: float, where: str) -> list[Turn]:
    """One annotation pass -> turns on the fps grid (ceil, same-slot later text, duplicate drop).

    Args:
        narrations: ``[{"time": seconds, "text": str}, ...]`` in any order.
        fps: grid rate, e.g. 2.0.
        where: prefix for error messages (file, video and pass).
    """
    if not isinstance(narrations, list):
        raise AnnotationError(f"{where}: expected a list of narrations, got {type(narrations).__name__}")
    parsed = []
    for k, item in enumerate(narrations):
        at = f"{where} item {k}"
        if not isinstance(item, dict):
            raise AnnotationError(f"{at}: expected an object with 'time' and 'text', got {type(item).__name__}")
        for key in ("time", "text"):
            if key not in item:
                raise AnnotationError(f"{at}: missing key {key!r}")
        time_s, text = item["time"], item["text"]
        if isinstance(time_s, bool) or not isinstance(time_s, (int, float)) or not math.isfinite(time_s):
            raise AnnotationError(f"{at}: 'time' must be a finite number of seconds, got {time_s!r}")
        if not isinstance(text, str) or not text.strip():
            raise AnnotationError(f"{at}: 'text' must be a non-empty string, got {text!r}")
        parsed.append((float(time_s), text))
    parsed.sort(key=lambda x: x[0])
    turns: list[Turn] = []
    for time_s, text in parsed:
        slot = ceil_to_grid(time_s, fps)
        if turns and text == turns[-1].text:
            continue
        if turns and slot == turns[-1].time:
            turns[-1] = Turn(slot, text)  # the later narration is closer to the slot time
        else:
            turns.append(Turn(slot, text))
    return turns


def convert_ego4d(
    streams: Any,
    *,
    fps: float = 2.0,
    query: str = EGO4D_QUERY,
    video_template: str = EGO4D_VIDEO_TEMPLATE,
    first_pass_only: bool = False,
    source: str = "<ego4d>",
) -> list[StreamAnnotation]:
    """Ego4D narration streams -> one StreamAnnotation per (video, annotation pass).

    Args:
        streams: ``{video_uid: {annotation_uid: [{"time", "text"}, ...]}}``.
        fps: grid the times are ceiled to (2 in VideoLLM-online and StreamMind).
        query: the user request stored in every record.
        video_template: video path with ``{video_uid}``.
        first_pass_only: keep only the first pass (in file order) of each video.
        source: file name used in error messages.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not isinstance(streams, dict):
        raise AnnotationError(f"{source}: expected an object {{video_uid: {{annotation_uid: [...]}}}}, got {type(streams).__name__}")
    records = []
    for video_uid, passes in streams.items():
        if not isinstance(passes, dict):
            raise AnnotationError(f"{source}: video {video_uid}: expected an object {{annotation_uid: [...]}}, got {type(passes).__name__}")
        for annotation_uid, narrations in list(passes.items())[: 1 if first_pass_only else None]:
            turns = narration_turns(narrations, fps, f"{source}: video {video_uid} pass {annotation_uid}")
            if not turns:
                continue
            records.append(
                StreamAnnotation(
                    video=video_template.format(video_uid=video_uid),
                    query=query,
                    turns=turns,
                    id=f"{video_uid}/{annotation_uid}",
                )
            )
    return records


# ---------------------------------------------------------------------------- SoccerNet


def parse_game_time(game_time: Any, where: str) -> tuple[int, int]:
    """``"H - MM:SS"`` -> (half, seconds into the half)."""
    m = _GAME_TIME.match(game_time) if isinstance(game_time, str) else None
    if m is None:
        raise AnnotationError(f"{where}: malformed gameTime {game_time!r}, expected 'H - MM:SS'")
    return int(m.group(1)), int(m.group(2)) * 60 + int(m.group(3))


def convert_soccernet(
    labels: Any,
    *,
    match: str,
    query: str = SOCCER_QUERY,
    video_template: str = SOCCER_VIDEO_TEMPLATE,
    halves: Sequence[int] | None = None,
    source: str = "<Labels-caption.json>",
) -> list[StreamAnnotation]:
    """One match's ``Labels-caption.json`` content -> one StreamAnnotation per half.

    Args:
        labels: ``{"annotations": [{"gameTime": "H - MM:SS", "anonymized": str, ...}]}``.
        match: the match folder relative to the data root (fills ``{match}``).
        query: the user request stored in every record.
        video_template: video path with ``{match}`` and ``{half}``.
        halves: keep only these halves (default: every half present).
        source: file name used in error messages.
    """
    if not isinstance(labels, dict) or "annotations" not in labels:
        raise AnnotationError(f"{source}: expected an object with an 'annotations' list")
    items = labels["annotations"]
    if not isinstance(items, list):
        raise AnnotationError(f"{source}: 'annotations' must be a list, got {type(items).__name__}")
    by_half: dict[int, dict[int, list[str]]] = {}  # half -> second -> texts in file order
    for k, item in enumerate(items):
        at = f"{source}: annotation {k}"
        if not isinstance(item, dict):
            raise AnnotationError(f"{at}: expected an object, got {type(item).__name__}")
        for key in ("gameTime", "anonymized"):
            if key not in item:
                raise AnnotationError(f"{at}: missing key {key!r}")
        half, seconds = parse_game_time(item["gameTime"], at)
        text = item["anonymized"]
        if not isinstance(text, str) or not text.strip():
            raise AnnotationError(f"{at}: 'anonymized' must be a non-empty string, got {text!r}")
        by_half.setdefault(half, {}).setdefault(seconds, []).append(text.strip())
    records = []
    for half in sorted(by_half):
        if halves is not None and half not in halves:
            continue
        by_time = by_half[half]
        turns = [Turn(float(t), " ".join(by_time[t])) for t in sorted(by_time)]
        records.append(
            StreamAnnotation(
                video=video_template.format(match=match, half=half),
                query=query,
                turns=turns,
                id=f"{match}/{half}",
            )
        )
    return records


def convert_soccernet_tree(
    root: str | Path,
    *,
    query: str = SOCCER_QUERY,
    video_template: str = SOCCER_VIDEO_TEMPLATE,
    halves: Sequence[int] | None = None,
    labels_name: str = SOCCER_LABELS_NAME,
) -> list[StreamAnnotation]:
    """Convert every ``labels_name`` file below ``root`` (sorted by path).

    The match name of each file is its folder relative to ``root``, e.g.
    ``england_epl_2014-2015/2015-02-21 - 18-00 Chelsea 1 - 1 Burnley``.
    """
    root = Path(root)
    files = sorted(root.rglob(labels_name))
    if not files:
        raise AnnotationError(f"{root}: no {labels_name} found below this folder")
    records = []
    for path in files:
        match = path.parent.relative_to(root).as_posix()
        labels = _read_json(path)
        records.extend(convert_soccernet(labels, match=match, query=query, video_template=video_template, halves=halves, source=str(path)))
    return records


# ---------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """Command-line interface: one sub-command per source format."""
    parser = ArgumentParser(
        prog="streammind convert-annotations",
        description="Convert upstream annotations to StreamMind JSON Lines (docs/design.md §4).",
    )
    sub = parser.add_subparsers(dest="format", required=True, help="source annotation format")
    overwrite = ArgumentParser(add_help=False)
    overwrite.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    ego = sub.add_parser("ego4d", parents=[overwrite], help="Ego4D narration stream {video_uid: {annotation_uid: [{time, text}]}}")
    ego.add_argument("src", type=Path, help="narration stream JSON (e.g. refined_narration_stream_val.json)")
    ego.add_argument("out", type=Path, help="output stream-annotation .jsonl")
    ego.add_argument("--fps", type=float, default=2.0, help="grid the narration times are ceiled to (default: 2)")
    ego.add_argument("--query", default=EGO4D_QUERY, help=f"user request stored in each record (default: {EGO4D_QUERY!r})")
    ego.add_argument("--video-template", default=EGO4D_VIDEO_TEMPLATE, help="video path with {video_uid} (default: %(default)s)")
    ego.add_argument(
        "--first-pass-only", action="store_true", help="keep only each video's first annotation pass (original StreamMind eval)"
    )

    soc = sub.add_parser("soccernet", parents=[overwrite], help="SoccerNet / MatchTime Labels-caption.json (a file or a folder to walk)")
    soc.add_argument("src", type=Path, help="one Labels-caption.json, or a folder searched recursively")
    soc.add_argument("out", type=Path, help="output stream-annotation .jsonl")
    soc.add_argument("--query", default=SOCCER_QUERY, help=f"user request stored in each record (default: {SOCCER_QUERY!r})")
    soc.add_argument("--video-template", default=SOCCER_VIDEO_TEMPLATE, help="video path with {match} and {half} (default: %(default)s)")
    soc.add_argument("--labels-name", default=SOCCER_LABELS_NAME, help="caption file name searched in folder mode (default: %(default)s)")
    soc.add_argument("--match", default=None, help="match folder for a single file (default: the file's parent folder name)")
    soc.add_argument("--halves", type=int, nargs="+", default=None, help="keep only these halves, e.g. --halves 1 (default: all)")

    lla = sub.add_parser("llava", parents=[overwrite], help="LLaVA / VideoChatGPT offline JSON list -> offline-sample JSON Lines")
    lla.add_argument("src", type=Path, help="JSON list of {id, video|image, conversations}")
    lla.add_argument("out", type=Path, help="output offline-sample .jsonl")
    return parser


def _check_out(src: Path, out: Path, overwrite: bool) -> None:
    """Refuse OUT = SRC, and an existing OUT without --overwrite, before anything is read."""
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: OUT is the source file itself; write somewhere else")
    if out.is_dir():
        raise UserError(f"{out}: OUT is a directory; give a .jsonl file path")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; pass --overwrite to replace it")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a conversion (errors raise; `run_command` reports them as one line, exit status 2).

    OUT is written only when the conversion yields at least one record.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    _check_out(args.src, args.out, args.overwrite)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.format == "ego4d":
        records = convert_ego4d(
            _read_json(args.src),
            fps=args.fps,
            query=args.query,
            video_template=args.video_template,
            first_pass_only=args.first_pass_only,
            source=str(args.src),
        )
    elif args.format == "soccernet":
        if args.src.is_dir():
            records = convert_soccernet_tree(
                args.src, query=args.query, video_template=args.video_template, halves=args.halves, labels_name=args.labels_name
            )
        else:
            records = convert_soccernet(
                _read_json(args.src),
                match=args.match if args.match is not None else args.src.parent.name,
                query=args.query,
                video_template=args.video_template,
                halves=args.halves,
                source=str(args.src),
            )
    else:
        records = load_llava_json(args.src)
    if not records:
        raise AnnotationError(f"{args.src}: the conversion yields no record (nothing to write; {args.out} left as it was)")
    n = save_offline_samples(records, args.out) if args.format == "llava" else save_annotations(records, args.out)
    logger.info("wrote %d records to %s", n, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind convert-annotations", main))
