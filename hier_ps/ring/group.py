"""The process group of a multi-rank run, from torchrun's environment, and the collectives the trainer uses.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (also across nodes, with
its c10d rendezvous); :meth:`Ring.from_env` joins that group with NCCL when training on CUDA and NCCL is there, else
gloo (so every multi-rank path runs on a CPU box). A single process (no ``WORLD_SIZE`` or 1) gets no Ring at all and
the trainer takes its plain single-process paths.

Ownership: a key belongs to rank ``owner(key) = splitmix64(key) % world`` in every tier (its own store directory
and host cache); the hash spreads sequential ids evenly.

Example:
    >>> owner(np.array([1, 2, 3], np.uint64), 1).tolist()
    [0, 0, 0]
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hier_ps.errors import HierPSError
from hier_ps.hbm.rows import _mix64

__all__ = ["Ring", "owner", "sum_hook"]

log = logging.getLogger("hier_ps")


def owner(keys: np.ndarray, world: int) -> np.ndarray:
    """Owning rank int64[n] of keys uint64[n]."""
    if world == 1:
        return np.zeros(len(keys), np.int64)
    return (_mix64(keys.astype(np.uint64, copy=False)) % np.uint64(world)).astype(np.int64)


def sum_hook(state, bucket):  # no annotations: DDP checks them at run time, and strings fail that check
    """DDP communication hook: all-reduce a gradient bucket (``dist.GradBucket``) as a sum, returning a future of
    the summed buffer (DDP's default divides by the world size; the trainer's loss is already the mean over the
    global batch, DESIGN.md contract 3)."""
    if isinstance(state, Ring):
        state.count("dense_all_reduce", bucket.buffer())
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


@dataclass
class Ring:
    """This process's place in a multi-rank run.

    Attributes:
        rank: global rank.
        world: number of ranks.
        local_rank: rank within the node (selects the GPU).
        backend: ``nccl`` or ``gloo``.
        bytes: collective -> bytes of the buffers this rank has passed to it (an all-reduce of S bytes moves about
            2 (N-1)/N * S bytes in and out of each rank with the ring algorithm).
    """

    rank: int
    world: int
    local_rank: int
    backend: str
    bytes: dict[str, int] = field(default_factory=dict)
    plan_group: Any = None  #: a gloo group of all ranks for planning, which runs in the read-ahead thread
    stage_group: Any = None  #: a gloo group of all ranks for the pulls of the stager's worker thread

    def count(self, what: str, t: torch.Tensor) -> None:
        self.bytes[what] = self.bytes.get(what, 0) + t.numel() * t.element_size()

    def exchange(self, send: list[np.ndarray], counter: dict[str, int], what: str) -> list[np.ndarray]:
        """All-to-all of int64 arrays over the planning group: ``send[s]`` goes to rank s.

        Planning runs in the read-ahead thread while training uses the default group in the main thread; a group of
        its own keeps the two streams of collectives from interleaving differently on different ranks.

        Args:
            send: per destination rank, an int64 (or uint64) array; any shape, sent flat.
            counter: where the off-rank bytes sent are added, under `what` (the plan's own, so that each pass's
                record counts its own planning, not the next pass's).

        Returns:
            Per source rank, the flat int64 array it sent here.
        """
        flat = [np.ascontiguousarray(a).reshape(-1).view(np.int64) for a in send]
        sizes = torch.tensor([len(a) for a in flat], dtype=torch.int64)
        recv_sizes = torch.empty(self.world, dtype=torch.int64)
        dist.all_to_all_single(recv_sizes, sizes, group=self.plan_group)
        out = torch.empty(int(recv_sizes.sum()), dtype=torch.int64)
        src = torch.from_numpy(np.concatenate(flat)) if flat else torch.zeros(0, dtype=torch.int64)
        dist.all_to_all_single(out, src, recv_sizes.tolist(), sizes.tolist(), group=self.plan_group)
        counter[what] = counter.get(what, 0) + 8 * sum(len(a) for s, a in enumerate(flat) if s != self.rank)
        return [a.numpy() for a in torch.split(out, recv_sizes.tolist())]

    def all_gather_array(self, a: np.ndarray, counter: dict[str, int], what: str) -> list[np.ndarray]:
        """Every rank's int64 array `a` (flat), by rank, over the planning group."""
        return self.exchange([a] * self.world, counter, what)

    @classmethod
    def from_env(cls, device_type: str, timeout_s: float = 300.0) -> Ring | None:
        """Joins the process group torchrun describes; None in a single process.

        Args:
            device_type: ``cuda`` or ``cpu``: the training device (NCCL needs CUDA tensors).
            timeout_s: how long a collective waits for a rank that died or hangs before failing.

        Raises:
            HierPSError: the environment is incomplete, or the group cannot be joined.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise HierPSError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            except (RuntimeError, ValueError) as e:
                raise HierPSError(f"cannot join the process group of rank {rank}/{world} ({e})") from None
        # Every rank creates the groups, in this order.
        plan_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        stage_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d of %d (local rank %d), backend %s", rank, world, local_rank, backend)
        return cls(rank, world, local_rank, backend, plan_group=plan_group, stage_group=stage_group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_(
        self, t: torch.Tensor, what: str = "other_all_reduce", group: Any = None, counter: dict[str, int] | None = None
    ) -> torch.Tensor:
        """In-place sum over ranks (over `group`; default: the default group); its bytes are counted under `what` in
        `counter` (default: :attr:`bytes`)."""
        counter = self.bytes if counter is None else counter
        counter[what] = counter.get(what, 0) + t.numel() * t.element_size()
        dist.all_reduce(t, group=group)
        return t

    def all_gather_ints(self, value: int) -> list[int]:
        """Every rank's `value`, by rank."""
        t = torch.tensor([value], dtype=torch.int64)
        out = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [int(x.item()) for x in out]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
