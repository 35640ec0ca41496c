"""ExampleChunk slice / take / concat against a list-of-lists oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.data import ExampleChunk

Bags = list[list[int]]
keys = st.integers(0, 2**64 - 1)
bag = st.lists(keys, max_size=4)


def make(slots: dict[str, Bags], num_dense: int = 2) -> ExampleChunk:
    """A chunk whose label i is i (row identity), dense row i is [i, -i, ...], and slots as given."""
    n = len(next(iter(slots.values())))
    sparse = {}
    for name, b in slots.items():
        off = np.cumsum([0, *[len(x) for x in b]]).astype(np.int64)
        sparse[name] = (off, np.array([k for x in b for k in x], np.uint64))
    rows = np.arange(n, dtype=np.float32)
    labels = np.stack([rows, rows + 0.5], axis=1)
    dense = (
        np.stack([rows * (-1) ** j for j in range(num_dense)], axis=1) if num_dense else np.zeros((n, 0), np.float32)
    )
    return ExampleChunk(labels, dense.astype(np.float32), sparse)


def bags_of(c: ExampleChunk, slot: str) -> Bags:
    off, k = c.sparse[slot]
    assert off.dtype == np.int64 and k.dtype == np.uint64
    assert off[0] == 0 and len(off) == len(c) + 1 and off[-1] == len(k) and (np.diff(off) >= 0).all()
    return [k[off[i] : off[i + 1]].tolist() for i in range(len(c))]


def rows_of(c: ExampleChunk) -> list[int]:
    assert c.labels.dtype == np.float32 and c.labels.shape == (len(c), 2) and c.dense.shape[0] == len(c)
    return c.labels[:, 0].astype(int).tolist()


@st.composite
def chunks(draw: st.DrawFn) -> tuple[ExampleChunk, dict[str, Bags]]:
    n = draw(st.integers(0, 12))
    slots = {s: draw(st.lists(bag, min_size=n, max_size=n)) for s in ("a", "b")}
    return make(slots, num_dense=draw(st.sampled_from([0, 3]))), slots


@settings(max_examples=150, deadline=None)
@given(cs=chunks(), data=st.data())
def test_slice_matches_lists(cs: tuple[ExampleChunk, dict[str, Bags]], data: st.DataObject) -> None:
    c, slots = cs
    n = len(c)
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    s = c.slice(lo, hi)
    assert len(s) == hi - lo and rows_of(s) == list(range(lo, hi))
    for name, b in slots.items():
        assert bags_of(s, name) == b[lo:hi]
    assert s.dense.shape == (hi - lo, c.dense.shape[1])


@settings(max_examples=150, deadline=None)
@given(cs=chunks(), data=st.data())
def test_take_matches_lists(cs: tuple[ExampleChunk, dict[str, Bags]], data: st.DataObject) -> None:
    c, slots = cs
    n = len(c)
    idx = data.draw(st.lists(st.integers(0, n - 1), max_size=20)) if n else []
    t = c.take(np.array(idx, np.int64))
    assert rows_of(t) == idx
    for name, b in slots.items():
        assert bags_of(t, name) == [b[i] for i in idx]
    np.testing.assert_array_equal(t.dense, c.dense[np.array(idx, np.int64)])


@settings(max_examples=150, deadline=None)
@given(cs=chunks(), data=st.data())
def test_concat_of_pieces_is_the_whole(cs: tuple[ExampleChunk, dict[str, Bags]], data: st.DataObject) -> None:
    c, slots = cs
    n = len(c)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    bounds = [0, *cuts, n]
    pieces = [c.slice(a, b) for a, b in itertools.pairwise(bounds)]
    whole = ExampleChunk.concat(pieces)
    assert rows_of(whole) == list(range(n))
    for name, b in slots.items():
        assert bags_of(whole, name) == b
    # pieces of a take, re-concatenated, and a take of a concat agree
    perm = np.array(data.draw(st.permutations(range(n))), np.int64)
    again = ExampleChunk.concat([whole.take(perm[: n // 2]), whole.take(perm[n // 2 :])])
    assert rows_of(again) == perm.tolist()
    for name, b in slots.items():
        assert bags_of(again, name) == [b[i] for i in perm]


def test_slice_is_a_view_and_clamps() -> None:
    c = make({"a": [[1, 2], [3], [], [4, 5, 6]]})
    s = c.slice(1, 10)
    assert bags_of(s, "a") == [[3], [], [4, 5, 6]]
    assert np.shares_memory(s.sparse["a"][1], c.sparse["a"][1]) and np.shares_memory(s.labels, c.labels)
    assert len(c.slice(3, 2)) == 0 and bags_of(c.slice(3, 2), "a") == []


def test_concat_errors_and_single() -> None:
    c = make({"a": [[1], [2]]})
    assert ExampleChunk.concat([c]) is c
    with pytest.raises(ValueError, match="no chunks"):
        ExampleChunk.concat([])
    with pytest.raises(ValueError, match="slots differ"):
        ExampleChunk.concat([c, make({"b": [[1]]})])


def test_take_of_nothing() -> None:
    c = make({"a": [[1, 2], [3]]}, num_dense=0)
    t = c.take(np.zeros(0, np.int64))
    assert len(t) == 0 and t.dense.shape == (0, 0) and t.sparse["a"][0].tolist() == [0]
