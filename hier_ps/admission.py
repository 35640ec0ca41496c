"""Feature admission: a key gets a row only after it has occurred ``min_count`` times.

Occurrences are counted per table in a count-min sketch: memory is fixed by ``sketch_bytes`` whatever the number of
keys, estimates never fall below the true count (counters saturate at ``min_count``, all admission needs to know),
and hash collisions can only admit a key early. The decision is made per batch: a key has a row from the first batch
by the end of which it has occurred ``min_count`` times; before that its occurrences read zeros and take no update.
Because the counters are plain sums (saturating), the decisions depend only on the order of the training examples,
not on how they are cut into passes or spread over ranks, and the sketch is saved in checkpoints so that a resumed
run decides exactly as an uninterrupted one.

Example:
    >>> import numpy as np
    >>> adm = Admission({"t": AdmissionConfig(min_count=3, sketch_bytes=4096)})
    >>> keys, batches, counts = np.array([1, 2, 1], np.uint64), np.array([0, 0, 1]), np.array([2, 5, 1])
    >>> adm.admit("t", keys, batches, counts).tolist()  # key 1 reaches 3 occurrences in batch 1
    [False, True, True]
"""

from __future__ import annotations

import numpy as np
import torch

from hier_ps.config import AdmissionConfig
from hier_ps.hbm.rows import _mix64, stable_name_hash

__all__ = ["Admission", "CountMinSketch"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class CountMinSketch:
    """Counts uint64 keys in ``depth`` rows of int32 counters that saturate at `cap`.

    Args:
        nbytes: memory of the counters (at least 16 counters per row are used).
        salt: separates the hash functions of different tables.
        cap: counters stop here (so they never overflow; admission needs no more).
        depth: hash functions (rows).
    """

    def __init__(self, nbytes: int, salt: int, cap: int, depth: int = 4) -> None:
        self.depth, self.cap = depth, min(int(cap), 2**31 - 1)
        self.width = max(16, int(nbytes) // (4 * depth))
        self.counters = np.zeros((depth, self.width), np.int32)
        with np.errstate(over="ignore"):
            base = np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
            self._salts = _mix64(base + (np.arange(1, depth + 1, dtype=np.uint64) * _GOLDEN))

    def cols(self, keys: np.ndarray) -> np.ndarray:
        """int64[depth, n]: the counter of each key in each row."""
        with np.errstate(over="ignore"):
            h = _mix64(keys.astype(np.uint64, copy=False)[None, :] ^ self._salts[:, None])
        return (h % np.uint64(self.width)).astype(np.int64)

    def estimate(self, keys: np.ndarray) -> np.ndarray:
        """int64[n]: min(true count, cap) <= estimate <= cap, for keys uint64[n]."""
        cols = self.cols(keys)
        return self.counters[np.arange(self.depth)[:, None], cols].min(axis=0).astype(np.int64)

    def estimate_running(self, keys: np.ndarray, steps: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Estimates along a sequence of steps, then adds everything.

        Args:
            keys: uint64[p] keys; (key, step) pairs unique.
            steps: int64[p] step (batch) of each pair, >= 0.
            counts: int64[p] occurrences of the key in that step.

        Returns:
            int64[p]: each key's estimate at the end of its step, as if the steps had been added one at a time
            (the counts of every key in steps up to and including it).
        """
        counts = np.asarray(counts, np.int64)
        steps = np.asarray(steps, np.int64)
        cols = self.cols(keys)
        n_steps = int(steps.max()) + 1 if len(steps) else 1
        est = np.full(len(keys), np.iinfo(np.int64).max, np.int64)
        for d in range(self.depth):
            col = cols[d]
            group = col * n_steps + steps  # one group per (counter, step)
            order = np.argsort(group, kind="stable")
            g, c = group[order], counts[order]
            cum = np.cumsum(c)
            last_of_group = np.flatnonzero(np.r_[g[1:] != g[:-1], True])
            group_id = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
            through_step = cum[last_of_group][group_id]
            col_s = col[order]
            col_start = np.r_[True, col_s[1:] != col_s[:-1]]
            before_col = (cum - c)[col_start][np.cumsum(col_start) - 1]
            value = np.empty(len(keys), np.int64)
            value[order] = self.counters[d, col_s].astype(np.int64) + through_step - before_col
            np.minimum(est, value, out=est)
            added = np.bincount(col, weights=counts, minlength=self.width).astype(np.int64)
            self.counters[d] = np.minimum(self.counters[d].astype(np.int64) + added, self.cap).astype(np.int32)
        return est


class Admission:
    """Admission filters of the tables that have one.

    Args:
        tables: table name -> its admission config (tables without admission are left out).
    """

    def __init__(self, tables: dict[str, AdmissionConfig]) -> None:
        self.min_count = {n: c.min_count for n, c in tables.items()}
        self.sketches = {
            n: CountMinSketch(int(c.sketch_bytes), stable_name_hash(n), c.min_count) for n, c in tables.items()
        }

    def __contains__(self, table: str) -> bool:
        return table in self.sketches

    def __bool__(self) -> bool:
        return bool(self.sketches)

    def admit(self, table: str, keys: np.ndarray, batches: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Counts a training pass's occurrences and decides, per (key, batch), whether the key has a row there.

        Args:
            table: table name (one with admission).
            keys: uint64[p] keys, with batches int64[p] the batch (within the pass) and counts int64[p] the
                occurrences of each (key, batch) pair; pairs unique.

        Returns:
            bool[p]: the key has occurred ``min_count`` times by the end of that batch (admitted from there on).
        """
        return self.sketches[table].estimate_running(keys, batches, counts) >= self.min_count[table]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sketches' counters as tensors (for checkpoints loaded with ``weights_only=True``)."""
        return {n: torch.from_numpy(s.counters.copy()) for n, s in self.sketches.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores what :meth:`state_dict` returned; a sketch of another size is an error."""
        for n, s in self.sketches.items():
            if n not in state:
                raise ValueError(f"checkpoint has no admission sketch for table {n!r}")
            counters = state[n].cpu().numpy()
            if counters.shape != s.counters.shape:
                raise ValueError(
                    f"admission sketch of table {n!r} is {counters.shape} in the checkpoint but {s.counters.shape} "
                    "in the config (sketch_bytes changed?)"
                )
            s.counters[...] = counters
