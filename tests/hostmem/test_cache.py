from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.hostmem import HostCache
from hier_ps.ssd import SSDStore


class DictTier:
    """A RowTier over a dict that counts calls."""

    def __init__(self, widths: dict[str, int]) -> None:
        self.w, self.d, self.writes = widths, {t: {} for t in widths}, 0

    def widths(self) -> dict[str, int]:
        return dict(self.w)

    def read(self, table, keys):
        rows = np.zeros((len(keys), self.w[table]), np.float32)
        found = np.array([int(k) in self.d[table] for k in keys], bool)
        for i, k in enumerate(keys.tolist()):
            if k in self.d[table]:
                rows[i] = self.d[table][k]
        return rows, found

    def write(self, table, keys, rows):
        self.writes += len(keys)
        for k, r in zip(keys.tolist(), rows, strict=True):
            self.d[table][k] = r.copy()

    def delete(self, table, keys):
        for k in keys.tolist():
            self.d[table].pop(k, None)


ops = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "delete", "flush"]),
        st.sampled_from(["a", "b"]),
        st.lists(st.integers(0, 20), min_size=1, max_size=10, unique=True),
        st.integers(0, 50),
    ),
    max_size=30,
)


@settings(max_examples=80, deadline=None)
@given(ops=ops, cap_rows=st.integers(0, 12))
def test_matches_dict_model(ops: list, cap_rows: int) -> None:
    widths = {"a": 3, "b": 1}
    backing = DictTier(widths)
    capacity = cap_rows * 4 * (3 + 1)
    cache = HostCache(backing, capacity)
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
        for name, w in widths.items():
            assert cache.resident(name) * 4 * w <= capacity * w / 4  # each table's share of the budget
        assert cache.stats["resident_rows"] * 4 * 4 <= capacity * 2
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
