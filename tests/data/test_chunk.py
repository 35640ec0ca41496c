from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.data import ExampleChunk

bags = st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=4), min_size=0, max_size=12)


def make(b: list[list[int]]) -> ExampleChunk:
    n = len(b)
    off = np.cumsum([0, *[len(x) for x in b]]).astype(np.int64)
    keys = np.array([k for x in b for k in x], np.uint64)
    return ExampleChunk(np.arange(n, dtype=np.float32)[:, None], np.zeros((n, 2), np.float32), {"s": (off, keys)})


def bags_of(c: ExampleChunk) -> list[list[int]]:
    off, keys = c.sparse["s"]
    assert off[0] == 0 and len(off) == len(c) + 1 and off[-1] == len(keys)
    return [keys[off[i] : off[i + 1]].tolist() for i in range(len(c))]


@settings(max_examples=100, deadline=None)
@given(b=bags, data=st.data())
def test_slice_take_concat_match_lists(b: list[list[int]], data: st.DataObject) -> None:
    c = make(b)
    lo = data.draw(st.integers(0, len(b)))
    hi = data.draw(st.integers(lo, len(b)))
    assert bags_of(c.slice(lo, hi)) == b[lo:hi]
    idx = data.draw(st.lists(st.integers(0, max(len(b) - 1, 0)), max_size=15)) if b else []
    t = c.take(np.array(idx, np.int64))
    assert bags_of(t) == [b[i] for i in idx] and t.labels[:, 0].tolist() == [float(i) for i in idx]
    cat = ExampleChunk.concat([c.slice(0, lo), c.slice(lo, hi), c.slice(hi, len(b))])
    assert bags_of(cat) == b and cat.labels[:, 0].tolist() == list(range(len(b)))
