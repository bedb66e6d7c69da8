"""SoccerNet / MatchTime live-commentary benchmark, both protocols.

    streammind eval soccernet --model CKPT --data-root DATA/SoccerNet \
        --annotations DATA/MatchTime/valid --out runs/eval/soccernet_valid

Data layout (none of it ships with the project):

    <data-root>/<match>/1_224p.mkv, 2_224p.mkv    the SoccerNet videos of each half
    <annotations>/<match>/Labels-caption.json     SoccerNet-Caption / MatchTime captions:
                                                  {"annotations": [{"gameTime": "H - MM:SS",
                                                  "anonymized": text, ...}]}

`<match>` is the match folder relative to its root, e.g.
`england_epl_2014-2015/2015-02-21 - 18-00 Chelsea 1 - 1 Burnley` (MatchTime) or
`england_epl/2014-2015/...` (SoccerNet); the caption tree and the video tree must use the
same relative paths. `--annotations` defaults to the data root (captions next to the
videos) and may also be a canonical stream-annotation JSONL (.jsonl).

Every `Labels-caption.json` below the caption root goes through
`streammind.training.annotation_converters.convert_soccernet_tree`: one record per half, id
"<match>/<half>", time = seconds into the half, captions on the same second joined. Each
half named by `--halves` (default: 1 2) that has no caption in its match's file is counted
as a "missing_annotation" failure (summary "load_failures" and teacher-forced
"failures"), never dropped silently. `--video-template` changes the video file names.

A half is about 45 minutes (5400 frames at 2 fps): the teacher-forced protocol holds one
half's frames and whole commentary in one forward, so it needs a large GPU.

Outputs in `--out`: `free/`, `teacher/` and the summary (see `eval.synthetic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streammind.errors import run_command
from streammind.evaluation.protocols import run_stream_protocols
from streammind.evaluation.tasks import Failure, apply_limit, build_parser, load_model_from_args, setup_logging
from streammind.evaluation.teacher_forced import TeacherForcedTask
from streammind.training.annotation_converters import SOCCER_LABELS_NAME, SOCCER_QUERY, SOCCER_VIDEO_TEMPLATE, convert_soccernet_tree
from streammind.training.annotations import AnnotationError, StreamAnnotation, load_annotations


class SoccerNetCommentary(TeacherForcedTask):
    """SoccerNet / MatchTime commentary, one record per half."""

    name = "soccernet"


def load_commentary_records(
    path: Path,
    *,
    halves: Sequence[int] = (1, 2),
    query: str = SOCCER_QUERY,
    video_template: str = SOCCER_VIDEO_TEMPLATE,
    labels_name: str = SOCCER_LABELS_NAME,
) -> tuple[list[StreamAnnotation], list[Failure]]:
    """Records from a caption tree (converted) or a canonical JSONL (as is).

    Returns:
        (records, failures): requested halves without captions, as "missing_annotation".
    """
    if path.suffix == ".jsonl":
        return load_annotations(path), []
    if not path.is_dir():
        raise AnnotationError(f"{path}: expected a folder of {labels_name} files or a canonical .jsonl")
    records = convert_soccernet_tree(path, query=query, video_template=video_template, halves=halves, labels_name=labels_name)
    converted = {record.id for record in records}
    failures = []
    for labels in sorted(path.rglob(labels_name)):
        match = labels.parent.relative_to(path).as_posix()
        for half in halves:
            record_id = f"{match}/{half}"
            if record_id not in converted:
                failures.append(Failure(record_id, "missing_annotation", f"{labels}: no caption for half {half}"))
    return records, failures


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a model on SoccerNet commentary; returns the exit status."""
    parser = build_parser(
        "streammind eval soccernet",
        __doc__,
        annotations_help=f"folder searched for {SOCCER_LABELS_NAME}, or a canonical JSONL (default: the data root)",
    )
    parser.add_argument("--halves", type=int, nargs="+", default=[1, 2], help="halves to evaluate (default: 1 2)")
    parser.add_argument("--query", default=SOCCER_QUERY, help="user request of every record (default: %(default)r)")
    parser.add_argument("--video-template", default=SOCCER_VIDEO_TEMPLATE, help="video path with {match} and {half} (default: %(default)s)")
    parser.add_argument("--labels-name", default=SOCCER_LABELS_NAME, help="caption file name (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    records, failures = load_commentary_records(
        args.annotations or args.data_root,
        halves=args.halves,
        query=args.query,
        video_template=args.video_template,
        labels_name=args.labels_name,
    )
    model, processor = load_model_from_args(args)
    task = SoccerNetCommentary(
        apply_limit(records, args.limit), args.data_root, threshold=args.threshold, num_plots=args.num_plots, load_failures=failures
    )
    run_stream_protocols(task, model, processor, args.out, protocol=args.protocol, use_meteor=not args.skip_meteor)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind eval soccernet", main))
