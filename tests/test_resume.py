"""Exact resume (DESIGN.md contract 5): killed at any moment, resumed, same final rows and dense weights."""

from __future__ import annotations

import errno
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import hier_ps as hp
from hier_ps.config import config_to_dict

OVER = {
    "sparse_optimizer.name": "adam",
    "train.pass_examples": 1024,
    "train.batch_size": 256,
    "train.shuffle": True,
    "train.epochs": 2,
    "store.host_cache_bytes": "8KiB",
    "checkpoint.every_passes": 3,
    "checkpoint.keep": 2,
    "store.compact_stale_fraction": 0.3,
}


def make_cfg(tiny_data: dict, run: Path, **extra: object) -> hp.Config:
    from tests.test_trainer import tiny_config

    return tiny_config(tiny_data, run, **{**OVER, **extra})


def final_state(tr: hp.Trainer) -> tuple[dict, dict]:
    rows = {t: (tr.store.keys(t), tr.lookup(t, tr.store.keys(t))) for t in tr.specs}
    dense = {k: v.detach().cpu().numpy().copy() for k, v in tr.model.state_dict().items()}
    return rows, dense


def assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    for t, (keys, rows) in a[0].items():
        assert np.array_equal(keys, b[0][t][0]), t
        np.testing.assert_allclose(b[0][t][1], rows, rtol=0, atol=1e-6)
    for k, v in a[1].items():
        np.testing.assert_allclose(b[1][k], v, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tiny_data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = tmp_path_factory.mktemp("ref")
    t0 = time.perf_counter()
    with hp.Trainer(make_cfg(tiny_data, run)) as tr:
        summary = tr.fit()
        state = final_state(tr)
    return {"state": state, "summary": summary, "seconds": time.perf_counter() - t0}


def test_stop_and_resume_in_process(tiny_data: dict, tmp_path: Path, reference: dict) -> None:
    with hp.Trainer(make_cfg(tiny_data, tmp_path, **{"train.max_passes": 7})) as tr:
        assert tr.fit()["passes"] == 7
    with hp.Trainer(make_cfg(tiny_data, tmp_path)) as tr:
        assert tr.resumed_from is not None and tr.pass_index == 7
        s = tr.fit()
        assert_same(reference["state"], final_state(tr))
    assert s["passes"] == reference["summary"]["passes"] and s["examples"] == reference["summary"]["examples"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == s["passes"]  # no duplicated records after resume
    assert len(list((tmp_path / "checkpoints").glob("ckpt-*"))) == 2  # keep: 2


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_at_random_moments_then_resume(tiny_data: dict, tmp_path: Path, reference: dict, trial: int) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(make_cfg(tiny_data, tmp_path / "run"))))
    code = f"from hier_ps.cli import main; main(['-q', 'train', {str(cfg_file)!r}])"
    rng = random.Random(1234 + trial)
    for _ in range(2):  # kill twice, at seeded random moments of the run (imports take ~2 s of it)
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
        time.sleep(rng.uniform(1.5, 2.0 + reference["seconds"]))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cfg = hp.load_config(cfg_file)
    with hp.Trainer(cfg) as tr:
        tr.fit()
        assert_same(reference["state"], final_state(tr))


def test_torn_newest_checkpoint_falls_back(
    tiny_data: dict, tmp_path: Path, reference: dict, caplog: pytest.LogCaptureFixture
) -> None:
    with hp.Trainer(make_cfg(tiny_data, tmp_path, **{"train.max_passes": 9})) as tr:
        tr.fit()
    newest = sorted((tmp_path / "checkpoints").glob("ckpt-*"))[-1]
    data = (newest / "dense.pt").read_bytes()
    (newest / "dense.pt").write_bytes(data[: len(data) // 2])  # torn write
    with caplog.at_level(logging.WARNING, logger="hier_ps"), hp.Trainer(make_cfg(tiny_data, tmp_path)) as tr:
        assert tr.pass_index == 6  # the checkpoint before (every 3 passes)
        tr.fit()
        assert_same(reference["state"], final_state(tr))
    assert any("skipping checkpoint" in r.message and newest.name in r.message for r in caplog.records)


def test_disk_full_keeps_last_checkpoint(tiny_data: dict, tmp_path: Path, reference: dict) -> None:
    with hp.Trainer(make_cfg(tiny_data, tmp_path)) as tr:

        def hook(path: Path, nbytes: int) -> None:  # the disk fills up after the second checkpoint
            if (tmp_path / "checkpoints" / "ckpt-00000006").is_dir():
                raise OSError(errno.ENOSPC, "No space left on device")

        tr.store.write_hook = hook
        with pytest.raises(hp.StoreError, match="disk full"):
            tr.fit()
    with hp.Trainer(make_cfg(tiny_data, tmp_path, **{"train.resume": "required"})) as tr:
        assert tr.resumed_from is not None and tr.pass_index == 6
        tr.fit()
        assert_same(reference["state"], final_state(tr))


def test_resume_required_without_checkpoint(tiny_data: dict, tmp_path: Path) -> None:
    with pytest.raises(hp.HierPSError, match="train.resume=required but .* holds no valid checkpoint"):
        hp.Trainer(make_cfg(tiny_data, tmp_path, **{"train.resume": "required"}))
