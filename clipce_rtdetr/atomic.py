"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A later run trusts what an earlier one wrote (checkpoints, reports, converted labels, degraded images, caches), so
a write that fails part-way (a full disk, a killed process) must leave the previous version whole. The rename is
atomic on POSIX and Windows within one file system, which is why the temporary file sits beside the target.
Temporary names start with a dot, so image-folder globs (Ultralytics' `*.*`) do not pick up a leftover one.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import ClipCEError


class AtomicWriteError(ClipCEError, OSError):
    """Writing `path` failed; the file at `path` (if there was one) is left as it was."""

    def __init__(self, path: Path, cause: BaseException):
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(f"could not write {path}: {reason}. The previous version of this file, if any, is unchanged.")
        self.path = Path(path)
        self.errno = getattr(cause, "errno", None)


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def temp_path_for(path: str | Path) -> Path:
    """A fresh hidden name beside `path` that keeps its suffix (cv2.imwrite and torch pick formats by suffix).
    The stem is shortened where needed, so a target whose own name is near the limit still gets a valid one."""
    path = Path(path)
    tail = f".{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}"
    room = max(0, NAME_MAX - 1 - len(tail.encode()))
    stem = path.stem.encode()[:room].decode("utf-8", "ignore")  # whole characters only
    return path.with_name(f".{stem}{tail}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable; not every platform can open a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path, fsync: bool = True, missing_ok: bool = False) -> Iterator[Path]:
    """Yields a temporary path to write (with any writer: torch.save, cv2.imwrite, safetensors); on a clean exit
    it replaces `path`. Any error (or a writer that produced no file, unless `missing_ok`: then nothing changes)
    removes the temporary file, leaves `path` untouched and raises AtomicWriteError naming `path`. A symbolic
    link is written through, as open() would: its target is replaced and the link stays."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # the temporary file must sit beside the target: the rename is within its folder
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.exists():
            if missing_ok:
                return
            raise OSError(f"the writer produced no file (temporary {tmp.name})")
        if fsync:
            _fsync_file(tmp)
        if path.exists():  # keep the permissions a user gave the file
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except AtomicWriteError:
        _unlink_quietly(tmp)
        raise
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        _unlink_quietly(tmp)
        raise AtomicWriteError(path, e) from e
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None, fsync: bool = True
) -> Iterator[IO]:
    """`open(path, mode)` that writes a temporary file and renames it into place on a clean exit (see atomic_path)."""
    if "b" in mode:
        encoding = None
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f


def write_text(path: str | Path, text: str, encoding: str = "utf-8", fsync: bool = True) -> None:
    """Path.write_text, atomically."""
    with atomic_write(path, "w", encoding=encoding, fsync=fsync) as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Path.write_bytes, atomically."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


class AtomicWritePath(type(Path())):
    """A Path whose write_bytes/write_text are atomic: handed to code we do not own (Ultralytics' trainer saves
    checkpoints with `self.last.write_bytes(...)`). Paths derived from it (`wdir / "epoch3.pt"`) are atomic too."""

    def write_bytes(self, data) -> int:
        write_bytes(self, bytes(data))
        return len(data)

    def write_text(self, data: str, encoding: str | None = None, errors=None, newline=None) -> int:
        with atomic_write(self, "w", encoding=encoding or "utf-8", newline=newline) as f:
            f.write(data)
        return len(data)
