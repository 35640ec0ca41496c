from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.errors import StoreError, StoreLockedError
from hier_ps.ssd import SSDStore


def rows_for(keys: np.ndarray, width: int, salt: float = 0.0) -> np.ndarray:
    return (keys[:, None].astype(np.float64) % 1000 + np.arange(width) * 0.5 + salt).astype(np.float32)


def test_roundtrip_order_and_missing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, 500, dtype=np.int64).astype(np.uint64) * np.uint64(2))
    with SSDStore(tmp_path, {"a": 5, "b": 2}) as s:
        s.write("a", keys, rows_for(keys, 5))
        q = rng.permutation(np.concatenate([keys[:50], np.array([1, 3], np.uint64)]))
        rows, found = s.read("a", q)
        assert found.sum() == 50 and not found[np.isin(q, [1, 3])].any()
        np.testing.assert_array_equal(rows[found], rows_for(q[found], 5))
        assert (rows[~found] == 0).all()
        s.write("a", keys[:10], rows_for(keys[:10], 5, salt=9))  # overwrite
        np.testing.assert_array_equal(s.read("a", keys[:10])[0], rows_for(keys[:10], 5, salt=9))
        assert s.num_rows("a") == len(keys) and s.num_rows("b") == 0
        assert np.array_equal(s.keys("a"), np.sort(keys))
        s.commit()
    with SSDStore(tmp_path, {"a": 5, "b": 2}) as s:
        np.testing.assert_array_equal(s.read("a", keys[:10])[0], rows_for(keys[:10], 5, salt=9))
        np.testing.assert_array_equal(s.read("a", keys[10:])[0], rows_for(keys[10:], 5))


def test_uncommitted_writes_vanish_on_reopen(tmp_path: Path) -> None:
    k = np.arange(10, dtype=np.uint64)
    s = SSDStore(tmp_path, {"a": 3})
    s.write("a", k, rows_for(k, 3))
    s.commit()
    s.write("a", k[:5], rows_for(k[:5], 3, salt=1))
    s.write("a", np.arange(100, 105, dtype=np.uint64), rows_for(k[:5], 3))
    s.delete("a", k[5:])
    s.close()  # no commit
    with SSDStore(tmp_path, {"a": 3}) as s:
        assert s.num_rows("a") == 10
        np.testing.assert_array_equal(s.read("a", k)[0], rows_for(k, 3))


def test_sigkill_during_writes_keeps_last_commit(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from hier_ps.ssd import SSDStore
        s = SSDStore({str(tmp_path)!r}, {{"a": 16}})
        k = np.arange(20000, dtype=np.uint64)
        s.write("a", k, np.ones((20000, 16), np.float32))
        s.commit()
        for i in range(50):
            s.write("a", k, np.full((20000, 16), i + 2, np.float32))
            if i == 3:
                s.commit()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", script], check=False)
    assert r.returncode == -signal.SIGKILL
    with SSDStore(tmp_path, {"a": 16}) as s:
        rows, found = s.read("a", np.arange(20000, dtype=np.uint64))
        assert found.all() and (rows == 5).all()  # the commit after write i == 3 (value 5)
        (data,) = tmp_path.glob("*.rows")
        assert os.path.getsize(data) == 5 * 20000 * 16 * 4  # uncommitted tail cut away
        assert os.path.getsize(data.with_suffix(".sums")) == 5 * 20000 * 4  # ... from the checksums too


def test_lock_conflict_in_process_and_across_processes(tmp_path: Path) -> None:
    with SSDStore(tmp_path, {"a": 1}):
        with pytest.raises(StoreLockedError, match="in use by another process"):
            SSDStore(tmp_path, {"a": 1})
        code = f"from hier_ps.ssd import SSDStore\nSSDStore({str(tmp_path)!r}, {{'a': 1}})"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert r.returncode != 0 and "StoreLockedError" in r.stderr
    SSDStore(tmp_path, {"a": 1}).close()  # released


def test_width_mismatch_and_corruption(tmp_path: Path) -> None:
    with SSDStore(tmp_path, {"a": 4}) as s:
        s.write("a", np.arange(3, dtype=np.uint64), np.zeros((3, 4), np.float32))
        s.commit()
    with pytest.raises(StoreError, match="table 'a' has row width 4 on disk but 6"):
        SSDStore(tmp_path, {"a": 6})
    idx = next(tmp_path.glob("a-*.delta.*.bin"))
    data = bytearray(idx.read_bytes())
    data[3] ^= 0xFF
    idx.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"{idx.name}: index file checksum mismatch"):
        SSDStore(tmp_path, {"a": 4})
    next(tmp_path.glob("manifest.*.json")).write_text("{not json")
    with pytest.raises(StoreError, match=r"manifest\.0000000001\.json: corrupt or unreadable manifest"):
        SSDStore(tmp_path, {"a": 4})


