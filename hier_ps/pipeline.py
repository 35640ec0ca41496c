"""The read + plan stages of the next pass, run in a background thread while the current pass trains.

A :class:`PassFeeder` walks the training data pass after pass (epochs, the data cursor of a resumed run, the pass
limit), and for each pass reads its examples, shuffles them if asked and plans them, one pass ahead of the trainer.
At most one planned pass waits, or (``in_flight``) at most two passes are planned and not yet done: the one training
and the next. Reading and planning touch no tier, so they cannot see a stale row; pull, load and push stay in pass
order (the trainer's stager pulls and pushes beside training: :mod:`hier_ps.stager`). The admission
sketch is updated by planning, in pass order as before; each item carries the sketch as it was
right after its own planning, which is what a checkpoint after that pass must save.

Example:
    >>> feeder = PassFeeder(reader.iter_chunks, plan_fn, start=(0, 0, 0), epochs=1,    # doctest: +SKIP
    ...                     pass_examples=500_000, max_passes=None)
    >>> item = feeder.get()  # PassItem | None                                          # doctest: +SKIP
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hier_ps.data import ExampleChunk
from hier_ps.errors import HierPSError
from hier_ps.ssd.table import in_sorted

__all__ = ["PassFeeder", "PassItem", "cut_passes_by_budget"]


@dataclass
class PassItem:
    """One pass, read and planned.

    Attributes:
        plan: the PassPlan (its ``chunk`` holds the examples).
        epoch: the pass's epoch.
        pass_in_epoch: its index within the epoch.
        pass_index: its global index.
        seconds: {"read": ..., "plan": ...} spent on it in the background.
        extra: what `plan_fn` returned beside the plan (e.g. the admission sketch after planning).
    """

    plan: Any
    epoch: int
    pass_in_epoch: int
    pass_index: int
    seconds: dict[str, float]
    extra: Any = None
    _end: bool | BaseException | None = field(default=None, repr=False)
    _end_known: threading.Event = field(default_factory=threading.Event, repr=False)

    def set_end_of_epoch(self, end: bool | BaseException) -> None:
        """What reading the next pass found: the epoch ended (bool), or the error reading it raised."""
        self._end = end
        self._end_known.set()

    @property
    def end_of_epoch(self) -> bool:
        """It is the epoch's last pass. The feeder hands a pass over before it reads the next one (so that the
        first pass need not wait for the second's read); this waits for that read, and re-raises its error."""
        self._end_known.wait()
        if isinstance(self._end, BaseException):
            raise self._end
        return bool(self._end)


@dataclass
class _Failure:
    error: BaseException


