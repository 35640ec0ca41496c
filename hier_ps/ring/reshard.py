"""Checkpoints across world sizes: where each rank's store lives, and re-owning keys when the number of ranks changes.

A run of N ranks keeps rank r's store in ``<store>-w<N>/rank-<r>`` (one process: ``<store>`` itself), so that stores
of different world sizes never share a directory. Resuming a checkpoint of N ranks on M ranks copies, on each new
rank, the rows it owns under M out of every old rank's store (opened read-only at the checkpoint's generations) into
a fresh store, and commits it. The old stores stay untouched until no kept checkpoint needs them, so a crash during
the copy just repeats it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from hier_ps.ring.group import owner
from hier_ps.ssd import SSDStore

__all__ = ["remove_other_worlds", "reshard_into", "store_dir_for"]

log = logging.getLogger("hier_ps")

_COPY_ROWS = 1 << 18


def store_dir_for(base: Path, world: int, rank: int) -> Path:
    """The store directory of `rank` in a run of `world` ranks, under the configured store directory `base`."""
    return base if world == 1 else Path(f"{base}-w{world}") / f"rank-{rank}"


def reshard_into(store: SSDStore, base: Path, old_world: int, generations: list[int], world: int, rank: int) -> int:
    """Fills `store` (empty) with the rows this rank owns in a world of `world` ranks, from the stores of a
    checkpoint written by `old_world` ranks at `generations` (one per old rank), and commits it.

    Returns:
        Rows copied.
    """
    t0 = time.perf_counter()
    widths = store.widths()
    copied = 0
    for old_rank in range(old_world):
        src = store_dir_for(base, old_world, old_rank)
        with SSDStore(src, widths, generation=generations[old_rank], readonly=True) as old:
            for table in widths:
                keys = old.keys(table)
                keys = keys[owner(keys, world) == rank]
                for i in range(0, len(keys), _COPY_ROWS):
                    k = keys[i : i + _COPY_ROWS]
                    rows, _ = old.read(table, k)
                    store.write(table, k, np.ascontiguousarray(rows))
                copied += len(keys)
    store.commit()
    log.info(
        "re-owned %d rows from a checkpoint of %d rank(s) onto rank %d of %d in %.2f s",
        copied,
        old_world,
        rank,
        world,
        time.perf_counter() - t0,
    )
    return copied


def remove_other_worlds(base: Path, keep_worlds: set[int]) -> None:
    """Deletes the store directories of world sizes that no kept checkpoint names (call on one rank, between
    barriers). The one-process store ``base`` is emptied of its files, not removed, when world 1 is not kept."""
    for d in Path(base).parent.glob(f"{Path(base).name}-w*"):
        suffix = d.name[len(Path(base).name) + 2 :]
        if suffix.isdigit() and int(suffix) not in keep_worlds:
            shutil.rmtree(d, ignore_errors=True)
    if 1 not in keep_worlds and Path(base).is_dir():
        SSDStore.destroy(base)
