"""SSD tier benchmark: our store vs RocksDB (rocksdict) vs a plain sequential file, on the same rows, in one run.

Rows are 64 fp32 embedding + 1 row-wise Adagrad state + 4 metadata floats (what the trainer stores for dim 64),
random uint64 keys. Measured:
- pass read: batched reads of working sets of 1%, 10%, 30% of the keys, drawn uniformly (sorted, as a pass plan
  holds them); our ``SSDStore.read`` vs rocksdict multi-get vs a sequential read of the same number of row bytes;
- the next pass's read: a 30% working set written back by its pass, then a working set sharing 80% of its keys;
- write-back of a pass (10% of the rows rewritten) + commit vs rocksdict batch write (WAL off) + flush vs a plain
  sequential write + fsync of the same bytes;
- commit latency after a fixed-size write at two store sizes (it must not grow with the store);
- compaction time.
The page cache cannot be dropped on the development machine (no root over /proc/sys/vm), so reads are **warm**:
all three sides read from the page cache after their own write.

Usage: ``python benchmarks/ssd_bench.py [--rows 2000000] [--dir /tmp/ssd_bench]``; prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _seq_read(path: Path, nbytes: int) -> None:
    buf = np.empty(nbytes, np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.readinto(memoryview(buf))


def _seq_write(path: Path, data: bytes) -> None:
    with open(path, "wb", buffering=0) as f:
        f.write(data)
        os.fsync(f.fileno())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dir", default="/tmp/hier_ps_ssd_bench")
    args = p.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = args.rows
    keys = np.unique(rng.integers(0, 2**63, int(n * 1.01), dtype=np.int64).astype(np.uint64))[:n]
    rng.shuffle(keys)
    rows = rng.standard_normal((n, WIDTH), dtype=np.float32)
    row_bytes = WIDTH * 4
    res: dict = {"rows": n, "row_bytes": row_bytes, "cache": "warm (page cache could not be dropped)"}

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
    _seq_read(plain, n * row_bytes)  # all three sides warm: ours and rocksdb were just written and read back

    for frac in (0.01, 0.10, 0.30):
        ws = np.sort(rng.choice(keys, int(n * frac), replace=False))
        m = len(ws)
        store.read("t", ws[:1000])  # warm code paths
        t_ours = min(_timed(lambda ws=ws: store.read("t", ws)) for _ in range(2))
        t_rocks = _timed(lambda ws=ws: _rocks_read(db, ws))
        t_seq = min(_timed(lambda m=m: _seq_read(plain, m * row_bytes)) for _ in range(3))
        got = store.read("t", ws[:100])[0]
        assert np.array_equal(got, _rocks_read(db, ws[:100]))  # both sides return the same rows
        res[f"read_{int(frac * 100)}pct"] = {
            "keys": m,
            "ours_rows_s": m / t_ours,
            "ours_gb_s": m * row_bytes / t_ours / 1e9,
            "rocksdb_rows_s": m / t_rocks,
            "seq_gb_s": m * row_bytes / t_seq / 1e9,
            "ours_vs_rocksdb": t_rocks / t_ours,
            "ours_vs_seq": t_seq / t_ours,
        }

    # Pass after pass: the trainer pushes a pass's working set back in key order (one contiguous append), and the
    # next pass shares most of its keys, so its read lands mostly on that contiguous run.
    w1 = np.sort(rng.choice(keys, int(n * 0.3), replace=False))
    store.write("t", w1, store.read("t", w1)[0])
    store.commit()
    keep = rng.random(len(w1)) < 0.8
    w2 = np.unique(np.concatenate([w1[keep], rng.choice(keys, int(len(w1) * 0.2), replace=False)]))
    m = len(w2)
    t_ours = min(_timed(lambda: store.read("t", w2)) for _ in range(2))
    t_seq = min(_timed(lambda m=m: _seq_read(plain, m * row_bytes)) for _ in range(3))
    res["read_next_pass_30pct"] = {
        "keys": m,
        "ours_rows_s": m / t_ours,
        "ours_gb_s": m * row_bytes / t_ours / 1e9,
        "seq_gb_s": m * row_bytes / t_seq / 1e9,
        "ours_vs_seq": t_seq / t_ours,
    }

    wb_keys = np.sort(rng.choice(keys, n // 10, replace=False))
    wb_rows = rng.standard_normal((len(wb_keys), WIDTH), dtype=np.float32)
    t_ours = _timed(lambda: (store.write("t", wb_keys, wb_rows), store.commit()))
    t_rocks = _timed(lambda: (_rocks_write(db, wb_keys, wb_rows), db.flush()))
    t_seq = _timed(lambda: _seq_write(root / "plain_wb.bin", wb_rows.tobytes()))
    mb = len(wb_keys) * row_bytes
    res["write_back_10pct"] = {
        "ours_gb_s": mb / t_ours / 1e9,
        "rocksdb_gb_s": mb / t_rocks / 1e9,
        "seq_gb_s": mb / t_seq / 1e9,
        "ours_vs_seq": t_seq / t_ours,
    }

    def commit_after(k: int) -> float:
        sel = rng.choice(keys, k, replace=False)
        store.write("t", sel, rows[:k])
        return _timed(store.commit)

    small = SSDStore(root / "small", {"t": WIDTH})
    small.write("t", keys[: n // 10], rows[: n // 10])
    small.commit()
    sel = keys[: n // 100]
    small.write("t", sel, rows[: len(sel)])
    t_small = _timed(small.commit)
    small.close()
    res["commit_s"] = {
        f"store_{n // 10}_rows": t_small,
        f"store_{n}_rows": commit_after(n // 100),
        "rows_written_before_commit": n // 100,
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

    print(f"rows {n:,} x {row_bytes} B, {res['cache']}")
    print(
        f"{'working set':<14}{'ours rows/s':>14}{'rocksdb rows/s':>16}{'ours/rocksdb':>14}{'ours GB/s':>11}"
        f"{'seq GB/s':>10}{'ours/seq':>10}"
    )
    for frac in (1, 10, 30):
        r = res[f"read_{frac}pct"]
        print(
            f"{f'{frac}%':<14}{r['ours_rows_s']:>14,.0f}{r['rocksdb_rows_s']:>16,.0f}{r['ours_vs_rocksdb']:>13.1f}x"
            f"{r['ours_gb_s']:>11.2f}{r['seq_gb_s']:>10.2f}{r['ours_vs_seq']:>9.2f}x"
        )
    r = res["read_next_pass_30pct"]
    print(
        f"{'next pass 30%':<14}{r['ours_rows_s']:>14,.0f}{'':>16}{'':>14}{r['ours_gb_s']:>11.2f}{r['seq_gb_s']:>10.2f}"
        f"{r['ours_vs_seq']:>9.2f}x   (80% of the keys shared with the pass before)"
    )
    w = res["write_back_10pct"]
    print(
        f"write-back 10% + commit: ours {w['ours_gb_s']:.2f} GB/s, rocksdb {w['rocksdb_gb_s']:.2f} GB/s, "
        f"sequential write {w['seq_gb_s']:.2f} GB/s -> ours/seq {w['ours_vs_seq']:.2f}x"
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
