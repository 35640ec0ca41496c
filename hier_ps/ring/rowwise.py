"""Row-wise sharded working sets: each rank holds the rows it owns; rows and their gradients travel by all-to-all.

The plan (:mod:`hier_ps.ring.shard_plan`) has already told every rank, for each global batch, which rows its slice
reads and who owns each (``need_owner``), and every owner which of its rows each rank reads (``serve``): no keys and
no requests travel during the batches, only rows. Per batch:

1. forward: each owner sends every rank the rows (embeddings) of its slice that it owns; the receiver lays them out
   as a small table of the rows its slice reads (one all-to-all for all tables);
2. backward: each rank sends the owners the summed gradients of those rows (one all-to-all); an owner adds up what
   it receives, in rank order (deterministic), and applies one optimizer update per row it owns.

The result equals the replicated mode's (and one process's) up to the order of float additions.

Example (shapes)::

    tables = fetch_rows(plan.exchange(i), emb, ring, device, comm_device)  # table -> float[len(need_owner), dim]
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from hier_ps.hbm.working_set import segment_sum
from hier_ps.ring.group import Ring
from hier_ps.ring.shard_plan import RowExchange

__all__ = ["all_to_all_rows", "fetch_rows", "return_grads"]


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
    ex: dict[str, RowExchange],
    emb: dict[str, torch.Tensor],
    ring: Ring,
    device: torch.device,
    comm_device: torch.device,
) -> dict[str, torch.Tensor]:
    """Forward exchange: the owners send each rank the rows its slice of the batch reads.

    Args:
        ex: table -> the batch's exchange plan.
        emb: table -> this rank's owned embeddings float[n_own, dim].
        ring: the ranks; device, comm_device: where rows live and where collective buffers live.

    Returns:
        table -> float[len(ex[t].need_owner), dim]: the rows this rank's slice reads, in need order (the null row
        reads as zeros).
    """
    world, rank = ring.world, ring.rank
    send: list[list[torch.Tensor]] = [[] for _ in range(world)]
    recv_sizes = [0] * world
    for t, te in ex.items():
        dim = emb[t].shape[1]
        for s in range(world):
            send[s].append(emb[t][_to(te.serve[s], device)].reshape(-1).to(comm_device))
        counts = np.bincount(te.need_owner[te.need_owner >= 0], minlength=world)
        for o in range(world):
            recv_sizes[o] += int(counts[o]) * dim
    flat = [torch.cat(x) for x in send]
    recv = all_to_all_rows(flat, recv_sizes)
    ring.count("row_all_to_all", torch.cat([f for s, f in enumerate(flat) if s != rank]))  # off-rank bytes
    out, offs = {}, [0] * world
    for t, te in ex.items():
        own, dim = te.need_owner, emb[t].shape[1]
        e = torch.zeros(len(own), dim, device=device)
        for o in range(world):
            sel = np.flatnonzero(own == o)
            k = len(sel) * dim
            e[_to(sel, device)] = recv[o][offs[o] : offs[o] + k].view(-1, dim).to(device)
            offs[o] += k
        out[t] = e
    return out


def return_grads(
    ex: dict[str, RowExchange],
    grads: dict[str, torch.Tensor],
    ring: Ring,
    device: torch.device,
    comm_device: torch.device,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Backward exchange: each rank sends the owners the summed gradients of the rows its slice read; each owner
    adds up what it receives, in rank order (the same sums on every run).

    Args:
        ex: table -> the batch's exchange plan.
        grads: table -> float[len(need_owner), dim], this rank's gradients of the rows it read, in need order.

    Returns:
        table -> (owned rows touched int64[u] (positions among this rank's owned rows), summed gradients
        float[u, dim]); tables whose owned rows the batch did not touch are left out.
    """
    world, rank = ring.world, ring.rank
    send: list[list[torch.Tensor]] = [[] for _ in range(world)]
    recv_sizes = [0] * world
    for t, te in ex.items():
        own, dim = te.need_owner, grads[t].shape[1]
        for o in range(world):
            send[o].append(grads[t][_to(np.flatnonzero(own == o), device)].reshape(-1).to(comm_device))
        for s in range(world):
            recv_sizes[s] += len(te.serve[s]) * dim
    flat = [torch.cat(x) for x in send]
    recv = all_to_all_rows(flat, recv_sizes)
    ring.count("grad_all_to_all", torch.cat([f for s, f in enumerate(flat) if s != rank]))
    out, offs = {}, [0] * world
    for t, te in ex.items():
        dim = grads[t].shape[1]
        parts = []
        for s in range(world):
            k = len(te.serve[s]) * dim
            parts.append(recv[s][offs[s] : offs[s] + k].view(-1, dim).to(device))
            offs[s] += k
        all_rows = np.concatenate(te.serve)
        if len(all_rows):
            touched, inv = np.unique(all_rows, return_inverse=True)
            out[t] = (_to(touched, device), segment_sum(torch.cat(parts), _to(inv.reshape(-1), device), len(touched)))
    return out
