"""Exports (full and delta) and the Predictor: parity with the trainer's eval, delta chains, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import hier_ps as hp
from hier_ps.cli import main
from tests.test_lifecycle import with_lifecycle
from tests.test_trainer import tiny_config

OVER = {"train.pass_examples": 2048, "checkpoint.every_passes": 2, "store.host_cache_bytes": "32KiB"}
LIFECYCLE = {"admission": {"min_count": 2, "sketch_bytes": "64KiB"}, "eviction": {"ttl_passes": 2}}


def cfg_for(tiny_data: dict, run: Path, lifecycle: bool = True, **extra: object) -> hp.Config:
    cfg = tiny_config(tiny_data, run, **{**OVER, **extra})
    return with_lifecycle(cfg, **LIFECYCLE) if lifecycle else cfg


def train(tiny_data: dict, run: Path, max_passes: int | None = None, lifecycle: bool = True) -> dict:
    extra = {"train.max_passes": max_passes} if max_passes else {}
    with hp.Trainer(cfg_for(tiny_data, run, lifecycle, **extra)) as tr:
        tr.fit()
        ev = tr.evaluate(return_scores=True)
    return ev


def tables(p: hp.Predictor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {n: (t.keys, t.emb) for n, t in p.tables.items()}


@pytest.mark.parametrize("lifecycle", [False, True])
def test_predictor_scores_equal_trainer_eval(tiny_data: dict, tmp_path: Path, lifecycle: bool) -> None:
    ev = train(tiny_data, tmp_path / "run", lifecycle=lifecycle)
    m = hp.export_run(tmp_path / "run", tmp_path / "full")
    assert m["kind"] == "full" and m["parent"] is None
    p = hp.Predictor(tmp_path / "full")
    scores = p.predict(tiny_data["dir"] / "eval")
    assert scores.shape == (tiny_data["info"]["eval_rows"],)
    np.testing.assert_allclose(scores, ev["scores"][:, 0], rtol=0, atol=1e-6)
    # An in-memory Arrow table, without its label column, scores the same.
    table = pq.read_table(tiny_data["dir"] / "eval").drop_columns(["label"])
    np.testing.assert_allclose(p.predict(table), scores, rtol=0, atol=1e-6)
    assert p.index_bytes <= 0.5 * p.row_bytes  # dim 4 fp32: 8 key bytes per 16 row bytes


def test_fp16_export_is_half_the_size_and_close(tiny_data: dict, tmp_path: Path) -> None:
    ev = train(tiny_data, tmp_path / "run", lifecycle=False)
    hp.export_run(tmp_path / "run", tmp_path / "fp32")
    m16 = hp.export_run(tmp_path / "run", tmp_path / "fp16", dtype="fp16")
    m32 = json.loads((tmp_path / "fp32" / "MANIFEST.json").read_text())
    emb = [(m16["tables"][t]["emb"]["bytes"], m32["tables"][t]["emb"]["bytes"]) for t in m32["tables"]]
    assert sum(a for a, _ in emb) < 0.6 * sum(b for _, b in emb)  # (each .npy file has a 128-byte header)
    p = hp.Predictor(tmp_path / "fp16")
    assert next(iter(p.tables.values())).emb.dtype == np.float16
    np.testing.assert_allclose(p.predict(tiny_data["dir"] / "eval"), ev["scores"][:, 0], rtol=0, atol=2e-3)


def test_full_plus_deltas_equals_full_at_the_same_point(tiny_data: dict, tmp_path: Path) -> None:
    run, ex = tmp_path / "run", tmp_path / "exports"
    train(tiny_data, run, max_passes=2)
    hp.export_run(run, ex / "full-2")
    train(tiny_data, run, max_passes=3)
    d3 = hp.export_run(run, ex / "delta-3", since=ex / "full-2")
    assert d3["kind"] == "delta"
    assert d3["parent"]["id"] == json.loads((ex / "full-2" / "MANIFEST.json").read_text())["id"]
    changed = sum(t["keys"]["rows"] for t in d3["tables"].values())
    assert 0 < changed < sum(t["live_rows"] for t in d3["tables"].values())  # one pass touches a part
    ev = train(tiny_data, run)  # to the end of the data (10 passes)
    d_end = hp.export_run(run, ex / "delta-end", since=ex / "delta-3")
    hp.export_run(run, ex / "full-end")
    # ttl eviction removed rows between the two exports: the delta carries the deletions
    assert sum(t["deleted"]["rows"] for t in d_end["tables"].values()) > 0

    chained = hp.Predictor(ex / "full-2", deltas=[ex / "delta-3", ex / "delta-end"])
    full = hp.Predictor(ex / "full-end")
    for name, (keys, emb) in tables(full).items():
        k2, e2 = tables(chained)[name]
        assert np.array_equal(keys, k2), name
        assert np.array_equal(emb, e2), name
    scores = chained.predict(tiny_data["dir"] / "eval")
    np.testing.assert_allclose(scores, ev["scores"][:, 0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(scores, full.predict(tiny_data["dir"] / "eval"))


def test_bad_exports_are_refused_with_the_file_named(tiny_data: dict, tmp_path: Path) -> None:
    run, ex = tmp_path / "run", tmp_path / "exports"
    train(tiny_data, run, max_passes=2)
    hp.export_run(run, ex / "a")
    train(tiny_data, run, max_passes=4)
    hp.export_run(run, ex / "b", since=ex / "a")
    train(tiny_data, run, max_passes=6)
    hp.export_run(run, ex / "c", since=ex / "b")

    with pytest.raises(hp.ExportError, match="already exists"):
        hp.export_run(run, ex / "a")
    p = hp.Predictor(ex / "a")
    before = tables(p)
    with pytest.raises(hp.ExportError, match=r"MANIFEST.json: its parent is export .* applied in order"):
        p.apply_delta(ex / "c")  # skips b
    assert all(np.array_equal(before[n][1], e) for n, (_, e) in tables(p).items())  # nothing half-applied
    with pytest.raises(hp.ExportError, match="a delta export; load its full export first"):
        hp.Predictor(ex / "b")
    with pytest.raises(hp.ExportError, match="a full export, not a delta"):
        p.apply_delta(ex / "a")

    # A flipped byte in an embedding file, a missing file, a torn manifest.
    bad = tmp_path / "bad"
    shutil.copytree(ex / "a", bad)
    emb = next(bad.glob("*.emb.npy"))
    raw = bytearray(emb.read_bytes())
    raw[-3] ^= 0xFF
    emb.write_bytes(bytes(raw))
    with pytest.raises(hp.ExportError, match=rf"{emb.name}: checksum or size mismatch"):
        hp.Predictor(bad)
    emb.unlink()
    with pytest.raises(hp.ExportError, match=rf"{emb.name}: missing file"):
        hp.Predictor(bad)
    (bad / "MANIFEST.json").write_text('{"format": 1, "kind"')
    with pytest.raises(hp.ExportError, match="MANIFEST.json: unreadable or corrupt manifest"):
        hp.Predictor(bad)
    with pytest.raises(hp.ExportError, match="no such export directory"):
        hp.Predictor(tmp_path / "nowhere")

    # A delta against an export of another run.
    other = tmp_path / "other"
    train(tiny_data, other, max_passes=2)
    with pytest.raises(hp.ExportError, match="an export of another run"):
        hp.export_run(other, ex / "x", since=ex / "a")
    assert not (ex / "x").exists() and not list(ex.glob(".x.tmp-*"))


def test_export_of_a_run_still_writing_is_refused(tiny_data: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_data, run, max_passes=2)
    # The trainer holds the store for writing.
    with hp.Trainer(cfg_for(tiny_data, run)), pytest.raises(hp.ExportError, match=r"still writing: .*LOCK"):
        hp.export_run(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(hp.ExportError, match="no such run directory"):
        hp.export_run(tmp_path / "not_there", tmp_path / "out2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hp.ExportError, match="checkpoints: no valid checkpoint"):
        hp.export_run(tmp_path / "empty", tmp_path / "out2")


def test_export_leaves_the_run_untouched_and_resumable(tiny_data: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_data, run, max_passes=3)
    before = {p.name: p.stat().st_size for p in (run / "store").iterdir()}
    hp.export_run(run, tmp_path / "e")
    assert {p.name: p.stat().st_size for p in (run / "store").iterdir()} == before
    with hp.Trainer(cfg_for(tiny_data, run)) as tr:
        assert tr.pass_index == 3


def test_cli_export(tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(tiny_data, run, max_passes=2)
    assert main(["-q", "export", str(run), str(tmp_path / "full")]) == 0
    assert "full export of pass 2" in capsys.readouterr().out
    train(tiny_data, run, max_passes=4)
    args = ["-q", "export", str(run), str(tmp_path / "d"), "--since", str(tmp_path / "full"), "--dtype", "fp32"]
    assert main(args) == 0
    assert "delta export of pass 4" in capsys.readouterr().out
    assert main(["-q", "export", str(run), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hier-ps: error: ") and "already exists" in err and len(err.strip().splitlines()) == 1