@dataclass
class PassFeeder:
    """Reads and plans passes one ahead in a daemon thread.

    Args:
        chunks: ``chunks(pass_examples)`` -> an iterator of one epoch's passes (a new one per epoch).
        plan_fn: ``plan_fn(chunk, epoch, pass_index) -> (plan, extra)``; called in pass order.
        start: (epoch, pass_in_epoch, pass_index) of the first pass to produce (a resumed run's data cursor).
        epochs: epochs in all.
        pass_examples: examples per pass.
        max_passes: stop before this global pass index (None: no limit).
        prefetch: planned passes that may wait (1: two passes in flight with the one training).
        in_flight: with a number, at most this many passes are planned and not yet :meth:`done` (the consumer
            calls ``done()`` after each pass): a bound on memory for a consumer that takes passes early (the
            trainer's stager pulls pass k+1 while pass k trains). None: only `prefetch` bounds the look-ahead.
    """

    chunks: Callable[[int], Iterator[Any]]
    plan_fn: Callable[[Any, int, int], tuple[Any, Any]]
    start: tuple[int, int, int]
    epochs: int
    pass_examples: int
    max_passes: int | None
    prefetch: int = 1
    in_flight: int | None = None
    _queue: queue.Queue = field(init=False)
    _slots: threading.Semaphore | None = field(init=False, default=None)
    _stop: threading.Event = field(init=False)
    _thread: threading.Thread | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        if self.in_flight is not None:
            self._slots = threading.Semaphore(self.in_flight)

    def _acquire(self) -> bool:
        """A slot for one more pass in flight (waits for ``done()``); False when stopped."""
        if self._slots is None:
            return True
        while not self._stop.is_set():
            if self._slots.acquire(timeout=0.1):
                return True
        return False

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        waiting: PassItem | None = None  # handed over, its end of epoch not known yet
        try:
            epoch, skip, index = self.start
            while epoch < self.epochs and (self.max_passes is None or index < self.max_passes):
                it = iter(self.chunks(self.pass_examples))
                for _ in range(skip):  # passes of this epoch done before a resume: read, never trained twice
                    if next(it, None) is None:
                        break
                pos = skip
                t0 = time.perf_counter()
                chunk = next(it, None)
                read_s = time.perf_counter() - t0
                while chunk is not None and (self.max_passes is None or index < self.max_passes):
                    if not self._acquire():
                        return
                    t0 = time.perf_counter()
                    plan, extra = self.plan_fn(chunk, epoch, index)
                    plan_s = time.perf_counter() - t0
                    item = PassItem(plan, epoch, pos, index, {"read": read_s, "plan": plan_s}, extra)
                    if not self._put(item):
                        return
                    t0 = time.perf_counter()
                    waiting = item
                    nxt = next(it, None)  # one pass ahead within the epoch: was the item its last?
                    waiting = None
                    next_read_s = time.perf_counter() - t0
                    item.set_end_of_epoch(nxt is None)
                    chunk, read_s, pos, index = nxt, next_read_s, pos + 1, index + 1
                epoch, skip = epoch + 1, 0
            self._put(None)
        except BaseException as e:  # handed to the trainer's thread, raised there
            self._put(_Failure(e))
            if waiting is not None:  # the read after it failed: its end_of_epoch raises the error too
                waiting.set_end_of_epoch(e)

    def get(self) -> PassItem | None:
        """The next pass (waits for it), or None after the last one. Re-raises an error of the reading thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hier-ps-feeder", daemon=True)
            self._thread.start()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if self._stop.is_set():  # closed: a consumer in another thread must not wait forever
                    return None
        if isinstance(item, _Failure):
            raise item.error
        return item

    def done(self) -> None:
        """The consumer finished a pass: with `in_flight`, the feeder may plan one more."""
        if self._slots is not None:
            self._slots.release()

    def close(self) -> None:
        """Stops the thread (a pass it is planning is dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


class _DistinctCounter:
    """Distinct uint64 keys seen so far, in sorted runs merged now and then (cheap membership for small batches)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.count = 0

    def new_keys(self, keys: np.ndarray) -> np.ndarray:
        """The distinct keys of `keys` not seen yet (sorted)."""
        fresh = np.unique(keys)
        for run in self.runs:
            if not len(fresh):
                break
            fresh = fresh[~in_sorted(run, fresh)[1]]
        return fresh

    def add(self, fresh: np.ndarray) -> None:
        if len(fresh):
            self.runs.append(fresh)
            self.count += len(fresh)
        if len(self.runs) > 8:  # merge: keeps lookups at a few binary searches per key
            self.runs = [np.sort(np.concatenate(self.runs))]


def cut_passes_by_budget(
    batches: Iterator[ExampleChunk],
    slot_tables: dict[str, str],
    key_bytes: dict[str, int],
    budget: int,
    fixed_bytes: int = 0,
) -> Iterator[ExampleChunk]:
    """Cuts a stream of batches into passes whose working sets fit `budget` (``train.pass_examples: auto``).

    A pass takes whole batches, as many as fit: its device bytes are ``fixed_bytes`` plus, per table, its distinct
    keys times ``key_bytes[table]``. Passes are cut at batch boundaries, so batches (and results) are the same as
    with one big pass; the cut is a pure function of the data, so a resumed run cuts the same passes.

    Args:
        batches: the epoch's examples in batches of ``train.batch_size`` (the last may be short).
        slot_tables: slot -> table.
        key_bytes: table -> device bytes per key (embedding + optimizer state).
        budget: device bytes a pass's working set may take.
        fixed_bytes: bytes every pass takes whatever its keys (null rows of tables with admission).

    Raises:
        HierPSError: a single batch needs more than the budget.
    """
    by_table: dict[str, list[str]] = {}
    for slot, table in slot_tables.items():
        by_table.setdefault(table, []).append(slot)
    pending: list[ExampleChunk] = []
    seen = {t: _DistinctCounter() for t in by_table}
    used = fixed_bytes
    for b in batches:
        fresh = {t: np.concatenate([seen[t].new_keys(b.sparse[s][1]) for s in slots]) for t, slots in by_table.items()}
        fresh = {t: np.unique(k) for t, k in fresh.items()}
        extra = sum(len(k) * key_bytes[t] for t, k in fresh.items())
        if pending and used + extra > budget:
            yield ExampleChunk.concat(pending)
            pending, seen, used = [], {t: _DistinctCounter() for t in by_table}, fixed_bytes
            fresh = {t: np.unique(np.concatenate([b.sparse[s][1] for s in slots])) for t, slots in by_table.items()}
            extra = sum(len(k) * key_bytes[t] for t, k in fresh.items())
        if used + extra > budget:
            raise HierPSError(
                f"train.pass_examples=auto: one batch of {len(b)} examples needs {_size(used + extra)} for its "
                f"working set but store.hbm_bytes allows {_size(budget)}; lower train.batch_size or raise "
                "store.hbm_bytes"
            )
        for t, k in fresh.items():
            seen[t].add(k)
        used += extra
        pending.append(b)
    if pending:
        yield ExampleChunk.concat(pending)
