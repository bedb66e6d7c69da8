"""Ego4D narration stream benchmark (VideoLLM-online's streaming narration), both protocols.

    streammind eval ego4d_narration --model CKPT --data-root DATA/ego4d \
        --annotations DATA/ego4d/narration_stream_val.json --out runs/eval/ego4d_val

Data layout (none of it ships with the project):

    <data-root>/<video_uid>.mp4          the Ego4D videos (any fps; frames are sampled
                                         at the model's fps by presentation time)
    <annotations>                        VideoLLM-online's narration_stream_{split}.json
                                         (or refined_narration_stream_{split}.json):
                                         {video_uid: {annotation_uid: [{"time", "text"}]}},
                                         or a canonical stream-annotation JSONL (.jsonl)
                                         whose video paths are relative to the data root

The narration JSON goes through `streammind.training.annotation_converters.convert_ego4d`: one record
per (video, annotation pass), times ceiled to the model's fps grid (`--grid-fps`
overrides), repeated texts dropped, `--first-pass-only` for the original StreamMind
evaluation's one pass per video. An annotation pass without any narration cannot become a
record: it is counted as a "missing_annotation" failure (listed by
"<video_uid>/<annotation_uid>") in the summary's "load_failures" and in the teacher-forced
metrics, never dropped silently. `--annotations` defaults to
`<data-root>/narration_stream_<split>.json`.

Outputs in `--out`: `free/`, `teacher/` and the summary (see `eval.synthetic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streammind.builder import read_config
from streammind.errors import run_command
from streammind.evaluation.protocols import run_stream_protocols
from streammind.evaluation.tasks import Failure, apply_limit, build_parser, load_model_from_args, setup_logging
from streammind.evaluation.teacher_forced import TeacherForcedTask
from streammind.fileio import read_json
from streammind.training.annotation_converters import EGO4D_QUERY, EGO4D_VIDEO_TEMPLATE, convert_ego4d
from streammind.training.annotations import AnnotationError, StreamAnnotation, load_annotations


class Ego4DNarration(TeacherForcedTask):
    """Ego4D narration streams, one record per (video, annotation pass)."""

    name = "ego4d_narration"


def load_narration_records(
    path: Path,
    *,
    fps: float,
    query: str = EGO4D_QUERY,
    video_template: str = EGO4D_VIDEO_TEMPLATE,
    first_pass_only: bool = False,
) -> tuple[list[StreamAnnotation], list[Failure]]:
    """Records from a narration-stream JSON (converted) or a canonical JSONL (as is).

    Returns:
        (records, failures): the passes that have no narration, as "missing_annotation".
    """
    if path.suffix == ".jsonl":
        return load_annotations(path), []
    streams = read_json(path, AnnotationError)
    records = convert_ego4d(
        streams, fps=fps, query=query, video_template=video_template, first_pass_only=first_pass_only, source=str(path)
    )
    converted = {record.id for record in records}
    failures = []
    for video_uid, passes in streams.items():
        for annotation_uid in list(passes)[: 1 if first_pass_only else None]:
            record_id = f"{video_uid}/{annotation_uid}"
            if record_id not in converted:
                failures.append(Failure(record_id, "missing_annotation", f"{path}: annotation pass {record_id} has no narration"))
    return records, failures


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a model on Ego4D narration streams; returns the exit status."""
    parser = build_parser(
        "streammind eval ego4d_narration",
        __doc__,
        annotations_help="narration_stream_{split}.json or a canonical JSONL (default: <data-root>/narration_stream_<split>.json)",
    )
    parser.add_argument("--split", default="val", help="names the default annotation file (default: %(default)s)")
    parser.add_argument("--grid-fps", type=float, default=None, help="grid narration times are ceiled to (default: the model's fps)")
    parser.add_argument("--query", default=EGO4D_QUERY, help="user request of every record (default: %(default)r)")
    parser.add_argument("--video-template", default=EGO4D_VIDEO_TEMPLATE, help="video path with {video_uid} (default: %(default)s)")
    parser.add_argument("--first-pass-only", action="store_true", help="only each video's first annotation pass")
    args = parser.parse_args(argv)
    setup_logging()
    path = args.annotations or args.data_root / f"narration_stream_{args.split}.json"
    records, failures = load_narration_records(
        path,
        fps=args.grid_fps or read_config(args.model).frames_per_second,
        query=args.query,
        video_template=args.video_template,
        first_pass_only=args.first_pass_only,
    )
    model, processor = load_model_from_args(args)
    task = Ego4DNarration(
        apply_limit(records, args.limit), args.data_root, threshold=args.threshold, num_plots=args.num_plots, load_failures=failures
    )
    run_stream_protocols(task, model, processor, args.out, protocol=args.protocol, use_meteor=not args.skip_meteor)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind eval ego4d_narration", main))
