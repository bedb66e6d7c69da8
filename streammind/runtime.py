"""Moved: the sources to `streammind.media.sources`, the runtime to `streammind.apps.runtime`."""

from ._compat import moved_module

raise moved_module(
    "streammind.runtime",
    "open_source, FrameSource, ImageFolderFrames, SourceError, source_kind -> streammind.media.sources; "
    "Pacer, StreamRunner, StreamStats, StdinQueries, LatencyStats, format_time -> streammind.apps.runtime",
)
