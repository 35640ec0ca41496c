"""RowMover: threaded gathers and scatters equal numpy's, whatever the split."""

from __future__ import annotations

import itertools
import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.hostmem.gather import RowMover


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 300),
    n=st.integers(0, 400),
    width=st.integers(1, 7),
    threads=st.integers(1, 4),
    min_rows=st.integers(1, 50),
    seed=st.integers(0, 2**31),
)
def test_gather_and_scatter_equal_numpy(m: int, n: int, width: int, threads: int, min_rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((m, width)).astype(np.float32)
    mover = RowMover(threads, min_rows)
    idx = rng.integers(0, m, n)
    np.testing.assert_array_equal(mover.gather(src, idx), src[idx])
    out = np.full((n, width), np.nan, np.float32)
    assert mover.gather(src, idx, out=out) is out
    np.testing.assert_array_equal(out, src[idx])
    distinct = rng.permutation(m)[: min(n, m)]
    rows = rng.standard_normal((len(distinct), width)).astype(np.float32)
    dst, want = src.copy(), src.copy()
    want[distinct] = rows
    mover.scatter(dst, distinct, rows)
    np.testing.assert_array_equal(dst, want)
    mover.close()


def test_big_moves_are_split_across_threads() -> None:
    seen: set[str] = set()
    mover = RowMover(threads=3, min_rows=10)
    src = np.arange(300 * 2, dtype=np.float32).reshape(300, 2)
    bounds = mover._bounds(300)
    assert len(bounds) == 3 and bounds[0][0] == 0 and bounds[-1][1] == 300
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))

    real_run = mover._run
    barrier = threading.Barrier(3, timeout=10)

    def spy(fn, b):
        def wrapped(x: int, y: int) -> None:
            seen.add(threading.current_thread().name)
            barrier.wait()  # breaks (times out) unless the three parts run at the same time
            fn(x, y)

        real_run(wrapped, b)

    mover._run = spy  # type: ignore[method-assign]
    idx = np.arange(300)[::-1].copy()
    np.testing.assert_array_equal(mover.gather(src, idx), src[idx])
    assert len(seen) == 3 and all(s.startswith("hier-ps-rows") for s in seen)
    assert len(RowMover(threads=3, min_rows=1000)._bounds(300)) == 1  # small moves: one call, no pool
    mover.close()


def test_read_only_inputs() -> None:
    src = np.arange(20, dtype=np.float32).reshape(10, 2)
    src.flags.writeable = False
    mover = RowMover(2, 1)
    np.testing.assert_array_equal(mover.gather(src, np.array([3, 1])), src[[3, 1]])
    dst = np.zeros((10, 2), np.float32)
    mover.scatter(dst, np.array([2, 5]), src[:2])
    np.testing.assert_array_equal(dst[[2, 5]], src[:2])


def test_a_scatter_to_one_ascending_run_of_rows_writes_those_rows_only() -> None:
    """The slice-copy path (idx one ascending run) against numpy, beside runs that only look like one."""
    rng = np.random.default_rng(0)
    src = rng.standard_normal((50, 3)).astype(np.float32)
    mover = RowMover(2, 1)
    for idx in (np.arange(7, 19), np.array([4]), np.array([9, 8, 10]), np.array([3, 5, 4, 6]), np.arange(50)):
        rows = rng.standard_normal((len(idx), 3)).astype(np.float32)
        dst, want = src.copy(), src.copy()
        want[idx] = rows
        mover.scatter(dst, idx, rows)
        np.testing.assert_array_equal(dst, want)
    mover.close()