ops = st.lists(
    st.tuples(
        st.sampled_from(["write", "delete", "commit", "reopen", "compact"]),
        st.lists(st.integers(0, 30), min_size=1, max_size=8, unique=True),
        st.integers(0, 100),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=ops)
def test_matches_dict_model(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    d = tmp_path_factory.mktemp("s")
    committed: dict[int, float] = {}
    live: dict[int, float] = {}
    s = SSDStore(d, {"t": 2})
    for op, keys, val in ops:
        k = np.array(keys, np.uint64)
        if op == "write":
            s.write("t", k, np.full((len(k), 2), val, np.float32))
            live.update(dict.fromkeys(keys, float(val)))
        elif op == "delete":
            s.delete("t", k)
            for x in keys:
                live.pop(x, None)
        elif op == "commit":
            s.commit()
            committed = dict(live)
        elif op == "compact":
            s.retain({s.compact()})
            committed = dict(live)
            assert s.stale_rows() == 0
        else:  # reopen without commit (as after a crash): the last commit
            s.close()
            s = SSDStore(d, {"t": 2})
            live = dict(committed)
        q = np.arange(31, dtype=np.uint64)
        rows, found = s.read("t", q)
        assert found.tolist() == [i in live for i in range(31)]
        assert [float(r[0]) for r, f in zip(rows, found, strict=True) if f] == [live[i] for i in range(31) if i in live]
    s.close()


def test_flipped_byte_in_a_row_is_caught_at_read(tmp_path: Path) -> None:
    k = np.arange(100, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 8}) as s:
        s.write("a", k, rows_for(k, 8))
        s.commit()
    (data,) = tmp_path.glob("*.rows")
    raw = bytearray(data.read_bytes())
    raw[37 * 8 * 4 + 5] ^= 0x10  # a byte inside row 37
    data.write_bytes(bytes(raw))
    with SSDStore(tmp_path, {"a": 8}) as s:
        s.read("a", k[:30])  # rows before it are fine
        with pytest.raises(StoreError, match=f"{data.name}: checksum mismatch in row 37"):
            s.read("a", k[30:40])


def test_compaction_reclaims_and_reopens(tmp_path: Path) -> None:
    k = np.arange(1000, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 4, "b": 2}) as s:
        for i in range(3):
            s.write("a", k, rows_for(k, 4, salt=i))
            s.commit()
        s.delete("a", k[:500])
        s.write("b", k[:10], rows_for(k[:10], 2))
        assert s.stale_rows() == 2500
        before = sum(p.stat().st_size for p in tmp_path.glob("*.rows"))
        gen = s.compact()
        assert s.stale_rows() == 0 and len(s.generations()) == 5
        s.retain({gen})
        assert s.generations() == [gen]
        assert sum(p.stat().st_size for p in tmp_path.glob("*.rows")) < before / 5
        np.testing.assert_array_equal(s.read("a", k[500:])[0], rows_for(k[500:], 4, salt=2))
        s.write("a", k[:3], rows_for(k[:3], 4, salt=7))  # keeps working after compaction
        s.commit()
    with SSDStore(tmp_path, {"a": 4, "b": 2}) as s:
        assert s.num_rows("a") == 503 and s.num_rows("b") == 10
        np.testing.assert_array_equal(s.read("a", k[:3])[0], rows_for(k[:3], 4, salt=7))
        np.testing.assert_array_equal(s.read("a", k[500:])[0], rows_for(k[500:], 4, salt=2))
    assert len(list(tmp_path.glob("*.delta.*"))) == 1 and len(list(tmp_path.glob("*.base.*"))) == 2


def test_open_an_older_generation_discards_later_ones(tmp_path: Path) -> None:
    k = np.arange(10, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 2}) as s:
        s.write("a", k, rows_for(k, 2, salt=1))
        g1 = s.commit()
        s.write("a", k, rows_for(k, 2, salt=2))
        s.commit()
    with SSDStore(tmp_path, {"a": 2}, generation=g1) as s:
        np.testing.assert_array_equal(s.read("a", k)[0], rows_for(k, 2, salt=1))
    with SSDStore(tmp_path, {"a": 2}) as s:
        assert s.generation == g1 and s.generations() == [g1]
        np.testing.assert_array_equal(s.read("a", k)[0], rows_for(k, 2, salt=1))
    with pytest.raises(StoreError, match="has no generation 9"):
        SSDStore(tmp_path, {"a": 2}, generation=9)


