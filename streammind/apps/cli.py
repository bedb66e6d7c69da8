"""The `streammind` command, one entry point for every verb:

    streammind stream | train | features | eval <benchmark> | score | convert | convert-annotations
               | world | pretrain-tower | bench | quickstart | reproduce

(`python -m streammind <verb> ...` where the console script is not installed.)

`stream` runs a saved model over a video file, a webcam, an RTSP/HTTP URL or a folder of
images, printing `[mm:ss.s] reply` lines as replies happen (the sources live in
`streammind.media.sources`, the runtime in `streammind.apps.runtime`; the command only parses
flags, wires them up and reports):

    streammind stream clip.mp4 --model runs/quickstart/stage2 --query "Tell me when a shape appears."
    streammind stream /dev/video0 --model DIR --query "..." --realtime --stats stats.json
    streammind stream rtsp://camera/live --model DIR --realtime --av-option rtsp_transport=tcp

While a stream plays, a line typed on the terminal joins as a new query (only when stdin is
a terminal, or with `--interactive`). URLs and devices are opened with timeouts
(`--open-timeout`, `--read-timeout`, 10 s each by default), and Ctrl-C stops the stream
even while it waits on the network.

Errors (every subcommand): one line on stderr, `streammind <verb>: error: <file>[:<line>]:
<problem>`, and exit status 2 for a bad input (a missing or malformed file, a model
directory of another kind, a flag out of range), 1 for a failure at run time (a source that
dies or stops answering), 130 when interrupted (Ctrl-C; the outputs written so far are
kept). `streammind --debug <verb> ...` or STREAMMIND_DEBUG=1 also prints the traceback.

The other verbs hand their arguments to their module's own `main(argv) -> exit status`
(`VERBS`), e.g. `streammind bench step --preset tiny` runs `streammind.apps.bench.main`, and
`streammind eval <benchmark> ...` runs the benchmark module of `streammind_eval` (the
repository's eval/ folder; `EVAL_COMMANDS`), with `streammind eval offline --data-root ROOT
--model DIR --out OUT` running every offline benchmark found under ROOT.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import queue
import sys
from pathlib import Path

from .. import __version__
from ..errors import ArgumentParser, RunFailure, UserError, run_command
from ..fileio import atomic_write, write_json

# Open and read timeouts (seconds) of URLs and devices; the same values as
# streammind.media.video.LIVE_TIMEOUT_S, repeated here so that `--help` needs no decoder.
DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 10.0

# verb -> (module whose main(argv) runs it, help line); `stream` and `eval` are handled here.
VERBS = {
    "train": ("streammind.training.train", "train one stage from a YAML config"),
    "features": ("streammind.training.features", "extract and cache the frozen tower's pooled frame features"),
    "score": ("streammind.evaluation.score", "re-score free-running streaming predictions against annotations"),
    "convert": ("streammind.apps.convert", "convert a checkpoint (VideoLLaMA2, the original StreamMind release)"),
    "convert-annotations": ("streammind.training.annotation_converters",
                            "convert upstream annotations (Ego4D narration, SoccerNet, LLaVA) to the canonical format"),
    "world": ("streammind.synthetic.world", "generate the synthetic world and its tokenizer"),
    "pretrain-tower": ("streammind.synthetic.tower_pretrain", "CLIP-style pretraining of the tiny tower on a world"),
    "bench": ("streammind.apps.bench", "benchmarks: always-on per-frame cost, kernel parity"),
    "quickstart": ("streammind.apps.quickstart", "generate the synthetic world, train the tiny model, evaluate"),
    "reproduce": ("streammind.apps.reproduce", "the paper's comparison at toy scale: StreamMind vs the per-frame LLM, ablations"),
}

# `streammind eval NAME ...` -> (module whose main(argv) runs it, help line)
EVAL_COMMANDS = {
    "offline": ("streammind_eval.offline_suite", "the offline suite: every offline benchmark found under --data-root, one summary table"),
    "coin": ("streammind_eval.coin", "COIN step / next / task / procedure / procedure+"),
    "ego4d_lta": ("streammind_eval.ego4d_lta", "Ego4D long-term action anticipation (ED@20)"),
    "qa_open": ("streammind_eval.qa_open", "open-ended QA with an LLM judge (MSVD-QA, ActivityNet-QA)"),
    "qa_mc": ("streammind_eval.qa_mc", "multiple-choice QA (MVBench, Video-MME, EgoSchema, PerceptionTest)"),
    "videochatgpt": ("streammind_eval.videochatgpt", "the Video-ChatGPT generative benchmark (five judge scores)"),
    "synthetic": ("streammind_eval.synthetic", "streaming: the synthetic world"),
    "ego4d_narration": ("streammind_eval.ego4d_narration", "streaming: Ego4D narration"),
    "soccernet": ("streammind_eval.soccernet", "streaming: SoccerNet commentary"),
    "score": ("streammind.evaluation.score", "re-score free-running streaming predictions (the same as `streammind score`)"),
}


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"must be a finite number in [0, 1], got {text}")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _av_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="streammind", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"streammind {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error as well (also STREAMMIND_DEBUG=1)")
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
    stream.add_argument("--threshold", type=_probability, default=None,
                        help="reply when p(respond) > threshold, in [0, 1] (default: the model's)")
    stream.add_argument("--max-new-tokens", type=_at_least_one, default=None, help="reply length cap, >= 1 (default: the model's max_reply_tokens)")
    stream.add_argument("--output", default=None,
                        help="write one JSON line per reply (time, text, prob); the file appears when the stream ends (also on Ctrl-C)")
    stream.add_argument("--stats", default=None, help="write a JSON summary (frames, duration, drops, skips, replies, latency)")
    stream.add_argument("--open-timeout", type=_positive, default=DEFAULT_OPEN_TIMEOUT_S,
                        help="URLs and devices: seconds to wait for the source to open or connect (default: %(default)g)")
    stream.add_argument("--read-timeout", type=_positive, default=DEFAULT_READ_TIMEOUT_S,
                        help="URLs and devices: seconds to wait for data once open before the stream ends with an error (default: %(default)g)")
    stream.add_argument("--allow-partial-load", action="store_true",
                        help="load a model whose weights lack some tensors (or hold extra ones); by default that is an error")
    stream.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    stream.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model weights dtype")
    stream.add_argument("--backend", default="pyav", choices=["auto", "decord", "pyav"],
                        help="decoder for video files (URLs and devices always use PyAV; both give the same frames)")
    stream.add_argument("--av-option", type=_av_option, action="append", default=[], metavar="KEY=VALUE",
                        help="FFmpeg open option for URLs and devices, e.g. rtsp_transport=tcp (repeatable)")
    stream.add_argument("--interactive", action="store_true",
                        help="read queries from stdin even when it is not a terminal (one per line)")
    sub.add_parser("eval", help="evaluate: `streammind eval offline ...` (the offline suite) or `streammind eval <benchmark> ...`",
                   add_help=False)
    for name, (_, help_line) in VERBS.items():
        sub.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `streammind` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = None
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if argv and argv[0] in VERBS:
        return _delegate(argv[0], argv[1:], debug)
    if argv and argv[0] == "eval":
        return _eval(argv[1:], debug)
    prog = "streammind stream" if argv and argv[0] == "stream" else "streammind"
    return run_command(prog, lambda args: stream(build_parser().parse_args(args)), argv, debug)


def _delegate(command: str, rest: list[str], debug: bool | None = None) -> int:
    """Import the subcommand's module lazily (it may not exist yet) and run its main(rest)."""
    module_name = VERBS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"streammind {command}: error: not available in this installation ({module_name} is missing)", file=sys.stderr)
        return 1
    return run_command(f"streammind {command}", module.main, rest, debug)


