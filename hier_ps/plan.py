"""Pass planning: working sets and per-batch local row indices, computed once per pass.

For a pass (a chunk of consecutive examples) and each table, the plan holds the working set (sorted unique keys) and
their occurrence counts; for every slot, the local row index of each key occurrence (aligned with the chunk's CSR
keys); and for every batch and table the unique local rows the batch touches with, per occurrence, the position of its
row among them — so gradients of duplicate keys (across slots sharing a table too) are summed into one row gradient
without any key work during training.

Example:
    >>> import numpy as np
    >>> from hier_ps.data import ExampleChunk
    >>> c = ExampleChunk(labels=np.zeros((3, 1), np.float32), dense=np.zeros((3, 0), np.float32),
    ...                  sparse={"a": (np.array([0, 1, 3, 3]), np.array([9, 5, 9], np.uint64))})
    >>> p = plan_pass(c, {"a": "t"}, batch_size=2, index=0)
    >>> p.keys["t"].tolist(), p.local["a"].tolist()
    ([5, 9], [1, 0, 1])
    >>> b = p.batch(0); b.tables["t"][0].tolist(), b.tables["t"][1].tolist()
    ([0, 1], [1, 0, 1])
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hier_ps.data import ExampleChunk

__all__ = ["BatchPlan", "PassPlan", "plan_pass"]


@dataclass
class BatchPlan:
    """One batch of a pass, ready for the device.

    Attributes:
        labels: float32[b, T].
        dense: float32[b, D].
        slots: slot -> (offsets int64[b+1], local rows int64[nnz]) into the slot's table working set.
        tables: table -> (unique local rows int64[u], position int64[occ] of each occurrence's row among them, the
            occurrences of the table's slots concatenated in slot order).
    """

    labels: np.ndarray
    dense: np.ndarray
    slots: dict[str, tuple[np.ndarray, np.ndarray]]
    tables: dict[str, tuple[np.ndarray, np.ndarray]]
    table_slots: dict[str, list[str]] = field(default_factory=dict)  #: table -> its slots, in slot order
    #: table -> (slot int16[occ], example int32[occ], counts int64[u]): the table's occurrences sorted by their row
    #: among the unique rows, ties in occurrence order (stable), as the slot (index into ``table_slots[table]``) and
    #: example in the batch of each; ``counts`` the occurrences of each unique row. The segments a deterministic
    #: gradient sum needs, found by the pass's planning sort (empty: compute them from ``tables``' inverses).
    order: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, lo: int, hi: int) -> BatchPlan:
        """Examples [lo, hi) of this batch, for one rank of a data-parallel step: their occurrences keep pointing
        at the whole batch's unique rows (``tables`` keeps its urows), so the ranks' row gradients can be summed."""
        slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        bounds: dict[str, tuple[int, int]] = {}
        for slot, (off, idx) in self.slots.items():
            a, b = int(off[lo]), int(off[hi])
            slots[slot] = (off[lo : hi + 1] - a, idx[a:b])
            bounds[slot] = (a, b)
        tables = {}
        for table, (urows, inv) in self.tables.items():
            parts, start = [], 0
            for slot in self.table_slots[table]:
                n = int(self.slots[slot][0][-1])
                a, b = bounds[slot]
                parts.append(inv[start + a : start + b])
                start += n
            tables[table] = (urows, parts[0] if len(parts) == 1 else np.concatenate(parts))
        return BatchPlan(self.labels[lo:hi], self.dense[lo:hi], slots, tables, self.table_slots)


@dataclass
class PassPlan:
    """The plan of one pass.

    Attributes:
        index: global pass index (over all epochs).
        chunk: the pass's examples.
        batch_size: examples per batch (the last batch may be shorter).
        keys: table -> working set, uint64[n] sorted unique.
        counts: table -> int64[n] occurrences of each working-set key in the pass.
        local: slot -> int64[nnz] local row of each key occurrence (aligned with ``chunk.sparse[slot][1]``).
        slot_tables: slot -> table.
        urow_offsets: table -> int64[num_batches+1] CSR offsets of each batch's unique rows in ``urows``.
        urows: table -> int64[...] unique local rows touched by each batch, batch after batch.
        inv: slot -> int64[nnz] position of each occurrence's row among its batch's unique rows (empty when planned
            with ``for_training=False``, as are urows and urow_offsets).
        occ_offsets: table -> int64[num_batches+1] CSR offsets of each batch's occurrences in the ``sorted_*``
            arrays (training plans).
        sorted_slot, sorted_example: table -> int16[occ] / int32[occ] the slot (index among the table's slots) and
            pass example of each occurrence, occurrences sorted by (batch, row, slot, example) (see
            ``BatchPlan.order``).
        urow_counts: table -> int64[...] occurrences of each of ``urows`` in its batch.
        rejected: table -> (keys with no row in this pass, occurrences turned away) for tables with admission. Such
            a table's working set has one extra local row after its keys, ``len(keys[table])``: the null row, which
            reads as zeros and takes no update; every occurrence before its key's admission points at it.
    """

    index: int
    chunk: ExampleChunk
    batch_size: int
    keys: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    local: dict[str, np.ndarray]
    slot_tables: dict[str, str]
    urow_offsets: dict[str, np.ndarray]
    urows: dict[str, np.ndarray]
    inv: dict[str, np.ndarray]
    rejected: dict[str, tuple[int, int]] = field(default_factory=dict)
    occ_offsets: dict[str, np.ndarray] = field(default_factory=dict)
    sorted_slot: dict[str, np.ndarray] = field(default_factory=dict)
    sorted_example: dict[str, np.ndarray] = field(default_factory=dict)
    urow_counts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return len(self.chunk)

    @property
    def num_batches(self) -> int:
        return -(-len(self.chunk) // self.batch_size)

    def working_set_sizes(self) -> dict[str, int]:
        """table -> keys in the pass's working set."""
        return {n: len(k) for n, k in self.keys.items()}

    def batch(self, i: int) -> BatchPlan:
        """The i-th batch's arrays (views, no copies of key data)."""
        start, stop = i * self.batch_size, min((i + 1) * self.batch_size, len(self.chunk))
        slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        invs: dict[str, list[np.ndarray]] = {}
        for slot, table in self.slot_tables.items():
            offsets = self.chunk.sparse[slot][0]
            lo, hi = offsets[start], offsets[stop]
            slots[slot] = (offsets[start : stop + 1] - lo, self.local[slot][lo:hi])
            if slot in self.inv:
                invs.setdefault(table, []).append(self.inv[slot][lo:hi])
        tables, order = {}, {}
        for table, parts in invs.items():
            uo = self.urow_offsets[table]
            inv = parts[0] if len(parts) == 1 else np.concatenate(parts)
            tables[table] = (self.urows[table][uo[i] : uo[i + 1]], inv)
            if table in self.occ_offsets:
                a, b = self.occ_offsets[table][i : i + 2]
                order[table] = (
                    self.sorted_slot[table][a:b],
                    self.sorted_example[table][a:b] - start,
                    self.urow_counts[table][uo[i] : uo[i + 1]],
                )
        by_table: dict[str, list[str]] = {}
        for slot, table in self.slot_tables.items():
            by_table.setdefault(table, []).append(slot)
        return BatchPlan(self.chunk.labels[start:stop], self.chunk.dense[start:stop], slots, tables, by_table, order)


Admit = Callable[[str, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
#: ``unique(keys uint64[n]) -> (sorted unique keys uint64[u], inverse int64[n])``, e.g. on the GPU
Unique = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _admit(
    table: str, uniq: np.ndarray, loc: np.ndarray, occ_batch: np.ndarray, admit: Admit
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Applies admission to one table's occurrences.

    Returns:
        (admitted keys, local row of every occurrence with the null row ``len(admitted keys)`` for occurrences
        before their key's admission, admitted occurrences per admitted key, (keys without a row in this pass,
        occurrences pointed at the null row)).
    """
    n0 = max(len(uniq), 1)
    pairs, pos, pair_count = np.unique(occ_batch * n0 + loc, return_inverse=True, return_counts=True)
    pair_row = pairs % n0
    ok_pair = admit(table, uniq[pair_row], pairs // n0, pair_count)
    occ_ok = ok_pair[pos.reshape(-1)]
    ok_row = np.zeros(len(uniq), bool)
    ok_row[pair_row[ok_pair]] = True
    n_ok = int(ok_row.sum())
    remap = np.cumsum(ok_row, dtype=np.int64) - 1
    new_loc = np.where(occ_ok, remap[loc], n_ok)
    cnt = np.bincount(new_loc[occ_ok], minlength=n_ok).astype(np.int64)
    return uniq[ok_row], new_loc, cnt, (len(uniq) - n_ok, int((~occ_ok).sum()))


def _unique_inverse_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True, return_counts=True)`` for a 1-D array: one argsort, the inverse by
    one scatter (1.0-1.25x faster than np.unique on 100k uint64 keys, the more duplicates the more)."""
    if not len(keys):
        return keys.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(keys)
    sk = keys[order]
    first = np.empty(len(sk), bool)
    first[0] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.r_[starts, len(sk)]).astype(np.int64)
    inverse = np.empty(len(keys), np.int64)
    inverse[order] = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    return sk[starts], inverse, counts


_C_PLAN: Any = False  # not decided yet; then the C planner, or None for numpy


def _c_planner() -> Any:
    """:mod:`hier_ps.hbm.cpu_kernels` (its ``plan_batches`` and ``unique_inverse_counts``) when the CPU kernels run
    (see :func:`hier_ps.hbm.cpu_kernels.optional`), else None: the numpy paths, which plan the same."""
    global _C_PLAN
    if _C_PLAN is False:
        from hier_ps.hbm import cpu_kernels  # imports torch: only when planning first runs

        _C_PLAN = cpu_kernels if cpu_kernels.optional() is not None else None
    return _C_PLAN


def _example_of(offsets: np.ndarray) -> np.ndarray:
    """int64[nnz] the example of each occurrence of a slot with CSR ``offsets`` (an arange for single-hot slots)."""
    n = len(offsets) - 1
    if offsets[-1] == n and np.array_equal(offsets, np.arange(n + 1)):  # one occurrence per example: no repeat
        return np.arange(n, dtype=np.int64)
    return np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))


def _stable_argsort(code: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """(``np.argsort(code, kind="stable")``, ``code`` in that order) for codes int64 in [0, bound).

    When ``bound`` times the next power of two >= ``len(code)`` fits in int64, each code is tagged with its
    position in its low bits and the tags are sorted by value: the tags are distinct, so any sort gives the stable
    order, and numpy's value sort of int64 is several times faster than its stable argsort (which it falls back to
    otherwise).
    """
    n = len(code)
    shift = max(n - 1, 1).bit_length()  # positions take the low `shift` bits: shifts and masks, not // and %
    if n and bound << shift < 2**63:
        tagged = code << shift
        tagged |= np.arange(n, dtype=np.int64)
        tagged.sort()
        perm = tagged & ((1 << shift) - 1)
        tagged >>= shift
        return perm, tagged
    perm = np.argsort(code, kind="stable")
    return perm, code[perm]


def _plan_table(
    chunk: ExampleChunk,
    table: str,
    slots: list[str],
    batch_size: int,
    n_batches: int,
    for_training: bool,
    admit: Admit | None,
    admitted: bool,
    unique: Unique | None,
) -> dict[str, Any]:
    """One table's part of :func:`plan_pass` (the PassPlan fields of that table, by field name)."""
    parts = [chunk.sparse[s][1] for s in slots]
    sizes = [len(p) for p in parts]
    all_keys = np.concatenate(parts) if len(parts) > 1 else parts[0]
    fast = _c_planner()
    if unique is None:
        # C hashes where at most half of the occurrences are distinct keys (2-4x faster up to a quarter; on a Zen 4
        # 2-3x up to a half, benchmarks/RESULTS.md session 10), else a sort
        res = fast.unique_inverse_counts(all_keys, len(all_keys) // 2) if fast is not None else None
        uniq, loc, cnt = res if res is not None else _unique_inverse_counts(all_keys)
    else:
        uniq, loc = unique(all_keys)
        cnt = np.bincount(loc, minlength=len(uniq))
    loc = loc.astype(np.int64, copy=False).reshape(-1)
    n_rows = len(uniq)
    out: dict[str, Any] = {}
    # Each occurrence's example and batch, for numpy's per-batch plan and for admission; the C planner reads the
    # slots' offsets instead.
    occ_example = occ_batch = None
    if for_training and (fast is None or (admit is not None and admitted)):
        example_of = [_example_of(chunk.sparse[s][0]) for s in slots]
        occ_example = np.concatenate(example_of) if len(example_of) > 1 else example_of[0]
        occ_batch = occ_example // batch_size
        if admit is not None and admitted:
            uniq, loc, cnt, out["rejected"] = _admit(table, uniq, loc, occ_batch, admit)
            n_rows = len(uniq) + 1  # the null row
    out["keys"], out["counts"] = uniq.astype(np.uint64, copy=False), cnt.astype(np.int64)
    bounds = np.cumsum([0, *sizes])
    out["local"] = {s: loc[bounds[j] : bounds[j + 1]] for j, s in enumerate(slots)}
    if not for_training:
        return out

    n_ws = max(n_rows, 1)
    if fast is not None:  # the same arrays from one C pass over the chunk's own offsets (cpu_kernels/plan.c)
        res = fast.plan_batches(loc, [chunk.sparse[s][0] for s in slots], batch_size, n_ws)
        rel = res.pop("rel")
        out.update(res)
    else:
        assert occ_example is not None and occ_batch is not None
        # Unique (batch, row) pairs of the occurrences, sorted by batch, then by row: one stable sort, which also
        # orders each batch's occurrences by row (ties in occurrence order) for the gradient sum.
        code = occ_batch * n_ws + loc
        perm, sc = _stable_argsort(code, n_batches * n_ws)
        first = np.ones(len(sc), bool)
        np.not_equal(sc[1:], sc[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        pairs = sc[starts]
        counts_u = np.diff(starts, append=len(sc))
        batches = np.arange(n_batches + 1, dtype=np.int64)
        offsets_u = np.searchsorted(pairs // n_ws, batches).astype(np.int64)
        out["urow_offsets"], out["urows"], out["urow_counts"] = offsets_u, pairs % n_ws, counts_u
        sorted_batch = occ_batch[perm]
        out["occ_offsets"] = np.searchsorted(sorted_batch, batches).astype(np.int64)
        # Small dtypes: these two arrays live as long as the plan (two passes in flight), 6 bytes per occurrence.
        if len(slots) == 1:
            out["sorted_slot"] = np.zeros(len(perm), np.int16)
        else:
            out["sorted_slot"] = (np.searchsorted(bounds, perm, side="right") - 1).astype(np.int16)
        out["sorted_example"] = occ_example[perm].astype(np.int32)
        # Each occurrence's position among its batch's unique rows, found in sorted order (the pairs up to it, less
        # one, less the pairs of the batches before), then put back in occurrence order with one scatter.
        rel_sorted = np.cumsum(first) - 1
        rel_sorted -= offsets_u[sorted_batch]
        rel = np.empty(len(code), np.int64)
        rel[perm] = rel_sorted
    out["inv"] = {s: rel[bounds[j] : bounds[j + 1]] for j, s in enumerate(slots)}
    return out


def plan_pass(
    chunk: ExampleChunk,
    slot_tables: dict[str, str],
    batch_size: int,
    index: int,
    *,
    for_training: bool = True,
    admit: Admit | None = None,
    admission_tables: frozenset[str] | set[str] = frozenset(),
    unique: Unique | None = None,
    pool: Executor | None = None,
) -> PassPlan:
    """Plans one pass.

    Args:
        chunk: the pass's examples.
        slot_tables: slot -> table, in slot order (the order occurrences are concatenated in).
        batch_size: examples per batch.
        index: global pass index.
        for_training: also compute the per-batch unique rows that gradients are reduced into (eval needs none).
        admit: ``admit(table, keys uint64[p], batches int64[p], counts int64[p]) -> bool[p]`` for the tables in
            `admission_tables` (training only): per (key, batch) pair, whether the key has a row in that batch (see
            :class:`hier_ps.admission.Admission`); other occurrences point at the table's null row (see
            PassPlan.rejected), and ``counts`` counts only admitted occurrences.
        admission_tables: tables that `admit` decides for.
        unique: finds each table's working set and the inverse of its occurrences (default: ``np.unique``'s arrays,
            by a hash table in C where at most half of the occurrences are distinct keys, else by an argsort;
            the trainer passes the GPU's key dedup when training on CUDA).
        pool: plans tables side by side on these threads (numpy's sorts release the GIL); the plan is the same.

    Returns:
        The PassPlan. All work is vectorized or in C: per table, a hash or a sort for the working set and one
        (stable) sort for the per-batch unique rows and the order of their occurrences.
    """
    n_batches = -(-len(chunk) // batch_size)
    if for_training and len(chunk) >= 2**31:
        raise ValueError(f"a pass of {len(chunk)} examples: passes are planned with int32 example indices (< 2**31)")
    by_table: dict[str, list[str]] = {}
    for slot, table in slot_tables.items():
        by_table.setdefault(table, []).append(slot)

    if any(len(slots) >= 2**15 for slots in by_table.values()):
        raise ValueError("a table with 32768 or more slots: plans index a table's slots with int16")
    keys, counts, local, urow_offsets, urows, inv = {}, {}, {}, {}, {}, {}
    occ_offsets, sorted_slot, sorted_example, urow_counts = {}, {}, {}, {}
    rejected: dict[str, tuple[int, int]] = {}

    def one(table: str) -> dict[str, Any]:
        return _plan_table(
            chunk,
            table,
            by_table[table],
            batch_size,
            n_batches,
            for_training,
            admit,
            table in admission_tables,
            unique,
        )

    # Tables plan independently, numpy sorting without the GIL: a pool overlaps them. Admission updates its sketch
    # and the device dedup launches kernels: those tables keep the caller's thread, in table order.
    alone = [t for t in by_table if unique is not None or (admit is not None and t in admission_tables)]
    spread = [t for t in by_table if t not in alone]
    results: dict[str, dict[str, Any]] = {t: one(t) for t in alone}
    if pool is not None and len(spread) > 1:
        results.update(zip(spread, pool.map(one, spread), strict=True))
    else:
        results.update((t, one(t)) for t in spread)
    for table in by_table:  # table order, whatever order they were planned in
        r = results[table]
        keys[table], counts[table] = r["keys"], r["counts"]
        local.update(r["local"])
        if "rejected" in r:
            rejected[table] = r["rejected"]
        if for_training:
            inv.update(r["inv"])
            urow_offsets[table], urows[table], urow_counts[table] = r["urow_offsets"], r["urows"], r["urow_counts"]
            occ_offsets[table], sorted_slot[table], sorted_example[table] = (
                r["occ_offsets"],
                r["sorted_slot"],
                r["sorted_example"],
            )
    return PassPlan(
        index,
        chunk,
        batch_size,
        keys,
        counts,
        local,
        dict(slot_tables),
        urow_offsets,
        urows,
        inv,
        rejected,
        occ_offsets,
        sorted_slot,
        sorted_example,
        urow_counts,
    )
