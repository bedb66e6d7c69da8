"""Moved to `streammind.media.video`."""

from .._compat import moved_module

raise moved_module("streammind.datasets.video", "import it from streammind.media.video")
