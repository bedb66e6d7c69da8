"""The `streammind` command: `streammind {stream,bench,quickstart,world,pretrain-tower,features,train,convert} ...`.

`stream` runs a saved model over a video file, a webcam, an RTSP/HTTP URL or a folder of
images, printing `[mm:ss.s] reply` lines as replies happen (the runtime pieces live in
`streammind.runtime`; the command only parses flags, wires them up and reports):

    streammind stream clip.mp4 --model runs/quickstart/stage2 --query "Tell me when a shape appears."
    streammind stream /dev/video0 --model DIR --query "..." --realtime --stats stats.json
    streammind stream rtsp://camera/live --model DIR --realtime --av-option rtsp_transport=tcp

While a stream plays, a line typed on the terminal joins as a new query (only when stdin is
a terminal, or with `--interactive`). Exit status: 0 when the source was streamed to its end,
1 for a bad source or model (one line on stderr, no traceback), 130 when interrupted
(Ctrl-C; the outputs written so far are kept).

The other subcommands hand their arguments to the module's own `main`, e.g.
`streammind bench step --preset tiny` is `python -m streammind.bench step --preset tiny`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import queue
import sys
from pathlib import Path

from . import __version__

# subcommand -> (module whose main(argv) runs it, help line)
DELEGATED = {
    "bench": ("streammind.bench", "benchmarks: always-on per-frame cost, kernel parity (streammind.bench)"),
    "quickstart": ("streammind.quickstart", "generate the synthetic world, train the tiny model, evaluate (streammind.quickstart)"),
    "world": ("streammind.world", "generate the synthetic world and its tokenizer (streammind.world)"),
    "pretrain-tower": ("streammind.tower_pretrain", "CLIP-style pretraining of the tiny tower on a world (streammind.tower_pretrain)"),
    "features": ("streammind.features", "extract and cache the frozen tower's pooled frame features (streammind.features)"),
    "train": ("streammind.train", "train one stage from a YAML config (streammind.train)"),
    "convert": ("streammind.convert", "conversion tools (streammind.convert)"),
}


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _av_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streammind", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"streammind {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stream = sub.add_parser("stream", help="stream a video, webcam, URL or image folder through a model",
                            description="Stream a source through a saved StreamMind model; replies print as `[mm:ss.s] text`.")
    stream.add_argument("source", metavar="SOURCE",
                        help="video file, webcam (/dev/video0 or an index such as 0), rtsp:// or http:// URL, or a folder of images")
    stream.add_argument("--model", required=True, help="saved StreamMind directory (e.g. runs/quickstart/stage2)")
    stream.add_argument("--query", default=None, help="what the user asks for (more can be typed while the stream plays)")
    stream.add_argument("--fps", type=_positive, default=None,
                        help="sampling rate in frames per second of media time (default: the model's frames_per_second); "
                             "image k of a folder is at k / fps")
    stream.add_argument("--realtime", action="store_true",
                        help="pace by the wall clock: the frame at media time t is due at start + t; late frames are dropped and counted")
    stream.add_argument("--max-lag", type=_positive, default=None,
                        help="with --realtime, drop frames at least this many seconds late (default: one frame period)")
    stream.add_argument("--threshold", type=float, default=None, help="reply when p(respond) > threshold (default: the model's)")
    stream.add_argument("--max-new-tokens", type=int, default=None, help="reply length cap (default: the model's max_reply_tokens)")
    stream.add_argument("--output", default=None, help="write one JSON line per reply (time, text, prob)")
    stream.add_argument("--stats", default=None, help="write a JSON summary (frames, duration, drops, skips, replies, latency)")
    stream.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    stream.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model weights dtype")
    stream.add_argument("--backend", default="pyav", choices=["auto", "decord", "pyav"],
                        help="decoder for video files (URLs and devices always use PyAV; both give the same frames)")
    stream.add_argument("--av-option", type=_av_option, action="append", default=[], metavar="KEY=VALUE",
                        help="FFmpeg open option for URLs and devices, e.g. rtsp_transport=tcp (repeatable)")
    stream.add_argument("--interactive", action="store_true",
                        help="read queries from stdin even when it is not a terminal (one per line)")
    for name, (_, help_line) in DELEGATED.items():
        sub.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `streammind` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return stream(args)


def _delegate(command: str, rest: list[str]) -> int:
    """Import the subcommand's module lazily (it may not exist yet) and call its main(rest)."""
    module_name = DELEGATED[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"streammind {command}: error: not available in this installation ({module_name} is missing)", file=sys.stderr)
        return 1
    module.main(rest)
    return 0


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Turn transformers' loading bars off while inside (when stderr is not a terminal), then restore."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _error(message: str) -> int:
    print(f"streammind stream: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 1


def stream(args: argparse.Namespace) -> int:
    """`streammind stream`: open the source, load the model, stream, write the outputs."""
    import torch

    from .builder import load_model
    from .configuration import StreamMindConfig
    from .datasets.video import VideoDecodeError
    from .runtime import Pacer, SourceError, StdinQueries, StreamRunner, format_time, open_source
    from .streaming import StreamingSession

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        return _error(f"{args.model}: not a saved StreamMind model (no config.json there)")
    fps = args.fps or StreamMindConfig.from_pretrained(model_dir).frames_per_second
    try:
        source = open_source(args.source, fps=fps, backend=args.backend, options=dict(args.av_option) or None)
    except (VideoDecodeError, SourceError, ImportError) as exc:
        return _error(exc)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with _progress_bars(sys.stderr.isatty()):
        model, processor = load_model(model_dir, device=device, dtype=getattr(torch, args.dtype))
    # record_probs=False: the session keeps no per-frame history, so memory stays bounded.
    session = StreamingSession(model, processor, query=args.query, threshold=args.threshold,
                               max_new_tokens=args.max_new_tokens, record_probs=False)

    output = None
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        output = open(args.output, "w")

    def on_reply(reply) -> None:
        print(f"[{format_time(reply.time)}] {reply.text}", flush=True)
        if output is not None:
            output.write(json.dumps({"time": reply.time, "text": reply.text, "prob": round(reply.prob, 6)}) + "\n")
            output.flush()

    def on_query(t: float, text: str) -> None:
        print(f"[{format_time(t)}] (query joined) {text}", flush=True)

    lines: queue.Queue[str] | None = None
    if args.interactive or (sys.stdin is not None and sys.stdin.isatty()):
        lines = StdinQueries(sys.stdin).start().queue
        print("Type a question and press Enter to add it to the stream.", file=sys.stderr, flush=True)

    pacer = Pacer(max_lag_s=args.max_lag) if args.realtime else None
    runner = StreamRunner(session, source, pacer=pacer, queries=lines, on_reply=on_reply, on_query=on_query)
    try:
        stats = runner.run()
    except KeyboardInterrupt:
        stats = runner.stats
        stats.interrupted = True
    finally:
        if output is not None:
            output.close()

    if args.stats:
        Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        summary = {"model": str(args.model), "query": args.query, "threshold": session.threshold, **stats.to_dict()}
        Path(args.stats).write_text(json.dumps(summary, indent=2) + "\n")
    if stats.error:
        return _error(stats.error)
    if stats.interrupted:
        print("streammind stream: interrupted", file=sys.stderr)
        return 130
    print(f"{stats.frames} frames ({stats.dropped} dropped, {stats.skipped} skipped), {stats.replies} replies "
          f"in {stats.wall_s:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
