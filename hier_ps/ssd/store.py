"""SSD tier: a durable, log-structured row store.

Layout of a store directory::

    LOCK                      flock'ed while a process has the store open
    MANIFEST.json             written last at each commit: format, generation, per table width, committed row
                              count of its data file, index file and the index file's crc32
    <table>.rows              append-only fixed-width float32 rows; committed rows are never overwritten
    <table>.idx.<gen>.npy     key index at generation <gen>: sorted uint64 keys and int64 row slots

Writes append rows and update the in-memory index; ``commit`` fsyncs the data files, writes new index files, then
the manifest (temp + fsync + rename + fsync of the directory). Opening reads the manifest and cuts each data file back
to its committed length, so after a crash at any instant the store opens at exactly the last committed state.
Space held by overwritten or deleted rows is not reclaimed yet (compaction is future work).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np

from hier_ps.errors import StoreError, StoreLockedError

__all__ = ["SSDStore"]

log = logging.getLogger("hier_ps")

FORMAT = 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Table:
    """One table's data file and key index."""

    def __init__(self, store_dir: Path, name: str, width: int, committed: int, keys: np.ndarray, slots: np.ndarray):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.name, self.width, self.row_bytes = name, width, 4 * width
        self.path = store_dir / f"{safe}.rows"
        self.keys, self.slots = keys, slots
        flags = os.O_RDWR | os.O_CREAT
        self.fd = os.open(self.path, flags, 0o644)
        size = os.fstat(self.fd).st_size
        if size < committed * self.row_bytes:
            os.close(self.fd)
            raise StoreError(f"{self.path}: data file is shorter than its committed length (truncated store)")
        if size > committed * self.row_bytes:
            os.ftruncate(self.fd, committed * self.row_bytes)  # drop rows written after the last commit
        self.n_slots = committed
        self._map: np.memmap | None = None

    def rows_at(self, slots: np.ndarray) -> np.ndarray:
        if self._map is None or self._map.shape[0] < self.n_slots:
            self._map = (
                np.memmap(self.path, np.float32, "r", shape=(self.n_slots, self.width)) if self.n_slots else None
            )
        if self._map is None:
            return np.zeros((0, self.width), np.float32)
        order = np.argsort(slots, kind="stable")  # read in file order
        out = np.empty((len(slots), self.width), np.float32)
        out[order] = self._map[slots[order]]
        return out

    def append(self, rows: np.ndarray) -> np.ndarray:
        data = np.ascontiguousarray(rows, dtype=np.float32)
        os.pwrite(self.fd, data.tobytes(), self.n_slots * self.row_bytes)
        new = np.arange(self.n_slots, self.n_slots + len(rows), dtype=np.int64)
        self.n_slots += len(rows)
        return new

    def close(self) -> None:
        self._map = None
        os.close(self.fd)


