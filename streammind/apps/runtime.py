"""The streaming runtime around a `StreamingSession`: wall-clock pacing, queries, stats.

`streammind stream` (`apps/cli.py`) is a thin shell over this module and the sources of
`streammind.media.sources`; notebooks and evaluators can use the same pieces from Python:

    source = open_source("clip.mp4", fps=2.0)          # streammind.media.sources
    runner = StreamRunner(session, source, pacer=Pacer() if realtime else None)
    stats = runner.run()          # StreamStats; stats.to_dict() is the JSON summary

Pieces:

- `Pacer`: wall-clock pacing. The frame at media time t is due at ``start + t`` (start: the
  wall time of the first frame). An early frame waits; a frame that is ``max_lag_s`` or more
  late (default one frame period: the next frame is already due) is dropped and counted.
  Frames are pulled from the source only when the loop is ready for the next one, so nothing
  queues: at most one decoded frame is held. The clock and the sleep are injectable.
- Queries joining mid-stream: any `queue.Queue` of strings; the runner drains it before each
  frame and calls `StreamingSession.add_query`, so a query joins at the time of the next
  frame. A query the session refuses (over the LLM budget) is logged and recorded with a
  "refused" reason; the stream goes on. `StdinQueries` fills such a queue from a text stream in a background thread.
- `StreamStats`: processed / dropped / skipped frames, replies, joined queries, and the
  `push` latency of the always-on path (frames without a reply) and of reply frames, as
  p50 / p95 / max. Latencies go into `LatencyStats`, a log-spaced histogram, so the
  runtime's memory stays bounded over streams of any length (as the session's does when it
  runs with ``record_probs=False``).

A source that fails mid-stream (a decode error from the demuxer, a connection that drops,
a file that ends before the duration its header declares) does not raise out of
`StreamRunner.run`: the error is recorded in `StreamStats.error`, one line, and the counts
up to that point are kept. Broken frames the decoder can skip are counted, not errors.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from ..media.sources import EARLY_END_TOLERANCE_S, FrameSource
from ..media.video import VideoDecodeError
from ..streaming import Reply, SessionInputError, StreamingSession

logger = logging.getLogger(__name__)


def format_time(t: float) -> str:
    """Seconds -> ``mm:ss.s`` (minutes keep counting past 59)."""
    tenths = int(round(t * 10))
    return f"{tenths // 600:02d}:{tenths % 600 / 10:04.1f}"


# ------------------------------------------------------------------------------ pacing


class Pacer:
    """Wall-clock pacing that drops late frames instead of queueing them.

    The frame at media time t is due at ``start + t``, where ``start`` is the wall time at
    which the first frame arrives minus its media time. An early frame waits until it is
    due; a frame late by ``max_lag_s`` or more is dropped. Lateness of the frames that are
    kept is recorded in `lag_ms`.

    Args:
        max_lag_s: drop frames at least this late (default: one frame period, 1 / fps of
            the source, i.e. when the next frame is already due).
        clock: monotonic seconds (injectable for tests).
        sleep: sleeps the given seconds (injectable for tests).
    """

    def __init__(self, max_lag_s: float | None = None, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.max_lag_s = max_lag_s
        self.clock = clock
        self.sleep = sleep
        self.dropped = 0
        self.lag_ms = LatencyStats()

    def pace(self, frames: Iterable[tuple[float, Any]], fps: float) -> Iterator[tuple[float, Any]]:
        """Yield the frames of `frames` (at sampling rate `fps`) that are on time, each when due."""
        max_lag = 1.0 / fps if self.max_lag_s is None else self.max_lag_s
        start = None
        for t, frame in frames:
            now = self.clock()
            if start is None:
                start = now - t
            late = now - (start + t)
            if late >= max_lag:
                self.dropped += 1
                continue
            if late < 0:
                self.sleep(-late)
                late = max(0.0, self.clock() - (start + t))
            self.lag_ms.add(late * 1e3)
            yield t, frame


# ------------------------------------------------------------------------------ queries


class StdinQueries:
    """Read user queries, one per line, from a text stream in a daemon thread into `queue`.

    Blank lines are ignored. The thread ends at end of input; being a daemon, it never keeps
    the process alive while blocked on a read.
    """

    def __init__(self, stream: TextIO, lines: queue.Queue | None = None) -> None:
        self.stream = stream
        self.queue: queue.Queue[str] = queue.Queue() if lines is None else lines
        self.thread = threading.Thread(target=self._read, name="streammind-stdin", daemon=True)

    def start(self) -> StdinQueries:
        self.thread.start()
        return self

    def _read(self) -> None:
        for line in self.stream:
            if line.strip():
                self.queue.put(line.strip())


# ------------------------------------------------------------------------------ stats


class LatencyStats:
    """p50 / p95 / max of a stream of durations in bounded memory.

    Values go into log-spaced bins 1% wide (at most ~1,400 bins between 1 µs and an hour),
    so percentiles are exact to within 1%; the maximum is exact. Percentiles use the
    nearest-rank definition and are reported at the bin's geometric centre, clamped to the
    observed range.
    """

    _FLOOR_MS = 1e-3
    _LOG_RATIO = math.log(1.01)

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, ms: float) -> None:
        k = int(math.floor(math.log(max(ms, self._FLOOR_MS) / self._FLOOR_MS) / self._LOG_RATIO))
        self.bins[k] = self.bins.get(k, 0) + 1
        self.count += 1
        self.min, self.max = min(self.min, ms), max(self.max, ms)

    def percentile(self, q: float) -> float | None:
        """The nearest-rank q-th percentile (0 < q <= 100); None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for k in sorted(self.bins):
            seen += self.bins[k]
            if seen >= rank:
                centre = self._FLOOR_MS * math.exp((k + 0.5) * self._LOG_RATIO)
                return min(max(centre, self.min), self.max)
        return self.max

    def summary(self) -> dict:
        """{"count", "p50", "p95", "max"} in milliseconds (None when empty)."""
        if not self.count:
            return {"count": 0, "p50": None, "p95": None, "max": None}
        return {"count": self.count, "p50": round(self.percentile(50), 3), "p95": round(self.percentile(95), 3),
                "max": round(self.max, 3)}


