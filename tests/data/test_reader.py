from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hier_ps.data import ExampleChunk, ParquetReader, hash_strings
from hier_ps.errors import DataError


def write(path: Path, **cols: pa.Array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, row_group_size=3)
    return path


def test_column_kinds_nulls_and_hashing(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet",
              y=pa.array([1, 0, 1, 0], pa.int8()),
              x=pa.array([1.5, None, -2.0, 3.0], pa.float64()),
              i=pa.array([5, None, -1, 7], pa.int64()),
              u=pa.array([1, 2, 3, 2**64 - 1], pa.uint64()),
              s=pa.array(["a", "bb", None, "a"]),
              m=pa.array([[1, 2], None, [], [3, None, 4]], pa.list_(pa.int64())),
              ms=pa.array([["x"], ["y", "x"], None, []], pa.large_list(pa.string())))
    r = ParquetReader(str(f), label=["y"], dense=["x"], slots={"i": "i", "u": "u", "s": "s", "m": "m", "ms": "ms"})
    (c,) = list(r.iter_chunks(100))
    assert r.num_rows == 4 and c.labels[:, 0].tolist() == [1, 0, 1, 0]
    assert c.dense[:, 0].tolist() == [1.5, 0.0, -2.0, 3.0]  # null dense -> 0

    def bags(slot: str) -> list[list[int]]:
        off, keys = c.sparse[slot]
        return [keys[off[i] : off[i + 1]].tolist() for i in range(len(c))]

    assert bags("i") == [[5], [], [2**64 - 1], [7]]  # -1 keeps its bits
    assert bags("u") == [[1], [2], [3], [2**64 - 1]]
    ha, hbb, hx, hy = hash_strings(["a", "bb", "x", "y"]).tolist()
    assert bags("s") == [[ha], [hbb], [], [ha]]
    assert bags("m") == [[1, 2], [], [], [3, 4]]
    assert bags("ms") == [[hx], [hy, hx], [], []]


def test_chunks_recut_exactly_across_files(tmp_path: Path) -> None:
    for i, n in enumerate([5, 1, 7, 4]):
        start = sum([5, 1, 7, 4][:i])
        write(tmp_path / "d" / f"part-{i}.parquet", y=pa.array(np.zeros(n, np.float32)),
              k=pa.array(np.arange(start, start + n, dtype=np.int64)))
    r = ParquetReader(str(tmp_path / "d"), label=["y"], dense=[], slots={"k": "k"}, read_rows=2)
    chunks = list(r.iter_chunks(4))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 1]
    allk = ExampleChunk.concat(chunks).sparse["k"][1]
    assert allk.tolist() == list(range(17))
    assert [len(c) for c in r.iter_chunks(17)] == [17]  # again, a new epoch
    assert ParquetReader(str(tmp_path / "d" / "*.parquet"), label=["y"], dense=[], slots={"k": "k"}).num_rows == 17


def test_schema_errors(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", y=pa.array([1.0]), k=pa.array([1.0]), s=pa.array(["x"]))
    with pytest.raises(DataError, match=r"a.parquet: column 'C7' \(slot C7\) not found; columns are: y, k, s"):
        ParquetReader(str(f), label=["y"], dense=[], slots={"C7": "C7"})
    with pytest.raises(DataError, match=r"column 'k' \(slot k\) has type double"):
        ParquetReader(str(f), label=["y"], dense=[], slots={"k": "k"})
    with pytest.raises(DataError, match=r"column 's' \(dense\) has type string"):
        ParquetReader(str(f), label=["y"], dense=["s"], slots={})
    with pytest.raises(DataError, match="no Parquet files match"):
        ParquetReader(str(tmp_path / "nope" / "*.parquet"), label=["y"], dense=[], slots={})
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        ParquetReader(str(tmp_path / "bad.parquet"), label=["y"], dense=[], slots={})


def test_invalid_values(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", y=pa.array([1.0, np.nan, 0.0, 1.0]), x=pa.array([0.0, 1.0, np.inf, 2.0]),
              k=pa.array([1, 2, 3, 4]))
    with pytest.raises(DataError, match="a.parquet: column 'y': NaN/inf at row 1"):
        list(ParquetReader(str(f), label=["y"], dense=["x"], slots={"k": "k"}).iter_chunks(10))
    r = ParquetReader(str(f), label=["y"], dense=["x"], slots={"k": "k"}, on_invalid="skip")
    (c,) = list(r.iter_chunks(10))
    assert r.num_invalid == 2 and c.sparse["k"][1].tolist() == [1, 4] and c.dense[:, 0].tolist() == [0.0, 2.0]
    g = write(tmp_path / "b.parquet", y=pa.array([0.0, 0.5, 2.0]), k=pa.array([1, 2, 3]))
    with pytest.raises(DataError, match=r"column 'y': label 2.0 outside \[0, 1\] at row 2"):
        list(ParquetReader(str(g), label=["y"], dense=[], slots={"k": "k"}, on_invalid="skip").iter_chunks(10))
    h = write(tmp_path / "c.parquet", y=pa.array([0.0, None]), k=pa.array([1, 2]))
    with pytest.raises(DataError, match="null label at row 1"):
        list(ParquetReader(str(h), label=["y"], dense=[], slots={"k": "k"}).iter_chunks(10))


def test_log1p_transform(tmp_path: Path) -> None:
    f = write(tmp_path / "a.parquet", y=pa.array([0.0, 1.0]), x=pa.array([-3, 10], pa.int64()), k=pa.array([1, 2]))
    (c,) = list(ParquetReader(str(f), label=["y"], dense=["x"], slots={"k": "k"},
                              dense_transform="log1p").iter_chunks(10))
    np.testing.assert_allclose(c.dense[:, 0], [-np.log1p(3), np.log1p(10)], rtol=1e-6)
