"""Table-batched lookup + fused update == the per-slot, per-table path it replaces; groups share storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hier_ps.config import InitConfig, SparseOptimizerConfig
from hier_ps.hbm.batched import BatchLookup, allocate_grouped
from hier_ps.hbm.working_set import TableSpec, WorkingSet, WorkingSetTable, segment_sum
from hier_ps.plan import BatchPlan, PassPlan

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]
SLOTS = {"s1": "a", "s2": "a", "s3": "b", "s4": "c", "s5": "b"}  # a and b: same dim, one group; c: its own
POOLING = {"s1": "sum", "s2": "mean", "s3": "mean", "s4": "sum", "s5": "sum"}
DIMS = {"a": 4, "b": 4, "c": 3}
ROWS = {"a": 12, "b": 7, "c": 9}
B = 16


def _setup(opt: str, seed: int) -> tuple[WorkingSet, BatchPlan, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    cfg = SparseOptimizerConfig(name=opt, lr=0.1, eps=1e-6, alpha=0.2, l1=0.001)
    specs = {t: TableSpec(t, DIMS[t], InitConfig(name="normal", std=0.5), cfg) for t in DIMS}
    tables = {}
    for t, n in ROWS.items():
        keys = np.arange(n, dtype=np.uint64) * 3 + 1
        tables[t] = WorkingSetTable.from_rows(
            specs[t], keys, specs[t].layout.new_rows(seed, t, keys, specs[t].init), "cpu", null_row=(t == "a")
        )
    slots = {}
    for s, t in SLOTS.items():
        lengths = rng.integers(0, 4, B)
        lengths[0] = 0  # an empty bag
        off = np.zeros(B + 1, np.int64)
        np.cumsum(lengths, out=off[1:])
        idx = rng.integers(0, ROWS[t] + (1 if t == "a" else 0), int(off[-1]))  # table a: the null row too
        idx[: len(idx) // 2] = 2  # a hot row
        slots[s] = (off, idx.astype(np.int64))
    by_table: dict[str, list[str]] = {}
    for s, t in SLOTS.items():
        by_table.setdefault(t, []).append(s)
    plan_tables = {}
    for t, ss in by_table.items():
        u, inv = np.unique(np.concatenate([slots[s][1] for s in ss]), return_inverse=True)
        plan_tables[t] = (u.astype(np.int64), inv.reshape(-1).astype(np.int64))
    b = BatchPlan(np.zeros((B, 1), np.float32), np.zeros((B, 0), np.float32), slots, plan_tables, by_table)
    upstream = {s: torch.from_numpy(rng.normal(size=(B, DIMS[t])).astype(np.float32)) for s, t in SLOTS.items()}
    return WorkingSet(tables), b, upstream


def _per_slot_step(ws: WorkingSet, b: BatchPlan, upstream: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The path the batched one replaced: a lookup per slot; per table the occurrence gradients, a segment sum and
    one update."""
    pooled, occ = {}, {}
    for s, t in SLOTS.items():
        off, idx = b.slots[s]
        pooled[s] = F.embedding_bag(
            torch.from_numpy(idx), ws.tables[t].emb, torch.from_numpy(off), mode=POOLING[s], include_last_offset=True
        )
        lengths = torch.from_numpy(np.diff(off))
        g = upstream[s][torch.repeat_interleave(torch.arange(B), lengths)]
        if POOLING[s] == "mean":
            g = g / lengths[torch.repeat_interleave(torch.arange(B), lengths)].unsqueeze(1).float()
        occ.setdefault(t, []).append(g)
    for t, (urows, inv) in b.tables.items():
        grad = segment_sum(torch.cat(occ[t]), torch.from_numpy(inv), len(urows))
        ws.tables[t].apply(torch.from_numpy(urows), grad)
    return pooled