@dataclass
class StreamStats:
    """What one run of a source through a session did (`to_dict` is the JSON summary)."""

    source: str
    kind: str
    fps: float
    realtime: bool
    frames: int = 0  # processed (pushed to the session)
    dropped: int = 0  # late frames dropped by the pacer
    skipped: int = 0  # broken frames skipped by the decoder
    replies: int = 0
    source_duration_s: float | None = None  # probed (files)
    last_time: float | None = None  # media time of the last frame the source gave
    queries: list[dict] = field(default_factory=list)  # {"time", "text"} of queries that joined
    always_on_ms: LatencyStats = field(default_factory=LatencyStats)
    reply_ms: LatencyStats = field(default_factory=LatencyStats)
    lag_ms: LatencyStats | None = None  # realtime only
    wall_s: float = 0.0
    error: str | None = None
    interrupted: bool = False

    @property
    def duration_s(self) -> float | None:
        """The source's duration: probed for files, else the time of its last frame."""
        return self.source_duration_s if self.source_duration_s is not None else self.last_time

    def to_dict(self) -> dict:
        out = {
            "source": self.source, "kind": self.kind, "fps": self.fps, "realtime": self.realtime,
            "frames": self.frames, "duration_s": self.duration_s, "dropped": self.dropped, "skipped": self.skipped,
            "replies": self.replies, "queries": self.queries,
            "latency_ms": {"always_on": self.always_on_ms.summary(), "reply": self.reply_ms.summary()},
        }
        if self.lag_ms is not None:
            out["lag_ms"] = self.lag_ms.summary()
        out.update({"wall_s": round(self.wall_s, 3), "error": self.error, "interrupted": self.interrupted})
        return out


# ------------------------------------------------------------------------------ the loop


