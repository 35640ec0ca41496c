from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.hostmem import HostCache
from hier_ps.hostmem.gather import RowMover
from hier_ps.ssd import SSDStore
from hier_ps.tier import RowTier


class DictTier:
    """A RowTier over a dict (the model) that counts rows written and calls made."""

    def __init__(self, widths: dict[str, int]) -> None:
        self.w, self.d, self.writes = widths, {t: {} for t in widths}, 0
        self.calls = {"read": 0, "write": 0, "delete": 0}

    def widths(self) -> dict[str, int]:
        return dict(self.w)

    def read(self, table, keys):
        self.calls["read"] += 1
        rows = np.zeros((len(keys), self.w[table]), np.float32)
        found = np.array([int(k) in self.d[table] for k in keys], bool)
        for i, k in enumerate(keys.tolist()):
            if k in self.d[table]:
                rows[i] = self.d[table][k]
        return rows, found

    def write(self, table, keys, rows):
        self.calls["write"] += 1
        self.writes += len(keys)
        for k, r in zip(keys.tolist(), rows, strict=True):
            self.d[table][k] = r.copy()

    def delete(self, table, keys):
        self.calls["delete"] += 1
        for k in keys.tolist():
            self.d[table].pop(k, None)


ops = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "delete", "flush"]),
        st.sampled_from(["a", "b"]),
        st.lists(st.integers(0, 25), min_size=1, max_size=10, unique=True),
        st.integers(0, 50),
    ),
    max_size=30,
)


@settings(max_examples=80, deadline=None)
@given(ops=ops, cap_rows=st.integers(0, 12), policy=st.sampled_from(["lru", "lfu"]), split=st.booleans())
def test_matches_dict_model(ops: list, cap_rows: int, policy: str, split: bool) -> None:
    widths = {"a": 3, "b": 1}
    backing = DictTier(widths)
    capacity = cap_rows * 4 * (3 + 1)
    cache = HostCache(backing, capacity, policy)
    if split:  # every row move split across 3 threads, however small
        cache.mover = RowMover(threads=3, min_rows=1)
    model = {"a": {}, "b": {}}
    for op, t, keys, val in ops:
        k = np.array(keys, np.uint64)
        if op == "write":
            cache.write(t, k, np.full((len(k), widths[t]), val, np.float32))
            model[t].update(dict.fromkeys(keys, float(val)))
        elif op == "delete":
            cache.delete(t, k)
            for x in keys:
                model[t].pop(x, None)
        elif op == "flush":
            cache.flush()
            assert {x: float(r[0]) for x, r in backing.d[t].items()} == model[t]
        rows, found = cache.read(t, k)
        assert found.tolist() == [x in model[t] for x in keys]
        assert [float(r[0]) for r, f in zip(rows, found, strict=True) if f] == [
            model[t][x] for x in keys if x in model[t]
        ]
        resident_bytes = sum(cache.resident(name) * 4 * w for name, w in widths.items())
        assert resident_bytes <= capacity
        assert all(cache.resident(name) <= cap_rows for name in widths)  # each table's share: cap_rows rows
        assert cache.stats["resident_rows_by_table"] == {n: cache.resident(n) for n in widths}
        for name in widths:  # what is cached is what the model holds (not-found keys are never cached)
            res = cache.t[name]
            assert set(res.ikeys.tolist()) <= set(model[name])
    cache.flush()
    for t in widths:
        assert {x: float(r[0]) for x, r in backing.d[t].items()} == model[t]


def test_lru_eviction_writes_back_dirty_only() -> None:
    backing = DictTier({"a": 1})
    cache = HostCache(backing, 3 * 4)  # 3 rows
    cache.write("a", np.array([1, 2, 3], np.uint64), np.ones((3, 1), np.float32))
    cache.flush()
    assert backing.writes == 3
    cache.read("a", np.array([1], np.uint64))  # 1 is now most recent; 2 is least
    cache.write("a", np.array([3], np.uint64), np.full((1, 1), 7, np.float32))  # 3 dirty
    cache.write("a", np.array([4], np.uint64), np.full((1, 1), 4, np.float32))  # evicts 2 (clean: no write)
    assert backing.writes == 3 and cache.stats["evictions"] == 1
    assert cache.read("a", np.array([2], np.uint64))[1].all()  # miss, comes back from backing, evicts 1 (clean)
    cache.write("a", np.array([5], np.uint64), np.full((1, 1), 5, np.float32))  # evicts 3 (dirty -> written)
    assert backing.d["a"][3][0] == 7 and backing.writes == 4
    assert cache.stats["hits"] == 1 and cache.stats["misses"] == 1


