"""File-level helpers of the SSD tier: row checksums, durable writes, fault injection."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hier_ps.errors import StoreError

__all__ = [
    "WriteHook",
    "atomic_write",
    "call_hook",
    "fsync_dir",
    "row_checksums",
    "start_writeback",
    "write_at",
    "write_new",
]

#: Called with (path, nbytes) before every write the store makes; tests raise OSError(ENOSPC) from it.
WriteHook = Callable[[Path, int], None]

# Odd 32-bit weights, one per word position: a change of any single 32-bit word changes the weighted sum mod 2^32
# (an odd weight is invertible mod 2^32), so every flipped byte in a row is caught.
_WEIGHTS = ((np.arange(1, 1 << 16, dtype=np.uint64) * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)).astype(
    np.uint32
) | np.uint32(1)


def row_checksums(rows: np.ndarray) -> np.ndarray:
    """Checksums of float32[n, width] rows -> uint32[n] (position-weighted sum of the 32-bit words, mod 2^32).

    uint32 arithmetic wraps mod 2^32 by itself, so no widening copy is made.
    """
    words = rows.view(np.uint32) if rows.dtype == np.float32 else np.asarray(rows, np.float32).view(np.uint32)
    with np.errstate(over="ignore"):
        return np.einsum("ij,j->i", words, _WEIGHTS[: words.shape[1]], dtype=np.uint32)


def _os_error(path: Path, e: OSError) -> StoreError:
    reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return StoreError(f"{path}: write failed ({reason}); the store keeps its last committed state")


def call_hook(hook: WriteHook | None, path: Path, nbytes: int) -> None:
    """Calls the write hook (if any) before a write of `nbytes` to `path`; its OSError becomes a StoreError."""
    if hook is not None:
        try:
            hook(path, nbytes)
        except OSError as e:
            raise _os_error(path, e) from None


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Starts writing these bytes of the file to the disk without waiting (a later fsync then has less to do).

    Only a hint: where ``sync_file_range`` is missing or fails, the fsync does all the work, as it would anyway.
    """
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def write_at(fd: int, path: Path, data: bytes, offset: int, hook: WriteHook | None) -> None:
    """pwrite all of `data` at `offset`, naming `path` in a StoreError on failure."""
    call_hook(hook, path, len(data))
    try:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        raise _os_error(path, e) from None


def atomic_write(path: Path, data: bytes, hook: WriteHook | None) -> None:
    """Writes `data` to a temp file, fsyncs it and renames it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if hook is not None:
            hook(tmp, len(data))
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _os_error(path, e) from None


def write_new(path: Path, data: bytes, hook: WriteHook | None) -> None:
    """Writes a file that nothing references yet (a manifest written later will) and fsyncs it; no rename needed.

    A crash before that manifest is durable leaves at most an unreferenced file, which the next open deletes.
    """
    call_hook(hook, path, len(data))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise _os_error(path, e) from None


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
