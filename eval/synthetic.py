"""Streaming benchmark on the embedded synthetic world, both protocols.

    streammind eval synthetic --model runs/quickstart/stage2 --data-root runs/world \
        --split test --out runs/eval/synthetic [--protocol free|teacher|both] [--limit N]

Data layout (written by `streammind world DIR`, or by the quickstart):

    <data-root>/{train,val,test}.jsonl     canonical stream annotations (docs/design.md §4)
    <data-root>/videos/<split>/NNNN.mp4    the videos the records point to

`--annotations` replaces `<data-root>/<split>.jsonl` with any canonical JSONL whose video
paths are relative to the data root.

Outputs in `--out`: `free/` (the real streaming runtime: predictions.jsonl, metrics.json,
metrics.md, plots/), `teacher/` (the teacher-forced protocol of `streammind.evaluation.teacher_forced`:
the same files) and a summary of both in `metrics.json` / `metrics.md`.
"""

from __future__ import annotations

from collections.abc import Sequence

from streammind.errors import UserError, run_command
from streammind.evaluation.protocols import run_stream_protocols
from streammind.evaluation.tasks import apply_limit, build_parser, load_model_from_args, setup_logging
from streammind.evaluation.teacher_forced import TeacherForcedTask
from streammind.training.annotations import load_annotations


class SyntheticWorld(TeacherForcedTask):
    """The synthetic world's held-out split."""

    name = "synthetic"


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a model on a split of a generated world; returns the exit status."""
    parser = build_parser(
        "streammind eval synthetic",
        __doc__,
        annotations_help="canonical stream annotation JSONL (default: <data-root>/<split>.jsonl)",
    )
    parser.add_argument("--split", choices=("train", "val", "test"), default="test", help="world split (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    path = args.annotations or args.data_root / f"{args.split}.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: not found; generate a world with `streammind world {args.data_root}`")
    records = apply_limit(load_annotations(path), args.limit)
    model, processor = load_model_from_args(args)
    task = SyntheticWorld(records, args.data_root, threshold=args.threshold, num_plots=args.num_plots)
    run_stream_protocols(task, model, processor, args.out, protocol=args.protocol, use_meteor=not args.skip_meteor)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("streammind eval synthetic", main))
