"""One error convention for every user-facing command.

A bad input (a missing or malformed file, a model directory of another kind, a flag out of
range) is reported as one line on stderr and exit status 2; a failure at run time (a
source that stops answering, a disk that fills up) as one line and exit status 1; Ctrl-C as
exit status 130:

    streammind <verb>: error: <file>[:<line>]: <problem>

`streammind --debug <verb> ...` or the environment variable STREAMMIND_DEBUG=1 prints the
traceback above that line. Any other exception is a bug and keeps its traceback.

Library code raises `UserError` (exit 2) or `RunFailure` (exit 1), or an error class that
derives from them (`AnnotationError`, `ConversionError`, `VideoDecodeError`, `BadSample`, ...), with a
message that starts with the file it is about. `run_command` turns them into the line
above; `streammind.apps.cli.main` uses it for every verb and each module's `python -m` entry
point uses it too, so a verb's `main(argv)` itself just raises.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

DEBUG_ENV = "STREAMMIND_DEBUG"

# OSErrors about a path the user gave (bad input); other OSErrors (a full disk, a reset
# connection) are failures at run time.
_BAD_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError)


class UserError(Exception):
    """A bad input, reported as one line (no traceback) with exit status 2."""

    exit_code = 2


class RunFailure(UserError):
    """A failure at run time (a source that dies, a server that never answers): exit status 1."""

    exit_code = 1


class UsageError(UserError):
    """A command line that does not parse (argparse's errors, as one line)."""


class BadSample(UserError):
    """One sample (a training record) or example (an evaluation item) that cannot be used: a
    missing or undecodable video, an annotation past its end, ... `reason` is the category it
    is counted under. Training raises it or skips and counts it (`on_bad_sample`); the
    evaluation runner counts it as a failed example and goes on."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors raise `UsageError` instead of printing the
    usage block and exiting, so that they come out as one line through `run_command`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def debug_enabled() -> bool:
    """Whether STREAMMIND_DEBUG asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: Any) -> str:
    """Any message on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(text).split())


def describe(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit status) of an error reported without traceback; None for a bug."""
    if isinstance(exc, UserError):
        return one_line(exc), exc.exit_code
    if isinstance(exc, OSError):
        problem = exc.strerror or str(exc) or type(exc).__name__
        message = f"{exc.filename}: {problem}" if exc.filename else problem
        return one_line(message), 2 if isinstance(exc, _BAD_PATH_ERRORS) else 1
    return None


def run_command(prog: str, main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None, debug: bool | None = None) -> int:
    """Run a verb's `main(argv)` under the convention above; returns the exit status.

    Args:
        prog: the command as the user typed it ("streammind convert", "streammind eval coin").
        main: the verb's entry point; it returns an int exit status or anything else (0).
        argv: its arguments (None: `sys.argv[1:]`, as `main` itself decides).
        debug: print tracebacks (default: STREAMMIND_DEBUG).
    """
    debug = debug_enabled() if debug is None else debug
    try:
        result = main(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except Exception as exc:
        known = describe(exc)
        if known is None:
            raise
        if debug:
            traceback.print_exc()
        message, code = known
        sys.stderr.write(f"{prog}: error: {message}\n")
        return code
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


__all__ = ["ArgumentParser", "BadSample", "DEBUG_ENV", "RunFailure", "UsageError", "UserError", "debug_enabled", "describe", "one_line", "run_command"]