class SSDStore:
    """Durable row store (see the module docstring). Implements :class:`hier_ps.tier.RowTier`.

    Args:
        directory: store directory (created if missing).
        widths: table -> row width (float32 units). Tables missing from the store are added; tables in the store
            but not here are kept untouched.

    Raises:
        StoreLockedError: another process (or another SSDStore) has the directory open.
        StoreError: a manifest or index file is corrupt, or a table's width differs from the store's.
    """

    def __init__(self, directory: str | Path, widths: dict[str, int]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLockedError(
                f"store directory '{self.dir}' is in use by another process (lock file {self.dir / 'LOCK'})"
            ) from None
        self.stats = {"rows_read": 0, "rows_written": 0, "bytes_read": 0, "bytes_written": 0, "commits": 0}
        self.tables: dict[str, _Table] = {}
        try:
            self._open(widths)
        except BaseException:
            self.close()
            raise

    def _open(self, widths: dict[str, int]) -> None:
        manifest_path = self.dir / "MANIFEST.json"
        manifest = {"format": FORMAT, "generation": 0, "tables": {}}
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
                manifest["tables"]
            except (ValueError, KeyError, TypeError):
                raise StoreError(f"{manifest_path}: corrupt manifest") from None
            if manifest.get("format") != FORMAT:
                raise StoreError(f"{manifest_path}: store format {manifest.get('format')} is not {FORMAT}")
        self.generation = int(manifest["generation"])
        self._manifest_tables = dict(manifest["tables"])
        for name, width in widths.items():
            entry = self._manifest_tables.get(name)
            if entry is None:
                self.tables[name] = _Table(self.dir, name, width, 0, np.zeros(0, np.uint64), np.zeros(0, np.int64))
                continue
            if entry["width"] != width:
                raise StoreError(
                    f"store '{self.dir}': table {name!r} has row width {entry['width']} on disk but "
                    f"{width} in the config (dim or optimizer changed?)"
                )
            keys, slots = self._load_index(self.dir / entry["index"], entry["crc32"])
            self.tables[name] = _Table(self.dir, name, width, entry["rows"], keys, slots)

    @staticmethod
    def _load_index(path: Path, crc: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StoreError(f"{path}: cannot read index file ({e.strerror})") from None
        if zlib.crc32(data) != crc:
            raise StoreError(f"{path}: index file checksum mismatch (corrupt store)")
        arr = np.frombuffer(data, np.uint64).reshape(2, -1)
        return arr[0].copy(), arr[1].view(np.int64).copy()

    # ------------------------------------------------------------------ RowTier
    def widths(self) -> dict[str, int]:
        return {n: t.width for n, t in self.tables.items()}

    def _table(self, name: str) -> _Table:
        try:
            return self.tables[name]
        except KeyError:
            raise StoreError(f"store '{self.dir}': unknown table {name!r}") from None

    def _find(self, t: _Table, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(t.keys, keys)
        pos_c = np.minimum(pos, max(len(t.keys) - 1, 0))
        found = (pos < len(t.keys)) & (t.keys[pos_c] == keys) if len(t.keys) else np.zeros(len(keys), bool)
        return pos, found

    def read(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows float32[n, width], found bool[n]); rows not found are zero."""
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        pos, found = self._find(t, keys)
        rows = np.zeros((len(keys), t.width), np.float32)
        if found.any():
            rows[found] = t.rows_at(t.slots[pos[found]])
            n = int(found.sum())
            self.stats["rows_read"] += n
            self.stats["bytes_read"] += n * t.row_bytes
        return rows, found

    def write(self, table: str, keys: np.ndarray, rows: np.ndarray) -> None:
        """Appends rows and points the index at them; durable at the next commit."""
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        if len(keys) == 0:
            return
        if rows.shape != (len(keys), t.width):
            raise ValueError(f"rows of table {table!r} must be [{len(keys)}, {t.width}], got {rows.shape}")
        new_slots = t.append(rows)
        pos, found = self._find(t, keys)
        t.slots[pos[found]] = new_slots[found]
        if not found.all():
            add = np.flatnonzero(~found)
            order = add[np.argsort(keys[add], kind="stable")]
            ins = np.searchsorted(t.keys, keys[order])
            t.keys = np.insert(t.keys, ins, keys[order])
            t.slots = np.insert(t.slots, ins, new_slots[order])
        self.stats["rows_written"] += len(keys)
        self.stats["bytes_written"] += len(keys) * t.row_bytes

    def delete(self, table: str, keys: np.ndarray) -> None:
        """Removes keys from the index (durable at the next commit)."""
        t = self._table(table)
        pos, found = self._find(t, np.asarray(keys, np.uint64))
        if found.any():
            keep = np.ones(len(t.keys), bool)
            keep[pos[found]] = False
            t.keys, t.slots = t.keys[keep], t.slots[keep]

    # ------------------------------------------------------------------ durability
    def commit(self) -> None:
        """Makes every write since the last commit durable, all together."""
        gen = self.generation + 1
        entries = dict(self._manifest_tables)
        for name, t in self.tables.items():
            os.fsync(t.fd)
            data = np.stack([t.keys, t.slots.view(np.uint64)]).tobytes() if len(t.keys) else b""
            idx_name = f"{t.path.stem}.idx.{gen}.npy"
            _atomic_write(self.dir / idx_name, data)
            entries[name] = {
                "width": t.width,
                "rows": t.n_slots,
                "index": idx_name,
                "crc32": zlib.crc32(data),
                "live": len(t.keys),
            }
        _fsync_dir(self.dir)
        manifest = {"format": FORMAT, "generation": gen, "tables": entries}
        _atomic_write(self.dir / "MANIFEST.json", json.dumps(manifest, indent=1).encode())
        _fsync_dir(self.dir)
        old = {e["index"] for e in self._manifest_tables.values()} - {e["index"] for e in entries.values()}
        for f in old:
            (self.dir / f).unlink(missing_ok=True)
        self.generation, self._manifest_tables = gen, entries
        self.stats["commits"] += 1

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

    # ------------------------------------------------------------------ inspection and lifetime
    def keys(self, table: str) -> np.ndarray:
        """All live keys of `table`, sorted (uint64)."""
        return self._table(table).keys.copy()

    def num_rows(self, table: str) -> int:
        """Live rows of `table`."""
        return len(self._table(table).keys)

    def close(self) -> None:
        """Closes files and releases the lock (does not commit)."""
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
