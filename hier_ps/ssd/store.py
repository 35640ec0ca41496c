"""SSD tier: a durable, log-structured, checksummed row store with atomic commits and compaction.

Layout of a store directory::

    LOCK                         flock'ed while a process has the store open for writing
    manifest.<gen>.json          one per commit, written last (temp + fsync + rename + fsync dir): per table its
                                 width, data file, committed row count, base index and the list of index deltas
    <table>.<epoch>.rows         append-only rows: width float32 each; never overwritten
    <table>.<epoch>.sums         one uint32 checksum per row of the .rows file beside it
    <table>.base.<gen>.bin       full key index (compaction, or a commit after 64 deltas): uint64 keys, int64 slots
    <table>.delta.<gen>.bin      what one commit changed: keys put (with their slots) and keys deleted

A write appends rows and updates the in-memory index (see :mod:`hier_ps.ssd.table`, which also holds the read path);
a commit writes only what changed since the previous commit (fdatasync of the new rows, whose write-back the write
already started; one small delta file per table, written beside that sync; the manifest), so its cost does not grow
with the store. Opening replays base + deltas of the chosen generation in one vectorized pass (each file's crc32 is
in the manifest) and cuts every data and checksum file back to that generation's committed length: after a crash at
any instant the store opens at exactly a committed state. Every row has a checksum, verified when it is read.
Compaction rewrites the live rows in key order into a new data file and a base index; the old files stay while an
older generation that needs them is retained (see ``retain``).

Example:
    >>> with SSDStore("/data/store", {"user": 84}) as store:  # table -> row width (float32)
    ...     store.write("user", keys, rows)  # keys uint64[n], rows float32[n, 84]
    ...     store.commit()  # durable, all together
    ...     rows, found = store.read("user", keys)  # rows float32[n, 84] in the order of keys, found bool[n]
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import shutil
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hier_ps.errors import StoreError, StoreLockedError
from hier_ps.ssd.files import WriteHook, atomic_write, fsync_dir, write_new
from hier_ps.ssd.table import DataFile, KeyIndex, is_sorted, sums_path

__all__ = ["SSDStore"]

log = logging.getLogger("hier_ps")

FORMAT = 3  # 3: checksums in their own file beside the rows (2 kept them inside each record)
_COMPACT_ROWS = 1 << 18  # rows per read+append step of compaction
_POOL_MIN_ROWS = 4096  # smaller reads stay in the calling thread
_MAX_DELTAS = 64  # index deltas per table before a commit writes a full index instead
_MANIFEST = re.compile(r"manifest\.(\d+)\.json")


def _manifest_name(gen: int) -> str:
    return f"manifest.{gen:010d}.json"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) + "-" + format(zlib.crc32(name.encode()), "08x")


class _Table:
    """One table as the store sees it: its manifest entry (data file, base index, deltas), index and data file.

    Construction loads and checks everything (crc of each index file, the data file's size) but opens nothing, so
    that a failed open changes nothing on disk; :meth:`open` then opens the data file, cutting uncommitted rows.
    """

    def __init__(self, store: SSDStore, name: str, width: int, entry: dict | None) -> None:
        self.name, self.width = name, width
        self.data = entry["data"] if entry else f"{_safe(name)}.0.rows"
        self.path = store.dir / self.data
        self.base = entry["base"] if entry else None
        self.deltas: list[dict] = list(entry["deltas"]) if entry else []
        self.committed = entry["rows"] if entry else 0
        # What changed since the last commit, in order: (keys, their new slots) of a write, (keys, None) of a delete.
        self.touched: list[tuple[np.ndarray, np.ndarray | None]] = []
        self.index = KeyIndex()
        if self.base:
            k, s = store.read_index(self.base)
            self.index = KeyIndex(k, s.view(np.int64))
        if self.deltas:
            self._replay([store.read_delta(d) for d in self.deltas])
        for path, need in ((self.path, self.committed * 4 * width), (sums_path(self.path), self.committed * 4)):
            size = path.stat().st_size if path.exists() else 0
            if size < need:
                raise StoreError(f"{path}: file holds {size} bytes, its last commit needs {need} (truncated store)")
        self.file: DataFile | None = None

    def _replay(self, deltas: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Applies index deltas (oldest first) in one go: the last one to touch a key decides its fate."""
        keys = np.concatenate([np.concatenate([p, d]) for p, _, d in deltas])
        slots = np.concatenate([np.concatenate([s, np.full(len(d), -1, np.int64)]) for _, s, d in deltas])
        seq = np.repeat(np.arange(len(deltas)), [len(p) + len(d) for p, _, d in deltas])
        order = np.lexsort((seq, keys))  # by key, then by delta
        last = order[np.r_[keys[order][1:] != keys[order][:-1], True]]
        dead = slots[last] < 0
        self.index.remove(keys[last[dead]])
        self.index.put(keys[last[~dead]], slots[last[~dead]])

    def open(self, readonly: bool = False) -> None:
        self.file = DataFile(self.path, self.width, self.committed, readonly=readonly)

    @property
    def f(self) -> DataFile:
        assert self.file is not None, "table not opened"
        return self.file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class SSDStore:
    """Durable row store (see the module docstring). Implements :class:`hier_ps.tier.RowTier`.

    Args:
        directory: store directory (created if missing).
        widths: table -> row width (float32 units). Tables missing from the store are added; tables in the store
            but not here are kept untouched.
        generation: open this committed generation instead of the newest (later ones are discarded).
        read_threads: threads a large read uses to keep several I/Os in flight and the cores busy (default: the
            CPU count, at least 4 and at most 8); 1 reads in the calling thread only.
        readonly: open to read only (exports): a shared lock, so that no writer can open the store meanwhile
            (several readers can); nothing on disk changes (later generations are kept, files are not cut); writes,
            deletes, commits and compaction raise StoreError.

    Raises:
        StoreLockedError: another process (or another SSDStore) has the directory open.
        StoreError: a manifest or index file is corrupt or missing, the generation does not exist, or a table's
            width differs from the store's.
    """

    def __init__(
        self,
        directory: str | Path,
        widths: dict[str, int],
        *,
        generation: int | None = None,
        read_threads: int | None = None,
        readonly: bool = False,
    ) -> None:
        self.dir = Path(directory)
        self.readonly = readonly
        if readonly:
            if not (self.dir / "LOCK").is_file():
                raise StoreError(f"'{self.dir}' is not a store directory (no LOCK file)")
            self._lock_fd: int | None = os.open(self.dir / "LOCK", os.O_RDONLY)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreLockedError(
                f"store directory '{self.dir}' is in use by another process (lock file {self.dir / 'LOCK'})"
            ) from None
        self.write_hook: WriteHook | None = None
        # bytes count a row with its checksum: what moves to and from the disk
        self.stats = {"rows_read": 0, "rows_written": 0, "bytes_read": 0, "bytes_written": 0, "commits": 0}
        self.tables: dict[str, _Table] = {}
        self._mutex = threading.Lock()
        self._failed: str | None = None
        # Threads mostly wait for the disk on cold reads: at least 4, so that several reads are in flight.
        self._read_threads = read_threads if read_threads is not None else min(8, max(4, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._hpool: ThreadPoolExecutor | None = None
        try:
            self._open(widths, generation)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def generations(self) -> list[int]:
        """Committed generations that can be opened, oldest first."""
        gens = (_MANIFEST.fullmatch(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in gens if m)

    def _open(self, widths: dict[str, int], generation: int | None) -> None:
        gens = self.generations()
        if generation is not None and generation not in gens and not (generation == 0 and not gens):
            raise StoreError(f"store '{self.dir}' has no generation {generation} (has: {gens or 'none'})")
        gen = generation if generation is not None else (gens[-1] if gens else 0)
        manifest = {"format": FORMAT, "generation": 0, "tables": {}}
        if gen:
            path = self.dir / _manifest_name(gen)
            try:
                manifest = json.loads(path.read_text())
                manifest["tables"]
            except (OSError, ValueError, KeyError, TypeError):
                raise StoreError(f"{path}: corrupt or unreadable manifest") from None
            if manifest.get("format") != FORMAT:
                raise StoreError(
                    f"{path}: store format {manifest.get('format')}, this version of hier_ps reads format {FORMAT} "
                    "only (re-create the store, or open it with the version that wrote it)"
                )
        self.generation = gen
        self._entries: dict[str, dict] = dict(manifest["tables"])
        mpath = self.dir / _manifest_name(gen)
        for name, width in widths.items():
            entry = self._entries.get(name)
            try:
                if entry is not None and entry["width"] != width:
                    raise StoreError(
                        f"store '{self.dir}': table {name!r} has row width {entry['width']} on disk but "
                        f"{width} in the config (dim or optimizer changed?)"
                    )
                self.tables[name] = _Table(self, name, width, entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise StoreError(f"{mpath}: corrupt manifest (entry of table {name!r})") from None
        if self.readonly:
            for t in self.tables.values():
                t.open(readonly=True)
            return
        # Only now that every table has loaded: forget later generations (durably) before cutting data files back
        # to this one, so that no surviving manifest ever points past the end of a data file.
        later = [g for g in self.generations() if g > gen]
        for g in later:
            (self.dir / _manifest_name(g)).unlink()
        if later:
            fsync_dir(self.dir)
        for t in self.tables.values():
            t.open()
        self._cleanup()

    def _cleanup(self) -> None:
        """Deletes data and index files that no retained manifest (nor the open tables) references."""
        keep = {"LOCK"} | {_manifest_name(g) for g in self.generations()}
        for g in self.generations():
            try:
                m = json.loads((self.dir / _manifest_name(g)).read_text()) if g != self.generation else None
            except (OSError, ValueError):
                return  # an unreadable older manifest: delete nothing rather than guess
            for e in (m["tables"] if m else self._entries).values():
                keep |= {e["data"], *([e["base"]["file"]] if e["base"] else []), *(d["file"] for d in e["deltas"])}
        keep |= {t.data for t in self.tables.values()}
        keep |= {sums_path(Path(name)).name for name in keep if name.endswith(".rows")}
        for p in self.dir.iterdir():
            if p.name not in keep and (p.suffix in (".rows", ".sums", ".bin", ".tmp")):
                p.unlink()

    def retain(self, generations: set[int]) -> None:
        """Keeps only these committed generations (and the current one) openable; deletes what only others need.

        Compaction leaves older generations (and the files they need) in place so that older checkpoints can still
        be resumed; this is how they are let go.
        """
        self._check_usable()
        for g in self.generations():
            if g not in generations and g != self.generation:
                (self.dir / _manifest_name(g)).unlink()
        self._cleanup()

    def read_index(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        """A base index file -> (keys uint64[n], slots as uint64[n]), crc-checked."""
        data = self._read_checked(entry)
        if len(data) % 16:
            raise StoreError(f"{self.dir / entry['file']}: malformed index file")
        arr = np.frombuffer(data, np.uint64).reshape(2, -1) if data else np.zeros((2, 0), np.uint64)
        return arr[0].copy(), arr[1].copy()

    def read_delta(self, entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A delta file -> (put keys uint64, put slots int64, deleted keys uint64), crc-checked."""
        raw = self._read_checked(entry)
        data = np.frombuffer(raw[: len(raw) // 8 * 8], np.uint64)
        n_put, n_del = (int(data[0]), int(data[1])) if len(data) >= 2 else (-1, -1)
        if len(raw) % 8 or len(data) != 2 + 2 * n_put + n_del:
            raise StoreError(f"{self.dir / entry['file']}: malformed index delta")
        body = data[2:]
        return body[:n_put].copy(), body[n_put : 2 * n_put].view(np.int64).copy(), body[2 * n_put :].copy()

    def _read_checked(self, entry: dict) -> bytes:
        path = self.dir / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StoreError(f"{path}: cannot read index file ({e.strerror})") from None
        if zlib.crc32(data) != entry["crc32"]:
            raise StoreError(f"{path}: index file checksum mismatch (corrupt store)")
        return data

    # ------------------------------------------------------------------ RowTier
    def widths(self) -> dict[str, int]:
        return {n: t.width for n, t in self.tables.items()}

    def _table(self, name: str) -> _Table:
        try:
            return self.tables[name]
        except KeyError:
            raise StoreError(f"store '{self.dir}': unknown table {name!r}") from None

    @property
    def failed(self) -> bool:
        """A write or commit failed: the store refuses further changes until it is reopened."""
        return self._failed is not None

    def _check_usable(self) -> None:
        if self.readonly:
            raise StoreError(f"store '{self.dir}' is open read-only")
        if self._failed:
            raise StoreError(f"store '{self.dir}' failed earlier ({self._failed}); reopen it to get its last commit")

    def read(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batched read; safe beside a running write (it reads one snapshot of the index).

        Args:
            table: table name.
            keys: uint64[n], unique.

        Returns:
            (rows float32[n, width], found bool[n]) in the order of `keys`; rows not found are zero. Rows written
            since the last commit are seen. `rows` is contiguous and the caller's to keep.
        """
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        pool = self._reader_pool() if len(keys) >= _POOL_MIN_ROWS else None
        with self._mutex:
            slots, found = t.index.lookup(keys, pool)
        hit = np.flatnonzero(found)
        if len(hit) == len(keys):
            rows = t.f.gather(slots, pool)
        else:
            rows = np.zeros((len(keys), t.width), np.float32)
            rows[hit] = t.f.gather(slots[hit], pool)
        if len(hit):
            self.stats["rows_read"] += len(hit)
            self.stats["bytes_read"] += len(hit) * (t.f.row_bytes + 4)
        return rows, found

    def _reader_pool(self) -> ThreadPoolExecutor | None:
        with self._mutex:  # reads may come from several threads
            if self._pool is None and self._read_threads > 1:
                self._pool = ThreadPoolExecutor(self._read_threads, thread_name_prefix="ssd-read")
            return self._pool

    def write(self, table: str, keys: np.ndarray, rows: np.ndarray) -> None:
        """Appends rows and points the index at them; durable at the next commit.

        Args:
            table: table name.
            keys: uint64[n], unique.
            rows: float32[n, width].
        """
        self._check_usable()
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        if not len(keys):
            return
        if rows.shape != (len(keys), t.width):
            raise ValueError(f"rows of table {table!r} must be [{len(keys)}, {t.width}], got {rows.shape}")
        # The index's searches run on a helper thread while the rows are written (only this thread changes the
        # index, so they stay valid); the index points at the rows only once they are in the file.
        plan = self._helper().submit(t.index.plan_put, keys) if len(keys) >= _POOL_MIN_ROWS else None
        try:
            slots = t.f.append(rows, self.write_hook)
        except StoreError as e:
            self._failed = str(e)
            if plan is not None:
                plan.exception()
            raise
        with self._mutex:
            t.index.put(keys, slots, plan.result() if plan is not None else None)
            t.touched.append((keys, slots))
        self.stats["rows_written"] += len(keys)
        self.stats["bytes_written"] += len(keys) * (t.f.row_bytes + 4)

    def delete(self, table: str, keys: np.ndarray) -> None:
        """Removes keys (uint64[n]; absent ones are ignored). Durable at the next commit; compaction reclaims space."""
        self._check_usable()
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        with self._mutex:
            t.index.remove(keys)
            t.touched.append((keys, None))

    # ------------------------------------------------------------------ durability
    def commit(self) -> int:
        """Makes every write and delete since the last commit durable, all together.

        The new rows and checksums are fdatasynced (most of their write-back to the disk has already been started
        by :meth:`write`) while other threads write and fsync the index deltas; the manifest comes last.

        Returns:
            The new generation.
        """
        self._check_usable()
        gen = self.generation + 1
        entries = dict(self._entries)
        try:
            files: list[tuple[Path, bytes]] = []
            for name, t in self.tables.items():
                deltas, base = list(t.deltas), t.base
                if t.touched and len(deltas) >= _MAX_DELTAS:  # fold: opening then replays at most _MAX_DELTAS
                    base, index = self._base_index(name, gen, t.index.keys, t.index.slots.view(np.uint64))
                    deltas = []
                    files.append((self.dir / base["file"], index))
                elif t.touched:
                    put_k, put_s, dels = self._changes(t)
                    data = np.concatenate(
                        [np.array([len(put_k), len(dels)], np.uint64), put_k, put_s.view(np.uint64), dels]
                    ).tobytes()
                    file = f"{_safe(name)}.delta.{gen:010d}.bin"
                    files.append((self.dir / file, data))
                    deltas.append({"file": file, "crc32": zlib.crc32(data), "puts": len(put_k), "dels": len(dels)})
                entries[name] = {
                    "width": t.width,
                    "data": t.data,
                    "rows": t.f.n_slots,
                    "base": base,
                    "deltas": deltas,
                    "live": len(t.index),
                }
            # Rows and checksums (fdatasync) and the new index files (write + fsync) before the manifest that points
            # at them; side by side, as each mostly waits for the disk.
            jobs = [job for t in self.tables.values() for job in t.f.sync_jobs()]
            jobs += [functools.partial(write_new, path, data, self.write_hook) for path, data in files]
            pool = self._reader_pool() or self._helper()
            futures = [pool.submit(job) for job in jobs[1:]]
            try:
                jobs[0]()
            finally:
                for f in futures:  # never leave a job running behind a failure
                    f.exception()
            for f in futures:
                f.result()
            if files:
                fsync_dir(self.dir)  # the index files' names, before the manifest's
            manifest = {"format": FORMAT, "generation": gen, "tables": entries}
            atomic_write(self.dir / _manifest_name(gen), json.dumps(manifest, indent=1).encode(), self.write_hook)
            fsync_dir(self.dir)
        except (StoreError, OSError) as e:
            self._failed = str(e)
            raise
        for name, t in self.tables.items():
            e = entries[name]
            t.deltas, t.base, t.touched, t.committed = e["deltas"], e["base"], [], e["rows"]
        self.generation, self._entries = gen, entries
        self.stats["commits"] += 1
        return gen

    @staticmethod
    def _changes(t: _Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What a commit's delta records for a table -> (put keys uint64, their slots int64, deleted keys uint64)."""
        if len(t.touched) == 1 and t.touched[0][1] is not None and is_sorted(t.touched[0][0]):
            keys, slots = t.touched[0]  # one write-back in key order, the common case: it is the delta
            return keys, slots, np.zeros(0, np.uint64)
        touched = np.unique(np.concatenate([k for k, _ in t.touched]))
        slots, live = t.index.lookup(touched)
        return touched[live], slots[live], touched[~live]

    def _helper(self) -> ThreadPoolExecutor:
        """A thread beside the caller's, for work that overlaps the caller's fsyncs."""
        with self._mutex:
            if self._hpool is None:
                self._hpool = ThreadPoolExecutor(1, thread_name_prefix="ssd-helper")
            return self._hpool

    @staticmethod
    def _base_index(table: str, gen: int, keys: np.ndarray, slots: np.ndarray) -> tuple[dict, bytes]:
        """A full index (uint64 keys[m], then slots[m]) -> (its manifest entry, the file's bytes)."""
        index = np.concatenate([keys, slots]).tobytes()
        return {"file": f"{_safe(table)}.base.{gen:010d}.bin", "crc32": zlib.crc32(index)}, index

    def _write_base(self, table: str, gen: int, keys: np.ndarray, slots: np.ndarray) -> dict:
        """Writes a full index file -> its manifest entry."""
        entry, index = self._base_index(table, gen, keys, slots)
        atomic_write(self.dir / entry["file"], index, self.write_hook)
        return entry

    def compact(self) -> int:
        """Rewrites live rows in key order into fresh data files with a base index; reclaims stale rows.

        Commits first. The space is freed once older generations are let go with :meth:`retain`.

        Returns:
            The new generation.
        """
        self.commit()
        try:
            return self._compact()
        except (StoreError, OSError) as e:
            self._failed = str(e)
            raise

    def _compact(self) -> int:
        gen = self.generation + 1
        entries = dict(self._entries)
        for name, t in self.tables.items():
            keys, slots = t.index.keys, t.index.slots
            epoch = int(t.data.rsplit(".", 2)[-2]) + 1
            data_file = f"{_safe(name)}.{epoch}.rows"
            # Written under its final names: no manifest references them until the one below, and an open deletes
            # unreferenced files, so a crash meanwhile leaves nothing behind.
            out = DataFile(self.dir / data_file, t.width, 0)
            try:
                for a in range(0, len(keys), _COMPACT_ROWS):  # bounded memory, whatever the table's size
                    rows = t.f.gather(slots[a : a + _COMPACT_ROWS], self._reader_pool())  # checksums verified
                    out.append(rows, self.write_hook)
                out.sync()
            finally:
                out.close()
            entries[name] = {
                "width": t.width,
                "data": data_file,
                "rows": len(keys),
                "base": self._write_base(name, gen, keys, np.arange(len(keys), dtype=np.uint64)),
                "deltas": [],
                "live": len(keys),
            }
        fsync_dir(self.dir)
        atomic_write(
            self.dir / _manifest_name(gen),
            json.dumps({"format": FORMAT, "generation": gen, "tables": entries}, indent=1).encode(),
            self.write_hook,
        )
        fsync_dir(self.dir)
        widths = self.widths()
        for t in self.tables.values():
            t.close()
        self.generation, self._entries = gen, entries
        self.tables = {n: _Table(self, n, w, entries[n]) for n, w in widths.items()}
        for t in self.tables.values():
            t.open()
        self._cleanup()
        return gen

    # ------------------------------------------------------------------ inspection and lifetime
    def keys(self, table: str) -> np.ndarray:
        """All live keys of `table`, sorted (uint64)."""
        return self._table(table).index.keys.copy()

    def num_rows(self, table: str) -> int:
        """Live rows of `table`."""
        return len(self._table(table).index)

    def stale_rows(self) -> int:
        """Rows on disk that no key points at any more (reclaimed by compact)."""
        return sum(t.f.n_slots - len(t.index) for t in self.tables.values())

    def total_rows(self) -> int:
        """Rows on disk, live or stale."""
        return sum(t.f.n_slots for t in self.tables.values())

    def drop_cache(self) -> None:
        """Drops the committed rows of every table from the page cache, so that the next read is cold (benchmarks).

        Only clean pages can be dropped: rows written since the last commit may stay cached.
        """
        for t in self.tables.values():
            t.f.drop_cache()

    @staticmethod
    def destroy(directory: str | Path) -> None:
        """Deletes the store at `directory`, refusing while another process has it open.

        Raises:
            StoreLockedError: the store is in use.
        """
        d = Path(directory)
        if not d.is_dir():
            return
        fd = os.open(d / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLockedError(
                    f"store directory '{d}' is in use by another process (lock file {d / 'LOCK'})"
                ) from None
            shutil.rmtree(d)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Closes files and releases the lock (does not commit: uncommitted writes are dropped at the next open)."""
        for pool in (self._pool, self._hpool):
            if pool is not None:
                pool.shutdown()
        self._pool = self._hpool = None
        for t in self.tables.values():
            t.close()
        self.tables = {}
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SSDStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
