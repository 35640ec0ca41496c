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

from hier_ps.plan import BatchPlan

__all__ = ["BatchExchange", "TableExchange", "all_to_all_rows"]


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
