"""File I/O for the whole package: atomic writes, and the one JSON / JSON Lines reader.

Writes. A file or a model directory is either the old one or the complete new one.

Everything is first written to a temporary name in the destination's own directory (same
file system), flushed and fsynced, then renamed over the destination; a crash or an
exception part way leaves the destination as it was (and the temporary removed, when the
process lives to do so).

- `atomic_write(path)`: a file handle; the file appears on a clean exit from the block.
- `write_text` / `write_json`: the common one-shot cases.
- `atomic_directory(path, replace=...)`: a temporary directory to fill; on a clean exit it
  becomes `path`. A missing or empty `path` is swapped in by one rename. A non-empty one is
  either replaced as a whole (`replace=True`: the old directory is renamed aside first, and
  removed once the new one is in place) or updated file by file with `config.json` removed
  first and written last (`replace=False`, for directories that hold other things, e.g. a
  training run's output directory with its checkpoints), so a reader never takes a half
  update for a model: without `config.json` the directory is not a model at all.
- `check_destination(src, dst, overwrite=...)`: refuse a destination equal to, inside or
  around the source, and a non-empty destination without `overwrite`, before anything is
  written.

Reads. `read_json` (one document) and `read_jsonl` (one object per non-blank line, with its
``file:line``) turn a missing file, bytes that are not UTF-8 and text that is not JSON into
one error naming the file (and line) and the problem: `FileFormatError`, or the subclass a
caller passes (`AnnotationError` for annotations, `RecordError` for predictions), so that
every command reports a bad input file as one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import UserError

# Files of a saved model that a newer save of the same model makes stale (shards of an older
# sharding, a weights index); removed when a save that includes weights lands in a directory.
_WEIGHT_PREFIXES = ("model.safetensors", "model-", "pytorch_model")
CONFIG_NAME = "config.json"


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; it replaces `path` when the block ends cleanly.

    Args:
        path: the destination (its parent folders are created).
        mode: "w" (text) or "wb" (binary).
        encoding: text encoding (ignored for binary).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name(path), dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8); returns the path."""
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **dumps_kwargs: Any) -> Path:
    """Write one JSON document atomically (with a final newline); returns the path."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


# ---- reading ------------------------------------------------------------------------------


class FileFormatError(UserError, ValueError):
    """A file that is missing or not the JSON / JSON Lines it should be (the message names ``file[:line]``)."""


def read_json(path: str | os.PathLike, error: type[Exception] = FileFormatError) -> Any:
    """Load one JSON document.

    Raises:
        error: a missing file, bytes that are not UTF-8, or invalid JSON (``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise error(f"{path}: invalid JSON (nested too deeply)") from exc


def read_jsonl(path: str | os.PathLike, error: type[Exception] = FileFormatError) -> Iterator[tuple[str, Any]]:
    """Yield (``file:line``, parsed object) for each non-blank line of a JSON Lines file.

    Raises:
        error: a missing file, or a line that is not UTF-8 or not JSON (``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            except RecursionError as exc:
                raise error(f"{where}: invalid JSON (nested too deeply)") from exc


# ---- model directories ----------------------------------------------------------------------


def _is_stale_weight(name: str) -> bool:
    return name.startswith(_WEIGHT_PREFIXES)


def _move(src: Path, dst: Path) -> None:
    """Rename `src` over `dst` (a directory in the way is removed first)."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)


def _merge(tmp: Path, dst: Path) -> None:
    """Move the files of `tmp` into the existing directory `dst`, config.json last."""
    names = sorted(p.name for p in tmp.iterdir())
    if CONFIG_NAME in names:
        # No config.json while the update is under way: a reader sees "not a model", never a mix.
        with contextlib.suppress(FileNotFoundError):
            (dst / CONFIG_NAME).unlink()
        _fsync_dir(dst)
    if any(_is_stale_weight(n) for n in names):
        for old in dst.iterdir():
            if old.is_file() and _is_stale_weight(old.name) and old.name not in names:
                old.unlink()
    for name in names:
        if name != CONFIG_NAME:
            _move(tmp / name, dst / name)
    if CONFIG_NAME in names:
        _fsync_dir(dst)
        _move(tmp / CONFIG_NAME, dst / CONFIG_NAME)
    _fsync_dir(dst)
    tmp.rmdir()


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root` (written by libraries that do not)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside `path` that becomes `path` when the block ends cleanly.

    Args:
        path: the destination directory.
        replace: when `path` exists and is not empty, replace it as a whole (its other files
            are deleted) instead of updating it file by file with config.json last.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "exists and is not a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(path), dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if not any(tmp.iterdir()):
            tmp.rmdir()  # nothing was written (e.g. a non-main process of a distributed save)
        elif not path.exists() or not any(path.iterdir()):
            os.replace(tmp, path)  # renaming onto an empty directory replaces it
        elif replace:
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, aside / path.name)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            shutil.rmtree(aside)
        else:
            _merge(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool, what: str = "destination") -> None:
    """Refuse to write `dst` when that could destroy `src` or an existing result.

    Raises:
        UserError: `dst` is `src`, lies inside it or contains it; `dst` exists and is not
            empty (a directory) or exists at all (a file) while `overwrite` is False.
    """
    src_r, dst_r = Path(src).resolve(), Path(dst).resolve()
    if src_r == dst_r:
        raise UserError(f"{dst}: the {what} is the source itself; write somewhere else")
    if _contains(src_r, dst_r):
        raise UserError(f"{dst}: the {what} lies inside the source {src}; write somewhere else")
    if _contains(dst_r, src_r):
        raise UserError(f"{dst}: the {what} contains the source {src}; writing it would destroy the source")
    dst = Path(dst)
    if overwrite or not dst.exists():
        return
    if dst.is_dir():
        if any(dst.iterdir()):
            raise UserError(f"{dst}: the {what} already exists and is not empty; pass --overwrite to replace it")
        return
    raise UserError(f"{dst}: the {what} already exists; pass --overwrite to replace it")


__all__ = ["FileFormatError", "atomic_directory", "atomic_write", "check_destination", "read_json", "read_jsonl", "write_json", "write_text"]