def _eval(rest: list[str], debug: bool | None = None) -> int:
    """`streammind eval NAME ...`: the benchmark module's main(rest[1:]) and its exit status."""
    usage = "usage: streammind eval NAME [ARGS ...]   (`streammind eval NAME --help` for a benchmark's options)\n\n" + "\n".join(
        f"  {name:<16} {help_line}" for name, (_, help_line) in EVAL_COMMANDS.items())
    if not rest or rest[0] in ("-h", "--help"):
        print(usage, file=sys.stdout if rest else sys.stderr)
        return 0 if rest else 2
    if rest[0] not in EVAL_COMMANDS:
        print(f"streammind eval: error: unknown benchmark {rest[0]!r}\n{usage}", file=sys.stderr)
        return 2
    module = importlib.import_module(EVAL_COMMANDS[rest[0]][0])
    return run_command(f"streammind eval {rest[0]}", module.main, rest[1:], debug)


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


def _check_output(path: str, flag: str) -> None:
    """Fail before streaming when an output file could not be written at the end."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{path}: {flag} names a directory; give a file path")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{path}: {flag}: {parent} is not a directory") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: {flag}: cannot write in {parent}")


def stream(args: argparse.Namespace) -> int:
    """`streammind stream`: open the source, load the model, stream, write the outputs.

    Raises:
        UserError: a bad input (exit 2), before anything streams.
        RunFailure: the source failed (exit 1); the outputs are written first.
    """
    import torch

    from ..builder import load_model, read_config
    from ..media.sources import open_source
    from ..streaming import SessionInputError, StreamingSession
    from .runtime import Pacer, StdinQueries, StreamRunner, format_time

    for path, flag in ((args.output, "--output"), (args.stats, "--stats")):
        if path:
            _check_output(path, flag)
    model_dir = Path(args.model)
    fps = args.fps or read_config(model_dir).frames_per_second
    try:
        source = open_source(args.source, fps=fps, backend=args.backend, options=dict(args.av_option) or None,
                             timeout=(args.open_timeout, args.read_timeout))
    except ImportError as exc:
        raise UserError(f"{args.source}: {exc}") from exc

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with _progress_bars(sys.stderr.isatty()):
        model, processor = load_model(model_dir, device=device, dtype=getattr(torch, args.dtype), strict=not args.allow_partial_load)
    # record_probs=False: the session keeps no per-frame history, so memory stays bounded.
    try:
        session = StreamingSession(model, processor, query=args.query, threshold=args.threshold,
                                   max_new_tokens=args.max_new_tokens, record_probs=False)
    except SessionInputError as exc:  # the flags were checked by the parser: what is left is the query
        raise UserError(f"--query: {exc}") from exc

    with contextlib.ExitStack() as outputs:
        # Written to a temporary file beside --output and renamed when the stream ends (also on
        # Ctrl-C and on a source error); an earlier file of that name stays whole until then.
        output = outputs.enter_context(atomic_write(args.output)) if args.output else None

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

    if args.stats:
        write_json(args.stats, {"model": str(args.model), "query": args.query, "threshold": session.threshold, **stats.to_dict()})
    if stats.error:
        raise RunFailure(stats.error)
    if stats.interrupted:
        print("streammind stream: interrupted", file=sys.stderr)
        return 130
    print(f"{stats.frames} frames ({stats.dropped} dropped, {stats.skipped} skipped), {stats.replies} replies "
          f"in {stats.wall_s:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