def test_commit_writes_only_what_changed(tmp_path: Path) -> None:
    with SSDStore(tmp_path, {"a": 4}) as s:
        big = np.arange(200_000, dtype=np.uint64)
        s.write("a", big, np.zeros((len(big), 4), np.float32))
        s.commit()
        s.write("a", big[:100], np.ones((100, 4), np.float32))
        s.delete("a", big[-7:])
        gen = s.commit()
    (delta,) = tmp_path.glob(f"*.delta.{gen:010d}.bin")
    assert delta.stat().st_size == 8 * (2 + 2 * 100 + 7)  # header + 100 puts + 7 deletes, whatever the store size


def test_disk_full_during_write_back_keeps_last_commit(tmp_path: Path) -> None:
    k = np.arange(50, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 4}) as s:
        s.write("a", k, rows_for(k, 4))
        s.commit()

        def full(path: Path, nbytes: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        s.write("a", k[:10], rows_for(k[:10], 4, salt=1))
        s.write_hook = full
        with pytest.raises(StoreError, match=r"\.rows: write failed \(disk full\)"):
            s.write("a", k[10:], rows_for(k[10:], 4, salt=1))
        with pytest.raises(StoreError, match="failed earlier"):
            s.commit()
    with SSDStore(tmp_path, {"a": 4}) as s:
        np.testing.assert_array_equal(s.read("a", k)[0], rows_for(k, 4))
        s.write("a", k[:5], rows_for(k[:5], 4, salt=3))
        s.write_hook = lambda path, n: (
            (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")) if "manifest" in str(path) else None
        )
        with pytest.raises(StoreError, match="disk full"):
            s.commit()
    with SSDStore(tmp_path, {"a": 4}) as s:
        np.testing.assert_array_equal(s.read("a", k)[0], rows_for(k, 4))


def test_reads_run_beside_a_write_back(tmp_path: Path) -> None:
    import threading

    k = np.arange(5000, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 8}) as s:
        s.write("a", k, rows_for(k, 8))
        s.commit()
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                for i in range(60):  # scattered and whole reads while the file grows (the map is remapped)
                    q = k[::7] if i % 2 else k
                    rows, found = s.read("a", q)
                    assert found.all()
                    assert np.isin(rows[:, 1] - rows_for(q, 8)[:, 1], [0.0, 1.0]).all()
            except BaseException as e:
                errors.append(e)

        th = threading.Thread(target=reader)
        th.start()
        for _ in range(60):
            s.write("a", k, rows_for(k, 8, salt=1))
        th.join()
        assert not errors, errors


def test_older_generation_survives_compaction_until_released(tmp_path: Path) -> None:
    k = np.arange(100, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 2}) as s:
        s.write("a", k, rows_for(k, 2, salt=1))
        g1 = s.commit()
        s.write("a", k, rows_for(k, 2, salt=2))
        s.compact()
    with SSDStore(tmp_path, {"a": 2}, generation=g1) as s:  # e.g. resuming an older checkpoint
        np.testing.assert_array_equal(s.read("a", k)[0], rows_for(k, 2, salt=1))
        assert s.generations() == [g1] and len(list(tmp_path.glob("*.rows"))) == 1


def test_tables_added_and_kept(tmp_path: Path) -> None:
    k = np.arange(20, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 3, "b": 2}) as s:
        s.write("a", k, rows_for(k, 3))
        s.write("b", k, rows_for(k, 2))
        s.commit()
    with SSDStore(tmp_path, {"a": 3, "c": 5}) as s:  # b not configured: left alone; c: added
        assert s.widths() == {"a": 3, "c": 5}
        s.write("c", k[:4], rows_for(k[:4], 5))
        s.write("a", k[:2], rows_for(k[:2], 3, salt=1))
        s.compact()
    with SSDStore(tmp_path, {"a": 3, "b": 2, "c": 5}) as s:
        np.testing.assert_array_equal(s.read("b", k)[0], rows_for(k, 2))
        np.testing.assert_array_equal(s.read("c", k[:4])[0], rows_for(k[:4], 5))
        np.testing.assert_array_equal(s.read("a", k[:2])[0], rows_for(k[:2], 3, salt=1))
        with pytest.raises(StoreError, match="unknown table 'zz'"):
            s.read("zz", k)


def test_corrupt_base_index_and_manifest_entries(tmp_path: Path) -> None:
    with SSDStore(tmp_path, {"a": 4}) as s:
        s.write("a", np.arange(30, dtype=np.uint64), np.zeros((30, 4), np.float32))
        s.retain({s.compact()})
    (base,) = tmp_path.glob("a-*.base.*.bin")
    good = base.read_bytes()
    base.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(StoreError, match=f"{base.name}: index file checksum mismatch"):
        SSDStore(tmp_path, {"a": 4})
    base.unlink()
    with pytest.raises(StoreError, match=f"{base.name}: cannot read index file"):
        SSDStore(tmp_path, {"a": 4})
    base.write_bytes(good)
    (manifest,) = tmp_path.glob("manifest.*.json")
    m = json.loads(manifest.read_text())
    del m["tables"]["a"]["rows"]
    manifest.write_text(json.dumps(m))
    with pytest.raises(StoreError, match=rf"{manifest.name}: corrupt manifest \(entry of table 'a'\)"):
        SSDStore(tmp_path, {"a": 4})
    m["format"] = 99
    manifest.write_text(json.dumps(m))
    with pytest.raises(StoreError, match="store format 99"):
        SSDStore(tmp_path, {"a": 4})