def _batched_step(ws: WorkingSet, b: BatchPlan, upstream: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    lk = BatchLookup(ws, b, SLOTS, POOLING)
    pooled = lk.forward(requires_grad=True)
    sum((pooled[s] * upstream[s]).sum() for s in SLOTS).backward()
    lk.backward_update()
    return {s: p.detach() for s, p in pooled.items()}


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_batched_step_equals_per_slot_path(opt: str) -> None:
    ws_ref, b, up = _setup(opt, 0)
    ws_new, _, _ = _setup(opt, 0)
    for _ in range(3):  # a few steps, so that optimizer state matters
        p_ref = _per_slot_step(ws_ref, b, up)
        p_new = _batched_step(ws_new, b, up)
        for s in SLOTS:
            torch.testing.assert_close(p_new[s], p_ref[s], rtol=1e-6, atol=1e-6)
        for t in DIMS:
            torch.testing.assert_close(ws_new.tables[t].emb, ws_ref.tables[t].emb, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(ws_new.tables[t].state, ws_ref.tables[t].state, rtol=1e-6, atol=1e-6)
    a = ws_new.tables["a"]
    assert torch.all(a.emb[a.null] == 0) and torch.all(a.state[a.null] == 0)  # the null row takes no update


def test_grads_then_apply_equals_fused_and_runs_are_bit_identical() -> None:
    """The replicated path (sums, all-reduce, apply) and the fused one agree bit for bit; so do two runs."""
    runs = []
    for fused in (True, True, False):
        ws, b, up = _setup("adam", 1)
        lk = BatchLookup(ws, b, SLOTS, POOLING)
        pooled = lk.forward(requires_grad=True)
        sum((pooled[s] * up[s]).sum() for s in SLOTS).backward()
        if fused:
            lk.backward_update()
        else:
            lk.apply(lk.grads())
        runs.append({t: (ws.tables[t].emb.clone(), ws.tables[t].state.clone()) for t in DIMS})
    for r in runs[1:]:
        for t in DIMS:
            assert torch.equal(r[t][0], runs[0][t][0]) and torch.equal(r[t][1], runs[0][t][1])


def test_like_tables_share_one_storage_and_stay_addressable() -> None:
    ws, _, _ = _setup("sgd", 2)
    before = {t: ws.tables[t].emb.clone() for t in DIMS}
    groups = ws.groups()
    assert sorted(sorted(g.base) for g in groups) == [["a", "b"], ["c"]]
    ab = next(g for g in groups if "a" in g.base)
    assert ab.emb.shape == (ROWS["a"] + 1 + ROWS["b"], 4)
    for t in DIMS:
        assert torch.equal(ws.tables[t].emb, before[t])
    ws.tables["b"].emb[0] = 5.0  # a table's emb is a view of its group's storage
    assert torch.all(ab.emb[ab.base["b"]] == 5.0)


def test_tables_assembled_in_their_group_blocks_are_taken_without_a_copy() -> None:
    ws, _, _ = _setup("adam", 3)
    specs = {t: ws.tables[t].spec for t in DIMS}
    blocks = allocate_grouped({t: (specs[t], len(ws.tables[t].emb)) for t in DIMS}, "cpu")
    tables = {}
    for t, (emb, state) in blocks.items():
        emb.copy_(ws.tables[t].emb)
        state.copy_(ws.tables[t].state)
        tables[t] = WorkingSetTable(specs[t], ws.tables[t].keys, emb, state, ws.tables[t].meta)
    placed = WorkingSet(tables)
    for g in placed.groups():
        for t, lo in g.base.items():  # the group's storage is the blocks' own: no copy was made
            assert placed.tables[t].emb.data_ptr() == blocks[t][0].data_ptr() == g.emb[lo].data_ptr()
            assert placed.tables[t].state.data_ptr() == blocks[t][1].data_ptr()
    want = {(tuple(sorted(g.base)), g.emb.shape) for g in ws.groups()}
    assert {(tuple(sorted(g.base)), g.emb.shape) for g in placed.groups()} == want
    for t in DIMS:
        assert torch.equal(placed.tables[t].emb, ws.tables[t].emb)
    # blocks out of order are not one group's storage: the group copies them as before
    apart = WorkingSet(
        {t: WorkingSetTable(specs[t], ws.tables[t].keys, *blocks[t], ws.tables[t].meta) for t in ("b", "a")}
    )
    g = next(g for g in apart.groups() if "a" in g.base)
    assert g.emb.data_ptr() not in (blocks["a"][0].data_ptr(), blocks["b"][0].data_ptr())
    assert torch.equal(apart.tables["b"].emb, ws.tables["b"].emb) and torch.equal(
        apart.tables["a"].emb, ws.tables["a"].emb
    )


def _planned_pass(seed: int) -> PassPlan:
    """A pass of 3 full batches and a short one over SLOTS (a shared table, a group of two tables, mean slots, empty
    bags, the null row of admission in table a), planned for training."""
    from hier_ps.data import ExampleChunk
    from hier_ps.plan import plan_pass

    rng = np.random.default_rng(seed)
    n = 3 * B + 5  # a short last batch
    sparse = {}
    for s, t in SLOTS.items():
        off = np.r_[0, np.cumsum(rng.integers(0, 4, n))].astype(np.int64)
        sparse[s] = (off, (rng.integers(0, ROWS[t], off[-1]) * 3 + 1).astype(np.uint64))
    chunk = ExampleChunk(np.zeros((n, 1), np.float32), np.zeros((n, 0), np.float32), sparse)

    def admit(table: str, keys: np.ndarray, batches: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return (keys % 2 == 1) | (batches > 0)  # table a: even keys get a row only from batch 1 on

    return plan_pass(chunk, SLOTS, B, 0, admit=admit, admission_tables={"a"})


def _pass_ws(plan: PassPlan, opt: str) -> WorkingSet:
    """A fresh working set of the pass's keys (table a with its null row)."""
    cfg = SparseOptimizerConfig(name=opt, lr=0.1)
    specs = {t: TableSpec(t, DIMS[t], InitConfig(name="normal", std=0.5), cfg) for t in DIMS}
    tables = {
        t: WorkingSetTable.from_rows(
            specs[t], k, specs[t].layout.new_rows(0, t, k, specs[t].init), "cpu", null_row=(t == "a")
        )
        for t, k in plan.keys.items()
    }
    return WorkingSet(tables)


def test_segments_from_the_plans_sort_equal_the_sorted_inverses() -> None:
    """A planned batch carries its occurrences' order (BatchPlan.order): the segments BatchLookup takes from it
    equal those it sorts out of the inverses itself, with shared tables, a group of tables, the null row of
    admission and empty bags; and the step is bit-identical either way."""
    import dataclasses

    plan = _planned_pass(5)
    assert plan.rejected["a"][1] > 0  # some occurrences point at the null row
    results = []
    for presorted in (True, False):
        ws = _pass_ws(plan, "adagrad")
        for i in range(plan.num_batches):
            b = plan.batch(i)
            assert set(b.order) == set(b.tables)
            lk = BatchLookup(ws, b if presorted else dataclasses.replace(b, order={}), SLOTS, POOLING)
            pooled = lk.forward(requires_grad=True)
            g = np.random.default_rng(i)  # the same upstream gradients in both runs
            up = {s: torch.from_numpy(g.normal(size=(len(b), DIMS[t])).astype(np.float32)) for s, t in SLOTS.items()}
            sum((pooled[s] * up[s]).sum() for s in SLOTS).backward()
            if presorted:
                ref = BatchLookup(ws, dataclasses.replace(b, order={}), SLOTS, POOLING)
                for p, q in zip(lk.parts, ref.parts, strict=True):
                    assert p.presorted is not None and q.presorted is None
                    for x, y in zip(lk._segments(p), ref._segments(q), strict=True):
                        assert torch.equal(x, y)
            lk.backward_update()
        results.append({t: (ws.tables[t].emb.clone(), ws.tables[t].state.clone()) for t in DIMS})
    for t in DIMS:
        assert torch.equal(results[0][t][0], results[1][t][0]) and torch.equal(results[0][t][1], results[1][t][1])


def test_slot_gradients_in_one_block_are_read_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose backward leaves a group's slot gradients as consecutive blocks of one tensor (the DLRM's C
    interaction does): the update reads that tensor without a copy, with the same result as the concatenation it
    takes otherwise (a slot without a gradient reads as zeros)."""
    from hier_ps.hbm import batched

    taken: list[bool] = []
    as_one = batched._as_one
    monkeypatch.setattr(batched, "_as_one", lambda views: taken.append(as_one(views) is not None) or as_one(views))
    blocks = torch.randn(4, B, 4, generator=torch.Generator().manual_seed(9))
    given = blocks.clone()

    class Blocks(torch.autograd.Function):
        """A scalar of the four slots whose backward hands out the blocks of one tensor as their gradients."""

        @staticmethod
        def forward(ctx: object, *vs: torch.Tensor) -> torch.Tensor:
            return torch.stack([v.sum() for v in vs]).sum()

        @staticmethod
        def backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(blocks[i] for i in range(4))

    after = []
    for copied in (False, True):
        ws, b, _ = _setup("adagrad", 3)
        lk = BatchLookup(ws, b, SLOTS, POOLING)
        pooled = lk.forward(requires_grad=True)
        group = next(p for p in lk.parts if len(p.slots) == 4)  # tables a and b
        ins = [pooled[s] * 1.0 if copied else pooled[s] for s in group.slots]  # * 1.0: gradients of their own
        Blocks.apply(*ins).backward()  # s4 (table c) gets no gradient
        lk.backward_update()
        after.append({t: (ws.tables[t].emb.clone(), ws.tables[t].state.clone()) for t in DIMS})
    assert taken == [True, False, False, False]  # group a+b, then c (no gradient); the copied run: neither
    assert torch.equal(blocks, given)  # the model's tensor is read, not divided in place
    for t in DIMS:
        assert torch.equal(after[0][t][0], after[1][t][0]) and torch.equal(after[0][t][1], after[1][t][1])


def test_pass_lookups_assembled_in_c_equal_the_numpy_lookups() -> None:
    """PassLookups (cpu_kernels/batch.c, from the pass plan's arrays) builds every batch's lookup array for array as
    BatchLookup does from PassPlan.batch(i) with numpy: rows, bag offsets and sizes, mean divisors, unique rows and
    the presorted segments, with a shared table, a group of two tables, mean slots, empty bags, the null row and a
    short last batch."""
    from hier_ps.hbm.batched import PassLookups

    plan = _planned_pass(11)
    ws = _pass_ws(plan, "rowwise_adagrad")
    pre = PassLookups.build(ws, plan, SLOTS, POOLING)
    assert pre is not None
    for i in range(plan.num_batches):
        b = plan.batch(i)
        got, want = pre.lookup(i, len(b)), BatchLookup(ws, b, SLOTS, POOLING)
        assert got.batch == want.batch == len(b)
        assert len(got.parts) == len(want.parts) == 2
        for p, q in zip(got.parts, want.parts, strict=True):
            assert p.group is q.group and p.slots == q.slots
            for x, y in [(p.rows, q.rows), (p.offsets, q.offsets), (p.urows, q.urows)]:
                assert x.dtype == y.dtype and torch.equal(x, y)
            assert (p.div is None) == (q.div is None)
            if p.div is not None:
                assert torch.equal(p.div, q.div)
            assert np.array_equal(p.lengths, q.lengths)
            assert p.presorted is not None and q.presorted is not None
            for x, y in zip(p.presorted, q.presorted, strict=True):
                assert x.dtype == y.dtype and np.array_equal(x, y)
            assert [(lo, hi) for lo, hi, _ in p.means] == [(lo, hi) for lo, hi, _ in q.means]
            assert p.inv is None and q.inv is None


def test_pass_lookups_need_a_plan_for_training() -> None:
    """A pass planned for lookups only (eval) has no per-batch arrays: PassLookups declines it, and the trainer
    keeps BatchLookup's path."""
    from hier_ps.hbm.batched import PassLookups
    from hier_ps.plan import plan_pass

    plan = _planned_pass(12)
    ws = _pass_ws(plan, "rowwise_adagrad")
    eval_plan = plan_pass(plan.chunk, SLOTS, B, 0, for_training=False)
    assert PassLookups.build(ws, eval_plan, SLOTS, POOLING) is None
    assert PassLookups.build(ws, plan, SLOTS, POOLING) is not None
