"""Row layout and deterministic row initialization.

A row is everything stored for one key, packed into ``float32[width]`` so that the tiers below HBM move opaque
fixed-width rows::

    [ embedding: dim | optimizer state: S | count: int64 | last_pass: int64 ]   width = dim + S + 4

The two int64 metadata fields are stored bit for bit in the last four float32 slots. ``count`` is how many times the
key occurred in training data; ``last_pass`` is the global index of the last pass that touched it (-1: never).

Initialization is a pure function of (seed, table name, key, element): a counter-based hash (splitmix64), so a key
gets the same initial embedding whenever and wherever it is first touched (DESIGN.md contract 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hier_ps.config import InitConfig, InitName

__all__ = ["META_WIDTH", "RowLayout", "init_embeddings", "stable_name_hash"]

META_WIDTH = 4  # two int64 fields stored as four float32 slots

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def stable_name_hash(name: str) -> int:
    """FNV-1a 64 of a UTF-8 string: stable across processes and machines (unlike ``hash``)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _base(seed: int, table: str) -> np.uint64:
    """The hash of (seed, table) every element's hash starts from."""
    return np.uint64(_mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0] ^ np.uint64(stable_name_hash(table)))


_C_INIT: Any = False  # not decided yet; then the CPU kernels' library, or None for numpy


def _uniform_c(seed: int, table: str, keys: np.ndarray, dim: int, scale: float) -> np.ndarray | None:
    """The uniform rows of :func:`init_embeddings` from ``cpu_kernels/rows.c`` (the same bits as the numpy path,
    in one pass instead of a dozen over [n, dim] temporaries), or None where the CPU kernels do not run."""
    global _C_INIT
    if _C_INIT is False:
        from hier_ps.hbm import cpu_kernels  # imports torch: only when rows are first initialized

        _C_INIT = cpu_kernels.optional()
    if _C_INIT is None:
        return None
    keys = np.ascontiguousarray(keys, np.uint64)
    out = np.empty((len(keys), dim), np.float32)
    if len(keys) and dim:
        _C_INIT.init_uniform_fp32(
            int(_base(seed, table)), keys.ctypes.data, len(keys), dim, 0, scale, out.ctypes.data, dim
        )
    return out


def _uniform01(seed: int, table: str, keys: np.ndarray, dim: int, stream: int) -> np.ndarray:
    """float64[n, dim] in [0, 1): element j of key k is a pure function of (seed, table, k, j, stream)."""
    base = _base(seed, table)
    with np.errstate(over="ignore"):
        k = _mix64(keys.astype(np.uint64, copy=False) ^ base)
        j = (np.arange(dim, dtype=np.uint64) + np.uint64(stream * dim + 1)) * _GOLDEN
        h = _mix64(k[:, None] + j[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def init_embeddings(seed: int, table: str, keys: np.ndarray, dim: int, init: InitConfig) -> np.ndarray:
    """Initial embeddings of `keys`.

    Args:
        seed: run seed.
        table: table name.
        keys: uint64[n].
        dim: embedding width.
        init: the table's initializer.

    Returns:
        float32[n, dim], identical for the same (seed, table, key) whatever else is in `keys`.

    Example:
        >>> a = init_embeddings(0, "C1", np.array([7, 9], np.uint64), 4, InitConfig())
        >>> b = init_embeddings(0, "C1", np.array([9], np.uint64), 4, InitConfig())
        >>> bool((a[1] == b[0]).all())
        True
    """
    n = len(keys)
    if init.name == InitName.ZEROS:
        return np.zeros((n, dim), np.float32)
    if init.name == InitName.CONSTANT:
        return np.full((n, dim), init.value, np.float32)
    if init.name == InitName.UNIFORM:
        if (out := _uniform_c(seed, table, keys, dim, init.scale)) is not None:
            return out
        u = _uniform01(seed, table, keys, dim, 0)
        return ((2.0 * u - 1.0) * init.scale).astype(np.float32)
    # Box-Muller from two independent streams.
    u1 = _uniform01(seed, table, keys, dim, 0)
    u2 = _uniform01(seed, table, keys, dim, 1)
    z = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return (z * init.std).astype(np.float32)


@dataclass(frozen=True)
class RowLayout:
    """Where each part of a packed row lives.

    Attributes:
        dim: embedding width.
        state: optimizer state width S.
    """

    dim: int
    state: int

    @property
    def width(self) -> int:
        """Packed row width in float32 units."""
        return self.dim + self.state + META_WIDTH

    def pack(self, emb: np.ndarray, state: np.ndarray, meta: np.ndarray) -> np.ndarray:
        """Packs float32[n, dim], float32[n, S], int64[n, 2] into float32[n, width]."""
        n = len(emb)
        out = np.empty((n, self.width), np.float32)
        out[:, : self.dim] = emb
        out[:, self.dim : self.dim + self.state] = state
        out[:, self.dim + self.state :] = np.ascontiguousarray(meta, dtype=np.int64).view(np.float32).reshape(n, 4)
        return out

    def views(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32[n, width] -> (emb float32[n, dim], state float32[n, S]) as strided views of `rows`, and meta
        int64[n, 2] as a copy."""
        d, s = self.dim, self.state
        meta = np.ascontiguousarray(rows[:, d + s :]).view(np.int64).reshape(len(rows), 2)
        return rows[:, :d], rows[:, d : d + s], meta

    def unpack(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32[n, width] -> (emb float32[n, dim], state float32[n, S], meta int64[n, 2]) as copies."""
        emb, state, meta = self.views(rows)
        return emb.copy(), state.copy(), meta

    def new_rows(self, seed: int, table: str, keys: np.ndarray, init: InitConfig) -> np.ndarray:
        """Packed initial rows: initial embedding, zero optimizer state, count 0, last_pass -1."""
        meta = np.zeros((len(keys), 2), np.int64)
        meta[:, 1] = -1
        emb = init_embeddings(seed, table, keys, self.dim, init)
        return self.pack(emb, np.zeros((len(keys), self.state), np.float32), meta)
