"""One table of the SSD store: its append-only data and checksum files and its in-memory key index.

A data file holds fixed-size records of ``width`` float32 (``4 * width`` bytes); its checksum file, one uint32 per
record (see :func:`hier_ps.ssd.files.row_checksums`). The key index is two parallel arrays, sorted keys and their
record slots, searched with ``np.searchsorted`` and updated by inserting the (sorted) new keys.

Writes hand the caller's rows to ``pwrite`` as they are, in 8 MiB chunks from a writer thread that also starts each
chunk's write-back (``sync_file_range``), while the calling thread computes their checksums.

Reads: when a sample of the rows' pages is in the page cache, rows are gathered from a memory map (normal advice,
so a fault maps the cached pages around it too) by torch's multithreaded ``index_select``, then checksums are
verified in chunks of 32k rows on the read pool's threads. Otherwise reads visit the file in slot order, window by
window (16 MiB). A window whose rows touch at least 1/4 of its pages, and whose pages are not cached (``mincore``),
is read with one ``preadv`` of the span its rows cover: sequential I/O, one system call, several windows in flight
on the pool. Every other row is copied from a map advised ``MADV_RANDOM`` (no read-around, which would pull in 32x the
bytes for scattered rows), after one ``POSIX_FADV_WILLNEED`` per run of their pages has queued all their reads at
once (a page fault at a time would keep one read in flight per thread). Rows land in the caller's order either way.
Numbers: ``benchmarks/RESULTS.md`` (ssd_bench).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hier_ps.errors import StoreError
from hier_ps.ssd.files import WriteHook, call_hook, row_checksums, start_writeback, write_at

__all__ = ["DataFile", "KeyIndex", "in_sorted", "is_sorted", "search_sorted", "sorted_lookup", "sums_path", "take_rows"]

#: Reads are planned per window of this many bytes of the data file.
WINDOW_BYTES = 16 << 20
_PAGE = 4096
_DENSE_PAGE_SHARE = 1 / 4
#: Appends are packed and written in chunks of this many bytes (two buffers: one packed while the other is written).
WRITE_CHUNK_BYTES = 8 << 20
_CHUNK_ROWS = 32768  # rows per job of a gather from the map and of a checksum check (~9 MiB at dim 64: fits L3)
_SAMPLE = 64  # rows probed for page-cache residency before planning a read
_SUMS = -1  # key of the checksum file's map
_SEARCH_BLOCK = 1 << 15  # sorted queries per block of search_sorted


@functools.cache
def _mincore() -> Callable[[int, int, int], int] | None:
    """libc's ``mincore(addr, length, vec)`` (page-cache residency of mapped pages), or None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def take_rows(src: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = src[idx]`` for rows: src float32[n, w] (a read-only map), idx int64[m], out float32[m, w] contiguous.

    Through torch's ``index_select``, which copies rows on all of torch's threads and ran 2-2.5x faster than numpy's
    fancy indexing in one thread on the development VM (600k rows of 276 B: 81 ms vs 176-210 ms, the cores shared).
    """
    import torch  # a dependency of hier_ps anyway; imported here so that importing the store stays light

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the map is read-only: it is only read
        torch.index_select(torch.from_numpy(src), 0, torch.from_numpy(idx), out=torch.from_numpy(out))


def is_sorted(keys: np.ndarray) -> bool:
    """Whether `keys` (uint64[n]) strictly increase (one vectorized pass, no sort)."""
    return bool(len(keys) < 2 or (keys[1:] > keys[:-1]).all())


def in_sorted(index_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where `keys` uint64[n] sit in a sorted uint64[m] array: (position int64[n] clipped to the array, found bool[n]).

    One binary search per key, no sort of `index_keys` (``np.isin`` would sort both arrays on every call).
    """
    if not len(index_keys):
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(index_keys, keys), len(index_keys) - 1)
    return pos, index_keys[pos] == keys


