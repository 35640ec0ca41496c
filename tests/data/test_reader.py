"""ParquetReader: column kinds, nulls, re-cutting across files, schema and value errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hier_ps.data import ExampleChunk, ParquetReader, hash_strings
from hier_ps.errors import DataError


def write(path: Path, row_group_size: int = 3, **cols: pa.Array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def bags(c: ExampleChunk, slot: str) -> list[list[int]]:
    off, keys = c.sparse[slot]
    assert off.dtype == np.int64 and keys.dtype == np.uint64 and off[0] == 0 and off[-1] == len(keys)
    return [keys[off[i] : off[i + 1]].tolist() for i in range(len(c))]


def read_all(r: ParquetReader, chunk_rows: int = 1000) -> ExampleChunk:
    return ExampleChunk.concat(list(r.iter_chunks(chunk_rows)))


def test_column_kinds_nulls_and_hashing(tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.parquet",
        y=pa.array([1, 0, 1, 0], pa.int8()),
        z=pa.array([True, False, False, True]),
        x=pa.array([1.5, None, -2.0, 3.0], pa.float64()),
        xi=pa.array([7, 8, None, -9], pa.int32()),
        i=pa.array([5, None, -1, 7], pa.int64()),
        i32=pa.array([-2, 3, None, 2**31 - 1], pa.int32()),
        u=pa.array([1, 2, 3, 2**64 - 1], pa.uint64()),
        u32=pa.array([0, 2**32 - 1, 5, None], pa.uint32()),
        s=pa.array(["a", "bb", None, "a"]),
        ls=pa.array(["a", None, "c", "a"], pa.large_string()),
        b=pa.array([b"a", b"\x00\xff", None, b""], pa.binary()),
        d=pa.array(["bb", "a", None, "bb"]).dictionary_encode(),
        m=pa.array([[1, 2], None, [], [3, None, 4]], pa.list_(pa.int64())),
        ms=pa.array([["x"], ["y", "x"], None, []], pa.large_list(pa.string())),
    )
    slots = {k: k for k in ("i", "i32", "u", "u32", "s", "ls", "b", "d", "m", "ms")}
    r = ParquetReader(str(f), label=["y", "z"], dense=["x", "xi"], slots={**slots, "again": "m"})
    (c,) = list(r.iter_chunks(100))
    assert r.num_rows == 4 and r.files == [str(f)]
    assert c.labels.dtype == np.float32 and c.labels.tolist() == [[1, 1], [0, 0], [1, 0], [0, 1]]
    assert c.dense.dtype == np.float32 and c.dense.tolist() == [[1.5, 7], [0, 8], [-2, 0], [3, -9]]  # null -> 0
    ha, hbb, hc, hx, hy = hash_strings(["a", "bb", "c", "x", "y"]).tolist()
    assert bags(c, "i") == [[5], [], [2**64 - 1], [7]]  # -1 keeps its bits
    assert bags(c, "i32") == [[2**64 - 2], [3], [], [2**31 - 1]]  # sign-extended through int64
    assert bags(c, "u") == [[1], [2], [3], [2**64 - 1]]
    assert bags(c, "u32") == [[0], [2**32 - 1], [5], []]
    assert bags(c, "s") == [[ha], [hbb], [], [ha]]
    assert bags(c, "ls") == [[ha], [], [hc], [ha]]
    assert bags(c, "b") == [[ha], hash_strings([b"\x00\xff"]).tolist(), [], hash_strings([b""]).tolist()]
    assert bags(c, "d") == [[hbb], [ha], [], [hbb]]
    assert bags(c, "m") == bags(c, "again") == [[1, 2], [], [], [3, 4]]  # null list empty, null element dropped
    assert bags(c, "ms") == [[hx], [hy, hx], [], []]


def test_no_dense_columns_and_sliced_lists(tmp_path: Path) -> None:
    m = pa.array([[9], [1, 2], None, [3]], pa.list_(pa.int64()))
    f = write(tmp_path / "a.parquet", row_group_size=2, y=pa.array([0.0, 1.0, 0.5, 1.0]), m=m)
    r = ParquetReader(f, label=["y"], dense=[], slots={"m": "m"}, read_rows=3)
    c = read_all(r)
    assert c.dense.shape == (4, 0) and c.dense.dtype == np.float32 and c.labels[:, 0].tolist() == [0, 1, 0.5, 1]
    assert bags(c, "m") == [[9], [1, 2], [], [3]]


@pytest.mark.parametrize("read_rows", [1, 2, 5, 100])
@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 7, 17, 100])
def test_chunks_recut_exactly_across_files(tmp_path: Path, read_rows: int, chunk_rows: int) -> None:
    sizes = [5, 1, 7, 0, 4]
    start = 0
    for i, n in enumerate(sizes):
        rows = np.arange(start, start + n)
        write(
            tmp_path / "d" / f"part-{i}.parquet",
            y=pa.array(np.zeros(n, np.float32)),
            x=pa.array(rows.astype(np.float64)),
            k=pa.array(rows.astype(np.int64)),
            m=pa.array([[int(v)] * int(v % 3) for v in rows], pa.list_(pa.int64())),
        )
        start += n
    r = ParquetReader(str(tmp_path / "d"), label=["y"], dense=["x"], slots={"k": "k", "m": "m"}, read_rows=read_rows)
    assert r.num_rows == 17 and [Path(f).name for f in r.files] == [f"part-{i}.parquet" for i in range(5)]
    for _epoch in range(2):  # iter_chunks starts over each call
        chunks = list(r.iter_chunks(chunk_rows))
        assert [len(c) for c in chunks[:-1]] == [chunk_rows] * (len(chunks) - 1)
        assert 0 < len(chunks[-1]) <= chunk_rows and sum(len(c) for c in chunks) == 17
        whole = ExampleChunk.concat(chunks)
        assert bags(whole, "k") == [[v] for v in range(17)] and whole.dense[:, 0].tolist() == list(range(17))
        assert bags(whole, "m") == [[v] * (v % 3) for v in range(17)]


def test_path_forms(tmp_path: Path) -> None:
    for name in ("b.parquet", "a.parquet", "c.parquet"):
        write(tmp_path / "d" / name, y=pa.array([0.0]), k=pa.array([ord(name[0])]))
    (tmp_path / "d" / "notes.txt").write_text("not data")
    kw = {"label": ["y"], "dense": [], "slots": {"k": "k"}}
    by_dir = ParquetReader(tmp_path / "d", **kw)
    assert [Path(f).name for f in by_dir.files] == ["a.parquet", "b.parquet", "c.parquet"]
    assert bags(read_all(by_dir), "k") == [[97], [98], [99]]
    by_glob = ParquetReader(str(tmp_path / "d" / "[bc]*.parquet"), **kw)
    assert [Path(f).name for f in by_glob.files] == ["b.parquet", "c.parquet"]
    listed = ParquetReader([str(tmp_path / "d" / "c.parquet"), str(tmp_path / "d")], **kw)
    assert [Path(f).name for f in listed.files] == ["c.parquet", "a.parquet", "b.parquet"]  # order kept, no repeats
    assert ParquetReader(str(tmp_path / "**" / "*.parquet"), **kw).num_rows == 3


def test_no_match_and_unreadable(tmp_path: Path) -> None:
    kw = {"label": ["y"], "dense": [], "slots": {}}
    pattern = str(tmp_path / "nope" / "*.parquet")
    with pytest.raises(DataError, match=f"^no Parquet files match {re.escape(repr(pattern))}$"):
        ParquetReader(pattern, **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Parquet files match .*empty'"):
        ParquetReader(str(tmp_path / "empty"), **kw)
    with pytest.raises(DataError, match="no Parquet files match .*missing.parquet'"):
        ParquetReader(str(tmp_path / "missing.parquet"), **kw)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file \("):
        ParquetReader(str(tmp_path / "bad.parquet"), **kw)


def test_corrupt_data_pages(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    n = 5000
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"y": np.zeros(n), "k": rng.integers(0, 2**62, n)}), f, compression="snappy")
    raw = bytearray(f.read_bytes())
    raw[100:4000] = bytes(3900)  # zero out the middle of the data pages; the footer stays intact
    f.write_bytes(bytes(raw))
    r = ParquetReader(str(f), label=["y"], dense=[], slots={"k": "k"})
    with pytest.raises(DataError, match=r"a.parquet: cannot read rows after row \d+"):
        list(r.iter_chunks(100))


def test_schema_errors_name_file_column_and_types(tmp_path: Path) -> None:
    good = write(tmp_path / "d" / "part-0.parquet", y=pa.array([1.0]), k=pa.array([1]), s=pa.array(["x"]))
    f = write(
        tmp_path / "d" / "part-1.parquet",
        y=pa.array([1.0]),
        k=pa.array([1.0]),
        s=pa.array(["x"]),
        lf=pa.array([[1.0]]),
        st=pa.array([{"a": 1}]),
    )
    d = str(tmp_path / "d")
    with pytest.raises(DataError, match=r"^.*part-0.parquet: column 'C7' \(slot C7\) not found; columns are: y, k, s"):
        ParquetReader(d, label=["y"], dense=[], slots={"s": "s", "C7": "C7"})
    with pytest.raises(DataError, match=r"part-0.parquet: column 'w' \(label\) not found"):
        ParquetReader(d, label=["w"], dense=[], slots={})
    with pytest.raises(DataError, match=r"part-0.parquet: column 'I1' \(dense\) not found"):
        ParquetReader(d, label=["y"], dense=["I1"], slots={})
    with pytest.raises(DataError, match=r"part-1.parquet: column 'k' \(slot K\) has type double, expected int32/int64"):
        ParquetReader(d, label=["y"], dense=[], slots={"K": "k"})
    with pytest.raises(DataError, match=r"column 'lf' \(slot lf\) has type list<element: double>, expected"):
        ParquetReader(str(f), label=["y"], dense=[], slots={"lf": "lf"})
    with pytest.raises(DataError, match=r"column 's' \(dense\) has type string, expected float or int"):
        ParquetReader(str(good), label=["y"], dense=["s"], slots={})
    with pytest.raises(
        DataError, match=r"column 'st' \(label\) has type struct<a: int64>, expected float, int or bool"
    ):
        ParquetReader(str(f), label=["st"], dense=[], slots={})


def test_nan_inf_error_names_file_column_and_row(tmp_path: Path) -> None:
    write(tmp_path / "d" / "part-0.parquet", y=pa.array([0.0] * 5), x=pa.array([1.0] * 5), k=pa.array([0] * 5))
    write(
        tmp_path / "d" / "part-1.parquet",
        y=pa.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, np.nan]),
        x=pa.array([0.0, 1.0, 2.0, 3.0, 4.0, -np.inf, 6.0, 7.0]),
        k=pa.array(np.arange(8)),
    )
    kw = {"label": ["y"], "dense": ["x"], "slots": {"k": "k"}, "read_rows": 2}
    d = str(tmp_path / "d")
    with pytest.raises(DataError, match=r"part-1.parquet: column 'x': NaN/inf at row 5 \(value -inf\)"):
        list(ParquetReader(d, **kw).iter_chunks(3))
    r = ParquetReader(d, **kw, on_invalid="skip")
    chunks = list(r.iter_chunks(3))
    assert [len(c) for c in chunks] == [3, 3, 3, 2] and r.num_invalid == 2  # rows 5 and 7 of part-1 dropped
    assert bags(ExampleChunk.concat(chunks), "k") == [[0]] * 5 + [[0], [1], [2], [3], [4], [6]]
    list(r.iter_chunks(100))
    assert r.num_invalid == 4  # counts over epochs
    # the error comes when the bad row is reached: earlier chunks are delivered first (streaming)
    it = ParquetReader(d, **kw).iter_chunks(3)
    assert len(next(it)) == 3
    with pytest.raises(DataError, match="column 'x': NaN/inf at row 5"):
        list(it)


def test_label_out_of_range_and_null_are_always_errors(tmp_path: Path) -> None:
    g = write(tmp_path / "b.parquet", y=pa.array([0.0, 0.5, 1.0, np.nan, 2.0]), k=pa.array([1, 2, 3, 4, 5]))
    for on_invalid in ("error", "skip"):
        r = ParquetReader(str(g), label=["y"], dense=[], slots={"k": "k"}, on_invalid=on_invalid)
        with pytest.raises(DataError, match=r"b.parquet: column 'y': label 2.0 outside \[0, 1\] at row 4"):
            list(r.iter_chunks(10))
    h = write(tmp_path / "c.parquet", y=pa.array([0, 1, None], pa.int64()), k=pa.array([1, 2, 3]))
    with pytest.raises(DataError, match=r"c.parquet: column 'y': null label at row 2"):
        list(ParquetReader(str(h), label=["y"], dense=[], slots={"k": "k"}, on_invalid="skip").iter_chunks(10))
    neg = write(tmp_path / "n.parquet", y=pa.array([-1], pa.int32()), k=pa.array([1]))
    with pytest.raises(DataError, match=r"label -1.0 outside \[0, 1\] at row 0"):
        list(ParquetReader(str(neg), label=["y"], dense=[], slots={"k": "k"}).iter_chunks(10))


def test_log1p_transform_and_bad_arguments(tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.parquet", y=pa.array([0.0, 1.0, 1.0]), x=pa.array([-3, 10, 0], pa.int64()), k=pa.array([1, 2, 3])
    )
    r = ParquetReader(str(f), label=["y"], dense=["x"], slots={"k": "k"}, dense_transform="log1p")
    np.testing.assert_allclose(read_all(r).dense[:, 0], [-np.log1p(3), np.log1p(10), 0.0], rtol=1e-6)
    kw = {"label": ["y"], "dense": [], "slots": {"k": "k"}}
    with pytest.raises(ValueError, match="on_invalid"):
        ParquetReader(str(f), **kw, on_invalid="drop")
    with pytest.raises(ValueError, match="dense_transform"):
        ParquetReader(str(f), **kw, dense_transform="log")
    with pytest.raises(ValueError, match="chunk_rows"):
        next(ParquetReader(str(f), **kw).iter_chunks(0))


@pytest.mark.parametrize("transform", ["none", "log1p"])
def test_dense_columns_of_every_type_in_row_blocks(tmp_path: Path, transform: str) -> None:
    """More rows than one of the reader's row blocks: float32 columns taken as they are, others through float64
    (an int64 past 2**24 rounds once, as float64 then float32), each column in its place in every block."""
    n = 12_345
    g = np.random.default_rng(3)
    cols = {
        "f32": g.standard_normal(n).astype(np.float32) * 100,
        "i64": g.integers(-(2**40), 2**40, n),
        "f64": g.standard_normal(n) * 1e3,
    }
    f = write(tmp_path / "d.parquet", row_group_size=n, y=pa.array(np.zeros(n, np.float32)), **cols)
    c = read_all(ParquetReader(str(f), label=["y"], dense=list(cols), slots={}, dense_transform=transform), n)
    want = np.empty((n, 3), np.float32)
    for j, v in enumerate(cols.values()):
        v = v.astype(np.float64)
        if transform == "log1p":
            v = np.sign(v) * np.log1p(np.abs(v))
        want[:, j] = v.astype(np.float32)
    assert c.dense.dtype == np.float32 and c.dense.flags.c_contiguous
    np.testing.assert_array_equal(c.dense, want)


def test_nan_in_a_float32_dense_column_is_named(tmp_path: Path) -> None:
    x = np.ones(7000, np.float32)
    x[6001] = np.nan
    f = write(tmp_path / "n.parquet", row_group_size=7000, y=pa.array(np.zeros(7000, np.float32)), x=pa.array(x))
    with pytest.raises(DataError, match=r"column 'x': NaN/inf at row 6001 \(value nan\)"):
        read_all(ParquetReader(str(f), label=["y"], dense=["x"], slots={}), 7000)
    c = read_all(ParquetReader(str(f), label=["y"], dense=["x"], slots={}, on_invalid="skip"), 7000)
    assert len(c) == 6999 and np.isfinite(c.dense).all()
