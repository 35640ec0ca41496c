"""Crashes at arbitrary moments: the store always reopens at exactly its last committed state."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hier_ps.ssd import SSDStore

N, WIDTH = 30_000, 16

# Round i writes value i to every key in three separate calls (so a torn commit would show a mix), deletes the keys
# of round i % 7 (so deletes are torn too), commits, then reports i on stdout. It never stops by itself.
WRITER = textwrap.dedent("""
    import sys, numpy as np
    from hier_ps.ssd import SSDStore
    s = SSDStore(sys.argv[1], {{"a": {width}, "b": 3}})
    k = np.arange({n}, dtype=np.uint64)
    i = 0
    while True:
        i += 1
        for part in np.array_split(np.random.default_rng(i).permutation(k), 3):
            s.write("a", part, np.full((len(part), {width}), i, np.float32))
        s.write("b", k[:10], np.full((10, 3), i, np.float32))
        s.delete("a", k[i % 7 :: 7][:100])
        s.commit()
        print(i, flush=True)
""").format(n=N, width=WIDTH)


def expected(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(value per key, live per key) of table a after round i committed."""
    k = np.arange(N)
    live = np.ones(N, bool)
    live[k[i % 7 :: 7][:100]] = False
    return np.where(live, float(i), 0.0).astype(np.float32), live


@pytest.mark.parametrize("delay", [0.3, 0.75, 1.3])
def test_sigkill_at_any_moment_reopens_at_the_last_commit(tmp_path: Path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    reported = [int(x) for x in out.split()]
    last = reported[-1] if reported else 0
    with SSDStore(tmp_path, {"a": WIDTH, "b": 3}) as s:
        k = np.arange(N, dtype=np.uint64)
        rows, found = s.read("a", k)
        if not found.any():  # killed before the first commit: an empty store
            assert last == 0 and s.num_rows("b") == 0
            return
        i = int(rows[found][0, 0])
        # The commit of round last+1 may have become durable just before the kill, not after it was reported.
        assert i in (last, last + 1), (i, last)
        value, live = expected(i)
        np.testing.assert_array_equal(found, live)
        np.testing.assert_array_equal(rows, np.repeat(value[:, None], WIDTH, axis=1))
        assert (s.read("b", k[:10])[0] == i).all() and s.num_rows("a") == N - 100
        s.write("a", k[:5], np.zeros((5, WIDTH), np.float32))  # and it keeps working
        s.commit()


def test_exit_without_close_or_commit_loses_only_uncommitted_rows(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, numpy as np
        from hier_ps.ssd import SSDStore
        s = SSDStore({str(tmp_path)!r}, {{"a": 4}})
        k = np.arange(1000, dtype=np.uint64)
        s.write("a", k, np.ones((1000, 4), np.float32))
        s.commit()
        s.write("a", k[:500], np.full((500, 4), 2, np.float32))
        s.write("a", k + 5000, np.full((1000, 4), 3, np.float32))
        s.delete("a", k[900:])
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    with SSDStore(tmp_path, {"a": 4}) as s:
        assert np.array_equal(s.keys("a"), np.arange(1000, dtype=np.uint64))
        assert (s.read("a", np.arange(1000, dtype=np.uint64))[0] == 1).all()
        assert s.total_rows() == 1000  # the uncommitted tail of the data file was cut away
