"""A rank decodes only its share: LazyChunk.take(idx) equals decoding everything and taking idx, and decodes the
slots of those examples only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hier_ps.data import ExampleChunk, ParquetReader
from hier_ps.ring.shard_plan import rank_examples


def write_files(d: Path, n_files: int = 3, rows: int = 37, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for f in range(n_files):
        x = rng.random(rows)
        x[rng.random(rows) < 0.1] = np.nan  # invalid examples, skipped
        ms = [[f"s{v}" for v in rng.integers(0, 30, rng.integers(0, 4))] if rng.random() > 0.1 else None for _ in x]
        cols = {
            "y": pa.array(rng.integers(0, 2, rows), pa.int8()),
            "x": pa.array(x),
            "i": pa.array([int(v) if v % 7 else None for v in rng.integers(-50, 50, rows)], pa.int64()),
            "d": pa.array([f"c{v}" for v in rng.integers(0, 9, rows)]).dictionary_encode(),
            "ms": pa.array(ms, pa.list_(pa.string())),
        }
        pq.write_table(pa.table(cols), d / f"part-{f}.parquet", row_group_size=10)


def reader(d: Path) -> ParquetReader:
    slots = {"i": "i", "d": "d", "ms": "ms", "again": "ms"}
    return ParquetReader(str(d), label=["y"], dense=["x"], slots=slots, on_invalid="skip", read_rows=8)


def same(a: ExampleChunk, b: ExampleChunk) -> None:
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.dense, b.dense, equal_nan=True)
    assert list(a.sparse) == list(b.sparse)
    for s, (off, keys) in a.sparse.items():
        assert np.array_equal(off, b.sparse[s][0]) and np.array_equal(keys, b.sparse[s][1]), s


@pytest.mark.parametrize("pass_rows", [16, 45, 1000])
def test_lazy_take_equals_decoding_everything(tmp_path: Path, pass_rows: int) -> None:
    write_files(tmp_path)
    full, lazy = reader(tmp_path), reader(tmp_path)
    chunks, lazies = list(full.iter_chunks(pass_rows)), list(lazy.iter_lazy_chunks(pass_rows))
    assert [len(c) for c in chunks] == [len(c) for c in lazies] and full.num_invalid == lazy.num_invalid > 0
    assert lazy.num_sparse_decoded == 0  # nothing decoded until a rank takes its share
    rng = np.random.default_rng(1)
    decoded = 0
    for c, lz in zip(chunks, lazies, strict=True):
        same(lz.take(np.arange(len(c))), c)
        order = rng.permutation(len(c))
        for world in (2, 3):
            for r in range(world):
                idx = order[rank_examples(len(c), 4 * world, world, r)[0]]  # shuffled, then rank r's share
                same(lz.take(idx), c.take(idx))
                decoded += len(idx)
        same(lz.take(np.zeros(0, np.int64)), c.take(np.zeros(0, np.int64)))
    assert lazy.num_sparse_decoded == decoded + sum(len(c) for c in chunks)  # only the examples asked for
