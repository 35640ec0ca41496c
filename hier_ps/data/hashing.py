"""Stable 64-bit hashing of string keys (FNV-1a 64), vectorized over byte positions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

__all__ = ["hash_strings"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _as_binary(values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence[str | bytes]) -> pa.Array:
    """Any accepted input as one pyarrow binary or large_binary array with nulls replaced by b''."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    elif isinstance(values, np.ndarray):
        values = pa.array(values.reshape(-1) if values.dtype.kind in "US" else values.reshape(-1).tolist())
    elif not isinstance(values, pa.Array):
        values = pa.array(list(values))  # not via numpy, whose fixed-width strings drop trailing NULs
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    t = values.type
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        values = values.cast(pa.large_binary())
    elif pa.types.is_string(t) or pa.types.is_binary(t):
        values = values.cast(pa.binary())
    elif len(values) == values.null_count:  # e.g. an empty Python list, or all None: type "null"
        values = pa.nulls(len(values), pa.binary())
    else:
        raise TypeError(f"hash_strings: expected strings or bytes, got {t}")
    if values.null_count:
        values = values.fill_null(b"")
    return values


def hash_strings(values: pa.Array | pa.ChunkedArray | np.ndarray | Sequence[str | bytes]) -> np.ndarray:
    """FNV-1a 64 of each value's UTF-8 bytes.

    The hash is the textbook 64-bit FNV-1a (offset basis ``0xcbf29ce484222325``, prime ``0x100000001b3``) over the
    UTF-8 encoding of a string or the raw bytes of a binary value, so it is stable across processes, machines, Python
    and library versions (unlike Python's salted ``hash``): the same string is the same key everywhere, for ever.
    It is computed with one numpy step per byte position over all values at once (strings sorted by length, so each
    step works on a contiguous prefix); feature values are short, so a batch of n strings of up to L bytes costs
    O(n·L) vector work and no Python loop over values. Nulls hash like the empty string; callers drop them first.

    Args:
        values: a pyarrow string / large_string / binary / large_binary (or dictionary of those) array or chunked
            array, a numpy array of str or bytes (``U``, ``S`` or object dtype), or a sequence of str/bytes.

    Returns:
        uint64[n], one hash per value, in input order.

    Raises:
        TypeError: the values are not strings or bytes.

    Example:
        >>> [hex(h) for h in hash_strings(["", "a", "foobar"]).tolist()]
        ['0xcbf29ce484222325', '0xaf63dc4c8601ec8c', '0x85944171f73967e8']
    """
    arr = _as_binary(values)
    n = len(arr)
    off_type = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    width = np.dtype(off_type).itemsize
    offsets = np.frombuffer(arr.buffers()[1], off_type, n + 1, arr.offset * width).astype(np.int64)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = offsets[1:] - offsets[:-1]
    if n == 0 or lengths.max() == 0:
        return np.full(n, _FNV_OFFSET, np.uint64)
    # longest first: the values still running at byte position j are then a prefix [0, alive[j])
    order = np.argsort(-lengths, kind="stable")
    starts = offsets[:-1][order]
    sorted_len = lengths[order]
    max_len = int(sorted_len[0])
    alive = n - np.searchsorted(sorted_len[::-1], np.arange(max_len), side="right")
    h = np.full(n, _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(max_len):
            m = int(alive[j])
            h[:m] = (h[:m] ^ data[starts[:m] + j]) * _FNV_PRIME
    out = np.empty(n, np.uint64)
    out[order] = h
    return out
