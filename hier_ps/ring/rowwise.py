"""Row-wise sharded working sets: each rank holds the rows it owns; rows and their gradients travel by all-to-all.

Every rank plans the whole pass, so for each global batch every rank already knows which of the batch's unique rows
each rank's slice reads and which rank owns each of them: no keys and no requests travel, only rows. Per batch:

1. forward: each owner sends every rank the rows (embeddings) of its slice that it owns; the receiver lays them out
   as a small table of the rows its slice reads (one all-to-all for all tables);
2. backward: each rank sends the owners the summed gradients of those rows (one all-to-all); an owner adds up what
   it receives, in rank order (deterministic), and applies one optimizer update per row it owns.

The result equals the replicated mode's (and one process's) up to the order of float additions.

Example (one rank, for the shapes)::

    ex = BatchExchange.build(batch, row_owner={"t": owner_of_each_working_set_row}, world=1, rank=0)
    ex.table["t"].need[0]   # positions (into the batch's unique rows) that rank 0's slice reads
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from hier_ps.hbm.working_set import segment_sum
from hier_ps.plan import BatchPlan
from hier_ps.ring.group import Ring

__all__ = ["BatchExchange", "TableExchange", "all_to_all_rows", "fetch_rows", "return_grads"]


@dataclass
class TableExchange:
    """One table's part of a batch's exchange.

    Attributes:
        need: per rank s: sorted positions into the batch's unique rows (``urows``) that rank s's slice reads.
        owner_of_need: per rank s: the owning rank of each of those rows (-1: the null row, read as zeros).
        local: per slot of this table: for this rank's occurrences, the index of their row in ``need[rank]``.
    """

    need: list[np.ndarray]
    owner_of_need: list[np.ndarray]
    local: dict[str, np.ndarray]


@dataclass
class BatchExchange:
    """Who sends which rows to whom for one global batch (all tables)."""

    table: dict[str, TableExchange]
    bounds: np.ndarray  # int64[world+1]: the ranks' example slices of the batch

    @classmethod
    def build(cls, b: BatchPlan, row_owner: dict[str, np.ndarray], world: int, rank: int) -> BatchExchange:
        """Plans the exchange of batch `b` (the whole global batch).

        Args:
            b: the global batch.
            row_owner: table -> int64[rows of the pass's working set (+ null row)]: owning rank of each row, -1 for
                the null row.
            world, rank: the ranks.
        """
        n = len(b)
        bounds = np.array([r * n // world for r in range(world + 1)], np.int64)
        out = {}
        for table, (urows, inv) in b.tables.items():
            slots = b.table_slots[table]
            rank_of_occ = []
            for slot in slots:
                off = b.slots[slot][0]
                example = np.repeat(np.arange(n, dtype=np.int64), np.diff(off))
                rank_of_occ.append(np.searchsorted(bounds, example, side="right") - 1)
            occ_rank = np.concatenate(rank_of_occ) if len(rank_of_occ) > 1 else rank_of_occ[0]
            u = max(len(urows), 1)
            pairs = np.unique(occ_rank * u + inv)
            pair_rank, pair_pos = pairs // u, pairs % u
            cut = np.searchsorted(pair_rank, np.arange(world + 1))
            need = [pair_pos[cut[r] : cut[r + 1]] for r in range(world)]
            owner_of_need = [row_owner[table][urows[p]] for p in need]
            mine = occ_rank == rank
            local_all = np.searchsorted(need[rank], inv[mine])
            local, start, mine_start = {}, 0, 0
            for slot in slots:
                nnz = int(b.slots[slot][0][-1])
                k = int(mine[start : start + nnz].sum())
                local[slot] = local_all[mine_start : mine_start + k]
                start, mine_start = start + nnz, mine_start + k
            out[table] = TableExchange(need, owner_of_need, local)
        return cls(out, bounds)


def all_to_all_rows(send: list[torch.Tensor], recv_sizes: list[int]) -> list[torch.Tensor]:
    """Sends ``send[s]`` (a flat float tensor) to rank s; returns what each rank sent here, by rank.

    Args:
        send: per destination rank, a 1-D tensor (all of one dtype and device).
        recv_sizes: per source rank, the number of elements it sends here.
    """
    flat = torch.cat(send) if send else torch.zeros(0)
    out = torch.empty(sum(recv_sizes), dtype=flat.dtype, device=flat.device)
    dist.all_to_all_single(out, flat, recv_sizes, [t.numel() for t in send])
    return list(torch.split(out, recv_sizes))


def _to(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(device)


def fetch_rows(
    ex: BatchExchange,
    b: BatchPlan,
    emb: dict[str, torch.Tensor],
    own_pos: dict[str, np.ndarray],
    ring: Ring,
    device: torch.device,
    comm_device: torch.device,
) -> dict[str, torch.Tensor]:
    """Forward exchange: the owners send each rank the rows its slice of `b` reads.

    Args:
        ex: the batch's exchange plan.
        b: the global batch.
        emb: table -> this rank's owned embeddings float[n_own, dim].
        own_pos: table -> int64[working-set rows]: position among this rank's owned rows (-1: not owned).
        ring: the ranks; device, comm_device: where rows live and where collective buffers live.

    Returns:
        table -> float[len(ex.table[t].need[rank]), dim]: the rows this rank's slice reads, in ``need`` order (the
        null row reads as zeros).
    """
    world, rank = ring.world, ring.rank
    send: list[list[torch.Tensor]] = [[] for _ in range(world)]
    recv_sizes = [0] * world
    for t, te in ex.table.items():
        urows, dim = b.tables[t][0], emb[t].shape[1]
        for s in range(world):
            sel = te.need[s][te.owner_of_need[s] == rank]
            send[s].append(emb[t][_to(own_pos[t][urows[sel]], device)].reshape(-1).to(comm_device))
        for o in range(world):
            recv_sizes[o] += int((te.owner_of_need[rank] == o).sum()) * dim
    flat = [torch.cat(x) for x in send]
    recv = all_to_all_rows(flat, recv_sizes)
    ring.count("row_all_to_all", torch.cat([f for s, f in enumerate(flat) if s != rank]))  # off-rank bytes
    out, offs = {}, [0] * world
    for t, te in ex.table.items():
        own, dim = te.owner_of_need[rank], emb[t].shape[1]
        e = torch.zeros(len(own), dim, device=device)
        for o in range(world):
            sel = np.flatnonzero(own == o)
            k = len(sel) * dim
            e[_to(sel, device)] = recv[o][offs[o] : offs[o] + k].view(-1, dim).to(device)
            offs[o] += k
        out[t] = e
    return out


def return_grads(
    ex: BatchExchange,
    b: BatchPlan,
    grads: dict[str, torch.Tensor],
    own_pos: dict[str, np.ndarray],
    ring: Ring,
    device: torch.device,
    comm_device: torch.device,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Backward exchange: each rank sends the owners the summed gradients of the rows its slice read; each owner
    adds up what it receives, in rank order (the same sums on every run).

    Args:
        grads: table -> float[len(need[rank]), dim], this rank's gradients of the rows it read, in ``need`` order.

    Returns:
        table -> (owned rows touched int64[u] (positions among this rank's owned rows), summed gradients
        float[u, dim]); tables whose owned rows the batch did not touch are left out.
    """
    world, rank = ring.world, ring.rank
    send: list[list[torch.Tensor]] = [[] for _ in range(world)]
    recv_sizes = [0] * world
    for t, te in ex.table.items():
        own, dim = te.owner_of_need[rank], grads[t].shape[1]
        for o in range(world):
            send[o].append(grads[t][_to(np.flatnonzero(own == o), device)].reshape(-1).to(comm_device))
        for s in range(world):
            recv_sizes[s] += int((te.owner_of_need[s] == rank).sum()) * dim
    flat = [torch.cat(x) for x in send]
    recv = all_to_all_rows(flat, recv_sizes)
    ring.count("grad_all_to_all", torch.cat([f for s, f in enumerate(flat) if s != rank]))
    out, offs = {}, [0] * world
    for t, te in ex.table.items():
        urows, dim = b.tables[t][0], grads[t].shape[1]
        rows, parts = [], []
        for s in range(world):
            sel = te.need[s][te.owner_of_need[s] == rank]
            k = len(sel) * dim
            rows.append(own_pos[t][urows[sel]])
            parts.append(recv[s][offs[s] : offs[s] + k].view(-1, dim).to(device))
            offs[s] += k
        all_rows = np.concatenate(rows)
        if len(all_rows):
            touched, inv = np.unique(all_rows, return_inverse=True)
            out[t] = (_to(touched, device), segment_sum(torch.cat(parts), _to(inv.reshape(-1), device), len(touched)))
    return out