def test_lfu_keeps_the_frequent_rows_lru_the_recent_ones() -> None:
    kept = {}
    for policy in ("lru", "lfu"):
        cache = HostCache(DictTier({"a": 1}), 3 * 4, policy)  # 3 rows
        cache.write("a", np.array([1, 2, 3], np.uint64), np.ones((3, 1), np.float32))
        for _ in range(3):
            cache.read("a", np.array([1], np.uint64))  # 1: frequent, but not recent after what follows
        cache.read("a", np.array([2], np.uint64))
        cache.read("a", np.array([3], np.uint64))
        cache.write("a", np.array([4], np.uint64), np.ones((1, 1), np.float32))  # one row must go
        kept[policy] = sorted(cache.t["a"].ikeys.tolist())
    assert kept["lru"] == [2, 3, 4]  # 1 was least recently used
    assert kept["lfu"] == [1, 3, 4]  # 2 and 3 used twice, 1 four times: 2 goes (the older of the two)


def test_bookkeeping_is_under_30_percent_of_the_rows_it_holds() -> None:
    cache = HostCache(DictTier({"a": 21}), 1000 * 21 * 4)  # 84-byte rows: dim 16 + row-wise Adagrad + metadata
    keys = np.arange(1000, dtype=np.uint64) * 7919
    cache.write("a", keys, np.ones((1000, 21), np.float32))
    s = cache.t["a"]
    assert s.resident == 1000
    assert s.overhead_bytes <= 0.30 * s.rows.nbytes


def test_the_clock_never_wraps_and_keeps_the_order() -> None:
    cache = HostCache(DictTier({"a": 1}), 3 * 4)
    cache.write("a", np.array([1, 2, 3], np.uint64), np.ones((3, 1), np.float32))
    cache.read("a", np.array([1], np.uint64))  # order of last use: 2, 3, 1
    cache.clock = np.iinfo(np.uint32).max - 1  # the next call renumbers
    cache.read("a", np.array([3], np.uint64))  # order: 2, 1, 3
    assert cache.clock < 10
    cache.write("a", np.array([4], np.uint64), np.ones((1, 1), np.float32))
    assert sorted(cache.t["a"].ikeys.tolist()) == [1, 3, 4]  # 2 went: the least recently used


def test_capacity_zero_passes_through(tmp_path: Path) -> None:
    with SSDStore(tmp_path, {"a": 2}) as store:
        cache = HostCache(store, 0)
        k = np.array([5, 6], np.uint64)
        cache.write("a", k, np.ones((2, 2), np.float32))
        assert store.num_rows("a") == 2 and cache.resident("a") == 0
        rows, found = cache.read("a", k)
        assert found.all() and (rows == 1).all()


@pytest.mark.parametrize("cap_rows", [1, 7])
def test_big_batches_over_capacity(cap_rows: int) -> None:
    backing = DictTier({"a": 2})
    cache = HostCache(backing, cap_rows * 8)
    k = np.arange(50, dtype=np.uint64)
    cache.write("a", k, np.tile(k[:, None].astype(np.float32), (1, 2)))
    assert cache.resident("a") == cap_rows
    rows, found = cache.read("a", k[::-1].copy())
    assert found.all() and (rows[:, 0] == k[::-1]).all()
    cache.flush()
    assert len(backing.d["a"]) == 50


@settings(max_examples=25, deadline=None)
@given(ops=ops, cap_rows=st.integers(0, 6))
def test_over_an_ssd_store_matches_dict_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list, cap_rows: int
) -> None:
    widths = {"a": 3, "b": 1}
    model: dict[str, dict[int, float]] = {"a": {}, "b": {}}
    with SSDStore(tmp_path_factory.mktemp("c"), widths) as store:
        cache = HostCache(store, cap_rows * 4 * (3 + 1))
        for op, t, keys, val in ops:
            k = np.array(keys, np.uint64)
            if op == "write":
                cache.write(t, k, np.full((len(k), widths[t]), val, np.float32))
                model[t].update(dict.fromkeys(keys, float(val)))
            elif op == "delete":
                cache.delete(t, k)
                for x in keys:
                    model[t].pop(x, None)
            elif op == "flush":
                cache.flush()
                store.commit()
            rows, found = cache.read(t, k)
            assert found.tolist() == [x in model[t] for x in keys]
            assert rows[found][:, 0].tolist() == [model[t][x] for x in keys if x in model[t]]
            assert not rows[~found].any()
        cache.flush()
        for t in widths:
            assert store.keys(t).tolist() == sorted(model[t])
            assert store.read(t, store.keys(t))[0][:, 0].tolist() == [model[t][x] for x in sorted(model[t])]


