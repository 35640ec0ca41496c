"""Synthetic data: determinism, layout, oracle.json, the planted model's shape, vocabulary-free memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hier_ps.data import PRESETS, ExampleChunk, ParquetReader, Preset, generate_synthetic
from hier_ps.data import synthetic as syn
from hier_ps.errors import ConfigError


def read(d: Path, info: dict, split: str = "train") -> ExampleChunk:
    r = ParquetReader(d / split, label=[info["label"]], dense=info["dense"], slots={c: c for c in info["sparse"]})
    return ExampleChunk.concat(list(r.iter_chunks(1 << 20)))


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    kw = {"preset": "tiny", "train_rows": 3000, "eval_rows": 1000, "rows_per_file": 1200}
    a = generate_synthetic(tmp_path / "a", seed=3, **kw)
    b = generate_synthetic(tmp_path / "b", seed=3, **kw)
    c = generate_synthetic(tmp_path / "c", seed=4, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(f) for f in files] == [
        "eval/part-00000.parquet",
        "oracle.json",
        "train/part-00000.parquet",
        "train/part-00001.parquet",
        "train/part-00002.parquet",
    ]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a == b and a["oracle_auc"] != c["oracle_auc"]
    ka = pq.read_table(tmp_path / "a" / "train" / "part-00000.parquet").column("C3").to_numpy()
    kc = pq.read_table(tmp_path / "c" / "train" / "part-00000.parquet").column("C3").to_numpy()
    assert len(np.intersect1d(ka, kc)) == 0  # another seed scrambles keys differently


def test_rows_per_file_and_sizes_do_not_change_the_data(tmp_path: Path) -> None:
    small = generate_synthetic(tmp_path / "s", preset="tiny", train_rows=3000, eval_rows=10, rows_per_file=700)
    big = generate_synthetic(tmp_path / "b", preset="tiny", train_rows=70_000, eval_rows=10, rows_per_file=100_000)
    assert len(list((tmp_path / "s" / "train").glob("*.parquet"))) == 5
    s, b = read(tmp_path / "s", small), read(tmp_path / "b", big)
    assert len(s) == 3000 and len(b) == 70_000
    prefix = b.slice(0, 3000)
    np.testing.assert_array_equal(s.labels, prefix.labels)
    np.testing.assert_array_equal(s.dense, prefix.dense)
    for slot in s.sparse:
        for x, y in zip(s.sparse[slot], prefix.sparse[slot], strict=True):
            np.testing.assert_array_equal(x, y)
    md = pq.ParquetFile(tmp_path / "b" / "train" / "part-00000.parquet").metadata
    assert md.num_row_groups == 2 and md.row_group(0).num_rows == 65536


def test_tiny_oracle_json_and_columns(tmp_path: Path) -> None:
    info = generate_synthetic(tmp_path, preset="tiny", seed=1)
    assert json.loads((tmp_path / "oracle.json").read_text()) == info
    p = PRESETS["tiny"]
    assert info["train_rows"] == p.train_rows == 20_000 and info["eval_rows"] == p.eval_rows == 5_000
    assert info["seed"] == 1 and info["preset"] == "tiny" and info["label"] == "label"
    assert info["dense"] == ["I1", "I2", "I3", "I4"]
    assert info["sparse"] == {"C1": "single", "C2": "single", "C3": "single", "C4": "single", "C5": "single"} | {
        "C6": "multi"
    }
    assert 0.7 < info["oracle_auc"] < 0.85 and 0.2 < info["eval_positive_rate"] < 0.4
    assert 0.3 < info["oracle_logloss"] < 0.69
    schema = pq.read_schema(tmp_path / "train" / "part-00000.parquet")
    assert schema.field("label").type == pa.float32() and schema.field("I1").type == pa.float32()
    assert schema.field("C1").type == pa.int64() and schema.field("C6").type == pa.list_(pa.int64())
    c = read(tmp_path, info)
    assert len(c) == 20_000 and set(np.unique(c.labels).tolist()) == {0.0, 1.0}
    lengths = np.diff(c.sparse["C6"][0])
    assert lengths.min() == 0 and lengths.max() == p.max_len  # some empty bags, up to max_len keys
    assert all(np.diff(c.sparse[f"C{s}"][0]).tolist() == [1] * 20_000 for s in range(1, 6))
    for s, v in enumerate(p.vocab):
        keys = c.sparse[f"C{s + 1}"][1]
        assert (keys < 2**63).all() and len(np.unique(keys)) <= v  # positive int64, at most `vocab` distinct


def test_demo_preset_with_small_sizes(tmp_path: Path) -> None:
    info = generate_synthetic(tmp_path, preset="demo", train_rows=50_000, eval_rows=30_000)
    assert len(info["sparse"]) == 26 and info["dense"] == [f"I{j}" for j in range(1, 14)]
    assert [k for k, v in info["sparse"].items() if v == "multi"] == ["C24", "C25", "C26"]
    assert min(info["vocab"].values()) <= 10 and max(info["vocab"].values()) >= 10**7
    assert 0.74 < info["oracle_auc"] < 0.82 and 0.18 < info["eval_positive_rate"] < 0.35
    c = read(tmp_path, info)
    big = c.sparse["C3"][1]  # the 10^7 vocabulary: Zipf-like, a head of frequent keys and a long tail
    _, counts = np.unique(big, return_counts=True)
    assert counts.max() > 0.02 * len(c) and len(counts) > 10_000 and (counts == 1).sum() > 5_000
    assert len(np.unique(c.sparse["C9"][1])) == 3  # a vocabulary of 3


def test_oracle_json_is_the_completion_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate_synthetic(tmp_path, preset="tiny", train_rows=100, eval_rows=100)
    (tmp_path / "train" / "part-00099.parquet").write_text("stale")
    real = syn._write_split

    def fail_on_eval(out: Path, *args: object) -> tuple:
        if out.name == "eval":
            raise KeyboardInterrupt
        return real(out, *args)

    monkeypatch.setattr(syn, "_write_split", fail_on_eval)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path, preset="tiny", train_rows=200, eval_rows=100)
    assert not (tmp_path / "oracle.json").exists()  # an interrupted run leaves no completion mark
    monkeypatch.setattr(syn, "_write_split", real)
    info = generate_synthetic(tmp_path, preset="tiny", train_rows=200, eval_rows=100)
    assert not (tmp_path / "train" / "part-00099.parquet").exists() and info["train_rows"] == 200
    assert not list(tmp_path.glob(".*tmp"))


def test_empty_eval_split_and_bad_arguments(tmp_path: Path) -> None:
    info = generate_synthetic(tmp_path, preset="tiny", train_rows=10, eval_rows=0)
    assert info["oracle_auc"] is None and info["eval_rows"] == 0
    assert pq.read_table(tmp_path / "eval" / "part-00000.parquet").num_rows == 0
    with pytest.raises(ConfigError, match="unknown synthetic preset 'huge'"):
        generate_synthetic(tmp_path, preset="huge")
    with pytest.raises(ConfigError, match="seed: must be >= 0"):
        generate_synthetic(tmp_path, preset="tiny", seed=-1)
    with pytest.raises(ConfigError, match="rows_per_file"):
        generate_synthetic(tmp_path, preset="tiny", rows_per_file=0)


def test_vocabulary_of_1e8_costs_no_vocabulary_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    huge = Preset(train_rows=20_000, eval_rows=5_000, num_dense=1, vocab=(10**8, 10**9), multi_hot=(1,))
    monkeypatch.setitem(PRESETS, "huge", huge)
    tracemalloc.start()
    info = generate_synthetic(tmp_path, preset="huge")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20  # a table of 10^8 weights alone would be 800 MB
    keys = pq.read_table(tmp_path / "train" / "part-00000.parquet").column("C1").to_numpy()
    assert len(np.unique(keys)) > 5_000 and (keys >= 0).all() and info["oracle_auc"] > 0.5


def test_planted_weights_and_keys_are_pure_functions() -> None:
    p = PRESETS["demo"]
    a, b = syn._Planted(p, 7), syn._Planted(p, 7)
    ranks = np.array([0, 1, 5, 10**6, 10**7 - 1], np.int64)
    np.testing.assert_array_equal(a.weights(2, ranks), b.weights(2, ranks[::-1])[::-1])
    np.testing.assert_array_equal(a.keys(2, ranks), b.keys(2, ranks))
    assert len(np.unique(a.keys(2, np.arange(100_000)))) == 100_000  # a scramble, not a hash into buckets
    assert not np.array_equal(a.keys(2, ranks), a.keys(3, ranks))  # each slot has its own keys
    w = a.weights(2, np.arange(200_000))
    assert np.std(w[:1000]) > 3 * np.std(w[-1000:])  # frequent keys carry the signal
