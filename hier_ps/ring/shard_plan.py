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
    names = list(by_table)
    adm_names = [t for t in names if admit is not None and t in admission_tables]
    plain_names = [t for t in names if t not in adm_names]

    # This rank's unique (key, batch) pairs per table, with counts; sorted by batch, then key.
    tabs: dict[str, _Table] = {}
    occurrences = 0
    for table, slots in by_table.items():
        parts = [chunk.sparse[s][1] for s in slots]
        occurrences += sum(len(x) for x in parts)
        all_keys = (np.concatenate(parts) if len(parts) > 1 else parts[0]).astype(np.uint64, copy=False)
        occ_batch = np.concatenate([np.repeat(example_batch, np.diff(chunk.sparse[s][0])) for s in slots])
        uniq, loc = np.unique(all_keys, return_inverse=True)
        nu = max(len(uniq), 1)
        codes, occ_pair, pair_count = np.unique(
            occ_batch * nu + loc.astype(np.int64, copy=False).reshape(-1), return_inverse=True, return_counts=True
        )
        pkey, pbatch = uniq[codes % nu], codes // nu
        triples = np.stack([pkey.view(np.int64), pbatch, pair_count.astype(np.int64)], axis=1)
        tabs[table] = _Table(
            slots, np.cumsum([0, *(len(x) for x in parts)]), occ_batch, occ_pair.astype(np.int64).reshape(-1),
            pkey, pbatch, owner(pkey, world), triples, np.ones(len(pkey), bool),
        )  # fmt: skip

    # 1. Pairs to the keys' owners, all tables in one all-to-all; tables with admission: every rank's pairs to all.
    if plain_names:
        by_owner = [_split_by_owner(tabs[t].triples, tabs[t].pown, world) for t in plain_names]
        sent = [[parts[o] for parts in by_owner] for o in range(world)]
        got = _exchange_tables(ring, sent, comm, "key_all_to_all")
        for j, t in enumerate(plain_names):
            tabs[t].received = [g[j].reshape(-1, 3) for g in got]
    rejected: dict[str, tuple[int, int]] = {}
    if adm_names:
        got = _exchange_tables(ring, [[tabs[t].triples for t in adm_names]] * world, comm, "admission_all_gather")
        for j, t in enumerate(adm_names):
            tab, every = tabs[t], [g[j].reshape(-1, 3) for g in got]
            gk = np.concatenate([g[:, 0] for g in every]).view(np.uint64)
            gb, gc = np.concatenate([g[:, 1] for g in every]), np.concatenate([g[:, 2] for g in every])
            mk, mb, mc, pair_of = _merge_pairs(gk, gb, gc)
            assert admit is not None
            ok_pair = admit(t, mk, mb, mc)
            ok_all = ok_pair[pair_of]
            cut = np.cumsum([0, *(len(g) for g in every)])
            tab.ok = ok_all[cut[rank] : cut[rank + 1]]
            rejected[t] = (len(np.unique(mk)) - len(np.unique(mk[ok_pair])), int(mc[~ok_pair].sum()))
            tab.null_batches = np.unique(mb[~ok_pair])
            tab.has_null = True
            # What this rank would have received as an owner: every rank's admitted pairs of the keys it owns.
            tab.received = []
            for s, g in enumerate(every):
                keep = ok_all[cut[s] : cut[s + 1]] & (owner(g[:, 0].view(np.uint64), world) == rank)
                tab.received.append(g[keep])
    for tab in tabs.values():
        rk = np.concatenate([r[:, 0] for r in tab.received]).view(np.uint64)
        tab.own_keys = np.unique(rk)
        tab.own_counts = _counts_of(tab.own_keys, rk, np.concatenate([r[:, 2] for r in tab.received]))

    keys_out: dict[str, np.ndarray] = {}
    counts_out: dict[str, np.ndarray] = {}
    local: dict[str, np.ndarray] = {}
    inv: dict[str, np.ndarray] = {}
    urow_offsets: dict[str, np.ndarray] = {}
    urows: dict[str, np.ndarray] = {}
    need_owner: dict[str, np.ndarray] = {}
    serve: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    ws_size: dict[str, int] = {}
    if row_wise:
        for t, tab in tabs.items():
            _plan_row_wise(tab, nb, t, local, inv, urow_offsets, need_owner, serve)
            keys_out[t], counts_out[t], ws_size[t] = tab.own_keys, tab.own_counts, len(tab.own_keys)
    else:
        # 2. The whole working set: every owner's sorted keys and counts, all tables in one all-gather.
        packed = [np.concatenate([tabs[t].own_keys.view(np.int64), tabs[t].own_counts]) for t in names]
        got = _exchange_tables(ring, [packed] * world, comm, "working_set_all_gather")
        codes_of_mine = []
        for j, t in enumerate(names):
            tab = tabs[t]
            gk = np.concatenate([g[j][: len(g[j]) // 2] for g in got]).view(np.uint64)
            gc = np.concatenate([g[j][len(g[j]) // 2 :] for g in got])
            order = np.argsort(gk)
            keys_out[t], counts_out[t], ws_size[t] = gk[order], gc[order], len(gk)
            tab.n_ws = max(len(gk) + int(tab.has_null), 1)
            rb = np.concatenate([r[:, 1] for r in tab.received])
            rk = np.concatenate([r[:, 0] for r in tab.received]).view(np.uint64)
            codes_of_mine.append(np.unique(rb * tab.n_ws + np.searchsorted(keys_out[t], rk)))
        # 3. Every global batch's unique rows: each owner's (batch, row) codes, all tables in one all-gather.
        got = _exchange_tables(ring, [codes_of_mine] * world, comm, "working_set_all_gather")
        for j, t in enumerate(names):
            tab, null_row = tabs[t], len(keys_out[t])
            all_codes = np.unique(np.concatenate([*(g[j] for g in got), tab.null_batches * tab.n_ws + null_row]))
            uo = np.searchsorted(all_codes // tab.n_ws, np.arange(nb + 1)).astype(np.int64)
            urow_offsets[t], urows[t] = uo, all_codes % tab.n_ws
            pair_row = np.where(tab.ok, np.searchsorted(keys_out[t], tab.pkey), null_row)
            pair_inv = np.searchsorted(all_codes, tab.pbatch * tab.n_ws + pair_row) - uo[tab.pbatch]
            occ_row, occ_inv = pair_row[tab.occ_pair], pair_inv[tab.occ_pair]  # pairs are fewer than occurrences
            for k, slot in enumerate(tab.slots):
                local[slot] = occ_row[tab.bounds[k] : tab.bounds[k + 1]]
                inv[slot] = occ_inv[tab.bounds[k] : tab.bounds[k + 1]]

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
        urows,
        inv,
        rejected,
        need_owner,
        serve,
        ws_size,
        share,
        comm,
    )


@dataclass
class _Table:
    """One table's planning state on this rank."""

    slots: list[str]
    bounds: np.ndarray  # int64[len(slots)+1]: each slot's occurrences in the table's concatenation
    occ_batch: np.ndarray  # int64[occ]: batch of each occurrence
    occ_pair: np.ndarray  # int64[occ]: its (key, batch) pair
    pkey: np.ndarray  # uint64[p]: the pairs' keys ...
    pbatch: np.ndarray  # int64[p]: ... batches
    pown: np.ndarray  # int64[p]: ... keys' owners
    triples: np.ndarray  # int64[p, 3]: (key bits, batch, count)
    ok: np.ndarray  # bool[p]: admitted
    received: list[np.ndarray] = field(default_factory=list)  # per rank: its admitted triples of keys owned here
    null_batches: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    has_null: bool = False
    own_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    own_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n_ws: int = 1


def _split_by_owner(rows: np.ndarray, owners: np.ndarray, world: int) -> list[np.ndarray]:
    """rows[i] grouped by owners[i] in [0, world), each group in its original order: one stable sort, not one mask
    per rank."""
    order = np.argsort(owners, kind="stable")
    cuts = np.searchsorted(owners[order], np.arange(world + 1))
    return [rows[order[cuts[o] : cuts[o + 1]]] for o in range(world)]


def _exchange_tables(
    ring: Ring, send: list[list[np.ndarray]], comm: dict[str, int], what: str
) -> list[list[np.ndarray]]:
    """One all-to-all for every table's arrays: ``send[dest][table]`` -> ``[source][table]`` (flat int64)."""
    flat = []
    for parts in send:  # per destination: the tables' sizes, then their arrays
        sizes = np.array([a.size for a in parts], np.int64)
        flat.append(np.concatenate([sizes, *(a.reshape(-1).view(np.int64) for a in parts)]))
    n_tables = len(send[0]) if send else 0
    out = []
    for g in ring.exchange(flat, comm, what):
        sizes = g[:n_tables]
        cut = n_tables + np.cumsum([0, *sizes])
        out.append([g[cut[j] : cut[j + 1]] for j in range(n_tables)])
    return out


def _plan_row_wise(
    tab: _Table,
    nb: int,
    table: str,
    local: dict[str, np.ndarray],
    inv: dict[str, np.ndarray],
    need_off_out: dict[str, np.ndarray],
    need_owner: dict[str, np.ndarray],
    serve: dict[str, list[tuple[np.ndarray, np.ndarray]]],
) -> None:
    """A row-wise table: this rank's need per batch (its admitted pairs in key order, then the null row if it has
    one there), each occurrence's index in it, and what this rank serves to each rank."""
    ok, pbatch = tab.ok, tab.pbatch
    adm_per_batch = np.bincount(pbatch[ok], minlength=nb).astype(np.int64)
    null_here = np.zeros(nb, np.int64)
    null_here[np.unique(pbatch[~ok])] = 1
    need_off = np.zeros(nb + 1, np.int64)
    np.cumsum(adm_per_batch + null_here, out=need_off[1:])
    adm_start = np.zeros(nb + 1, np.int64)
    np.cumsum(adm_per_batch, out=adm_start[1:])
    rel = np.cumsum(ok) - 1 - adm_start[pbatch]  # an admitted pair's index within its batch's need
    owners = np.full(int(need_off[-1]), -1, np.int64)
    owners[need_off[pbatch[ok]] + rel[ok]] = tab.pown[ok]
    occ_local = np.where(ok, rel, adm_per_batch[pbatch])[tab.occ_pair]
    need_owner[table], need_off_out[table] = owners, need_off
    serve[table] = []
    for r in tab.received:  # sorted by batch, then key: the order the rank's need has them in
        pos = np.searchsorted(tab.own_keys, r[:, 0].view(np.uint64))
        serve[table].append((np.searchsorted(r[:, 1], np.arange(nb + 1)).astype(np.int64), pos))
    for k, slot in enumerate(tab.slots):
        local[slot] = occ_local[tab.bounds[k] : tab.bounds[k + 1]]
        inv[slot] = local[slot]
