"""The pull of a replicated working set: each rank reads the keys it owns, and an all-reduce gives every rank all rows.

Every rank asks for the same keys; a rank's own tiers hold only the keys it owns (``owner(key) == rank``), so each
fills in those rows and leaves the others zero, and a sum over the ranks is every row. Floats (embedding, optimizer
state) and the int64 metadata's bits (as int32 pairs) travel in two buffers: a sum with zeros keeps floats exact,
but metadata bits read as floats could be NaN or denormal.

The trainer's main thread pulls this way for eval and lookups (default group); the stager's worker pulls the new
rows of the next pass this way over a group of its own (``Ring.stage_group``), so that its collectives never
interleave with the main thread's.

Example (shapes)::

    out = pull_replicated(host, specs, {"t": keys}, seed, ring)  # {"t": (rows float32[n, width], owned_new)}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hier_ps.hbm.working_set import TableSpec, WorkingSet
from hier_ps.ring.group import Ring, owner
from hier_ps.tier import RowTier

__all__ = ["pull_replicated"]


def pull_replicated(
    tier: RowTier,
    specs: dict[str, TableSpec],
    keys: dict[str, np.ndarray],
    seed: int,
    ring: Ring,
    *,
    for_training: bool = True,
    what: str = "pull_all_reduce",
    group: Any = None,
    comm_device: torch.device | None = None,
    counter: dict[str, int] | None = None,
) -> dict[str, tuple[np.ndarray, int]]:
    """Rows of `keys` (the same on every rank; every rank calls this in turn) from the owners' tiers.

    Args:
        tier: this rank's host tier.
        specs: table specs.
        keys: table -> uint64[n] unique keys, identical on every rank.
        seed: the run seed (initial rows of keys no tier has; see :meth:`WorkingSet.fetch` for `for_training`).
        ring: the ranks.
        what: the name the all-reduces' bytes are counted under.
        group: the process group of the all-reduces (None: the default group).
        comm_device: where the buffers live (the CPU for gloo groups, the GPU for NCCL); default CPU.
        counter: where the bytes are counted (default: ``ring.bytes``).

    Returns:
        table -> (rows float32[n, width] of all `keys`, keys this rank owns that its tier lacked).
    """
    dev = comm_device if comm_device is not None else torch.device("cpu")
    if not any(len(k) for k in keys.values()):  # the same on every rank: all skip the collectives
        return {n: (np.zeros((0, specs[n].layout.width), np.float32), 0) for n in keys}
    mine = {n: owner(k, ring.world) == ring.rank for n, k in keys.items()}
    local = WorkingSet.fetch(tier, specs, {n: k[mine[n]] for n, k in keys.items()}, seed, for_training=for_training)
    floats, ints = [], []
    for n, k in keys.items():
        width = specs[n].layout.width
        full = np.zeros((len(k), width), np.float32)
        full[mine[n]] = local[n][0]
        floats.append(full[:, : width - 4].reshape(-1))
        ints.append(np.ascontiguousarray(full[:, width - 4 :]).view(np.int32).reshape(-1))
    f = torch.from_numpy(np.concatenate(floats)).to(dev)
    i = torch.from_numpy(np.concatenate(ints)).to(dev)
    f = ring.all_reduce_(f, what, group, counter).cpu().numpy()
    i = ring.all_reduce_(i, what, group, counter).cpu().numpy()
    out, fo, io = {}, 0, 0
    for n, k in keys.items():
        width = specs[n].layout.width
        rows = np.empty((len(k), width), np.float32)
        rows[:, : width - 4] = f[fo : fo + len(k) * (width - 4)].reshape(len(k), width - 4)
        rows[:, width - 4 :] = i[io : io + len(k) * 4].reshape(len(k), 4).view(np.float32)
        fo, io = fo + len(k) * (width - 4), io + len(k) * 4
        out[n] = (rows, local[n][1])
    return out
