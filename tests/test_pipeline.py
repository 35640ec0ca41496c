"""The read-ahead pipeline: pass order, epochs and the data cursor, bounded look-ahead, errors, telemetry."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hier_ps as hp
from hier_ps.errors import DataError
from hier_ps.pipeline import PassFeeder
from tests.test_trainer import tiny_config


def feeder_for(n_per_epoch: int, **kw: object) -> tuple[PassFeeder, list]:
    planned: list = []

    def chunks(pass_examples: int):
        return iter(range(n_per_epoch))

    def plan_fn(chunk: int, epoch: int, index: int) -> tuple:
        planned.append((epoch, chunk, index))
        return (epoch, chunk), None

    args = {"start": (0, 0, 0), "epochs": 2, "pass_examples": 1, "max_passes": None, **kw}
    return PassFeeder(chunks, plan_fn, **args), planned


def drain(f: PassFeeder) -> list:
    out = []
    while (item := f.get()) is not None:
        out.append((item.epoch, item.pass_in_epoch, item.pass_index, item.end_of_epoch, item.plan))
    f.close()
    return out


def test_passes_come_in_order_across_epochs() -> None:
    f, _ = feeder_for(3)
    got = drain(f)
    assert [g[:4] for g in got] == [
        (0, 0, 0, False),
        (0, 1, 1, False),
        (0, 2, 2, True),
        (1, 0, 3, False),
        (1, 1, 4, False),
        (1, 2, 5, True),
    ]
    assert [g[4] for g in got] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_resume_cursor_and_pass_limit() -> None:
    f, planned = feeder_for(3, start=(0, 2, 2), max_passes=5)  # resumed after 2 passes of epoch 0, stop before 5
    got = drain(f)
    assert [g[:3] for g in got] == [(0, 2, 2), (1, 0, 3), (1, 1, 4)]
    assert [p[1] for p in planned] == [2, 0, 1]  # the passes done before the resume are skipped, not planned


def test_at_most_two_passes_in_flight() -> None:
    f, planned = feeder_for(50, epochs=1)
    consumed = 0
    while (item := f.get()) is not None:
        consumed += 1
        time.sleep(0.01)  # a slow trainer: the feeder must wait, not run ahead
        assert len(planned) <= consumed + 2
        assert item.pass_index == consumed - 1
    f.close()


def test_an_error_in_the_reading_thread_reaches_the_trainer() -> None:
    def chunks(pass_examples: int):
        yield 1
        raise DataError("bad.parquet: column 'x': NaN at row 3")

    f = PassFeeder(chunks, lambda c, e, i: (c, None), (0, 0, 0), 1, 1, None)
    with pytest.raises(DataError, match="bad.parquet"):
        drain(f)
    assert not any(t.name == "hier-ps-feeder" and t.is_alive() for t in threading.enumerate())


def test_a_pass_is_handed_over_before_the_next_one_is_read() -> None:
    second_read = threading.Event()

    def chunks(pass_examples: int):
        yield 1
        assert second_read.wait(10)  # the next pass's read takes long
        yield 2

    f = PassFeeder(chunks, lambda c, e, i: (c, None), (0, 0, 0), 1, 1, None)
    first = f.get()  # does not wait for the second read
    assert first.plan == 1 and not first._end_known.is_set()
    second_read.set()
    assert first.end_of_epoch is False
    assert (second := f.get()).plan == 2 and second.end_of_epoch is True and f.get() is None
    f.close()


def test_telemetry_is_consistent(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path, **{"train.pass_examples": 4096})
    with hp.Trainer(cfg) as tr:
        summary = tr.fit()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 5
    for r in recs:
        sec = r["seconds"]
        assert {"read", "plan", "wait", "pull", "load", "train", "push"} <= set(sec)
        # pull and push run in the stager's worker beside training; the trainer's own stages fit its wall time.
        main_thread = sec["wait"] + sec["load"] + sec["train"]
        assert main_thread <= r["wall_s"] + 1e-6
        assert sec["pull"] > 0 and (sec["push"] > 0) == (r["bytes_pushed"] > 0)
        assert r["exposed_s"] == sec["wait"] >= 0
        assert r["examples_per_s"] == pytest.approx(r["examples"] / r["wall_s"])
    # Per-pass times never add up to more than the run took (background stages are not counted twice).
    assert sum(r["wall_s"] for r in recs) <= summary["wall_s"]
    assert sum(r["seconds"]["read"] + r["seconds"]["plan"] for r in recs) > 0


def test_report_draws_three_plots(tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hier_ps.cli import main

    cfg = tiny_config(tiny_data, tmp_path / "run", **{"train.pass_examples": 4096, "eval.every_passes": 2})
    with hp.Trainer(cfg) as tr:
        tr.fit()
    assert main(["report", str(tmp_path / "run")]) == 0
    files = capsys.readouterr().out.split()
    assert [Path(f).name for f in files] == ["quality.png", "stages.png", "traffic.png"]
    for f in files:
        data = Path(f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl: not found" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"pass": 0, "seconds": {}}\n{not json\n')
    assert main(["report", str(tmp_path / "bad")]) == 2
    assert "metrics.jsonl: line 2 is not a pass record" in capsys.readouterr().err


def test_auto_pass_sizing_fits_the_budget_and_changes_nothing(tiny_data: dict, tmp_path: Path) -> None:
    """pass_examples: auto cuts whole batches so each working set fits hbm_bytes; rows equal one big pass."""
    from tests.test_resume import assert_same, final_state

    budget = 24 * 1024
    auto = tiny_config(tiny_data, tmp_path / "auto", **{"train.pass_examples": "auto", "store.hbm_bytes": budget})
    with hp.Trainer(auto) as tr:
        s = tr.fit()
        auto_state = final_state(tr)
    recs = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    assert s["passes"] == len(recs) > 3 and s["examples"] == tiny_data["info"]["train_rows"]
    for r in recs:
        device_bytes = sum(n * 4 * (4 + 1) for n in r["working_set_keys"].values())  # dim 4 + 1 row-wise state
        assert device_bytes <= budget
        assert r["examples"] % 512 == 0 or r is recs[-1]  # whole batches
    big = tiny_config(tiny_data, tmp_path / "big", **{"train.pass_examples": 1_000_000})
    with hp.Trainer(big) as tr:
        tr.fit()
        assert_same(final_state(tr), auto_state)
    # Resumed in the middle, auto cuts the same passes again.
    cut = tiny_config(
        tiny_data, tmp_path / "cut", **{"train.pass_examples": "auto", "store.hbm_bytes": budget, "train.max_passes": 2}
    )
    with hp.Trainer(cut) as tr:
        tr.fit()
    rest = tiny_config(tiny_data, tmp_path / "cut", **{"train.pass_examples": "auto", "store.hbm_bytes": budget})
    with hp.Trainer(rest) as tr:
        assert tr.fit()["passes"] == len(recs)
        assert_same(final_state(tr), auto_state)
    tiny = tiny_config(tiny_data, tmp_path / "tiny", **{"train.pass_examples": "auto", "store.hbm_bytes": 1024})
    with (
        hp.Trainer(tiny) as tr,
        pytest.raises(hp.HierPSError, match=r"one batch of 512 examples needs .* KiB .* allows 1.0 KiB"),
    ):
        tr.fit()


def test_rows_shared_with_the_last_pass_are_not_pulled_again(tiny_data: dict, tmp_path: Path) -> None:
    """Working-set delta: a pass reads from the host tier only the keys the pass before did not hold."""
    from hier_ps.data import ParquetReader
    from hier_ps.plan import plan_pass

    cfg = tiny_config(tiny_data, tmp_path, **{"train.pass_examples": 2048})
    with hp.Trainer(cfg) as tr:
        tr.fit()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    reader = ParquetReader(
        cfg.data.train, label=cfg.data.labels, dense=cfg.data.dense, slots={s.name: s.column for s in cfg.data.sparse}
    )
    slot_tables = {s.name: s.table for s in cfg.data.sparse}
    prev: dict | None = None
    for rec, chunk in zip(recs, reader.iter_chunks(2048), strict=True):
        keys = plan_pass(chunk, slot_tables, 512, 0, for_training=False).keys
        expect = sum(len(k) if prev is None else int((~np.isin(k, prev[t])).sum()) for t, k in keys.items())
        assert rec["host_cache"]["hits"] + rec["host_cache"]["misses"] == expect
        prev = keys
    assert sum(r["host_cache"]["hits"] + r["host_cache"]["misses"] for r in recs[1:]) < sum(
        sum(r["working_set_keys"].values()) for r in recs[1:]
    )


# ---------------------------------------------------------------- pull and push beside training (the stager)


class SlowTier:
    """A dict RowTier whose writes take a while, recording which thread read (to catch reads racing writes)."""

    def __init__(self, width: int, write_s: float = 0.0) -> None:
        self.width, self.write_s, self.d = width, write_s, {}
        self.read_threads: list[str] = []

    def widths(self) -> dict[str, int]:
        return {"t": self.width}

    def read(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.read_threads.append(threading.current_thread().name)
        rows = np.zeros((len(keys), self.width), np.float32)
        found = np.array([int(k) in self.d for k in keys], bool)
        for i, k in enumerate(keys.tolist()):
            if k in self.d:
                rows[i] = self.d[k]
        return rows, found

    def write(self, table: str, keys: np.ndarray, rows: np.ndarray) -> None:
        time.sleep(self.write_s)
        for k, r in zip(keys.tolist(), rows, strict=True):
            self.d[k] = r.copy()

    def delete(self, table: str, keys: np.ndarray) -> None:
        for k in keys.tolist():
            self.d.pop(k, None)


def _spec() -> object:
    from hier_ps.config import InitConfig, SparseOptimizerConfig
    from hier_ps.hbm.working_set import TableSpec

    return TableSpec("t", dim=2, init=InitConfig(name="constant", value=0.5), optimizer=SparseOptimizerConfig())


def _item(keys: list[int]) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(plan=SimpleNamespace(keys={"t": np.array(sorted(keys), np.uint64)}))


def test_a_pull_queued_after_a_push_reads_what_the_push_wrote() -> None:
    """A key that leaves pass k-1 and comes back in pass k+1 is read after its write-back lands, not before."""
    import torch

    from hier_ps.stager import Stager

    spec = _spec()
    tier = SlowTier(spec.layout.width, write_s=0.3)
    items = iter([_item([1, 5, 9])])
    stager = Stager(tier, {"t": spec}, 0, torch.device("cpu"), lambda: next(items, None))
    written = spec.layout.pack(np.full((1, 2), 7.0, np.float32), np.zeros((1, 1), np.float32), np.ones((1, 2)))
    push = stager.push({"t": (np.array([5], np.uint64), written)})
    stager.stage_next({"t": np.array([1, 2], np.uint64)}, base_gen=3)  # key 1 is in the base: shared, not pulled
    staged = stager.take_next()
    assert push.done()
    t = staged.tables["t"]
    assert staged.base_gen == 3 and staged.item.plan.keys["t"].tolist() == [1, 5, 9]
    assert t.shared.tolist() == [True, False, False] and t.src.tolist() == [0] and t.new.tolist() == [1, 2]
    np.testing.assert_array_equal(t.emb.numpy(), [[7.0, 7.0], [0.5, 0.5]])  # 5 as pushed; 9 initialized
    assert t.n_new == 1 and staged.host == {} and staged.pull_s > 0
    assert tier.read_threads == ["hier-ps-stager_0"]
    stager.stage_next(None, 4)
    assert stager.take_next().item is None
    stager.close()


def test_drain_waits_for_queued_work_and_raises_a_failed_push() -> None:
    import torch

    from hier_ps.stager import Stager

    spec = _spec()
    tier = SlowTier(spec.layout.width, write_s=0.2)
    stager = Stager(tier, {"t": spec}, 0, torch.device("cpu"), lambda: None)
    stager.push({"t": (np.array([3], np.uint64), np.ones((1, spec.layout.width), np.float32))})
    stager.drain()
    assert 3 in tier.d
    stager.push({"t": (np.array([4], np.uint64), np.ones((2, spec.layout.width), np.float32))})  # bad shape
    with pytest.raises(ValueError):
        stager.drain()
    stager.drain()  # reported once
    stager.close()


def test_feeder_in_flight_bounds_passes_planned_ahead_of_a_consumer_that_takes_early() -> None:
    f, planned = feeder_for(30, epochs=1, in_flight=2, prefetch=5)
    done = 0
    taken = [f.get()]
    while taken[-1] is not None:
        taken.append(f.get())  # takes the next pass before finishing this one (as the stager does)
        time.sleep(0.005)
        assert len(planned) <= done + 2
        f.done()
        done += 1
    f.close()
    assert len(taken) == 31 and len(planned) == 30


def test_closing_the_feeder_releases_a_waiting_consumer() -> None:
    f, _ = feeder_for(10, epochs=1, in_flight=1)
    assert f.get() is not None
    got: list = []
    t = threading.Thread(target=lambda: got.append(f.get()))
    t.start()  # waits: the one slot is held until done()
    time.sleep(0.3)
    assert not got
    f.close()
    t.join(timeout=5)
    assert got == [None]


def test_pulls_run_beside_training_and_stay_lossless(tiny_data: dict, tmp_path: Path) -> None:
    """With checkpoints only at the end, departed rows go back through the stager's pushes and come back through its
    pulls while passes train; rows and dense weights equal one pass with everything in memory; eval and a lookup
    mid-run (which wait for the worker) change nothing."""
    from tests.test_trainer import all_rows, dense_state

    ref = tiny_config(tiny_data, tmp_path / "mem", **{"store.host_cache_bytes": "256MiB"})
    with hp.Trainer(ref) as tr:
        tr.fit()
        rows_ref, dense_ref = all_rows(tr), dense_state(tr)
    over = {
        "store.host_cache_bytes": "2KiB",
        "train.pass_examples": 1024,
        "checkpoint.every_passes": 0,
        "eval.every_passes": 5,
    }
    cfg = tiny_config(tiny_data, tmp_path / "piped", **over)
    with hp.Trainer(cfg) as tr:
        host_read = tr.host.read
        threads: list[str] = []

        def spy(table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            threads.append(threading.current_thread().name)
            return host_read(table, keys)

        tr.host.read = spy  # type: ignore[method-assign]
        s = tr.fit()
        rows, dense = all_rows(tr), dense_state(tr)
    recs = [json.loads(line) for line in (tmp_path / "piped" / "metrics.jsonl").read_text().splitlines()]
    # Every pass but the first and those after an eval (which wrote the rows back already) queued a push.
    assert s["passes"] > 10 and sum(r["bytes_pushed"] > 0 for r in recs) == len(recs) - 1 - (len(recs) - 1) // 5
    assert sum(t.startswith("hier-ps-stager") for t in threads) >= s["passes"] * len(tr.specs)
    for t, (keys, r) in rows_ref.items():
        assert np.array_equal(keys, rows[t][0])
        np.testing.assert_allclose(rows[t][1], r, rtol=0, atol=1e-6)
    for k in dense_ref:
        np.testing.assert_allclose(dense[k], dense_ref[k], rtol=0, atol=1e-6)


def test_eviction_mid_run_voids_staged_rows(tiny_data: dict, tmp_path: Path) -> None:
    """Eviction drops the rows kept on the device: rows staged against them are thrown away and pulled again, so a
    run with eviction every pass equals itself run pass by pass in separate processes (no staging across them)."""
    from tests.test_lifecycle import with_lifecycle
    from tests.test_resume import assert_same, final_state

    over = {"train.pass_examples": 4096, "store.host_cache_bytes": "4KiB", "checkpoint.every_passes": 1}
    whole = with_lifecycle(tiny_config(tiny_data, tmp_path / "whole", **over), eviction={"ttl_passes": 1})
    with hp.Trainer(whole) as tr:
        s = tr.fit()
        want = final_state(tr)
    recs = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert sum(sum(r.get("evicted", {}).values()) for r in recs[:-1]) > 0
    for i in range(1, s["passes"] + 1):
        cfg = tiny_config(tiny_data, tmp_path / "steps", **over, **{"train.max_passes": i})
        with hp.Trainer(with_lifecycle(cfg, eviction={"ttl_passes": 1})) as tr:
            tr.fit()
            if i == s["passes"]:
                assert_same(final_state(tr), want)


def test_staged_rows_are_pinned_only_for_cuda() -> None:
    from hier_ps.stager import stage_rows

    spec = _spec()
    tier = SlowTier(spec.layout.width)
    staged, nbytes = stage_rows(tier, {"t": spec}, 0, {"t": np.array([2, 4], np.uint64)}, None, pin=False)
    assert not staged["t"].emb.is_pinned() and nbytes == 2 * spec.layout.width * 4
    assert staged["t"].new.tolist() == [0, 1] and staged["t"].n_new == 2


@pytest.mark.requires_cuda
def test_cuda_run_stages_into_pinned_memory_and_matches_cpu(tiny_data: dict, tmp_path: Path) -> None:
    """On CUDA the stager pins staged rows (asynchronous copies at assembly); results equal the CPU run's."""
    from hier_ps.stager import stage_rows
    from tests.test_trainer import all_rows

    spec = _spec()
    staged, _ = stage_rows(SlowTier(spec.layout.width), {"t": spec}, 0, {"t": np.array([2], np.uint64)}, None, True)
    assert staged["t"].emb.is_pinned() and staged["t"].state.is_pinned()
    out = {}
    for dev in ("cpu", "cuda"):
        over = {"train.device": dev, "train.pass_examples": 2048, "store.host_cache_bytes": "4KiB"}
        with hp.Trainer(tiny_config(tiny_data, tmp_path / dev, **over)) as tr:
            tr.fit()
            out[dev] = all_rows(tr)
    for t, (keys, rows) in out["cpu"].items():
        assert np.array_equal(keys, out["cuda"][t][0])
        np.testing.assert_allclose(out["cuda"][t][1], rows, rtol=0, atol=1e-4)  # CUDA math differs in the last bits


