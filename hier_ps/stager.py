"""Pull and push beside training: while pass k trains, a worker pulls pass k+1's new rows into staging and writes
back the rows pass k-1 released.

The worker is one thread that runs its jobs in the order they were given, and it is the only user of the host tier
(and the SSD store below it) while jobs are pending; the trainer waits for it (:meth:`Stager.drain`) before touching
a tier itself (eval, checkpoints, eviction, lookups). The order gives the consistency the lossless contract needs:

- a pass's working set is assembled from the previous pass's device rows for the keys both share (never from a host
  copy, which would be stale) and from staged rows for the others;
- staged rows are the keys the previous pass did *not* hold, so training that pass cannot change them;
- the rows a pass released are written back by a push job queued *before* the pull of the next pass, so a key that
  leaves and comes back is read after its write-back lands;
- staging names the working set it was computed against (a generation number); when the trainer dropped or replaced
  that set meanwhile (eviction drops it), the staged rows are thrown away and the pass pulls everything again.

On several ranks each rank has its own worker over its own tiers. A row-wise sharded working set holds only keys
the rank owns, so its pulls are local as in one process. A replicated one holds the whole working set: each rank
reads the new keys it owns and an all-reduce gives every rank all new rows (``fetch``, see
:func:`hier_ps.ring.replicated.pull_replicated`), over a process group used by the workers alone; the ranks queue
the same stagings in the same order, so the workers' collectives match up. Write-backs stay local (each rank writes
the departed rows it owns).

Staged embeddings and optimizer state sit in pinned host memory when the device is CUDA, so the copy to the device
at assembly is asynchronous (``non_blocking=True``); on CPU nothing is pinned.

Example:
    >>> stager = Stager(host, specs, seed=0, device=torch.device("cpu"), next_item=feeder.get)  # doctest: +SKIP
    >>> stager.stage_next(base_keys=None, base_gen=0)   # the first pass: pulls all its keys   # doctest: +SKIP
    >>> staged = stager.take_next()                     # Staged (staged.item is None: no more)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hier_ps.hbm.working_set import TableSpec, WorkingSet
from hier_ps.ssd.table import in_sorted
from hier_ps.tier import RowTier

__all__ = ["HOST_COUNTERS", "Fetch", "Staged", "StagedTable", "Stager", "local_fetch", "stage_measured", "stage_rows"]

HOST_COUNTERS = ("hits", "misses", "evictions", "rows_written_back")  #: the host-cache counters a job reports


@dataclass
class StagedTable:
    """One table's staging for a pass of n keys against a base working set of m keys.

    Attributes:
        shared: bool[n], the key is in the base working set.
        src: int64[n_shared], its row there (for the shared keys, in key order).
        new: int64[n_new_rows], positions of the other keys in the pass's keys.
        emb: float32[n_new_rows, dim], their embeddings (pinned copies on CUDA; on the CPU strided views of the
            pulled packed rows).
        state: float32[n_new_rows, S], their optimizer state (the same).
        meta: int64[n_new_rows, 2], their metadata.
        n_new: keys that no tier had (initialized); on several ranks, among the keys this rank owns.
    """

    shared: np.ndarray
    src: np.ndarray
    new: np.ndarray
    emb: torch.Tensor
    state: torch.Tensor
    meta: np.ndarray
    n_new: int


@dataclass
class Staged:
    """The next pass, with its new rows pulled.

    Attributes:
        item: the pass (a :class:`hier_ps.pipeline.PassItem`), or None after the last pass.
        base_gen: generation of the working set the staging is relative to.
        tables: table -> StagedTable (empty when `item` is None).
        pull_s: seconds the pull took in the worker.
        host: host-cache counters of the pull (hits, misses, evictions, rows_written_back).
        ssd: SSD-store counters of the pull.
        comm: collective -> bytes of the pull's collectives (a replicated working set on several ranks).
    """

    item: Any
    base_gen: int
    tables: dict[str, StagedTable] = field(default_factory=dict)
    pull_s: float = 0.0
    host: dict[str, int] = field(default_factory=dict)
    ssd: dict[str, float] = field(default_factory=dict)
    comm: dict[str, int] = field(default_factory=dict)


Fetch = Callable[[dict[str, np.ndarray], dict[str, int]], dict[str, tuple[np.ndarray, int]]]
"""``fetch(keys, comm) -> table -> (rows float32[n, width], keys no tier had)``: reads the rows of `keys` (table ->
uint64[n]), counting the bytes of any collective in `comm`."""


def _counters(host: Any, store: Any) -> tuple[dict[str, int], dict[str, float]]:
    h = {k: int(host.stats.get(k, 0)) for k in HOST_COUNTERS} if hasattr(host, "stats") else {}
    s = {k: v for k, v in getattr(store, "stats", {}).items() if isinstance(v, int | float)}
    return h, s


def _delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def _pinned(a: np.ndarray) -> torch.Tensor:
    """A pinned host copy of `a`, for an asynchronous copy to the GPU."""
    return torch.from_numpy(np.ascontiguousarray(a)).pin_memory()


def local_fetch(host: RowTier, specs: dict[str, TableSpec], seed: int) -> Fetch:
    """The pull of one process (or of a rank that holds only keys it owns): :meth:`WorkingSet.fetch` from `host`."""

    def fetch(keys: dict[str, np.ndarray], comm: dict[str, int]) -> dict[str, tuple[np.ndarray, int]]:
        return WorkingSet.fetch(host, specs, keys, seed)

    return fetch


def stage_rows(
    host: RowTier,
    specs: dict[str, TableSpec],
    seed: int,
    keys: dict[str, np.ndarray],
    base_keys: dict[str, np.ndarray] | None,
    pin: bool = False,
    fetch: Fetch | None = None,
    comm: dict[str, int] | None = None,
) -> tuple[dict[str, StagedTable], int]:
    """Pulls the rows of `keys` that the base working set lacks (its keys `base_keys`, sorted; None: pull all).

    Args:
        host: the host tier.
        specs: table specs.
        seed: the run seed (initial rows of keys no tier has).
        keys: table -> uint64[n] sorted unique keys of the pass.
        base_keys: table -> uint64[m] sorted keys of the working set the pass will take shared rows from.
        pin: put the staged tensors in pinned memory (CUDA devices).
        fetch: how the rows of the new keys are read, all tables at once (default: :func:`local_fetch`; a
            replicated working set on several ranks: from the owners, with a collective).
        comm: where `fetch` counts the bytes of its collectives.

    Returns:
        (table -> StagedTable, bytes pulled).
    """
    fetch = fetch if fetch is not None else local_fetch(host, specs, seed)
    split = {}
    for name, k in keys.items():
        base = base_keys.get(name) if base_keys is not None else None
        if base is not None and len(base):
            pos, shared = in_sorted(base, k)
            src = pos[shared]
        else:
            shared, src = np.zeros(len(k), bool), np.zeros(0, np.int64)
        split[name] = (shared, src, np.flatnonzero(~shared))
    got = fetch({n: keys[n][new] for n, (_, _, new) in split.items()}, comm if comm is not None else {})
    out, nbytes = {}, 0
    for name, (shared, src, new) in split.items():
        rows, n_new = got[name]
        nbytes += rows.nbytes
        emb, state, meta = specs[name].layout.views(rows)
        if pin:  # contiguous pinned copies, for asynchronous copies to the GPU
            emb_t, state_t = _pinned(emb), _pinned(state)
        else:  # views of the packed rows: the assembly's C row moves read strided rows in place, no copy made
            emb_t, state_t = torch.from_numpy(emb), torch.from_numpy(state)
        out[name] = StagedTable(shared, src, new, emb_t, state_t, meta, n_new)
    return out, nbytes


def stage_measured(
    host: RowTier,
    specs: dict[str, TableSpec],
    seed: int,
    keys: dict[str, np.ndarray],
    base_keys: dict[str, np.ndarray] | None,
    pin: bool = False,
    fetch: Fetch | None = None,
) -> tuple[dict[str, StagedTable], float, dict[str, int], dict[str, float], dict[str, int]]:
    """:func:`stage_rows` with its cost: (tables, seconds, host-cache counters, SSD-store counters, collective
    bytes of the pull)."""
    store = getattr(host, "backing", None)
    h0, s0 = _counters(host, store)
    comm: dict[str, int] = {}
    t0 = time.perf_counter()
    tables, _ = stage_rows(host, specs, seed, keys, base_keys, pin, fetch, comm)
    pull_s = time.perf_counter() - t0
    h1, s1 = _counters(host, store)
    return tables, pull_s, _delta(h1, h0), _delta(s1, s0), comm


class Stager:
    """One ordered background worker for the host tier: push jobs and the staging of the next pass.

    Args:
        host: the host tier (only the worker touches it while jobs are pending).
        specs: table specs.
        seed: the run seed.
        device: the training device (CUDA: staged rows are pinned).
        next_item: called in the worker to get the next pass (e.g. ``PassFeeder.get``); None ends the run.
        fetch: how staging reads rows (default :func:`local_fetch`). One with collectives (a replicated working set
            on several ranks) must use a process group of its own, and every rank must queue the same stagings in
            the same order.
    """

    def __init__(
        self,
        host: RowTier,
        specs: dict[str, TableSpec],
        seed: int,
        device: torch.device,
        next_item: Callable[[], Any],
        fetch: Fetch | None = None,
    ) -> None:
        self.host, self.specs, self.seed, self.next_item = host, specs, seed, next_item
        self.fetch = fetch
        self.pin = device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hier-ps-stager")
        self._pushes: list[Future] = []
        self._next: Future | None = None

    def _store(self) -> Any:
        return getattr(self.host, "backing", None)

    def push(
        self,
        rows: dict[str, tuple[np.ndarray, np.ndarray]] | Callable[[], dict[str, tuple[np.ndarray, np.ndarray]]],
    ) -> Future:
        """Queues a write-back: table -> (keys uint64[n], packed rows float32[n, width]), or a function that returns
        them, called first in the worker (to gather the rows off the caller's thread). Its Future gives (seconds,
        host counters, SSD counters) of the gather and the write."""

        def job() -> tuple[float, dict, dict]:
            h0, s0 = _counters(self.host, self._store())
            t0 = time.perf_counter()
            for name, (keys, r) in (rows() if callable(rows) else rows).items():
                if len(keys):
                    self.host.write(name, keys, r)
            h1, s1 = _counters(self.host, self._store())
            return time.perf_counter() - t0, _delta(h1, h0), _delta(s1, s0)

        f = self._pool.submit(job)
        self._pushes.append(f)
        return f

    def stage_next(self, base_keys: dict[str, np.ndarray] | None, base_gen: int) -> None:
        """Queues: get the next pass, then pull its rows that the working set `base_keys` (generation `base_gen`)
        lacks. Runs after every push queued before it."""
        assert self._next is None, "the staged pass was not taken"

        def job() -> Staged:
            item = self.next_item()
            if item is None:
                return Staged(None, base_gen)
            keys = item.plan.keys
            staged = stage_measured(self.host, self.specs, self.seed, keys, base_keys, self.pin, self.fetch)
            return Staged(item, base_gen, *staged)

        self._next = self._pool.submit(job)

    def take_next(self) -> Staged:
        """The staged next pass (waits for it); re-raises an error of reading, planning or pulling it."""
        assert self._next is not None, "nothing staged"
        f, self._next = self._next, None
        return f.result()

    def drain(self) -> None:
        """Waits until every queued job is done, so the caller may use the tiers. Raises a failed push's error (a
        failed staging raises at :meth:`take_next`)."""
        pending = self._pushes + ([self._next] if self._next is not None else [])
        if pending:
            wait(pending)
        pushes, self._pushes = self._pushes, []
        for f in pushes:
            f.result()

    def close(self) -> None:
        """Stops the worker after its queued jobs (callers stop the pass source first, so a staging job ends)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