class StreamRunner:
    """Push a source's frames through a session, with optional pacing and joining queries.

    Args:
        session: the `StreamingSession` (its state is used as is; reset it between sources).
        source: an opened `FrameSource`.
        pacer: a `Pacer` for wall-clock pacing; None processes every frame at full speed.
        queries: a queue of query strings that join the stream before the next frame.
        on_reply: called with each `Reply` as it happens.
        on_query: called with (time, text) when a query joins.
        timer: seconds for the latency measurement (injectable for tests).
    """

    def __init__(
        self,
        session: StreamingSession,
        source: FrameSource,
        pacer: Pacer | None = None,
        queries: queue.Queue | None = None,
        on_reply: Callable[[Reply], None] | None = None,
        on_query: Callable[[float, str], None] | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.session = session
        self.source = source
        self.pacer = pacer
        self.queries = queries
        self.on_reply = on_reply
        self.on_query = on_query
        self.timer = timer
        self.stats = StreamStats(source=source.name, kind=source.kind, fps=source.fps, realtime=pacer is not None,
                                 source_duration_s=source.duration_s, lag_ms=pacer.lag_ms if pacer else None)

    def _seen(self, frames: Iterable[tuple[float, np.ndarray]]) -> Iterator[tuple[float, np.ndarray]]:
        """Note the media time of every frame the source gives (kept or dropped)."""
        for t, frame in frames:
            self.stats.last_time = float(t)
            yield t, frame

    def _join_queries(self, t: float) -> None:
        while self.queries is not None:
            try:
                text = self.queries.get_nowait()
            except queue.Empty:
                return
            try:
                self.session.add_query(text)
            except SessionInputError as exc:  # e.g. over the LLM budget: the stream goes on without it
                logger.warning("query at %.1f s refused: %s", t, exc)
                self.stats.queries.append({"time": t, "text": text, "refused": str(exc)})
                continue
            self.stats.queries.append({"time": t, "text": text})
            if self.on_query is not None:
                self.on_query(t, text)

    def run(self) -> StreamStats:
        """Stream until the source ends (or fails: `stats.error`); returns `stats`.

        A KeyboardInterrupt propagates; `stats` then holds the counts so far.
        """
        stats = self.stats
        began = self.timer()
        frames = self._seen(self.source)
        if self.pacer is not None:
            frames = self.pacer.pace(frames, self.source.fps)
        try:
            for t, frame in frames:
                t = float(t)
                self._join_queries(t)
                t0 = self.timer()
                reply = self.session.push(frame, t)
                ms = (self.timer() - t0) * 1e3
                stats.frames += 1
                (stats.reply_ms if reply is not None else stats.always_on_ms).add(ms)
                if reply is not None:
                    stats.replies += 1
                    if self.on_reply is not None:
                        self.on_reply(reply)
            stats.error = self._early_end()
        except VideoDecodeError as exc:
            message = " ".join(str(exc).split())
            stats.error = message if stats.last_time is None else f"stream ended early after {stats.last_time:.1f} s: {message}"
        finally:
            self.source.close()
            stats.skipped = self.source.skipped
            stats.dropped = self.pacer.dropped if self.pacer is not None else 0
            stats.wall_s = self.timer() - began
        return stats

    def _early_end(self) -> str | None:
        """The error of a source that ended without a frame, or before its declared duration."""
        last = self.stats.last_time
        if last is None:
            broken = f" ({self.source.skipped} broken frames skipped)" if self.source.skipped else ""
            return f"{self.source.name}: the source ended before its first frame{broken}"
        declared = self.source.declared_duration_s
        if declared is not None and declared - (last + 1.0 / self.source.fps) > EARLY_END_TOLERANCE_S:
            return (f"{self.source.name}: the stream ended early, after {last:.1f} s of the {declared:.1f} s "
                    "its header declares (truncated file?)")
        return None


__all__ = ["LatencyStats", "Pacer", "StdinQueries", "StreamRunner", "StreamStats", "format_time"]
