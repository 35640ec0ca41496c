"""Columnar example chunks: labels, dense features, and CSR sparse slots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ExampleChunk"]


@dataclass
class ExampleChunk:
    """A run of consecutive examples, columnar.

    Each sparse slot is a CSR bag per example: the keys of example ``i`` are ``keys[offsets[i]:offsets[i + 1]]``
    (an empty range is an empty bag).

    Attributes:
        labels: float32[n, T] (T = number of label columns / tasks).
        dense: float32[n, D] (D may be 0: shape (n, 0)).
        sparse: slot name -> (offsets int64[n + 1] starting at 0, keys uint64[nnz]).

    Example:
        >>> c = ExampleChunk(
        ...     np.zeros((2, 1), np.float32), np.zeros((2, 0), np.float32),
        ...     {"a": (np.array([0, 2, 3]), np.array([4, 5, 6], np.uint64))},
        ... )
        >>> c.slice(1, 2).sparse["a"][1].tolist()
        [6]
        >>> c.take(np.array([1, 0, 1])).sparse["a"][0].tolist()
        [0, 1, 3, 4]
    """

    labels: np.ndarray
    dense: np.ndarray
    sparse: dict[str, tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int, stop: int) -> ExampleChunk:
        """Examples ``[start, stop)`` (clamped to ``[0, n]``), offsets rebased to 0 (a view when they start at 0);
        keys, labels, dense are views."""
        n = len(self)
        start, stop = min(max(int(start), 0), n), min(max(int(stop), 0), n)
        stop = max(stop, start)
        sparse = {}
        for slot, (off, keys) in self.sparse.items():
            lo, hi = off[start], off[stop]
            sub = off[start : stop + 1]
            sparse[slot] = (sub - lo if lo else sub, keys[lo:hi])
        return ExampleChunk(self.labels[start:stop], self.dense[start:stop], sparse)

    def take(self, idx: np.ndarray) -> ExampleChunk:
        """Examples ``idx`` (int64[m], repeats allowed) in that order, as a vectorized CSR gather.

        Example:
            bags [[4, 5], [6]] and idx [1, 1, 0] -> offsets [0, 1, 2, 4], keys [6, 6, 4, 5].
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        sparse = {}
        for slot, (off, keys) in self.sparse.items():
            starts = off[:-1][idx]
            lengths = off[1:][idx] - starts
            new_off = np.zeros(len(idx) + 1, np.int64)
            np.cumsum(lengths, out=new_off[1:])
            # source of output key p (in output bag b): starts[b] + (p - new_off[b])
            src = np.repeat(starts - new_off[:-1], lengths) + np.arange(new_off[-1], dtype=np.int64)
            sparse[slot] = (new_off, keys[src])
        return ExampleChunk(self.labels[idx], self.dense[idx], sparse)

    @staticmethod
    def concat(chunks: Sequence[ExampleChunk]) -> ExampleChunk:
        """The chunks one after another (a single chunk is returned as is).

        Raises:
            ValueError: no chunks, or the chunks do not have the same slots.
        """
        if not chunks:
            raise ValueError("ExampleChunk.concat: no chunks")
        if len(chunks) == 1:
            return chunks[0]
        slots = list(chunks[0].sparse)
        for c in chunks[1:]:
            if list(c.sparse) != slots:
                raise ValueError(f"ExampleChunk.concat: slots differ: {slots} vs {list(c.sparse)}")
        sparse = {}
        for slot in slots:
            offs = [c.sparse[slot][0] for c in chunks]
            nnz = np.array([int(o[-1] - o[0]) for o in offs], np.int64)
            bases = np.concatenate([[0], np.cumsum(nnz)[:-1]])
            parts = [np.zeros(1, np.int64)] + [o[1:] - o[0] + b for o, b in zip(offs, bases, strict=True)]
            keys = np.concatenate([c.sparse[slot][1][o[0] : o[-1]] for c, o in zip(chunks, offs, strict=True)])
            sparse[slot] = (np.concatenate(parts), keys.astype(np.uint64, copy=False))
        labels = np.concatenate([c.labels for c in chunks])
        dense = np.concatenate([c.dense for c in chunks])
        return ExampleChunk(labels, dense, sparse)
