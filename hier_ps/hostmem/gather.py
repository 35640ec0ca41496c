"""Row gather and scatter for the host tier, split across a small thread pool.

``torch.index_select`` / ``index_copy_`` on ``torch.from_numpy`` views release the GIL, so the parts of one
gather run in parallel; even on one thread, ``index_select`` moves rows ~2.5x faster than numpy fancy indexing (see
benchmarks/RESULTS.md). Parts are at least ``min_rows`` rows, so small batches take one call and no thread hop.

Example:
    >>> import numpy as np
    >>> rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> g = RowMover(threads=2, min_rows=2)
    >>> g.gather(rows, np.array([5, 0, 3])).tolist()  # float32[3, 2]
    [[10.0, 11.0], [0.0, 1.0], [6.0, 7.0]]
    >>> g.scatter(rows, np.array([1]), np.zeros((1, 2), np.float32)); rows[1].tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["RowMover", "default_threads"]


def default_threads() -> int:
    """Threads for row moves: the cores this process may use, at most 4 (the moves are memory-bound)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class RowMover:
    """Gathers and scatters rows of 2-D float32 arrays, in parts run by a thread pool.

    Args:
        threads: parts run at once (1: no pool, every move is one torch call in the caller's thread).
        min_rows: rows per part at least.
    """

    def __init__(self, threads: int | None = None, min_rows: int = 32768) -> None:
        self.threads = default_threads() if threads is None else max(1, int(threads))
        self.min_rows = max(1, int(min_rows))
        self._pool: ThreadPoolExecutor | None = None

    def _bounds(self, n: int) -> list[tuple[int, int]]:
        parts = max(1, min(self.threads, n // self.min_rows))
        cuts = np.linspace(0, n, parts + 1).astype(np.int64)
        return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]

    def _run(self, fn: Callable[[int, int], None], bounds: list[tuple[int, int]]) -> None:
        if len(bounds) == 1:
            fn(*bounds[0])
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="hier-ps-rows")
        for f in [self._pool.submit(fn, a, b) for a, b in bounds]:
            f.result()

    def gather(self, src: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``src[idx]``: src float32[m, w] (C-contiguous), idx int[n] in [0, m) -> float32[n, w] (into `out`)."""
        idx_t = torch.from_numpy(np.ascontiguousarray(idx, np.int64))
        if out is None:
            out = np.empty((len(idx_t), src.shape[1]), src.dtype)
        if not len(idx_t):
            return out
        src = np.ascontiguousarray(src)
        src_t = torch.from_numpy(src if src.flags.writeable else src.copy())
        out_t = torch.from_numpy(out)

        def part(a: int, b: int) -> None:
            torch.index_select(src_t, 0, idx_t[a:b], out=out_t[a:b])

        self._run(part, self._bounds(len(idx_t)))
        return out

    def scatter(self, dst: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
        """``dst[idx] = rows``: dst float32[m, w] (C-contiguous), idx int[n] distinct, rows float32[n, w].

        Rows bound for one ascending run of slots (the host cache's fresh slots are) are one slice copy, a memcpy
        without the GIL: never slower than ``index_copy_`` in scratch timings, into fresh pages 11-14 against 14-124
        ns a row (benchmarks/RESULTS.md, session 12).
        """
        if not len(idx):
            return
        first = int(idx[0])
        if first >= 0 and int(idx[-1]) - first == len(idx) - 1 and (len(idx) == 1 or bool((np.diff(idx) == 1).all())):
            dst[first : first + len(idx)] = rows
            return
        idx_t = torch.from_numpy(np.ascontiguousarray(idx, np.int64))
        dst_t = torch.from_numpy(dst)
        rows = np.ascontiguousarray(rows, dst.dtype)
        rows_t = torch.from_numpy(rows if rows.flags.writeable else rows.copy())  # torch wants writeable arrays

        def part(a: int, b: int) -> None:  # distinct indices: the parts write disjoint rows
            dst_t.index_copy_(0, idx_t[a:b], rows_t[a:b])

        self._run(part, self._bounds(len(idx_t)))

    def close(self) -> None:
        """Stops the pool's threads (a later move starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
