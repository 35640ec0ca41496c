"""Pass-planning properties against a plain-Python oracle."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps import plan as plan_mod
from hier_ps.data import ExampleChunk
from hier_ps.plan import PassPlan, _example_of, _stable_argsort, _unique_inverse_counts, plan_pass


def _assert_same_plan(mine: PassPlan, theirs: PassPlan) -> None:
    """Every array of two plans equal, with its dtype."""
    for f in dataclasses.fields(mine):
        a, b = getattr(mine, f.name), getattr(theirs, f.name)
        if isinstance(a, dict) and f.name not in ("rejected", "slot_tables"):
            assert list(a) == list(b), f.name
            assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a), f.name
    assert mine.rejected == theirs.rejected


def _numpy_plan(*args, **kwargs) -> PassPlan:
    """plan_pass on its numpy path (the fallback where the C planner does not build)."""
    saved, plan_mod._C_PLAN = plan_mod._C_PLAN, None
    try:
        return plan_pass(*args, **kwargs)
    finally:
        plan_mod._C_PLAN = saved


bags = st.lists(st.lists(st.integers(0, 12), max_size=4), min_size=1, max_size=30)


def _chunk(slot_bags: dict[str, list[list[int]]]) -> ExampleChunk:
    n = len(next(iter(slot_bags.values())))
    sparse = {}
    for s, b in slot_bags.items():
        offsets = np.cumsum([0, *[len(x) for x in b]]).astype(np.int64)
        keys = np.array([k * 7919 + 2**63 for x in b for k in x], np.uint64)  # large uint64 keys
        sparse[s] = (offsets, keys)
    return ExampleChunk(labels=np.zeros((n, 1), np.float32), dense=np.zeros((n, 0), np.float32), sparse=sparse)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), batch_size=st.integers(1, 8))
def test_plan_matches_oracle(data: st.DataObject, batch_size: int) -> None:
    a = data.draw(bags)
    n = len(a)
    b = data.draw(st.lists(st.lists(st.integers(0, 12), max_size=3), min_size=n, max_size=n))
    c = data.draw(st.lists(st.lists(st.integers(0, 5), max_size=2), min_size=n, max_size=n))
    chunk = _chunk({"a": a, "b": b, "c": c})
    slot_tables = {"a": "T", "b": "T", "c": "U"}  # a and b share table T
    plan = plan_pass(chunk, slot_tables, batch_size, index=3)

    for table, slots in {"T": ["a", "b"], "U": ["c"]}.items():
        all_keys = [k for s in slots for k in chunk.sparse[s][1].tolist()]
        ws = plan.keys[table]
        assert ws.tolist() == sorted(set(all_keys))  # sorted unique working set
        assert plan.counts[table].tolist() == [all_keys.count(k) for k in ws.tolist()]
        for s in slots:
            assert ws[plan.local[s]].tolist() == chunk.sparse[s][1].tolist()  # local rows point at the keys

    assert plan.num_batches == -(-n // batch_size)
    with ThreadPoolExecutor(2) as pool:  # tables planned side by side: the same plan, field by field
        pooled = plan_pass(chunk, slot_tables, batch_size, index=3, pool=pool)
    _assert_same_plan(plan, pooled)
    _assert_same_plan(plan, _numpy_plan(chunk, slot_tables, batch_size, index=3))  # the C planner is numpy's
    seen = 0
    for i in range(plan.num_batches):
        bp = plan.batch(i)
        lo, hi = i * batch_size, min((i + 1) * batch_size, n)
        assert len(bp) == hi - lo
        for s, table in slot_tables.items():
            off, idx = bp.slots[s]
            assert off[0] == 0 and len(off) == hi - lo + 1
            expect = chunk.slice(lo, hi).sparse[s][1].tolist()
            assert plan.keys[table][idx].tolist() == expect
        for table, slots in {"T": ["a", "b"], "U": ["c"]}.items():
            urows, inv = bp.tables[table]
            occ_rows = np.concatenate([bp.slots[s][1] for s in slots])
            assert urows.tolist() == sorted(set(occ_rows.tolist()))  # unique rows of this batch
            assert urows[inv].tolist() == occ_rows.tolist()  # each occurrence finds its row
            # The presorted segments: occurrences by row, ties in occurrence order (slot, then example).
            occ = [(int(r), j, e) for j, s in enumerate(slots) for e in range(hi - lo) for r in _bag(bp, s, e)]
            expect_order = sorted(range(len(occ)), key=lambda q: (occ[q][0], q))
            slot_of, example_of, counts = bp.order[table]
            assert slot_of.tolist() == [occ[q][1] for q in expect_order]
            assert example_of.tolist() == [occ[q][2] for q in expect_order]
            assert counts.tolist() == [sum(o[0] == r for o in occ) for r in urows.tolist()]
        seen += len(bp)
    assert seen == n


def _bag(bp, slot: str, example: int) -> list[int]:
    off, idx = bp.slots[slot]
    return idx[off[example] : off[example + 1]].tolist()


def test_eval_plan_skips_gradient_index() -> None:
    chunk = _chunk({"a": [[1, 2], [2], []]})
    plan = plan_pass(chunk, {"a": "T"}, 2, index=0, for_training=False)
    assert plan.inv == {} and plan.keys["T"].size == 2
    assert plan.batch(1).slots["a"][0].tolist() == [0, 0]


def test_batch_slices_are_the_small_batches_with_global_rows() -> None:
    """A rank's slice of a global batch holds what a batch of the per-rank size would, pointing at global rows."""

    rng = np.random.default_rng(0)
    n = 60

    def bag(maxlen: int) -> tuple[np.ndarray, np.ndarray]:
        off = np.r_[0, np.cumsum(rng.integers(0, maxlen, n))]
        return off, rng.integers(0, 20, off[-1]).astype(np.uint64)

    chunk = ExampleChunk(
        labels=np.zeros((n, 1), np.float32),
        dense=np.zeros((n, 0), np.float32),
        sparse={"a": bag(3), "b": bag(4), "c": bag(2)},
    )
    slot_tables = {"a": "t", "b": "t", "c": "u"}
    big, small = plan_pass(chunk, slot_tables, 20, 0), plan_pass(chunk, slot_tables, 5, 0)
    for i in range(n // 20):
        b = big.batch(i)
        for r in range(4):
            s, ref = b.slice(5 * r, 5 * (r + 1)), small.batch(4 * i + r)
            for slot in slot_tables:
                assert np.array_equal(s.slots[slot][0], ref.slots[slot][0])
                assert np.array_equal(s.slots[slot][1], ref.slots[slot][1])
            for t, (urows, inv) in s.tables.items():
                assert np.array_equal(urows, b.tables[t][0])  # the whole batch's rows
                ref_urows, ref_inv = ref.tables[t]
                assert np.array_equal(urows[inv], ref_urows[ref_inv])  # each occurrence: the same row


def test_a_given_key_dedup_plans_as_numpy_does() -> None:
    """`unique` (the trainer passes the GPU's dedup on CUDA) gives the same plan as np.unique: here the torch-ops
    twin of the kernel, on keys on both sides of 2**63 (uint64 order, not int64 order)."""
    import torch

    from hier_ps.hbm.kernels import unique_u64_torch

    def torch_unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, inv = unique_u64_torch(torch.from_numpy(keys.view(np.int64)).view(torch.uint64))
        return u.view(torch.int64).numpy().view(np.uint64), inv.numpy()

    rng = np.random.default_rng(3)
    n = 50
    sparse = {}
    for s in ("a", "b", "c"):
        off = np.r_[0, np.cumsum(rng.integers(0, 4, n))].astype(np.int64)
        sparse[s] = (off, rng.choice(np.array([1, 7, 2**63 - 1, 2**63, 2**64 - 1], np.uint64), off[-1]))
    chunk = ExampleChunk(np.zeros((n, 1), np.float32), np.zeros((n, 0), np.float32), sparse)
    slot_tables = {"a": "t", "b": "t", "c": "u"}
    ref, got = plan_pass(chunk, slot_tables, 8, 0), plan_pass(chunk, slot_tables, 8, 0, unique=torch_unique)
    for field in ("keys", "counts", "local", "urows", "inv", "sorted_slot", "sorted_example", "urow_counts"):
        a, b = getattr(ref, field), getattr(got, field)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), field


