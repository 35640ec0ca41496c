"""The working-set delta on several ranks: rows shared by consecutive passes stay on the device, only new rows are
pulled (in the stager's worker, beside training) and only departed rows are written back; results equal one process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import hier_ps as hp
from hier_ps.data import ParquetReader
from hier_ps.hbm.working_set import table_specs
from hier_ps.plan import plan_pass
from hier_ps.ring.group import owner
from tests.ring.test_replicated import assert_equivalent, make_cfg, torchrun
from tests.test_lifecycle import with_lifecycle


def pass_keys(cfg: hp.Config, pass_examples: int) -> list[dict[str, np.ndarray]]:
    """Every pass's working set (table -> sorted keys), as one process plans it."""
    reader = ParquetReader(
        cfg.data.train, label=cfg.data.labels, dense=cfg.data.dense, slots={s.name: s.column for s in cfg.data.sparse}
    )
    slot_tables = {s.name: s.table for s in cfg.data.sparse}
    return [plan_pass(c, slot_tables, 512, 0, for_training=False).keys for c in reader.iter_chunks(pass_examples)]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["replicated", "row_wise"])
def test_ranks_pull_only_the_rows_the_last_pass_did_not_hold(tiny_data: dict, tmp_path: Path, mode: str) -> None:
    """Rank 0 reads from its host tier exactly the keys it owns that the pass before did not hold (replicated: the
    new rows of the whole pass travel once, by the pull's all-reduce); rows and dense weights equal one process."""
    ref = make_cfg(tiny_data, tmp_path / "one", "adam", 256)
    with hp.Trainer(ref) as tr:
        tr.fit()
    cfg = make_cfg(tiny_data, tmp_path / "many", "adam", 128, **{"train.embedding_sharding": mode})
    p = torchrun(2, cfg, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_equivalent(ref, cfg)

    width = {n: s.layout.width for n, s in table_specs(cfg).items()}
    recs, ref_recs, prev = records(tmp_path / "many"), records(tmp_path / "one"), None
    passes = pass_keys(cfg, int(cfg.train.pass_examples))
    assert len(recs) == len(passes) > 3
    for i, (rec, ref_rec, keys) in enumerate(zip(recs, ref_recs, passes, strict=True)):
        assert rec["new_keys"] == ref_rec["new_keys"] and rec["rows"] == ref_rec["rows"]  # counted as before
        new = {t: k if prev is None else k[~np.isin(k, prev[t])] for t, k in keys.items()}
        mine = sum(int((owner(k, 2) == 0).sum()) for k in new.values())
        assert rec["host_cache"]["hits"] + rec["host_cache"]["misses"] == mine, i
        if i:  # the passes share keys: most of each working set stays on the device
            assert sum(len(k) for k in new.values()) < 0.8 * sum(rec["working_set_keys"].values())
        pulled = rec["comm_bytes"].get("pull_all_reduce", 0)
        assert pulled == (sum(len(k) * 4 * width[t] for t, k in new.items()) if mode == "replicated" else 0)
        assert rec["background"] == ["read", "plan", "pull", "push"] and rec["seconds"]["pull"] > 0
        assert rec["exposed_s"] == rec["seconds"]["wait"] >= 0
        assert (rec["bytes_pushed"] > 0) == (i > 0 and i % 3 != 0)  # after a checkpoint the rows were written back
        prev = keys


@pytest.mark.parametrize("mode", ["replicated", "row_wise"])
def test_ranks_with_eviction_every_pass_equal_one_process(tiny_data: dict, tmp_path: Path, mode: str) -> None:
    """Eviction after every pass drops the rows kept on the device: every rank throws its staging away alike and pulls
    the whole next pass again (replicated: the same collectives in the same order on every rank)."""
    life = {"eviction": {"ttl_passes": 1}}
    over = {"checkpoint.every_passes": 1}
    ref = with_lifecycle(make_cfg(tiny_data, tmp_path / "one", "rowwise_adagrad", 256, **over), **life)
    with hp.Trainer(ref) as tr:
        tr.fit()
    over["train.embedding_sharding"] = mode
    cfg = with_lifecycle(make_cfg(tiny_data, tmp_path / "many", "rowwise_adagrad", 128, **over), **life)
    p = torchrun(2, cfg, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_equivalent(ref, cfg)
    recs, ref_recs = records(tmp_path / "many"), records(tmp_path / "one")
    assert sum(sum(r["evicted"].values()) for r in recs) > 0
    passes = pass_keys(cfg, int(cfg.train.pass_examples))
    for rec, ref_rec, keys in zip(recs, ref_recs, passes, strict=True):
        assert rec["evicted"] == ref_rec["evicted"] and rec["rows"] == ref_rec["rows"]
        assert rec["new_keys"] == ref_rec["new_keys"]
        # Nothing stayed on the device across the eviction: rank 0 read every key of the pass it owns.
        mine = sum(int((owner(k, 2) == 0).sum()) for k in keys.values())
        assert rec["host_cache"]["hits"] + rec["host_cache"]["misses"] == mine
        assert rec["bytes_pushed"] == 0
