"""Sharded pass planning: each rank plans only its share of the pass; keys go to their owners by all-to-all.

DESIGN.md contract 4: global batch t is examples ``[t·N·B, (t+1)·N·B)`` of the pass and rank r trains the r-th
contiguous slice of it. Each rank takes its slices of every global batch (:func:`rank_examples`) and plans them
alone; what has to be global is assembled ahead of the pass from integers and keys, never during the batches:

1. per table, the rank's unique (key, batch) pairs with their occurrence counts go to the keys' owners by one
   all-to-all (``key_all_to_all``). For tables with admission every rank gets every rank's pairs instead
   (``admission_all_gather``): a count-min sketch mixes the counts of all keys in its counters, so only the whole
   pass's pairs give the decisions of one process; every rank then decides, and updates its sketch, identically.
2. each owner now knows the keys it owns in this pass (its part of the working set) and their global occurrence
   counts (row metadata ``count``), and for every rank and batch which of its rows that rank's slice reads.
3. ``replicated``: the owners' sorted key lists and per-batch rows are gathered (``working_set_all_gather``): every
   rank holds the whole working set, in the same sorted order as one process, and every global batch's unique rows,
   so the row gradients of a batch are summed by one all-reduce of aligned buffers.
   ``row_wise``: nothing more: a rank's slice reads a small table of rows per batch (its ``need``, in key order),
   and each owner knows which of its rows to send to each rank (``serve``), in that rank's order.

Example (shapes)::

    idx, starts, glen = rank_examples(n=10, global_batch=4, world=2, rank=1)
    idx.tolist(), starts.tolist(), glen.tolist()  # ([2, 3, 6, 7, 9], [0, 2, 4, 5], [4, 4, 2])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hier_ps.data import ExampleChunk
from hier_ps.plan import Admit, BatchPlan
from hier_ps.ring.group import Ring, owner

__all__ = ["RankPlan", "RowExchange", "plan_rank_pass", "rank_examples"]


def rank_examples(n: int, global_batch: int, world: int, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's examples of a pass of `n` examples (DESIGN.md contract 4).

    Returns:
        (positions int64[m] in the pass of the rank's examples, batch after batch; int64[nb+1] start of each batch
        among them; int64[nb] length of each global batch).
    """
    nb = -(-n // global_batch)
    g = np.minimum(np.arange(nb + 1, dtype=np.int64) * global_batch, n)
    glen = np.diff(g)
    lo, hi = g[:-1] + rank * glen // world, g[:-1] + (rank + 1) * glen // world
    starts = np.zeros(nb + 1, np.int64)
    np.cumsum(hi - lo, out=starts[1:])
    idx = np.repeat(lo - starts[:-1], hi - lo) + np.arange(starts[-1], dtype=np.int64)
    return idx, starts, glen


@dataclass
class RowExchange:
    """One global batch's row exchange, for one table (``row_wise``).

    Attributes:
        need_owner: int64[u]: owning rank of each row this rank's slice reads, in key order (-1: the null row of a
            table with admission, read as zeros, last).
        serve: per rank s: int64[k_s] positions among this rank's owned rows that rank s's slice reads, in s's order.
    """

    need_owner: np.ndarray
    serve: list[np.ndarray]


@dataclass
class RankPlan:
    """One rank's plan of one pass (duck-types :class:`hier_ps.plan.PassPlan` where the trainer needs it).

    Attributes:
        index: global pass index.
        chunk: this rank's examples (its slice of every global batch, batch after batch).
        num_examples: examples of the whole pass (all ranks).
        starts: int64[nb+1] start of each batch in ``chunk``.
        global_lens: int64[nb] examples of each global batch.
        keys: table -> uint64 sorted keys this rank holds: the whole working set (replicated) or its owned part
            (row_wise).
        counts: table -> int64 global occurrences of each of those keys in the pass (admitted ones only).
        local: slot -> int64[nnz] of this rank's occurrences: the row in ``keys`` (replicated, the null row
            ``len(keys)`` for occurrences not admitted) or the index in its batch's ``need`` (row_wise).
        slot_tables: slot -> table.
        urow_offsets, urows: table -> CSR over batches of the unique rows the global batch touches (replicated), or
            offsets of each batch's ``need`` (row_wise; ``urows`` empty).
        inv: slot -> int64[nnz] position of each occurrence's row among its batch's ``urows`` / ``need``.
        rejected: table -> (keys with no row in this pass, occurrences turned away), over the whole pass.
        need_owner: table -> int64[...] the batches' ``need_owner`` one after another (row_wise).
        serve: table -> per rank s: (int64[nb+1] offsets, int64[...] owned positions) (row_wise).
        working_set: table -> keys in the whole pass's working set (over all owners).
        share: what this rank planned: examples and key occurrences, by rank (for the record).
        comm_bytes: collective -> off-rank bytes this rank sent while planning the pass.
    """

    index: int
    chunk: ExampleChunk
    num_examples: int
    starts: np.ndarray
    global_lens: np.ndarray
    keys: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    local: dict[str, np.ndarray]
    slot_tables: dict[str, str]
    urow_offsets: dict[str, np.ndarray]
    urows: dict[str, np.ndarray]
    inv: dict[str, np.ndarray]
    rejected: dict[str, tuple[int, int]] = field(default_factory=dict)
    need_owner: dict[str, np.ndarray] = field(default_factory=dict)
    serve: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    working_set: dict[str, int] = field(default_factory=dict)
    share: dict[str, list[int]] = field(default_factory=dict)
    comm_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def num_batches(self) -> int:
        return len(self.global_lens)

    def working_set_sizes(self) -> dict[str, int]:
        return dict(self.working_set)

    def global_len(self, i: int) -> int:
        """Examples of global batch i (the loss is their mean)."""
        return int(self.global_lens[i])

    def batch(self, i: int) -> BatchPlan:
        """This rank's slice of global batch i; ``tables`` has the global batch's unique rows (replicated) or
        ``arange(len(need))`` (row_wise), and each occurrence's position among them."""
        start, stop = int(self.starts[i]), int(self.starts[i + 1])
        slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        invs: dict[str, list[np.ndarray]] = {}
        by_table: dict[str, list[str]] = {}
        for slot, table in self.slot_tables.items():
            offsets = self.chunk.sparse[slot][0]
            lo, hi = offsets[start], offsets[stop]
            slots[slot] = (offsets[start : stop + 1] - lo, self.local[slot][lo:hi])
            invs.setdefault(table, []).append(self.inv[slot][lo:hi])
            by_table.setdefault(table, []).append(slot)
        tables = {}
        for table, parts in invs.items():
            uo = self.urow_offsets[table]
            inv = parts[0] if len(parts) == 1 else np.concatenate(parts)
            urows = self.urows[table][uo[i] : uo[i + 1]] if self.urows else np.arange(uo[i + 1] - uo[i])
            tables[table] = (urows, inv)
        return BatchPlan(self.chunk.labels[start:stop], self.chunk.dense[start:stop], slots, tables, by_table)

    def exchange(self, i: int) -> dict[str, RowExchange]:
        """Global batch i's row exchange, per table (row_wise)."""
        out = {}
        for table, owners in self.need_owner.items():
            uo = self.urow_offsets[table]
            serve = [pos[off[i] : off[i + 1]] for off, pos in self.serve[table]]
            out[table] = RowExchange(owners[uo[i] : uo[i + 1]], serve)
        return out


def _merge_pairs(keys: np.ndarray, batches: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unique (batch, key) pairs of a list with repeats, their summed counts, and each entry's pair.

    Returns:
        (keys uint64[p], batches int64[p], counts int64[p], entry -> pair int64[n]); pairs sorted by batch, then key.
    """
    order = np.lexsort((keys, batches))
    k, b = keys[order], batches[order]
    first = np.r_[True, (k[1:] != k[:-1]) | (b[1:] != b[:-1])] if len(k) else np.zeros(0, bool)
    group = np.cumsum(first) - 1
    pair_of = np.empty(len(keys), np.int64)
    pair_of[order] = group
    summed = np.bincount(group, weights=counts[order], minlength=int(first.sum())).astype(np.int64)
    return k[first], b[first], summed, pair_of


def _counts_of(sorted_keys: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """int64[len(sorted_keys)]: the sum of `counts` of each key (every key in `keys` is one of `sorted_keys`)."""
    pos = np.searchsorted(sorted_keys, keys)
    return np.bincount(pos, weights=counts, minlength=len(sorted_keys)).astype(np.int64)


def plan_rank_pass(
    chunk: ExampleChunk,
    num_examples: int,
    starts: np.ndarray,
    global_lens: np.ndarray,
    slot_tables: dict[str, str],
    index: int,
    ring: Ring,
    *,
    row_wise: bool,
    admit: Admit | None = None,
    admission_tables: frozenset[str] | set[str] = frozenset(),
) -> RankPlan:
    """Plans this rank's share of one pass (collectives over ``ring.plan_group``; every rank calls it in turn).

    Args:
        chunk: this rank's examples (see :func:`rank_examples`), batch after batch.
        num_examples: examples of the whole pass.
        starts: int64[nb+1] start of each batch in `chunk`.
        global_lens: int64[nb] examples of each global batch.
        slot_tables: slot -> table, in slot order.
        index: global pass index.
        ring: the ranks.
        row_wise: plan for a row-wise sharded working set (else replicated).
        admit, admission_tables: as for :func:`hier_ps.plan.plan_pass`; `admit` sees the whole pass's (key, batch)
            pairs, in the same order on every rank.
    """
    world, rank = ring.world, ring.rank
    nb = len(global_lens)
    comm: dict[str, int] = {}
    by_table: dict[str, list[str]] = {}
    for slot, table in slot_tables.items():
        by_table.setdefault(table, []).append(slot)
    example_batch = np.repeat(np.arange(nb, dtype=np.int64), np.diff(starts))

    keys_out, counts_out, local, inv, urow_offsets, urows = {}, {}, {}, {}, {}, {}
    rejected, need_owner, serve, ws_size = {}, {}, {}, {}
    occurrences = 0
    for table, slots in by_table.items():
        parts = [chunk.sparse[s][1] for s in slots]
        sizes = [len(p) for p in parts]
        occurrences += sum(sizes)
        all_keys = (np.concatenate(parts) if len(parts) > 1 else parts[0]).astype(np.uint64, copy=False)
        occ_batch = np.concatenate([np.repeat(example_batch, np.diff(chunk.sparse[s][0])) for s in slots])
        uniq, loc = np.unique(all_keys, return_inverse=True)
        loc = loc.astype(np.int64, copy=False).reshape(-1)
        nu = max(len(uniq), 1)
        codes, occ_pair, pair_count = np.unique(occ_batch * nu + loc, return_inverse=True, return_counts=True)
        occ_pair = occ_pair.astype(np.int64, copy=False).reshape(-1)
        pkey, pbatch, pcount = uniq[codes % nu], codes // nu, pair_count.astype(np.int64)  # sorted (batch, key)
        pown = owner(pkey, world)
        triples = np.stack([pkey.view(np.int64), pbatch, pcount], axis=1)

        has_admission = admit is not None and table in admission_tables
        ok = np.ones(len(pkey), bool)
        null_batches = np.zeros(0, np.int64)
        if has_admission:
            got = [g.reshape(-1, 3) for g in ring.all_gather_array(triples, comm, "admission_all_gather")]
            gk = np.concatenate([g[:, 0] for g in got]).view(np.uint64)
            gb, gc = np.concatenate([g[:, 1] for g in got]), np.concatenate([g[:, 2] for g in got])
            mk, mb, mc, pair_of = _merge_pairs(gk, gb, gc)
            ok_pair = admit(table, mk, mb, mc)
            ok_all = ok_pair[pair_of]
            cut = np.cumsum([0, *(len(g) for g in got)])
            ok = ok_all[cut[rank] : cut[rank + 1]]
            all_keys_u = np.unique(mk)
            admitted = np.unique(mk[ok_pair])
            rejected[table] = (len(all_keys_u) - len(admitted), int(mc[~ok_pair].sum()))
            null_batches = np.unique(mb[~ok_pair])
            # What each owner would have received: the admitted pairs of every rank that it owns.
            received = []
            for s, g in enumerate(got):
                ks = g[:, 0].view(np.uint64)
                keep = ok_all[cut[s] : cut[s + 1]] & (owner(ks, world) == rank)
                received.append(g[keep])
        else:
            sent = [triples[pown == o] for o in range(world)]
            received = [r.reshape(-1, 3) for r in ring.exchange(sent, comm, "key_all_to_all")]
        rk = np.concatenate([r[:, 0] for r in received]).view(np.uint64)
        rc = np.concatenate([r[:, 2] for r in received])
        own_keys = np.unique(rk)
        own_counts = _counts_of(own_keys, rk, rc)
        extra = 1 if has_admission else 0  # the null row
        bounds = np.cumsum([0, *sizes])

        if row_wise:
            # This rank's need per batch: its admitted pairs in key order, then the null row if it has one there.
            adm_per_batch = np.bincount(pbatch[ok], minlength=nb).astype(np.int64)
            null_here = np.zeros(nb, np.int64)
            null_here[np.unique(pbatch[~ok])] = 1
            need_off = np.zeros(nb + 1, np.int64)
            np.cumsum(adm_per_batch + null_here, out=need_off[1:])
            adm_start = np.zeros(nb + 1, np.int64)
            np.cumsum(adm_per_batch, out=adm_start[1:])
            rel = np.cumsum(ok) - 1 - adm_start[pbatch]  # admitted pair's index within its batch's need
            owners = np.full(int(need_off[-1]), -1, np.int64)
            owners[need_off[pbatch[ok]] + rel[ok]] = pown[ok]
            pair_local = np.where(ok, rel, adm_per_batch[pbatch])
            occ_local = pair_local[occ_pair]
            need_owner[table], urow_offsets[table] = owners, need_off
            serve[table] = []
            for r in received:
                pos = np.searchsorted(own_keys, r[:, 0].view(np.uint64))
                serve[table].append((np.searchsorted(r[:, 1], np.arange(nb + 1)).astype(np.int64), pos))
            keys_out[table], counts_out[table] = own_keys, own_counts
            for j, s in enumerate(slots):
                local[s] = occ_local[bounds[j] : bounds[j + 1]]
                inv[s] = local[s]
            ws_size[table] = len(own_keys)  # summed over ranks below
            continue

        # Replicated: the whole working set (owners' sorted lists, merged) and every batch's unique rows.
        packed = np.concatenate([own_keys.view(np.int64), own_counts])
        got = ring.all_gather_array(packed, comm, "working_set_all_gather")
        gk = np.concatenate([g[: len(g) // 2] for g in got]).view(np.uint64)
        gc = np.concatenate([g[len(g) // 2 :] for g in got])
        order = np.argsort(gk)
        wkeys, wcounts = gk[order], gc[order]
        n_ws = max(len(wkeys) + extra, 1)
        null_row = len(wkeys)
        # The batches' unique rows this owner knows of (its keys, read by any rank), then everyone's.
        rb = np.concatenate([r[:, 1] for r in received])
        mine_codes = np.unique(rb * n_ws + np.searchsorted(wkeys, rk))
        got = ring.all_gather_array(mine_codes, comm, "working_set_all_gather")
        all_codes = np.unique(np.concatenate([*got, null_batches * n_ws + null_row]))
        uo = np.searchsorted(all_codes // n_ws, np.arange(nb + 1)).astype(np.int64)
        urow_offsets[table], urows[table] = uo, all_codes % n_ws
        pair_row = np.where(ok, np.searchsorted(wkeys, pkey), null_row)
        occ_row = pair_row[occ_pair]
        occ_inv = np.searchsorted(all_codes, occ_batch * n_ws + occ_row) - uo[occ_batch]
        keys_out[table], counts_out[table] = wkeys, wcounts
        for j, s in enumerate(slots):
            local[s] = occ_row[bounds[j] : bounds[j + 1]]
            inv[s] = occ_inv[bounds[j] : bounds[j + 1]]
        ws_size[table] = len(wkeys)

    names = list(ws_size)
    stats = np.array([len(chunk), occurrences, *(ws_size[n] for n in names)], np.int64)
    got = ring.all_gather_array(stats, comm, "plan_stats_all_gather")
    share = {"examples": [int(g[0]) for g in got], "key_occurrences": [int(g[1]) for g in got]}
    if row_wise:
        ws_size = {n: int(sum(g[2 + j] for g in got)) for j, n in enumerate(names)}
    return RankPlan(
        index,
        chunk,
        num_examples,
        starts,
        global_lens,
        keys_out,
        counts_out,
        local,
        dict(slot_tables),
        urow_offsets,
        urows if not row_wise else {},
        inv,
        rejected,
        need_owner,
        serve,
        ws_size,
        share,
        comm,
    )