def search_sorted(index_keys: np.ndarray, sk: np.ndarray, pool: Executor | None = None) -> np.ndarray:
    """``np.searchsorted(index_keys, sk)`` for sorted `sk` (uint64[n]), block by block of 32k queries -> int64[n].

    Each block is searched only in the part of the index between its first query and the next block's, a slice
    that fits in the CPU cache: 1.6x faster than one search in one thread, 3.2x on a pool of 4 (3M sorted keys in a
    10M-key index on the development VM).
    """
    b = _SEARCH_BLOCK
    if len(sk) <= b:
        return np.searchsorted(index_keys, sk)
    out = np.empty(len(sk), np.int64)
    bounds = np.r_[np.searchsorted(index_keys, sk[::b]), len(index_keys)].tolist()

    def block(i: int) -> None:
        lo, hi = bounds[i], bounds[i + 1]
        out[i * b : (i + 1) * b] = np.searchsorted(index_keys[lo:hi], sk[i * b : (i + 1) * b]) + lo

    if pool is None:
        for i in range(len(bounds) - 1):
            block(i)
    else:
        for f in [pool.submit(block, i) for i in range(len(bounds) - 1)]:
            f.result()
    return out


def sorted_lookup(
    index_keys: np.ndarray, index_slots: np.ndarray, keys: np.ndarray, pool: Executor | None = None
) -> tuple[np.ndarray, ...]:
    """Looks `keys` up in a sorted index, searching them in sorted order (cache-friendly: ~20x faster for 1M keys).

    Args:
        index_keys: uint64[m], sorted.
        index_slots: int64[m], the slot of each index key.
        keys: uint64[n], unique, any order.

    Returns:
        (order int64[n], pos int64[n], found bool[n], slots int64[n]): ``keys[order]`` is sorted; for that sorted
        sequence, ``pos`` is its insertion point in the index, ``found`` whether it is there and ``slots`` its slot
        (meaningless where not found).
    """
    if is_sorted(keys):  # a pass plan's and a write-back's keys already are: skip the sort
        order, sk = np.arange(len(keys)), keys
    else:
        order = np.argsort(keys)  # keys are unique: any sort is stable
        sk = keys[order]
    pos = search_sorted(index_keys, sk, pool)
    if not len(index_keys):
        return order, pos, np.zeros(len(keys), bool), np.zeros(len(keys), np.int64)
    clipped = np.minimum(pos, len(index_keys) - 1)
    return order, pos, index_keys[clipped] == sk, index_slots[clipped]


