"""The read path of the SSD store: windowed span reads, scattered page reads, threads, index lookups."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.errors import StoreError
from hier_ps.ssd import SSDStore, table
from hier_ps.ssd.table import KeyIndex, sorted_lookup


def rows_for(keys: np.ndarray, width: int, salt: float = 0.0) -> np.ndarray:
    return (keys[:, None].astype(np.float64) % 9973 + np.arange(width) * 0.25 + salt).astype(np.float32)


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """256 KiB windows, so that a few MB of rows span several windows, some read whole and some through the map."""
    monkeypatch.setattr(table, "WINDOW_BYTES", 1 << 18)


@pytest.mark.parametrize("cache", ["real", "cold", "mixed"])  # page-cache state as the read path sees it
@pytest.mark.parametrize(("width", "threads"), [(1, 1), (7, 4), (80, 1), (80, 4), (1100, 4)])  # 1100: over a page
def test_reads_of_every_density_in_caller_order(
    tmp_path: Path, small_windows: None, monkeypatch: pytest.MonkeyPatch, cache: str, threads: int, width: int
) -> None:
    paths = {"span": 0, "map": 0}
    read_span, resident = table.DataFile._read_span, table.DataFile._resident

    def spy_span(self: table.DataFile, idx: np.ndarray, *a: object) -> None:
        paths["span"] += len(idx)
        read_span(self, idx, *a)

    def fake_resident(self: table.DataFile, view: np.ndarray, ss: np.ndarray) -> np.ndarray:
        real = resident(self, view, ss)
        assert real.all()  # just written: every page is in the page cache
        return real if cache == "real" else np.zeros(len(ss), bool) if cache == "cold" else ss % 3 == 0

    def fake_probe(self: table.DataFile, view: np.ndarray, slots: list[int]) -> bool | None:
        return True if cache == "real" else False if cache == "cold" else None

    monkeypatch.setattr(table.DataFile, "_read_span", spy_span)
    monkeypatch.setattr(table.DataFile, "_resident", fake_resident)
    monkeypatch.setattr(table.DataFile, "_probe", fake_probe)
    rng = np.random.default_rng(width)
    n = {1: 50_000, 7: 50_000, 80: 40_000, 1100: 2_000}[width]
    keys = rng.permutation(np.unique(rng.integers(0, 2**64 - 1, n, dtype=np.uint64)))
    with SSDStore(tmp_path, {"t": width}, read_threads=threads) as s:
        half = len(keys) // 2
        s.write("t", keys[:half], rows_for(keys[:half], width))
        s.commit()
        s.write("t", keys[half:], rows_for(keys[half:], width))  # not committed: still readable
        for frac in (1.0, 0.3, 0.05, 0.01, 0.003, 0.0003, 0.0001):
            q = rng.permutation(keys)[: max(1, int(frac * len(keys)))]
            missing = np.setdiff1d(rng.integers(0, 2**64 - 1, 50, dtype=np.uint64), keys)
            q = rng.permutation(np.concatenate([q, missing]))
            rows, found = s.read("t", q)
            assert rows.dtype == np.float32 and rows.shape == (len(q), width)
            np.testing.assert_array_equal(found, ~np.isin(q, missing))
            np.testing.assert_array_equal(rows[found], rows_for(q[found], width))
            assert not rows[~found].any()
    if cache == "real":
        assert paths["span"] == 0  # all cached: nothing read twice
    else:
        assert paths["span"] > 0  # both ways of reading were exercised (the map way always is)


def test_rows_appended_after_a_read_are_seen(tmp_path: Path) -> None:
    """The memory map grows with the file: a read, more writes, a read of the new rows."""
    with SSDStore(tmp_path, {"t": 3}) as s:
        for i in range(5):
            k = np.arange(i * 100, (i + 1) * 100, dtype=np.uint64)
            s.write("t", k, rows_for(k, 3))
            q = np.arange(0, (i + 1) * 100, 37, dtype=np.uint64)  # sparse: the page-fault path
            rows, found = s.read("t", q)
            assert found.all()
            np.testing.assert_array_equal(rows, rows_for(q, 3))


def test_corrupt_row_is_caught_in_span_and_in_scattered_reads(tmp_path: Path, small_windows: None) -> None:
    width = 7
    k = np.arange(20_000, dtype=np.uint64)
    with SSDStore(tmp_path, {"t": width}) as s:
        s.write("t", k, rows_for(k, width))
        s.commit()
    (data,) = tmp_path.glob("*.rows")
    raw = bytearray(data.read_bytes())
    raw[12_345 * width * 4 + 9] ^= 0x01  # one bit of row 12345
    data.write_bytes(bytes(raw))
    with SSDStore(tmp_path, {"t": width}) as s:
        for q in (k, k[12_345 - 3 : 12_345 + 3], k[12_345::5000]):  # dense span, small span, scattered
            with pytest.raises(StoreError, match=f"{data.name}: checksum mismatch in row 12345"):
                s.read("t", q)
        rows, found = s.read("t", k[:12_000])  # other rows still read
        assert found.all() and np.array_equal(rows, rows_for(k[:12_000], width))


@settings(max_examples=60, deadline=None)
@given(
    index=st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=40),
    queries=st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=40),
    extra=st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=40),
)
def test_key_index_matches_a_dict(index: list[int], queries: list[int], extra: list[int]) -> None:
    model = {k: i for i, k in enumerate(index)}
    idx = KeyIndex()
    idx.put(np.array(index, np.uint64), np.arange(len(index), dtype=np.int64))
    idx.put(np.array(extra, np.uint64), np.arange(len(extra), dtype=np.int64) + 1000)
    model.update({k: i + 1000 for i, k in enumerate(extra)})
    assert idx.keys.tolist() == sorted(model) and idx.slots.tolist() == [model[k] for k in sorted(model)]
    idx.remove(np.array(queries[::2], np.uint64))
    for k in queries[::2]:
        model.pop(k, None)
    slots, found = idx.lookup(np.array(queries, np.uint64))
    assert found.tolist() == [k in model for k in queries]
    assert slots[found].tolist() == [model[k] for k in queries if k in model]
    order, pos, found_s, _ = sorted_lookup(idx.keys, idx.slots, np.array(queries, np.uint64))
    assert np.array_equal(np.sort(np.array(queries, np.uint64)), np.array(queries, np.uint64)[order])
    assert found_s.sum() == found.sum() and (np.diff(pos) >= 0).all()


def test_page_cache_probes(tmp_path: Path) -> None:
    k = np.arange(50_000, dtype=np.uint64)
    with SSDStore(tmp_path, {"t": 7}) as s:
        s.write("t", k, rows_for(k, 7))
        s.commit()  # fsync: the pages are clean, so they can be dropped
        f = s.tables["t"].f
        view = f._view()
        probe = [0, 20_000, 49_999]
        assert f._probe(view, probe) is True and f._resident(view, np.array(probe)).all()
        del view
        f._map = None
        gc.collect()  # unmapped pages can be dropped; mapped ones cannot
        os.posix_fadvise(f.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        view = f._view()
        if f._resident(view, np.array(probe)).any():
            pytest.skip("this file system keeps the pages cached (tmpfs?)")
        assert f._probe(view, probe) is False
        rows, found = s.read("t", k[20_000:20_001])  # one page comes back
        assert found.all() and np.array_equal(rows, rows_for(k[20_000:20_001], 7))
        assert f._probe(view, probe) is None and f._resident(view, np.array(probe)).tolist() == [False, True, False]
        rows, found = s.read("t", k)  # a cold read through both paths
        assert found.all() and np.array_equal(rows, rows_for(k, 7))


@pytest.mark.parametrize("block", [1, 3, 64])
def test_blocked_search_equals_searchsorted(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(table, "_SEARCH_BLOCK", block)
    rng = np.random.default_rng(block)
    index = np.unique(rng.integers(0, 1000, 300, dtype=np.uint64))
    for queries in (
        np.unique(rng.integers(0, 1200, 500, dtype=np.uint64)),  # present, absent, past the end
        np.arange(5, dtype=np.uint64),
        index[::2],
    ):
        want = np.searchsorted(index, queries)
        np.testing.assert_array_equal(table.search_sorted(index, queries), want)
        with ThreadPoolExecutor(3) as pool:
            np.testing.assert_array_equal(table.search_sorted(index, queries, pool), want)
    assert table.search_sorted(np.zeros(0, np.uint64), np.arange(9, dtype=np.uint64)).tolist() == [0] * 9