@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_the_fast_unique_and_stable_sort_equal_numpys(n: int) -> None:
    rng = np.random.default_rng(n)
    keys = rng.integers(0, max(n // 3, 1), n).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # both sides of 2^63
    got, want = _unique_inverse_counts(keys), np.unique(keys, return_inverse=True, return_counts=True)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w.reshape(-1))
    assert got[1].dtype == got[2].dtype == np.int64
    code = rng.integers(0, 50, n).astype(np.int64)  # many ties: their order is what a stable sort fixes
    for bound in (50, 2**62):  # the tagged value sort, and the fallback when tags would overflow int64
        perm, sorted_code = _stable_argsort(code, bound)
        assert np.array_equal(perm, np.argsort(code, kind="stable")) and np.array_equal(sorted_code, np.sort(code))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 5000, 200_000])
def test_the_c_unique_equals_numpys_and_stops_past_its_cap(n: int) -> None:
    """Few and many distinct keys (the hash table grows several times), keys on both sides of 2^63, 0 and the
    largest uint64, keys that share their high bytes (radix digits skipped); past `max_distinct` it gives up."""
    if plan_mod._c_planner() is None:
        pytest.skip("no C kernels here (no compiler): plans take the numpy path")
    from hier_ps.hbm import cpu_kernels

    rng = np.random.default_rng(n)
    cases = [
        rng.integers(0, max(n // 3, 1), n).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15),
        rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1),  # mostly distinct
        np.uint64(7 << 40) + rng.integers(0, 300, n).astype(np.uint64),  # high bytes shared by all keys
        np.resize(np.array([0, 2**64 - 1, 5], np.uint64), n),
        np.arange(n, dtype=np.uint64)[::-1].copy(),
    ]
    for keys in cases:
        want = np.unique(keys, return_inverse=True, return_counts=True)
        got = cpu_kernels.unique_inverse_counts(keys)
        assert got is not None
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and np.array_equal(g, w.reshape(-1))
        m = len(want[0])
        assert cpu_kernels.unique_inverse_counts(keys, m) is not None
        if m:
            assert cpu_kernels.unique_inverse_counts(keys, m - 1) is None


def test_plans_are_the_same_whichever_way_each_table_finds_its_keys() -> None:
    """A table of few distinct keys (hashed in C) and one of mostly distinct keys (past the cap: sorted) plan as
    the numpy path does."""
    if plan_mod._c_planner() is None:
        pytest.skip("no C kernels here (no compiler)")
    rng = np.random.default_rng(9)
    n = 4000
    off = np.arange(n + 1, dtype=np.int64)
    sparse = {
        "few": (off, rng.integers(0, 50, n).astype(np.uint64)),
        "many": (off, rng.integers(0, 2**64 - 1, n, dtype=np.uint64)),
    }
    chunk = ExampleChunk(np.zeros((n, 1), np.float32), np.zeros((n, 0), np.float32), sparse)
    slot_tables = {"few": "F", "many": "M"}
    _assert_same_plan(plan_pass(chunk, slot_tables, 256, 0), _numpy_plan(chunk, slot_tables, 256, 0))


@pytest.mark.parametrize("lengths", [[], [1, 1, 1], [1, 0, 2, 1], [0, 0], [2, 1, 1, 0]])
def test_example_of_is_the_repeat_of_the_bag_lengths(lengths: list[int]) -> None:
    """Single-hot slots take the arange shortcut; every other shape (same total, empty bags) the repeat."""
    off = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=off[1:])
    got = _example_of(off)
    assert got.dtype == np.int64 and np.array_equal(got, np.repeat(np.arange(len(lengths)), lengths))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_c_planner_plans_as_numpy_on_larger_passes(seed: int) -> None:
    """Multi-hot and single-hot slots, a table with three slots, empty bags and batches, a short last batch, hot
    keys, and a table with admission (a null row): the C planner's arrays are the numpy path's."""
    if plan_mod._c_planner() is None:
        pytest.skip("no C planner here (no compiler): plans take the numpy path")
    rng = np.random.default_rng(seed)
    n = 5003
    sparse = {}
    for s, max_len in {"a": 3, "b": 1, "c": 2, "d": 1, "e": 4}.items():
        lens = rng.integers(0, max_len + 1, n) if max_len > 1 else np.ones(n, np.int64)
        lens[200:400] = 0  # a run of empty bags: empty batches in multi-hot slots
        off = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        keys = rng.integers(0, 3000, off[-1]).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        keys[rng.random(off[-1]) < 0.3] = np.uint64(7)  # a hot key
        sparse[s] = (off, keys)
    chunk = ExampleChunk(np.zeros((n, 1), np.float32), np.zeros((n, 0), np.float32), sparse)
    slot_tables = {"a": "T", "b": "T", "c": "T", "d": "U", "e": "V"}
    for batch in (64, 4096, 10_000):
        _assert_same_plan(plan_pass(chunk, slot_tables, batch, 1), _numpy_plan(chunk, slot_tables, batch, 1))

    def admit(table: str, keys: np.ndarray, batches: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return (keys % 3 != 0) | (batches > 2)  # some keys get a row only from batch 3 on

    got = plan_pass(chunk, slot_tables, 128, 0, admit=admit, admission_tables={"U"})
    want = _numpy_plan(chunk, slot_tables, 128, 0, admit=admit, admission_tables={"U"})
    assert got.rejected["U"][1] > 0  # occurrences at the null row
    _assert_same_plan(got, want)


@pytest.mark.parametrize("n_rows", [3, 70_000, 5_000_000])  # rows past 2**22: three radix digits
def test_the_c_planner_sorts_each_batch_by_row_stably(n_rows: int) -> None:
    """The C planner, reading each slot's CSR offsets (multi-hot slots, empty bags, a slot with no occurrence,
    offsets not starting at 0, a short last batch), against the definition: occurrences sorted by (batch, row),
    ties in occurrence order."""
    if plan_mod._c_planner() is None:
        pytest.skip("no C planner here (no compiler)")
    from hier_ps.hbm import cpu_kernels

    rng = np.random.default_rng(4)
    n_examples, batch_size = 900, 100 if n_rows > 3 else 128
    offsets, examples = [], []
    for max_len in (3, 1, 0, 2):
        lens = rng.integers(0, max_len + 1, n_examples) if max_len != 1 else np.ones(n_examples, np.int64)
        off = np.zeros(n_examples + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        offsets.append(off + 7 * max_len)  # a chunk's offsets need not start at 0
        examples.append(np.repeat(np.arange(n_examples), lens))
    example = np.concatenate(examples)
    n = len(example)
    loc = rng.integers(0, n_rows, n)
    loc[rng.random(n) < 0.2] = n_rows // 2  # a hot row
    batch = example // batch_size
    got = cpu_kernels.plan_batches(loc, offsets, batch_size, n_rows)
    n_batches = -(-n_examples // batch_size)
    bounds = np.cumsum([0, *(len(e) for e in examples)])
    perm = np.lexsort((np.arange(n), loc, batch))
    pair = batch[perm] * n_rows + loc[perm]
    first = np.r_[True, pair[1:] != pair[:-1]]
    pairs = pair[first]
    assert np.array_equal(got["urows"], pairs % n_rows)
    assert np.array_equal(got["urow_counts"], np.diff(np.r_[np.flatnonzero(first), n]))
    assert np.array_equal(got["urow_offsets"], np.searchsorted(pairs // n_rows, np.arange(n_batches + 1)))
    assert np.array_equal(got["occ_offsets"], np.searchsorted(batch[perm], np.arange(n_batches + 1)))
    assert np.array_equal(got["sorted_example"], example[perm])
    assert np.array_equal(got["sorted_slot"], np.searchsorted(bounds, perm, side="right") - 1)
    rel = np.empty(n, np.int64)
    rel[perm] = np.cumsum(first) - 1 - got["urow_offsets"][batch[perm]]
    assert np.array_equal(got["rel"], rel)
    with pytest.raises(ValueError, match="plan_batches"):
        cpu_kernels.plan_batches(loc[:-1], offsets, batch_size, n_rows)