class KeyIndex:
    """Sorted uint64 keys and their int64 record slots.

    Inserts and removals build new arrays; rewriting known keys changes their slots in place. Callers serialize
    lookups and updates (the store holds a mutex around both); a lookup returns copies, and the rows at old slots
    stay in the append-only file, so a read that looked its keys up before a write still reads a consistent set.

    Args:
        keys: uint64[m], sorted, unique.
        slots: int64[m], the record of each key.
    """

    def __init__(self, keys: np.ndarray | None = None, slots: np.ndarray | None = None) -> None:
        self.keys = np.zeros(0, np.uint64) if keys is None else keys
        self.slots = np.zeros(0, np.int64) if slots is None else slots

    def __len__(self) -> int:
        return len(self.keys)

    def plan_put(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The searches of a :meth:`put` of keys (uint64[n], unique) -> (order, pos, found); changes nothing.

        A writer can run them while its rows are being written, then apply them (no other update may come between).
        """
        order, pos, found, _ = sorted_lookup(self.keys, self.slots, keys)
        return order, pos, found

    def put(
        self, keys: np.ndarray, slots: np.ndarray, plan: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ) -> None:
        """Points keys (uint64[n], unique) at slots (int64[n]), inserting the new ones in order.

        `plan` is :meth:`plan_put` of the same keys on the index as it is now, if already computed.
        """
        if not len(keys):
            return
        order, pos, found = plan if plan is not None else self.plan_put(keys)
        sk, ss = keys[order], slots[order]
        add = ~found
        if add.any():
            new_slots = self.slots.copy()
            new_slots[pos[found]] = ss[found]
            self.keys, self.slots = np.insert(self.keys, pos[add], sk[add]), np.insert(new_slots, pos[add], ss[add])
        else:
            self.slots[pos] = ss  # a write-back of known keys: in place, no copy of the whole index

    def remove(self, keys: np.ndarray) -> None:
        """Drops keys (uint64[n]); absent keys are ignored."""
        if not len(keys) or not len(self.keys):
            return
        _, pos, found, _ = sorted_lookup(self.keys, self.slots, keys)
        if found.any():
            keep = np.ones(len(self.keys), bool)
            keep[pos[found]] = False
            self.keys, self.slots = self.keys[keep], self.slots[keep]

    def lookup(self, keys: np.ndarray, pool: Executor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (slots int64[n], found bool[n]) of keys (uint64[n], unique), in the caller's order (searched on
        `pool`'s threads where given)."""
        order, _, found_s, slots_s = sorted_lookup(self.keys, self.slots, keys, pool)
        if len(order) and order[-1] == len(order) - 1 and order[0] == 0 and is_sorted(keys):
            return slots_s, found_s  # keys were sorted: already in the caller's order
        slots = np.empty(len(keys), np.int64)
        found = np.empty(len(keys), bool)
        slots[order], found[order] = slots_s, found_s
        return slots, found


def sums_path(path: Path) -> Path:
    """The checksum file beside a data file: ``<name>.rows`` -> ``<name>.sums``."""
    return path.with_name(path.name.removesuffix(".rows") + ".sums")


class DataFile:
    """A table's append-only data file of ``width`` float32 per record, and its checksum file of one uint32 each.

    Keeping the checksums in their own file lets a write send the caller's rows to the file as they are (no packing
    copy) and a read return them contiguous.

    Args:
        path: the data file (created if missing, with its checksum file :func:`sums_path`).
        width: row width in float32 units.
        committed_rows: records the last commit covers; anything after them is cut away.

    Raises:
        StoreError: the data or checksum file is shorter than its last commit says.
    """

    def __init__(self, path: Path, width: int, committed_rows: int, *, readonly: bool = False) -> None:
        self.path, self.width = path, width
        self.sums_path = sums_path(path)
        self.row_bytes = 4 * width
        self.fd = self.sfd = -1
        try:
            self.fd = self._open(path, committed_rows * self.row_bytes, committed_rows, readonly)
            self.sfd = self._open(self.sums_path, committed_rows * 4, committed_rows, readonly)
        except BaseException:
            self.close()
            raise
        self.n_slots = committed_rows
        self._map: dict[int, np.ndarray] | None = None  # madvise advice (or _SUMS) -> a map of the file
        self._local = threading.local()
        self._wpool: ThreadPoolExecutor | None = None

    @staticmethod
    def _open(path: Path, need: int, committed_rows: int, readonly: bool) -> int:
        """Opens one of the two files and cuts it back to `need` bytes (what the last commit covers) -> its fd."""
        if readonly and not committed_rows and not path.exists():
            return os.open(os.devnull, os.O_RDONLY)  # a table with no rows yet: nothing to read, nothing to make
        fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        if size < need:
            os.close(fd)
            raise StoreError(f"{path}: file holds {size} bytes, its last commit needs {need} (truncated store)")
        if size > need and not readonly:
            os.ftruncate(fd, need)  # rows appended after that commit
        return fd

    def append(self, rows: np.ndarray, hook: WriteHook | None = None) -> np.ndarray:
        """Appends rows float32[n, width] and their checksums -> their slots int64[n] (not yet indexed).

        The rows go to the file as they are, chunk by chunk, from a writer thread that also starts each chunk's
        write-back to the disk (``sync_file_range``), while this thread computes the chunks' checksums: so the
        checksums, the copy into the page cache and the disk's work overlap, and the commit's fsync finds little
        left to do. `hook` is called once, before anything is written (fault injection in tests).

        Raises:
            StoreError: a write failed (disk full, ...), naming the file; the rows are not appended.
        """
        n, rb = len(rows), self.row_bytes
        call_hook(hook, self.path, n * rb)
        rows = np.ascontiguousarray(rows, np.float32)
        sums = np.empty(n, np.uint32)
        step = max(1, WRITE_CHUNK_BYTES // rb)
        writer = self._writer() if n > step else None
        pending: list[Future] = []
        try:
            for a in range(0, n, step):
                chunk, off = rows[a : a + step], (self.n_slots + a) * rb
                if writer is None:
                    self._write_chunk(chunk, off)
                else:
                    pending.append(writer.submit(self._write_chunk, chunk, off))
                sums[a : a + step] = row_checksums(chunk)
        finally:
            for f in pending:  # wait for every write, failed or not, before returning or raising
                f.exception()
        for f in pending:
            f.result()
        write_at(self.sfd, self.sums_path, sums.view(np.uint8), self.n_slots * 4, None)
        slots = np.arange(self.n_slots, self.n_slots + n, dtype=np.int64)
        self.n_slots += n
        return slots

    def _write_chunk(self, chunk: np.ndarray, offset: int) -> None:
        """pwrite of rows float32[k, width] at `offset`, then their write-back to the disk is started."""
        data = chunk.reshape(-1).view(np.uint8)
        write_at(self.fd, self.path, data, offset, None)
        start_writeback(self.fd, offset, len(data))

    def _writer(self) -> ThreadPoolExecutor:
        if self._wpool is None:
            self._wpool = ThreadPoolExecutor(1, thread_name_prefix="ssd-write")
        return self._wpool

    def sync(self) -> None:
        """Makes the appended records durable (fdatasync: each file's size is flushed with its data)."""
        for job in self.sync_jobs():
            job()

    def sync_jobs(self) -> list[Callable[[], None]]:
        """The two fdatasyncs of :meth:`sync`, to run side by side (each one mostly waits for the disk)."""
        return [functools.partial(os.fdatasync, self.fd), functools.partial(os.fdatasync, self.sfd)]

    def gather(self, slots: np.ndarray, pool: Executor | None = None) -> np.ndarray:
        """Reads the records at `slots` (int64[m], any order) -> rows float32[m, width] in that order.

        Windows of the file worth one sequential read (dense, not in the page cache) are read whole, in slot order;
        every other row is copied from a memory map (see the module docstring). With a `pool`, chunks of rows and
        windows are read, and checksums verified, by its threads, which keeps several I/Os in flight and both cores
        busy. Every checksum is verified.

        Raises:
            StoreError: a checksum mismatch or a short read (a damaged data file), naming the file and the row.
        """
        w = self.width
        if not len(slots):
            return np.zeros((0, w), np.float32)
        raw = np.empty((len(slots), w), np.float32)
        view = self._view()
        # A sample of rows first: a batch whose pages are all cached is copied from the map in one multithreaded
        # gather (no planning), then verified chunk by chunk on the pool.
        sample = slots[np.linspace(0, len(slots) - 1, min(len(slots), _SAMPLE), dtype=np.int64)].tolist()
        c = _CHUNK_ROWS
        if self._probe(view, sample) is True:
            take_rows(self._view(mmap.MADV_NORMAL), slots, raw)
            self._run(pool, [(self._verify, (raw[a : a + c], slots[a : a + c])) for a in range(0, len(slots), c)])
            return raw
        order, spans, by_map = self._plan(view, slots)
        maps = {adv: self._view(adv) for adv in by_map}
        if by_map[mmap.MADV_RANDOM]:
            self._prefetch(slots[order[np.concatenate(by_map[mmap.MADV_RANDOM])]])

        def from_map(adv: int, pos: np.ndarray) -> None:
            raw[pos] = maps[adv][slots[pos]]  # a copy if cached; else a fault per page (MADV_RANDOM: no read-around)

        jobs = [(self._read_span, (order[idx], slots, raw)) for idx in spans]
        for adv, parts in by_map.items():
            # In the caller's order: consecutive rows of `raw` are written one after the other.
            mapped = np.sort(order[np.concatenate(parts)]) if parts else np.zeros(0, np.int64)
            # Scattered rows that are not cached cost a page read each: at least 16 jobs keep I/Os in flight.
            step = _CHUNK_ROWS if adv == mmap.MADV_NORMAL else min(_CHUNK_ROWS, max(512, -(-len(mapped) // 16)))
            jobs += [(from_map, (adv, mapped[a : a + step])) for a in range(0, len(mapped), step)]
        self._run(pool, jobs)
        self._run(pool, [(self._verify, (raw[a : a + c], slots[a : a + c])) for a in range(0, len(slots), c)])
        return raw

    def _prefetch(self, ss: np.ndarray) -> None:
        """Asks the kernel to start reading the pages of the records at sorted slots `ss` (POSIX_FADV_WILLNEED).

        One hint per run of consecutive pages, all issued before the rows are copied: the disk then works on many
        reads at once instead of one page fault at a time. Pages already cached cost only the call.
        """
        if not len(ss):
            return
        rb = self.row_bytes
        pages = np.unique(np.concatenate([ss * rb // _PAGE, ((ss + 1) * rb - 1) // _PAGE]))
        cut = np.flatnonzero(np.diff(pages) != 1) + 1
        starts, ends = pages[np.r_[0, cut]], pages[np.r_[cut - 1, len(pages) - 1]]
        advise, willneed = os.posix_fadvise, os.POSIX_FADV_WILLNEED
        for off, length in zip((starts * _PAGE).tolist(), ((ends - starts + 1) * _PAGE).tolist(), strict=True):
            advise(self.fd, off, length, willneed)

    @staticmethod
    def _run(pool: Executor | None, jobs: list[tuple[Callable, tuple]]) -> None:
        """Runs (fn, args) jobs, on the pool's threads when there is a pool and more than one job."""
        if pool is None or len(jobs) == 1:
            for fn, args in jobs:
                fn(*args)
        else:
            for f in [pool.submit(fn, *args) for fn, args in jobs]:
                f.result()

    def _verify(self, raw: np.ndarray, slots: np.ndarray) -> None:
        """Checks the rows raw float32[k, width] read from `slots` int64[k] against their checksums."""
        bad = row_checksums(raw) != self._sums()[slots]
        if bad.any():
            raise StoreError(
                f"{self.path}: checksum mismatch in row {int(slots[np.argmax(bad)])} (corrupt data file, or its "
                f"checksum file {self.sums_path.name})"
            )

    def _plan(self, view: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], dict[int, list]]:
        """Decides how to read each record -> (order, spans, mapped).

        ``order`` sorts `slots`; ``spans`` are lists of positions in that sorted order to read with one preadv each,
        ``mapped`` maps an madvise advice to the sorted positions to copy from a map with that advice. Scattered
        rows go through the ``MADV_RANDOM`` map whatever their state (a fault per page when not cached, without
        read-around). Cached rows of dense windows go through an ``MADV_NORMAL`` map, whose faults map the cached
        pages around them too. A window dense enough for one sequential read gets it only for its rows not already
        in the page cache, and only while those are still dense enough: reading cached pages again would be a
        wasted copy.
        """
        order = np.argsort(slots)
        ss = slots[order]
        dense = self._dense_windows(ss)
        spans: list[np.ndarray] = []
        scattered, cached_rows = [np.flatnonzero(~dense)], []
        for idx in self._windows(ss, np.flatnonzero(dense)):
            # A few rows' pages first (page-cache state comes in large runs); the whole window only when mixed.
            probe = self._probe(view, ss[idx[np.linspace(0, len(idx) - 1, 4, dtype=np.int64)]].tolist())
            cached = np.full(len(idx), probe) if probe is not None else self._resident(view, ss[idx])
            cold = idx[~cached]
            cached_rows.append(idx[cached])
            if len(cold) and self._dense_windows(ss[cold])[0]:
                spans.append(cold)
            else:
                scattered.append(cold)
        return order, spans, {mmap.MADV_RANDOM: scattered, mmap.MADV_NORMAL: cached_rows}

    def _windows(self, ss: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
        """Splits `idx` (positions in the sorted slots `ss`, ascending) by the window of ss[idx]."""
        if not len(idx):
            return []
        wid = ss[idx] // max(WINDOW_BYTES // self.row_bytes, 1)
        return np.split(idx, np.flatnonzero(wid[1:] != wid[:-1]) + 1)

    def _dense_windows(self, ss: np.ndarray) -> np.ndarray:
        """For sorted slots `ss` (int64[m]): whether each one's window is worth one sequential read -> bool[m].

        That is when the window's rows touch at least 1/8 of its pages (the expected share for rows spread evenly
        over the span they cover): one read of the span then costs less than that many random page reads, even
        with several in flight.
        """
        rb = self.row_bytes
        wid = ss // max(WINDOW_BYTES // rb, 1)
        cut = np.flatnonzero(wid[1:] != wid[:-1]) + 1
        starts, ends = np.r_[0, cut], np.r_[cut, len(ss)]
        density = (ends - starts) / (ss[ends - 1] - ss[starts] + 1)
        touched = 1 - (1 - density) ** (_PAGE / rb) if rb < _PAGE else density
        return np.repeat(touched >= _DENSE_PAGE_SHARE, ends - starts)

    def _read_span(self, pos: np.ndarray, slots: np.ndarray, raw: np.ndarray) -> None:
        """One preadv of the records from slots[pos[0]] to slots[pos[-1]] (ascending); they go to raw[pos]."""
        rb = self.row_bytes
        sp = slots[pos]
        lo = int(sp[0])
        nbytes = (int(sp[-1]) - lo + 1) * rb
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:  # one buffer per thread, reused: no page faults on fresh memory
            buf = self._local.buf = np.empty(max(nbytes, WINDOW_BYTES + rb), np.uint8)
        got = os.preadv(self.fd, [memoryview(buf)[:nbytes]], lo * rb)
        if got != nbytes:
            raise StoreError(f"{self.path}: short read at row {lo} (truncated data file)")
        raw[pos] = buf[:nbytes].view(np.float32).reshape(-1, self.width)[sp - lo]

    def _probe(self, view: np.ndarray, slots: list[int]) -> bool | None:
        """Whether the records at these few slots are all in the page cache (True), none are (False), or mixed."""
        fn, rb = _mincore(), self.row_bytes
        if fn is None:
            return False
        vec = (ctypes.c_ubyte * (rb // _PAGE + 2))()
        seen = set()
        for slot in slots:
            p, q = slot * rb // _PAGE, ((slot + 1) * rb - 1) // _PAGE
            if fn(view.ctypes.data + p * _PAGE, (q - p + 1) * _PAGE, vec) != 0:
                return False
            seen.add(all(vec[i] & 1 for i in range(q - p + 1)))
        return seen.pop() if len(seen) == 1 else None

    def _resident(self, view: np.ndarray, ss: np.ndarray) -> np.ndarray:
        """Whether each record at the sorted slots `ss` (int64[m]) is in the page cache -> bool[m].

        One ``mincore`` over the pages from the first record to the last; all False where mincore is unavailable.
        """
        fn = _mincore()
        rb = self.row_bytes
        first, last = ss * rb // _PAGE, ((ss + 1) * rb - 1) // _PAGE
        p0 = int(first[0])
        n_pages = int(last[-1]) - p0 + 1
        vec = np.zeros(n_pages, np.uint8)
        if fn is None or fn(view.ctypes.data + p0 * _PAGE, n_pages * _PAGE, vec.ctypes.data) != 0:
            return np.zeros(len(ss), bool)
        vec &= 1
        return (vec[first - p0] & vec[last - p0]).astype(bool)

    def _view(self, advice: int = mmap.MADV_RANDOM) -> np.ndarray:
        """float32[n_slots, width] over a read-only map of the data file with this madvise advice, remapped when
        the file has grown."""
        return self._mapped(advice, self.fd, self.width, np.float32)

    def _sums(self) -> np.ndarray:
        """uint32[n_slots]: the checksums, over a map of the checksum file (small: 4 bytes a row; read-around is
        welcome there)."""
        return self._mapped(_SUMS, self.sfd, 1, np.uint32)[:, 0]

    def _mapped(self, key: int, fd: int, width: int, dtype: type) -> np.ndarray:
        maps = self._map if self._map is not None else {}
        view, n = maps.get(key), self.n_slots  # n read once: a write in another thread may append meanwhile
        if view is None or view.shape[0] < n:
            if n == 0:
                return np.zeros((0, width), dtype)
            mm = mmap.mmap(fd, n * width * 4, prot=mmap.PROT_READ)
            mm.madvise(mmap.MADV_NORMAL if key == _SUMS else key)
            view = np.frombuffer(mm, dtype).reshape(n, width)
            self._map = {**maps, key: view}  # a new dict: a reader in another thread keeps the one it took
        return view

    def drop_cache(self) -> None:
        """Unmaps the files and asks the kernel to drop their clean pages from the page cache (for cold reads)."""
        self._map = None  # mapped pages cannot be dropped
        for fd in (self.fd, self.sfd):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Closes the data and checksum files."""
        self._map = None
        if self._wpool is not None:
            self._wpool.shutdown()
            self._wpool = None
        for fd in (self.fd, self.sfd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.sfd = -1
