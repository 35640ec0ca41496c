"""SSD tier benchmark: our store vs RocksDB (rocksdict) vs a plain sequential file, on the same rows, in one run.

Rows are 64 fp32 embedding + 1 row-wise Adagrad state + 4 metadata floats (what the trainer stores for dim 64),
random uint64 keys. Measured:
- pass read: batched reads of working sets of 1%, 10%, 30% of the keys, drawn uniformly (sorted, as a pass plan
  holds them); our ``SSDStore.read`` vs rocksdict multi-get vs a plain sequential read of the same number of row
  bytes from the start of a file of the same rows. **Warm** (every side's file in the page cache) and **cold**
  (before each timed read, that side's own files are dropped from the page cache with
  ``posix_fadvise(POSIX_FADV_DONTNEED)``, after unmapping them; the share of pages still cached is checked and
  printed). Ours and the sequential read alternate, ``--repeat`` times; the ratio is the median of the pairs. For
  the 30% sets, cold, also against a sequential read of as many bytes as the 4 KiB pages holding the set's rows (what a
  page-granular device must move for them: for 276-B rows drawn uniformly, nearly the whole file);
- the next pass's read: a 30% working set written back by its pass, then a working set sharing 80% of its keys;
- write-back of a pass (10% of the rows rewritten, in key order) + commit vs rocksdict batch write (WAL off) +
  flush vs a plain sequential write + fsync of the same bytes appended to a growing file (as ours grows its file),
  alternating ``--repeat`` times, median ratio;
- commit latency after a fixed-size write at two store sizes (it must not grow with the store);
- compaction time.

Usage: ``python benchmarks/ssd_bench.py [--rows 2000000] [--repeat 3] [--dir /tmp/hier_ps_ssd_bench]``; prints
tables and a JSON line. The machine's other load makes single timings noisy: compare the medians of the ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from hier_ps.ssd import SSDStore

WIDTH = 64 + 1 + 4


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rocks(path: Path):
    from rocksdict import Options, Rdict, WriteOptions

    db = Rdict(str(path), Options(raw_mode=True))
    wo = WriteOptions()
    wo.disable_wal = True
    db.set_write_options(wo)
    return db


def _rocks_write(db, keys: np.ndarray, rows: np.ndarray) -> None:
    from rocksdict import WriteBatch

    kb = keys.astype(">u8").tobytes()
    rb = np.ascontiguousarray(rows).tobytes()
    step = rows.shape[1] * 4
    for start in range(0, len(keys), 100_000):
        wb = WriteBatch(raw_mode=True)
        for i in range(start, min(start + 100_000, len(keys))):
            wb.put(kb[8 * i : 8 * i + 8], rb[step * i : step * (i + 1)])
        db.write(wb)


def _rocks_read(db, keys: np.ndarray) -> np.ndarray:
    kb = keys.astype(">u8").tobytes()
    vals = db[[kb[8 * i : 8 * i + 8] for i in range(len(keys))]]
    return np.frombuffer(b"".join(vals), np.float32).reshape(len(keys), WIDTH)


def _seq_read(path: Path, nbytes: int) -> np.ndarray:
    """Reads the first `nbytes` of a file in one stream (one call moves at most 2 GiB on Linux: looped)."""
    buf = np.empty(nbytes, np.uint8)  # a fresh buffer, as our read returns fresh rows
    view, at = memoryview(buf), 0
    with open(path, "rb", buffering=0) as f:
        while at < nbytes:
            got = f.readinto(view[at:])
            if not got:
                raise OSError(f"{path}: {at} bytes, {nbytes} wanted")
            at += got
    return buf


def _seq_stream(path: Path, nbytes: int, buf: np.ndarray) -> None:
    """Reads the first `nbytes` of a file through one reused buffer: the rate the device streams them at, without
    the cost of fresh memory for all of them (on this VM fresh pages cost ~2.7 us each, see write_probe.py)."""
    view, at = memoryview(buf), 0
    with open(path, "rb", buffering=0) as f:
        while at < nbytes:
            got = f.readinto(view[: min(len(buf), nbytes - at)])
            if not got:
                raise OSError(f"{path}: {at} bytes, {nbytes} wanted")
            at += got


def _write_all(f, data: bytes) -> None:
    """Writes all of `data` to an unbuffered file (one write moves at most 2 GiB on Linux: looped)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


