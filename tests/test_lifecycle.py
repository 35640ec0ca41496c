"""Feature admission and eviction: semantics, metrics, and the contracts (lossless tiering, exact resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hier_ps as hp
from hier_ps.admission import Admission, CountMinSketch
from hier_ps.config import AdmissionConfig, config_to_dict
from hier_ps.hbm.rows import init_embeddings
from tests.test_resume import assert_same, final_state
from tests.test_trainer import tiny_config


def with_lifecycle(cfg: hp.Config, admission: dict | None = None, eviction: dict | None = None) -> hp.Config:
    raw = config_to_dict(cfg)
    for t in raw["tables"]:
        if admission is not None:
            t["admission"] = admission
        if eviction is not None:
            t["eviction"] = eviction
    return hp.load_config(raw)


# ---------------------------------------------------------------------------------------------- the sketch


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5), st.integers(1, 4)), min_size=1, max_size=80),
    st.integers(64, 512),
    st.integers(1, 6),
)
def test_running_estimates_equal_adding_step_by_step(triples: list, nbytes: int, cap: int) -> None:
    """estimate_running over a pass == adding batch after batch; never below the true (capped) count."""
    pairs: dict[tuple[int, int], int] = {}
    for k, b, c in triples:
        pairs[(k, b)] = pairs.get((k, b), 0) + c
    keys = np.array([k for k, _ in pairs], np.uint64)
    steps = np.array([b for _, b in pairs], np.int64)
    counts = np.array(list(pairs.values()), np.int64)
    a = CountMinSketch(nbytes, salt=7, cap=cap)
    got = a.estimate_running(keys, steps, counts)
    b = CountMinSketch(nbytes, salt=7, cap=cap)
    want = np.zeros(len(keys), np.int64)
    for step in range(int(steps.max()) + 1):
        sel = steps == step
        if not sel.any():
            continue
        for d in range(b.depth):  # plain count-min update, one step at a time
            np.add.at(b.counters[d], b.cols(keys[sel])[d], counts[sel].astype(np.int32))
        want[sel] = b.estimate(keys[sel])
        b.counters[...] = np.minimum(b.counters, cap)
    assert np.array_equal(np.minimum(got, cap), np.minimum(want, cap))
    assert np.array_equal(a.counters, b.counters)
    true_running = {}
    for i in np.lexsort((steps,)):
        k = int(keys[i])
        true_running[k] = true_running.get(k, 0) + int(counts[i])
        assert got[i] >= min(true_running[k], cap)


def test_sketch_memory_is_bounded_and_state_round_trips() -> None:
    adm = Admission({"t": AdmissionConfig(min_count=3, sketch_bytes="64KiB")})
    keys = np.arange(200_000, dtype=np.uint64)
    adm.admit("t", keys, np.zeros(len(keys), np.int64), np.ones(len(keys), np.int64))
    assert adm.sketches["t"].counters.nbytes == 64 * 1024  # whatever the number of keys
    other = Admission({"t": AdmissionConfig(min_count=3, sketch_bytes="64KiB")})
    other.load_state_dict(adm.state_dict())
    assert np.array_equal(other.sketches["t"].counters, adm.sketches["t"].counters)
    small = Admission({"t": AdmissionConfig(min_count=3, sketch_bytes="1KiB")})
    with pytest.raises(ValueError, match="sketch_bytes changed"):
        small.load_state_dict(adm.state_dict())


# ---------------------------------------------------------------------------------------------- admission


def write_examples(path: Path, bags: list[list[int]], labels: list[float]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table({"label": pa.array(labels, pa.float32()), "s": pa.array(bags, pa.list_(pa.uint64()))})
    pq.write_table(table, path / "part-0.parquet")


def hand_config(tmp_path: Path, min_count: int, **extra: object) -> hp.Config:
    cfg = {
        "run": {"dir": str(tmp_path / "run"), "seed": 3},
        "data": {"train": str(tmp_path / "train"), "label": "label", "dense": [], "sparse": [{"name": "s"}]},
        "tables": [
            {
                "name": "s",
                "dim": 1,
                "init": {"name": "constant", "value": 0.5},
                "admission": {"min_count": min_count, "sketch_bytes": "1MiB"},
            }
        ],
        "sparse_optimizer": {"name": "sgd", "lr": 1.0},
        "dense_optimizer": {"name": "sgd", "lr": 1e-9},
        "model": {"name": "lr"},
        "train": {"device": "cpu", "batch_size": 1, "pass_examples": 100, "progress": False},
        "eval": {"every_passes": 0},
    }
    return hp.load_config(cfg, overrides=[f"{k}={v}" for k, v in extra.items()])


def test_admission_rows_appear_after_min_count_and_read_zero_before(tmp_path: Path) -> None:
    """Key 7 occurs in batches 0, 2 and 3, key 9 once, key 5 twice at once (min_count 2, batch size 1)."""
    write_examples(tmp_path / "train", [[7], [9], [7], [7, 5, 5]], [1.0, 0.0, 1.0, 1.0])
    with hp.Trainer(hand_config(tmp_path, 2)) as tr:
        tr.fit()
        keys = tr.store.keys("s").tolist()
        assert keys == [5, 7]  # 9 was seen once: no row
        np.testing.assert_array_equal(tr.lookup("s", np.array([9], np.uint64)), np.zeros((1, 1)))
        rows, _ = tr.store.read("s", np.array([5, 7], np.uint64))
        meta = np.ascontiguousarray(rows[:, -4:]).view(np.int64)
        # occurrences counted since admission: key 7 from its 2nd occurrence (batch 2) on, key 5 both (batch 3)
        assert meta[:, 0].tolist() == [2, 2]
        # key 7 took updates in batches 2 and 3 only (not batch 0): two sgd steps from its initial 0.5
        emb7 = tr.lookup("s", np.array([7], np.uint64))[0]
        rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert not np.allclose(emb7, 0.5)
    adm = rec["admission"]["s"]
    assert adm == {"admitted_new": 2, "rejected_keys": 1, "rejected_occurrences": 2}
    assert rec["rows"] == {"s": 2}

    # The same with min_count 3: key 7 only from batch 3 on; the change of key 7 is then one step, not two.
    with hp.Trainer(hand_config(tmp_path, 3, **{"run.dir": str(tmp_path / "run3")})) as tr3:
        tr3.fit()
        assert tr3.store.keys("s").tolist() == [7]
        one_step = tr3.lookup("s", np.array([7], np.uint64))[0] - 0.5
    two_steps = emb7 - 0.5
    assert np.all(np.abs(two_steps) > np.abs(one_step))


def test_admission_does_not_depend_on_pass_size_or_tiers(tiny_data: dict, tmp_path: Path) -> None:
    """Lossless contract with admission: one pass in RAM == many small passes through a tiny host cache."""
    adm = {"min_count": 3, "sketch_bytes": "16KiB"}  # small: collisions happen, and must not matter either
    results = []
    for name, cache, pass_examples in [("mem", "256MiB", 1_000_000), ("tiers", "2KiB", 1536)]:
        cfg = tiny_config(
            tiny_data, tmp_path / name, **{"store.host_cache_bytes": cache, "train.pass_examples": pass_examples}
        )
        with hp.Trainer(with_lifecycle(cfg, admission=adm)) as tr:
            s = tr.fit()
            results.append((s, final_state(tr)))
    assert results[0][0]["passes"] == 1 and results[1][0]["passes"] > 10
    assert_same(results[0][1], results[1][1])
    n_rows = sum(len(k) for k, _ in results[0][1][0].values())
    n_keys = sum(tiny_data["info"]["vocab"].values()) if "vocab" in tiny_data["info"] else None
    assert n_rows > 0 and (n_keys is None or n_rows < n_keys)


# ---------------------------------------------------------------------------------------------- eviction


def test_ttl_eviction_deletes_stale_rows_from_every_tier(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(
        tiny_data,
        tmp_path / "run",
        **{"train.pass_examples": 2048, "store.host_cache_bytes": "16KiB", "store.compact_stale_fraction": 0.2},
    )
    with hp.Trainer(with_lifecycle(cfg, eviction={"ttl_passes": 2})) as tr:
        s = tr.fit()
        for t in tr.specs:
            rows, _ = tr.store.read(t, tr.store.keys(t))
            last_pass = np.ascontiguousarray(rows[:, -4:]).view(np.int64)[:, 1]
            assert last_pass.min() >= s["passes"] - 2, t  # nothing unseen for 2 passes survives
            assert tr.rows_total[t] == tr.store.num_rows(t)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(sum(r["evicted"].values()) for r in recs) > 0
    for r in recs:
        assert set(r["rows"]) == set(r["working_set_keys"]) and r["store_bytes"] > 0


def test_min_l2_eviction_and_the_store_shrinks(tiny_data: dict, tmp_path: Path) -> None:
    base = tiny_config(tiny_data, tmp_path / "keep", **{"train.pass_examples": 4096})
    with hp.Trainer(base) as tr:
        tr.fit()
        kept_bytes = tr._store_bytes()
    cfg = tiny_config(tiny_data, tmp_path / "evict", **{"train.pass_examples": 4096})
    with hp.Trainer(with_lifecycle(cfg, eviction={"min_l2": 1e9})) as tr:  # every row is below that norm
        tr.fit()
        assert all(tr.store.num_rows(t) == 0 for t in tr.specs)
        assert tr._store_bytes() < kept_bytes / 4
        k = np.array([1, 2, 3], np.uint64)
        t = next(iter(tr.specs))
        spec = tr.specs[t]
        np.testing.assert_array_equal(tr.lookup(t, k), init_embeddings(cfg.run.seed, t, k, spec.dim, spec.init))


def test_resume_is_exact_with_admission_and_eviction(tiny_data: dict, tmp_path: Path) -> None:
    over = {
        "train.pass_examples": 1024,
        "train.batch_size": 256,
        "store.host_cache_bytes": "8KiB",
        "checkpoint.every_passes": 3,
        "train.epochs": 2,
    }
    lifecycle = {"admission": {"min_count": 2, "sketch_bytes": "8KiB"}, "eviction": {"ttl_passes": 3}}
    with hp.Trainer(with_lifecycle(tiny_config(tiny_data, tmp_path / "ref", **over), **lifecycle)) as tr:
        tr.fit()
        ref = final_state(tr)
    run = tmp_path / "run"
    with hp.Trainer(with_lifecycle(tiny_config(tiny_data, run, **over, **{"train.max_passes": 8}), **lifecycle)) as tr:
        assert tr.fit()["passes"] == 8
    with hp.Trainer(with_lifecycle(tiny_config(tiny_data, run, **over), **lifecycle)) as tr:
        assert tr.pass_index == 8
        tr.fit()
        assert_same(ref, final_state(tr))


def test_lifecycle_config_errors(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path)
    with pytest.raises(hp.ConfigError, match="min_count: must be >= 1, got 0"):
        with_lifecycle(cfg, admission={"min_count": 0})
    with pytest.raises(hp.ConfigError, match="ttl_passes: must be >= 1"):
        with_lifecycle(cfg, eviction={"ttl_passes": 0})
    with pytest.raises(hp.ConfigError, match="sketch_bytes"):
        with_lifecycle(cfg, admission={"sketch_bytes": "lots"})