def test_pass_assembly_moves_rows_through_the_device_kernels(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The working set's assembly (shared rows from the last pass, staged new rows) and the departed rows' gather go
    through the device's row kernels (on CUDA the keys.cu kernels), and the run ends as one without the spy."""
    import hier_ps.trainer as trainer_mod
    from hier_ps.hbm.kernels import TorchTwins
    from tests.test_trainer import all_rows

    calls = {"gather_rows": 0, "scatter_rows": 0}

    class Spy(TorchTwins):
        def gather_rows(self, emb, idx):
            calls["gather_rows"] += 1
            return super().gather_rows(emb, idx)

        def scatter_rows(self, emb, idx, src):
            calls["scatter_rows"] += 1
            return super().scatter_rows(emb, idx, src)

    over = {"train.pass_examples": 2048, "store.host_cache_bytes": "4KiB"}
    with hp.Trainer(tiny_config(tiny_data, tmp_path / "plain", **over)) as tr:
        tr.fit()
        ref = all_rows(tr)
    monkeypatch.setattr(trainer_mod, "kernels_for", lambda device: Spy())
    with hp.Trainer(tiny_config(tiny_data, tmp_path / "spy", **over)) as tr:
        s = tr.fit()
        got = all_rows(tr)
    assert s["passes"] > 2
    # Per table and pass: new rows and shared rows scattered (emb and state), shared and departed rows gathered.
    assert calls["scatter_rows"] > 4 * len(ref) and calls["gather_rows"] > 2 * len(ref)
    for t, (keys, rows) in ref.items():
        assert np.array_equal(keys, got[t][0]) and np.array_equal(rows, got[t][1])