def test_budget_split_gives_every_table_the_same_rows() -> None:
    backing = DictTier({"wide": 30, "narrow": 2})
    cache = HostCache(backing, 5 * 4 * (30 + 2) + 100)  # 5 rows each, 100 bytes spare (not enough for a 6th)
    k = np.arange(10, dtype=np.uint64)
    cache.write("wide", k, np.ones((10, 30), np.float32))
    cache.write("narrow", k, np.ones((10, 2), np.float32))
    assert cache.stats["resident_rows_by_table"] == {"wide": 5, "narrow": 5}
    assert cache.resident("wide") * 120 + cache.resident("narrow") * 8 <= cache.capacity_bytes


def test_batched_backing_calls_and_counters() -> None:
    backing = DictTier({"a": 2})
    cache = HostCache(backing, 4 * 8)  # 4 rows
    k = np.arange(100, dtype=np.uint64)
    backing.write("a", k[:50], np.ones((50, 2), np.float32))
    backing.calls["write"] = backing.writes = 0
    _, found = cache.read("a", k[:8])  # 8 misses: one backing read; the last 4 found rows become resident
    assert backing.calls == {"read": 1, "write": 0, "delete": 0} and cache.resident("a") == 4
    cache.write("a", k[4:8], np.full((4, 2), 5, np.float32))  # 4 hits, dirty
    _, found = cache.read("a", k[40:60])  # 20 misses (10 found): one read, one write-back of 4 dirty rows
    assert backing.calls == {"read": 2, "write": 1, "delete": 0} and backing.writes == 4
    assert found.sum() == 10 and (backing.d["a"][7] == 5).all()
    assert set(cache.t["a"].ikeys.tolist()) == {46, 47, 48, 49}  # not-found keys 50..59 are not cached
    st = cache.stats
    assert (st["hits"], st["misses"], st["evictions"], st["rows_written_back"]) == (0, 28, 4, 4)
    cache.read("a", k[46:50])
    assert cache.stats["hits"] == 4 and cache.stats["hit_rate"] == pytest.approx(4 / 32)
    cache.delete("a", k[46:48])
    assert cache.resident("a") == 2 and 46 not in backing.d["a"] and backing.calls["delete"] == 1


def test_deleted_slots_are_reused_before_any_eviction() -> None:
    cache = HostCache(DictTier({"a": 2}), 6 * 8)  # 6 rows
    k = np.arange(20, dtype=np.uint64)
    cache.write("a", k[:6], np.arange(12, dtype=np.float32).reshape(6, 2))
    cache.delete("a", k[1:5:2])  # frees two slots in the middle
    cache.write("a", k[10:12], np.full((2, 2), 9, np.float32))
    s = cache.t["a"]
    assert cache.stats["evictions"] == 0 and cache.resident("a") == 6
    assert sorted(s.islots.tolist()) == list(range(6)) and s.used.all()
    rows, found = cache.read("a", k[[0, 2, 4, 5, 10, 11]])
    assert found.all() and rows[:4].tolist() == [[0, 1], [4, 5], [8, 9], [10, 11]] and (rows[4:] == 9).all()
    cache.write("a", k[12:13], np.zeros((1, 2), np.float32))  # full now: one eviction
    assert cache.stats["evictions"] == 1 and cache.resident("a") == 6


def test_tiers_implement_the_protocol(tmp_path: Path) -> None:
    with SSDStore(tmp_path, {"a": 1}) as store:
        assert isinstance(store, RowTier) and isinstance(HostCache(store, 0), RowTier)


def test_not_found_keys_are_not_cached() -> None:
    cache = HostCache(DictTier({"a": 1}), 4 * 10)
    rows, found = cache.read("a", np.arange(5, dtype=np.uint64))
    assert not found.any() and not rows.any() and cache.resident("a") == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="capacity_bytes must be >= 0"):
        HostCache(DictTier({"a": 1}), -1)
    cache = HostCache(DictTier({"a": 2}), 64)
    with pytest.raises(ValueError, match=r"rows of table 'a' must be \[3, 2\]"):
        cache.write("a", np.arange(3, dtype=np.uint64), np.zeros((3, 3), np.float32))
    with pytest.raises(KeyError, match="unknown table 'b'"):
        cache.read("b", np.arange(3, dtype=np.uint64))
