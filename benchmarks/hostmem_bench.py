"""Host cache row moves: numpy fancy indexing vs torch gathers/scatters on 1 and on N threads, side by side.

The same HostCache (every row resident, so reads and writes are pure gathers and scatters plus the index lookup)
runs its batched ``read`` and ``write`` with three row movers, in alternating rounds; the best round of each is
reported. ``numpy`` is what the cache did before (``rows[slots]``, ``rows[slots] = new``).

Usage: ``python benchmarks/hostmem_bench.py [--rows 2000000] [--batch 400000] [--width 21] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from hier_ps.hostmem import HostCache
from hier_ps.hostmem.gather import RowMover, default_threads


class _Backing:
    """An empty tier below the cache (every benchmarked key is resident)."""

    def __init__(self, width: int) -> None:
        self.width = width

    def widths(self) -> dict[str, int]:
        return {"t": self.width}

    def read(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(keys), self.width), np.float32), np.zeros(len(keys), bool)

    def write(self, table: str, keys: np.ndarray, rows: np.ndarray) -> None:
        pass

    def delete(self, table: str, keys: np.ndarray) -> None:
        pass


class _NumpyMover(RowMover):
    """Numpy fancy indexing, as the cache moved rows before."""

    def gather(self, src: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return src[idx]
        out[:] = src[idx]
        return out

    def scatter(self, dst: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
        dst[idx] = rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--batch", type=int, default=400_000)
    p.add_argument("--width", type=int, default=21)  # dim 16 + row-wise Adagrad state + 4 of metadata
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    n_threads = default_threads()
    cache = HostCache(_Backing(args.width), args.rows * args.width * 4)
    rng = np.random.default_rng(0)
    keys = rng.permutation(np.arange(args.rows, dtype=np.uint64) * 7919)
    for i in range(0, args.rows, 1 << 20):
        cache.write("t", keys[i : i + (1 << 20)], rng.random((len(keys[i : i + (1 << 20)]), args.width), np.float32))
    movers = {"numpy": _NumpyMover(1), "torch, 1 thread": RowMover(1), f"torch, {n_threads} threads": RowMover()}
    best = {name: {"read": float("inf"), "write": float("inf")} for name in movers}
    rows = rng.random((args.batch, args.width), np.float32)
    for _ in range(args.rounds):
        for name, mover in movers.items():
            cache.mover = mover
            batch = rng.choice(keys, args.batch, replace=False)
            t0 = time.perf_counter()
            cache.read("t", batch)
            t1 = time.perf_counter()
            cache.write("t", batch, rows)
            t2 = time.perf_counter()
            best[name]["read"] = min(best[name]["read"], t1 - t0)
            best[name]["write"] = min(best[name]["write"], t2 - t1)
    res = {
        "cores": len(os.sched_getaffinity(0)),
        "rows": args.rows,
        "batch": args.batch,
        "width": args.width,
        "rows_per_s": {n: {op: args.batch / s for op, s in b.items()} for n, b in best.items()},
    }
    print(f"{'mover':<20}{'read rows/s':>16}{'write rows/s':>16}")
    for n, r in res["rows_per_s"].items():
        print(f"{n:<20}{r['read']:>16,.0f}{r['write']:>16,.0f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
