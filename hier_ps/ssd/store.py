"""SSD tier: a durable, log-structured, checksummed row store with atomic commits and compaction.

Layout of a store directory::

    LOCK                         flock'ed while a process has the store open for writing
    manifest.<gen>.json          one per commit, written last (temp + fsync + rename + fsync dir): per table its
                                 width, data file, committed row count, base index and the list of index deltas
    <table>.<epoch>.rows         append-only rows: width float32 + one uint32 checksum each; never overwritten
    <table>.base.<gen>.bin       full key index written by compaction: uint64 keys, int64 slots
    <table>.delta.<gen>.bin      what one commit changed: keys put (with their slots) and keys deleted

A write appends rows and updates the in-memory index; a commit writes only what changed since the previous commit
(the new rows' fsync, one small delta file per table, the manifest), so its cost does not grow with the store. Opening
replays base + deltas of the chosen generation (each file's crc32 is in the manifest) and cuts every data file back to
that generation's committed length: after a crash at any instant the store opens at exactly a committed state. Every
row carries a checksum verified when it is read. Compaction rewrites the live rows in key order into a new data file
and a base index; the old files stay while an older generation that needs them is retained (see ``retain``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import zlib
from pathlib import Path

import numpy as np

from hier_ps.errors import StoreError, StoreLockedError
from hier_ps.ssd.files import WriteHook, atomic_write, fsync_dir, row_checksums, write_at

__all__ = ["SSDStore"]

log = logging.getLogger("hier_ps")

FORMAT = 2
_MANIFEST = re.compile(r"manifest\.(\d+)\.json")


def _manifest_name(gen: int) -> str:
    return f"manifest.{gen:010d}.json"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) + "-" + format(zlib.crc32(name.encode()), "08x")


class _Table:
    """One table: its data file and key index."""

    def __init__(self, store: SSDStore, name: str, width: int, entry: dict | None) -> None:
        self.store, self.name, self.width = store, name, width
        self.row_bytes = 4 * (width + 1)
        self.data = entry["data"] if entry else f"{_safe(name)}.0.rows"
        self.path = store.dir / self.data
        self.base = entry["base"] if entry else None
        self.deltas: list[dict] = list(entry["deltas"]) if entry else []
        committed = entry["rows"] if entry else 0
        self.keys, self.slots = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        if self.base:
            k, s = store.read_index(self.base)
            self.keys, self.slots = k, s.view(np.int64)
        for d in self.deltas:
            put_k, put_s, dels = store.read_delta(d)
            self._put(put_k, put_s)
            self._delete(dels)
        self.touched: list[np.ndarray] = []
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self.fd).st_size
        if size < committed * self.row_bytes:
            os.close(self.fd)
            raise StoreError(
                f"{self.path}: data file holds {size} bytes, its last commit needs "
                f"{committed * self.row_bytes} (truncated store)"
            )
        if size > committed * self.row_bytes:
            os.ftruncate(self.fd, committed * self.row_bytes)  # rows written after that commit
        self.n_slots = committed
        self._map: np.memmap | None = None

    def _put(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Index keys at slots (new arrays, so concurrent readers keep a consistent snapshot)."""
        if not len(keys):
            return
        pos = np.searchsorted(self.keys, keys)
        found = pos < len(self.keys)
        found[found] = self.keys[pos[found]] == keys[found]
        new_slots = self.slots.copy()
        new_slots[pos[found]] = slots[found]
        add = np.flatnonzero(~found)
        if len(add):
            order = add[np.argsort(keys[add], kind="stable")]
            ins = np.searchsorted(self.keys, keys[order])
            self.keys, self.slots = np.insert(self.keys, ins, keys[order]), np.insert(new_slots, ins, slots[order])
        else:
            self.slots = new_slots

    def _delete(self, keys: np.ndarray) -> None:
        if not len(keys) or not len(self.keys):
            return
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = pos[self.keys[pos] == keys]
        if len(hit):
            keep = np.ones(len(self.keys), bool)
            keep[hit] = False
            self.keys, self.slots = self.keys[keep], self.slots[keep]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (slots int64[n], found bool[n]) from one snapshot of the index."""
        k, s = self.keys, self.slots
        if not len(k):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        pos = np.minimum(np.searchsorted(k, keys), len(k) - 1)
        found = k[pos] == keys
        return s[pos], found

    def rows_at(self, slots: np.ndarray) -> np.ndarray:
        """Rows at `slots` (int64[m], in that order) -> float32[m, width], checksum-verified.

        One gather from the memory map; no sort: in-page-cache reads gain nothing from it, and an NVMe drive serves
        the 4 KiB pages of a pass in any order.
        """
        n = self.n_slots
        if self._map is None or self._map.shape[0] < n:
            self._map = np.memmap(self.path, np.float32, "r", shape=(n, self.width + 1)) if n else None
        if not len(slots):
            return np.zeros((0, self.width), np.float32)
        raw = np.asarray(self._map[slots])
        bad = row_checksums(raw[:, : self.width]) != raw[:, self.width].view(np.uint32)
        if bad.any():
            raise StoreError(f"{self.path}: checksum mismatch in row {int(slots[np.argmax(bad)])} (corrupt data file)")
        return raw[:, : self.width]

    def append(self, rows: np.ndarray) -> np.ndarray:
        packed = np.empty((len(rows), self.width + 1), np.float32)
        packed[:, : self.width] = rows
        packed[:, self.width] = row_checksums(packed[:, : self.width]).view(np.float32)
        write_at(self.fd, self.path, packed.tobytes(), self.n_slots * self.row_bytes, self.store.write_hook)
        slots = np.arange(self.n_slots, self.n_slots + len(rows), dtype=np.int64)
        self.n_slots += len(rows)
        return slots

    def close(self) -> None:
        self._map = None
        os.close(self.fd)


class SSDStore:
    """Durable row store (see the module docstring). Implements :class:`hier_ps.tier.RowTier`.

    Args:
        directory: store directory (created if missing).
        widths: table -> row width (float32 units). Tables missing from the store are added; tables in the store
            but not here are kept untouched.
        generation: open this committed generation instead of the newest (later ones are discarded).

    Raises:
        StoreLockedError: another process (or another SSDStore) has the directory open.
        StoreError: a manifest or index file is corrupt or missing, the generation does not exist, or a table's
            width differs from the store's.
    """

    def __init__(self, directory: str | Path, widths: dict[str, int], *, generation: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = os.open(self.dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreLockedError(
                f"store directory '{self.dir}' is in use by another process (lock file {self.dir / 'LOCK'})"
            ) from None
        self.write_hook: WriteHook | None = None
        self.stats = {"rows_read": 0, "rows_written": 0, "bytes_read": 0, "bytes_written": 0, "commits": 0}
        self.tables: dict[str, _Table] = {}
        self._mutex = threading.Lock()
        self._failed: str | None = None
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
                raise StoreError(f"{path}: store format {manifest.get('format')}, this version reads {FORMAT}")
        self.generation = gen
        self._entries: dict[str, dict] = dict(manifest["tables"])
        for name, width in widths.items():
            entry = self._entries.get(name)
            if entry is not None and entry["width"] != width:
                raise StoreError(
                    f"store '{self.dir}': table {name!r} has row width {entry['width']} on disk but "
                    f"{width} in the config (dim or optimizer changed?)"
                )
            self.tables[name] = _Table(self, name, width, entry)
        self._discard_after(gen)

    def _discard_after(self, gen: int) -> None:
        """Removes manifests newer than `gen` (abandoned by opening `gen`) and files no manifest references."""
        for g in self.generations():
            if g > gen:
                (self.dir / _manifest_name(g)).unlink()
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
        for p in self.dir.iterdir():
            if p.name not in keep and (p.suffix in (".rows", ".bin", ".tmp")):
                p.unlink()

    def retain(self, generations: set[int]) -> None:
        """Keeps only these committed generations (and the current one) openable; deletes what only others need.

        Compaction leaves older generations (and the files they need) in place so that older checkpoints can still
        be resumed; this is how they are let go.
        """
        for g in self.generations():
            if g not in generations and g != self.generation:
                (self.dir / _manifest_name(g)).unlink()
        self._cleanup()

    def read_index(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        """A base index file -> (keys uint64[n], slots as uint64[n]), crc-checked."""
        data = self._read_checked(entry)
        arr = np.frombuffer(data, np.uint64).reshape(2, -1) if data else np.zeros((2, 0), np.uint64)
        return arr[0].copy(), arr[1].copy()

    def read_delta(self, entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A delta file -> (put keys uint64, put slots int64, deleted keys uint64), crc-checked."""
        data = np.frombuffer(self._read_checked(entry), np.uint64)
        n_put, n_del = int(data[0]), int(data[1])
        if len(data) != 2 + 2 * n_put + n_del:
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
        if self._failed:
            raise StoreError(f"store '{self.dir}' failed earlier ({self._failed}); reopen it to get its last commit")

    def read(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows float32[n, width], found bool[n]); rows not found are zero. Safe beside a running write."""
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        with self._mutex:
            slots, found = t.lookup(keys)
        if found.all():
            rows = t.rows_at(slots)
        else:
            rows = np.zeros((len(keys), t.width), np.float32)
            rows[found] = t.rows_at(slots[found])
        n = int(found.sum())
        if n:
            self.stats["rows_read"] += n
            self.stats["bytes_read"] += n * t.row_bytes
        return rows, found

    def write(self, table: str, keys: np.ndarray, rows: np.ndarray) -> None:
        """Appends rows and points the index at them; durable at the next commit."""
        self._check_usable()
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        if not len(keys):
            return
        if rows.shape != (len(keys), t.width):
            raise ValueError(f"rows of table {table!r} must be [{len(keys)}, {t.width}], got {rows.shape}")
        try:
            slots = t.append(rows)
        except StoreError as e:
            self._failed = str(e)
            raise
        with self._mutex:
            t._put(keys, slots)
            t.touched.append(keys)
        self.stats["rows_written"] += len(keys)
        self.stats["bytes_written"] += len(keys) * t.row_bytes

    def delete(self, table: str, keys: np.ndarray) -> None:
        """Removes keys (durable at the next commit; their bytes are reclaimed by compaction)."""
        self._check_usable()
        t = self._table(table)
        keys = np.asarray(keys, np.uint64)
        with self._mutex:
            t._delete(keys)
            t.touched.append(keys)

    # ------------------------------------------------------------------ durability
    def commit(self) -> int:
        """Makes every write and delete since the last commit durable, all together.

        Returns:
            The new generation.
        """
        self._check_usable()
        gen = self.generation + 1
        entries = dict(self._entries)
        try:
            for name, t in self.tables.items():
                os.fsync(t.fd)
                deltas = list(t.deltas)
                if t.touched:
                    touched = np.unique(np.concatenate(t.touched))
                    slots, live = t.lookup(touched)
                    put_k, put_s, dels = touched[live], slots[live], touched[~live]
                    data = np.concatenate(
                        [np.array([len(put_k), len(dels)], np.uint64), put_k, put_s.view(np.uint64), dels]
                    ).tobytes()
                    file = f"{_safe(name)}.delta.{gen:010d}.bin"
                    atomic_write(self.dir / file, data, self.write_hook)
                    deltas.append({"file": file, "crc32": zlib.crc32(data), "puts": len(put_k), "dels": len(dels)})
                entries[name] = {
                    "width": t.width,
                    "data": t.data,
                    "rows": t.n_slots,
                    "base": t.base,
                    "deltas": deltas,
                    "live": len(t.keys),
                }
            fsync_dir(self.dir)
            manifest = {"format": FORMAT, "generation": gen, "tables": entries}
            atomic_write(self.dir / _manifest_name(gen), json.dumps(manifest, indent=1).encode(), self.write_hook)
            fsync_dir(self.dir)
        except (StoreError, OSError) as e:
            self._failed = str(e)
            raise
        for name, t in self.tables.items():
            t.deltas, t.touched = entries[name]["deltas"], []
        self.generation, self._entries = gen, entries
        self.stats["commits"] += 1
        return gen

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
            rows = t.rows_at(t.slots)  # verifies every live row's checksum on the way
            epoch = int(t.data.rsplit(".", 2)[-2]) + 1
            data_file = f"{_safe(name)}.{epoch}.rows"
            packed = np.empty((len(rows), t.width + 1), np.float32)
            packed[:, : t.width] = rows
            packed[:, t.width] = row_checksums(rows).view(np.float32)
            atomic_write(self.dir / data_file, packed.tobytes(), self.write_hook)
            index = np.stack([t.keys, np.arange(len(t.keys), dtype=np.uint64)]).tobytes() if len(t.keys) else b""
            base_file = f"{_safe(name)}.base.{gen:010d}.bin"
            atomic_write(self.dir / base_file, index, self.write_hook)
            entries[name] = {
                "width": t.width,
                "data": data_file,
                "rows": len(rows),
                "base": {"file": base_file, "crc32": zlib.crc32(index)},
                "deltas": [],
                "live": len(t.keys),
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
        self._cleanup()
        return gen

    # ------------------------------------------------------------------ inspection and lifetime
    def keys(self, table: str) -> np.ndarray:
        """All live keys of `table`, sorted (uint64)."""
        return self._table(table).keys.copy()

    def num_rows(self, table: str) -> int:
        """Live rows of `table`."""
        return len(self._table(table).keys)

    def stale_rows(self) -> int:
        """Rows on disk that no key points at any more (reclaimed by compact)."""
        return sum(t.n_slots - len(t.keys) for t in self.tables.values())

    def total_rows(self) -> int:
        """Rows on disk, live or stale."""
        return sum(t.n_slots for t in self.tables.values())

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