def test_many_commits_fold_index_deltas(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    model: dict[int, float] = {}
    with SSDStore(tmp_path, {"a": 1}) as s:
        for i in range(70):
            k = np.unique(rng.integers(0, 500, 20).astype(np.uint64))
            s.write("a", k, np.full((len(k), 1), i, np.float32))
            model.update(dict.fromkeys(k.tolist(), float(i)))
            d = np.unique(rng.integers(0, 500, 5).astype(np.uint64))
            s.delete("a", d)
            for x in d.tolist():
                model.pop(x, None)
            s.retain({s.commit()})
        assert len(list(tmp_path.glob("*.delta.*"))) <= 64 and len(list(tmp_path.glob("*.base.*"))) == 1
    with SSDStore(tmp_path, {"a": 1}) as s:
        assert s.keys("a").tolist() == sorted(model)
        assert s.read("a", s.keys("a"))[0][:, 0].tolist() == [model[x] for x in sorted(model)]


def test_stats_count_rows_bytes_and_commits(tmp_path: Path) -> None:
    with SSDStore(tmp_path, {"a": 3}) as s:
        s.write("a", np.arange(10, dtype=np.uint64), np.zeros((10, 3), np.float32))
        s.read("a", np.arange(5, 15, dtype=np.uint64))  # 5 found
        s.commit()
        assert s.stats == {"rows_read": 5, "rows_written": 10, "bytes_read": 80, "bytes_written": 160, "commits": 1}


def test_flipped_byte_in_the_checksum_file_is_caught_and_named(tmp_path: Path) -> None:
    k = np.arange(3000, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 8}) as s:
        s.write("a", k, rows_for(k, 8))
        s.commit()
    (sums,) = tmp_path.glob("*.sums")
    raw = bytearray(sums.read_bytes())
    raw[2500 * 4 + 2] ^= 0x04  # the checksum of row 2500
    sums.write_bytes(bytes(raw))
    with SSDStore(tmp_path, {"a": 8}) as s:
        assert np.array_equal(s.read("a", k[:2000])[0], rows_for(k[:2000], 8))
        with pytest.raises(StoreError, match=f"checksum mismatch in row 2500 .*checksum file {sums.name}"):
            s.read("a", k)


def test_truncated_checksum_file_and_old_format_give_clear_errors(tmp_path: Path) -> None:
    k = np.arange(100, dtype=np.uint64)
    with SSDStore(tmp_path, {"a": 2}) as s:
        s.write("a", k, rows_for(k, 2))
        gen = s.commit()
    (sums,) = tmp_path.glob("*.sums")
    os.truncate(sums, 40)
    with pytest.raises(StoreError, match=rf"{sums.name}: file holds 40 bytes, its last commit needs 400"):
        SSDStore(tmp_path, {"a": 2})
    manifest = tmp_path / f"manifest.{gen:010d}.json"
    m = json.loads(manifest.read_text())
    m["format"] = 2  # a store written before the checksums moved to their own file
    manifest.write_text(json.dumps(m))
    with pytest.raises(StoreError, match="store format 2, this version of hier_ps reads format 3 only"):
        SSDStore(tmp_path, {"a": 2})


def test_write_backs_in_and_out_of_key_order_reopen_equal(tmp_path: Path) -> None:
    """A commit of one sorted write takes its delta straight from the write; others go through the index."""
    rng = np.random.default_rng(5)
    k = np.sort(rng.choice(2**40, 5000, replace=False).astype(np.uint64))
    model = {}
    with SSDStore(tmp_path, {"a": 3}) as s:
        for i, q in enumerate([k, k[::3], rng.permutation(k[:700]), k[100:200]]):
            s.write("a", q, rows_for(q, 3, salt=i))
            model.update(zip(q.tolist(), rows_for(q, 3, salt=i), strict=True))
            if i == 2:
                s.delete("a", k[150:160])
                for key in k[150:160].tolist():
                    model.pop(key)
            s.commit()
    with SSDStore(tmp_path, {"a": 3}) as s:
        rows, found = s.read("a", k)
        assert found.tolist() == [key in model for key in k.tolist()]
        np.testing.assert_array_equal(rows[found], np.array([model[key] for key in k[found].tolist()]))
