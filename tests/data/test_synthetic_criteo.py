from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hier_ps.data import ParquetReader, convert_criteo, generate_synthetic
from hier_ps.errors import DataError
from hier_ps.metrics import auc, logloss


def test_generator_is_deterministic_and_complete(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", preset="tiny", seed=3, train_rows=3000, eval_rows=1000,
                           rows_per_file=1200)
    b = generate_synthetic(tmp_path / "b", preset="tiny", seed=3, train_rows=3000, eval_rows=1000,
                           rows_per_file=1200)
    c = generate_synthetic(tmp_path / "c", preset="tiny", seed=4, train_rows=3000, eval_rows=1000)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert len(files) == 3 + 1
    for f in files:
        assert pq.read_table(tmp_path / "a" / f).equals(pq.read_table(tmp_path / "b" / f))
    assert a == b and a["oracle_auc"] != c["oracle_auc"]
    assert json.loads((tmp_path / "a" / "oracle.json").read_text()) == a
    assert 0.6 < a["oracle_auc"] < 0.95 and a["train_rows"] == 3000
    r = ParquetReader(str(tmp_path / "a" / "train"), label=["label"], dense=a["dense"],
                      slots={k: k for k in a["sparse"]})
    (chunk,) = list(r.iter_chunks(10_000))
    assert len(chunk) == 3000 and set(np.unique(chunk.labels)) <= {0.0, 1.0}
    multi = [k for k, v in a["sparse"].items() if v == "multi"]
    assert multi and (np.diff(chunk.sparse[multi[0]][0]) == 0).any()  # some empty bags


def test_demo_preset_shape(tmp_path: Path) -> None:
    info = generate_synthetic(tmp_path, preset="demo", train_rows=20_000, eval_rows=20_000)
    assert len(info["sparse"]) == 26 and len(info["dense"]) == 13
    assert sum(v == "multi" for v in info["sparse"].values()) == 3
    assert 0.75 < info["oracle_auc"] < 0.95 and 0.1 < info["eval_positive_rate"] < 0.4


def test_auc_and_logloss_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        s = rng.integers(0, 5, n).astype(float)  # many ties
        if y.min() == y.max():
            continue
        pos, neg = s[y == 1], s[y == 0]
        brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
        assert auc(y, s) == pytest.approx(brute)
    p = np.array([0.9, 0.2])
    assert logloss(np.array([1, 0]), p) == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)


def _line(label: str, ints: list[str], cats: list[str]) -> str:
    return "\t".join([label, *ints, *cats])


def test_convert_criteo(tmp_path: Path) -> None:
    ints = [str(i) for i in range(13)]
    cats = [f"{i:08x}" for i in range(26)]
    lines = [_line("1", ints, cats), _line("0", [""] * 13, [""] * 13 + ["ffffffff"] + [""] * 12)]
    text = "\n".join(lines * 3) + "\n"
    (tmp_path / "day.tsv").write_text(text)
    with gzip.open(tmp_path / "day.tsv.gz", "wt") as f:
        f.write(text)
    for name in ("day.tsv", "day.tsv.gz"):
        info = convert_criteo(tmp_path / name, tmp_path / f"out_{name}", rows_per_file=4)
        assert info["rows"] == 6 and len(info["files"]) == 2
        t = pq.read_table(info["files"][0])
        assert t.column("label").to_pylist()[:2] == [1.0, 0.0]
        assert t.column("I3").to_pylist()[:2] == [2, None]
        assert t.column("C2").to_pylist()[:2] == [1, None]
        assert t.column("C14").to_pylist()[:2] == [13, 0xFFFFFFFF]
    (tmp_path / "bad.tsv").write_text(_line("1", ints[:5], cats) + "\n")
    with pytest.raises(DataError, match="bad.tsv"):
        convert_criteo(tmp_path / "bad.tsv", tmp_path / "o3")
    (tmp_path / "badhex.tsv").write_text(_line("1", ints, ["zz"] + cats[1:]) + "\n")
    with pytest.raises(DataError, match="column C1: not a hex string"):
        convert_criteo(tmp_path / "badhex.tsv", tmp_path / "o4")
    with pytest.raises(DataError, match="input file not found"):
        convert_criteo(tmp_path / "nope.tsv", tmp_path / "o5")


def test_vocabulary_of_1e8_costs_no_vocabulary_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    from hier_ps.data import synthetic

    huge = synthetic.Preset(train_rows=20_000, eval_rows=5_000, num_dense=1, vocab=(10**8, 10**8), multi_hot=(1,))
    monkeypatch.setitem(synthetic.PRESETS, "huge", huge)
    tracemalloc.start()
    info = generate_synthetic(tmp_path, preset="huge")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20  # a table of 10^8 weights alone would be 800 MB
    keys = pq.read_table(tmp_path / "train" / "part-00000.parquet").column("C1").to_numpy()
    assert len(np.unique(keys)) > 10_000 and (keys >= 0).all() and info["oracle_auc"] > 0.5
