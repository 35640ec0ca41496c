"""Columnar example chunks: labels, dense features, and CSR sparse slots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ExampleChunk"]


@dataclass
class ExampleChunk:
    """A run of consecutive examples, columnar.

    Attributes:
        labels: float32[n, T] (T = number of label columns / tasks).
        dense: float32[n, D] (D may be 0).
        sparse: slot name -> (offsets int64[n+1] starting at 0, keys uint64[nnz]).

    Example:
        >>> c = ExampleChunk(np.zeros((2, 1), np.float32), np.zeros((2, 0), np.float32),
        ...                  {"a": (np.array([0, 2, 3]), np.array([4, 5, 6], np.uint64))})
        >>> c.slice(1, 2).sparse["a"][1].tolist()
        [6]
    """

    labels: np.ndarray
    dense: np.ndarray
    sparse: dict[str, tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int, stop: int) -> ExampleChunk:
        """Examples [start, stop) with offsets rebased to 0 (views where possible)."""
        sparse = {}
        for s, (off, keys) in self.sparse.items():
            lo, hi = off[start], off[stop]
            sparse[s] = (off[start : stop + 1] - lo, keys[lo:hi])
        return ExampleChunk(self.labels[start:stop], self.dense[start:stop], sparse)

    def take(self, idx: np.ndarray) -> ExampleChunk:
        """Examples `idx` (int64[m]) in that order: a vectorized CSR gather."""
        idx = np.asarray(idx, dtype=np.int64)
        sparse = {}
        for s, (off, keys) in self.sparse.items():
            lengths = (off[1:] - off[:-1])[idx]
            new_off = np.zeros(len(idx) + 1, np.int64)
            np.cumsum(lengths, out=new_off[1:])
            # position of every output key in the input: start of its bag + offset inside the bag
            starts = np.repeat(off[:-1][idx] - new_off[:-1], lengths)
            src = starts + np.arange(new_off[-1], dtype=np.int64)
            sparse[s] = (new_off, keys[src])
        return ExampleChunk(self.labels[idx], self.dense[idx], sparse)

    @staticmethod
    def concat(chunks: Sequence[ExampleChunk]) -> ExampleChunk:
        """The chunks one after another."""
        if len(chunks) == 1:
            return chunks[0]
        sparse = {}
        for s in chunks[0].sparse:
            offs, keys, base = [np.zeros(1, np.int64)], [], 0
            for c in chunks:
                off, k = c.sparse[s]
                offs.append(off[1:] + base)
                keys.append(k)
                base += int(off[-1])
            sparse[s] = (np.concatenate(offs), np.concatenate(keys).astype(np.uint64, copy=False))
        return ExampleChunk(np.concatenate([c.labels for c in chunks]), np.concatenate([c.dense for c in chunks]),
                            sparse)