def _seq_write(path: Path, data: bytes) -> None:
    with open(path, "wb", buffering=0) as f:
        _write_all(f, data)
        os.fsync(f.fileno())


def _seq_append(path: Path, data: bytes) -> None:
    """Appends `data` to a plain file and fsyncs it: the sequential side of a write-back, which (like ours) grows a
    file. Rewriting one file in place would reuse the page-cache pages its truncation just freed, which on this VM is
    ~10x cheaper than pages the guest has not touched yet (see RESULTS.md), and not what a growing store gets."""
    with open(path, "ab", buffering=0) as f:
        _write_all(f, data)
        os.fsync(f.fileno())


def _files(path: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    if not path.is_dir():
        return [path]
    return [p for p in path.rglob("*") if p.is_file() and (not suffixes or p.suffix in suffixes)]


def _drop(path: Path) -> None:
    """Drops a file's (or a directory's files') clean pages from the page cache."""
    for p in _files(path):
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:  # RocksDB's background compaction removed it meanwhile
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _cached_share(path: Path, suffixes: tuple[str, ...] = ()) -> float:
    """Share of the pages of a file (or a directory's files with these suffixes) in the page cache, by mincore."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    cached = total = 0
    for p in _files(path, suffixes):
        try:
            f = open(p, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:  # RocksDB's background compaction removed it meanwhile
            continue
        size = os.fstat(f.fileno()).st_size
        if not size:
            f.close()
            continue
        with f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mm:
            vec = np.zeros((size + 4095) // 4096, np.uint8)
            buf = np.frombuffer(mm, np.uint8)
            if libc.mincore(buf.ctypes.data, size, vec.ctypes.data) == 0:
                cached += int((vec & 1).sum())
                total += len(vec)
            del buf
    return cached / max(total, 1)


def _touched_bytes(store, ws: np.ndarray) -> int:
    """Bytes of the 4 KiB pages of our data file that hold the rows of `ws`: what any read of them must move."""
    slots, _ = store._table("t").index.lookup(ws)  # the store's own index (private: for this measurement only)
    rb = WIDTH * 4
    pages = np.unique(np.concatenate([slots * rb // 4096, ((slots + 1) * rb - 1) // 4096]))
    return len(pages) * 4096


def _read_case(
    store,
    db,
    rocks_dir: Path,
    plain: Path,
    ws: np.ndarray,
    repeat: int,
    cold: bool,
    with_rocks: bool,
    pages: bool = False,
) -> dict:
    """Times our read of `ws` and a sequential read of as many row bytes, alternating; rocksdict once.

    With `pages` and `cold`, also a cold sequential read of as many bytes as the pages our file holds `ws` in (the
    bytes a page-granular device must move for these rows, whatever reads them), streamed through one reused
    buffer, in the same alternation.
    """
    m, row_bytes = len(ws), WIDTH * 4
    pages = pages and cold
    ours, seq, seq_pages, left = [], [], [], []
    touched = min(_touched_bytes(store, ws), plain.stat().st_size) if pages else 0
    stream_buf = np.ones(16 << 20, np.uint8) if pages else None  # touched once, then reused
    for _ in range(repeat):
        if cold:
            store.drop_cache()
            left.append(_cached_share(store.dir, (".rows", ".sums")))  # index files are read only at open
        ours.append(_timed(lambda: store.read("t", ws)))
        if cold:
            _drop(plain)
            left.append(_cached_share(plain))
        seq.append(_timed(lambda: _seq_read(plain, m * row_bytes)))
        if pages:
            _drop(plain)
            seq_pages.append(_timed(lambda: _seq_stream(plain, touched, stream_buf)))
    out = {
        "keys": m,
        "ours_rows_s": m / statistics.median(ours),
        "ours_gb_s": m * row_bytes / statistics.median(ours) / 1e9,
        "seq_gb_s": m * row_bytes / statistics.median(seq) / 1e9,
        "ours_vs_seq": statistics.median(s / o for s, o in zip(seq, ours, strict=True)),
        "ours_vs_seq_all": [round(s / o, 3) for s, o in zip(seq, ours, strict=True)],
    }
    if pages:
        out |= {
            "touched_bytes": touched,
            "touched_vs_row_bytes": touched / (m * row_bytes),
            "ours_vs_seq_pages": statistics.median(s / o for s, o in zip(seq_pages, ours, strict=True)),
            "ours_vs_seq_pages_all": [round(s / o, 3) for s, o in zip(seq_pages, ours, strict=True)],
        }
    if with_rocks:
        if cold:
            _drop(rocks_dir)  # its files; its own block cache (8 MiB by default) stays
            left.append(_cached_share(rocks_dir, (".sst",)))
        t_rocks = _timed(lambda: _rocks_read(db, ws))
        out |= {"rocksdb_rows_s": m / t_rocks, "ours_vs_rocksdb": t_rocks / statistics.median(ours)}
    if cold:
        out["cached_share_after_drop_max"] = max(left)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=3, help="alternating repetitions of each compared pair")
    p.add_argument("--dir", default="/tmp/hier_ps_ssd_bench")
    args = p.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n, rep = args.rows, args.repeat
    keys = np.unique(rng.integers(0, 2**63, int(n * 1.01), dtype=np.int64).astype(np.uint64))[:n]
    rng.shuffle(keys)
    rows = rng.standard_normal((n, WIDTH), dtype=np.float32)
    row_bytes = WIDTH * 4
    res: dict = {"rows": n, "row_bytes": row_bytes, "repeat": rep}

    store = SSDStore(root / "ours", {"t": WIDTH})
    chunk = 1_000_000
    res["load_s_ours"] = _timed(
        lambda: (
            [store.write("t", keys[i : i + chunk], rows[i : i + chunk]) for i in range(0, n, chunk)] and store.commit()
        )
    )
    db = _rocks(root / "rocks")
    res["load_s_rocksdb"] = _timed(lambda: (_rocks_write(db, keys, rows), db.flush()))
    plain = root / "plain.bin"
    res["load_s_plain"] = _timed(lambda: _seq_write(plain, rows.tobytes()))

    for frac in (0.01, 0.10, 0.30):
        ws = np.sort(rng.choice(keys, int(n * frac), replace=False))
        assert np.array_equal(store.read("t", ws[:100])[0], _rocks_read(db, ws[:100]))  # same rows on both sides
        for cold in (False, True):
            if not cold:  # warm: every side has read these pages once (and ours has mapped them)
                store.read("t", ws)
                _seq_read(plain, len(ws) * row_bytes)
                _rocks_read(db, ws)
            res[f"read_{int(frac * 100)}pct_{'cold' if cold else 'warm'}"] = _read_case(
                store, db, root / "rocks", plain, ws, rep, cold, with_rocks=True, pages=frac == 0.30
            )

    # Pass after pass: the trainer pushes a pass's working set back in key order (one contiguous append), and the
    # next pass shares most of its keys, so its read lands mostly on that contiguous run.
    w1 = np.sort(rng.choice(keys, int(n * 0.3), replace=False))
    store.write("t", w1, store.read("t", w1)[0])
    store.commit()
    keep = rng.random(len(w1)) < 0.8
    w2 = np.unique(np.concatenate([w1[keep], rng.choice(keys, int(len(w1) * 0.2), replace=False)]))
    for cold in (False, True):
        if not cold:
            store.read("t", w2)
        res[f"read_next_pass_30pct_{'cold' if cold else 'warm'}"] = _read_case(
            store, db, root / "rocks", plain, w2, rep, cold, with_rocks=False, pages=True
        )

    # Write-back of a pass: ours (write in key order + commit) and a plain write + fsync of the same bytes, alternating.
    wb_keys = np.sort(rng.choice(keys, n // 10, replace=False))
    wb_rows = rng.standard_normal((len(wb_keys), WIDTH), dtype=np.float32)
    wb_bytes = wb_rows.tobytes()
    ours, seq = [], []
    for _ in range(rep):
        wb_rows[:, 0] += 1  # new values each time
        ours.append(_timed(lambda: (store.write("t", wb_keys, wb_rows), store.commit())))
        seq.append(_timed(lambda: _seq_append(root / "plain_wb.log", wb_bytes)))
    t_rocks = _timed(lambda: (_rocks_write(db, wb_keys, wb_rows), db.flush()))
    mb = len(wb_keys) * row_bytes
    res["write_back_10pct"] = {
        "ours_gb_s": mb / statistics.median(ours) / 1e9,
        "rocksdb_gb_s": mb / t_rocks / 1e9,
        "seq_gb_s": mb / statistics.median(seq) / 1e9,
        "ours_vs_seq": statistics.median(s / o for s, o in zip(seq, ours, strict=True)),
        "ours_vs_seq_all": [round(s / o, 3) for s, o in zip(seq, ours, strict=True)],
    }

    k_commit = n // 100
    small = SSDStore(root / "small", {"t": WIDTH})
    small.write("t", keys[: n // 10], np.zeros((n // 10, WIDTH), np.float32))
    small.commit()
    t_small, t_big = [], []
    for _ in range(rep):
        for s, sizes in ((small, t_small), (store, t_big)):
            sel = np.sort(rng.choice(keys[: n // 10], k_commit, replace=False))
            s.write("t", sel, wb_rows[:k_commit])
            sizes.append(_timed(s.commit))
    small.close()
    res["commit_s"] = {
        f"store_{n // 10}_rows": statistics.median(t_small),
        f"store_{n}_rows": statistics.median(t_big),
        "rows_written_before_commit": k_commit,
    }

    stale = store.stale_rows()
    t_compact = _timed(store.compact)
    res["compaction"] = {
        "seconds": t_compact,
        "live_rows": n,
        "stale_rows_reclaimed": stale,
        "gb_s": n * row_bytes / t_compact / 1e9,
    }
    store.close()
    db.close()
    shutil.rmtree(root, ignore_errors=True)

    print(f"rows {n:,} x {row_bytes} B; ours vs sequential: median of {rep} alternating pairs")
    print(
        f"{'working set':<20}{'ours rows/s':>14}{'rocksdb rows/s':>16}{'ours/rocksdb':>14}{'ours GB/s':>11}"
        f"{'seq GB/s':>10}{'ours/seq':>10}"
    )
    for name in ("1", "10", "30", "next_pass_30"):
        for cache in ("warm", "cold"):
            r = res[f"read_{name}pct_{cache}"]
            label = f"{name.replace('next_pass_', 'next pass ')}% {cache}"
            rocks = (
                f"{r['rocksdb_rows_s']:>16,.0f}{r['ours_vs_rocksdb']:>13.1f}x" if "rocksdb_rows_s" in r else " " * 30
            )
            pages = (
                f"   (pages touched {r['touched_vs_row_bytes']:.2f}x the row bytes; ours vs a sequential read of "
                f"them {r['ours_vs_seq_pages']:.2f}x)"
                if "ours_vs_seq_pages" in r
                else ""
            )
            print(
                f"{label:<20}{r['ours_rows_s']:>14,.0f}{rocks}{r['ours_gb_s']:>11.2f}{r['seq_gb_s']:>10.2f}"
                f"{r['ours_vs_seq']:>9.2f}x{pages}"
            )
    w = res["write_back_10pct"]
    print(
        f"write-back 10% + commit: ours {w['ours_gb_s']:.2f} GB/s, rocksdb {w['rocksdb_gb_s']:.2f} GB/s, "
        f"sequential write {w['seq_gb_s']:.2f} GB/s -> ours/seq {w['ours_vs_seq']:.2f}x (pairs: {w['ours_vs_seq_all']})"
    )
    c = res["commit_s"]
    print(
        "commit after writing {:,} rows: {}".format(
            c["rows_written_before_commit"],
            ", ".join(f"{k}: {v * 1000:.1f} ms" for k, v in c.items() if k != "rows_written_before_commit"),
        )
    )
    print(f"compaction: {res['compaction']['seconds']:.2f} s ({res['compaction']['gb_s']:.2f} GB/s of live rows)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
