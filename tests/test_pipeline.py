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


def test_telemetry_is_consistent(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path, **{"train.pass_examples": 4096})
    with hp.Trainer(cfg) as tr:
        summary = tr.fit()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 5
    for r in recs:
        sec = r["seconds"]
        assert {"read", "plan", "wait", "pull", "load", "train", "push"} <= set(sec)
        main_thread = sec["wait"] + sec["pull"] + sec["load"] + sec["train"] + sec["push"]
        assert main_thread <= r["wall_s"] + 1e-6  # the trainer's stages fit in its wall time for the pass
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
