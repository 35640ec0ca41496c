from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import hier_ps as hp
from hier_ps.config import config_to_dict, parse_bytes, save_config

BASE = {
    "data": {"train": "t/*.parquet", "sparse": [{"name": "C1"}, {"name": "C2", "table": "C1", "pooling": "mean"}]},
    "tables": [{"name": "C1", "dim": 8}],
}


def test_defaults_and_slot_defaults() -> None:
    cfg = hp.load_config(BASE)
    assert cfg.train.batch_size == 4096
    assert cfg.data.sparse[0].column == "C1" and cfg.data.sparse[0].table == "C1"
    assert cfg.data.sparse[1].pooling.value == "mean"
    assert cfg.optimizer_of("C1").name.value == "rowwise_adagrad"
    assert cfg.store_dir == Path("runs/demo/store")


def test_overrides_beat_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({**BASE, "train": {"batch_size": 128}}))
    cfg = hp.load_config(
        f,
        overrides=[
            "train.batch_size=64",
            "tables.C1.dim=4",
            "tables.0.init.scale=0.1",
            "sparse_optimizer.lr=1e-3",
            "data.dense=[a, b]",
        ],
    )
    assert cfg.train.batch_size == 64
    assert cfg.tables[0].dim == 4 and cfg.tables[0].init.scale == 0.1
    assert cfg.sparse_optimizer.lr == 1e-3
    assert cfg.data.dense == ["a", "b"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.bach_size=3", "train.bach_size: unknown key; did you mean 'batch_size'?"),
        ("trian.batch_size=3", "trian: unknown key; did you mean 'train'?"),
        ("tables.C1.dim=0", "tables[C1].dim: must be > 0, got 0"),
        ("tables.C1.dim=1.5", "tables[C1].dim: expected an integer, got 1.5"),
        ("sparse_optimizer.name=adamm", "sparse_optimizer.name: unknown value 'adamm'; did you mean 'adam'?"),
        ("tables.C1.optimizer={lr: -1}", "tables[C1].optimizer.lr: must be > 0"),
        ("store.host_cache_bytes=12XB", "store.host_cache_bytes: expected a byte size"),
        ("data.sparse.C1.table=C9", "data.sparse[C1].table: unknown table 'C9'"),
        ("train.device=tpu", "train.device: expected auto, cpu, cuda or cuda:N"),
        ("train.shuffle=3", "train.shuffle: expected true or false"),
        ("data.on_invalid=drop", "data.on_invalid: unknown value 'drop'"),
        ("nokey", "expected key=value"),
    ],
)
def test_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(hp.ConfigError) as e:
        hp.load_config(BASE, overrides=[override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(hp.ConfigError, match="not found"):
        hp.load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(hp.ConfigError, match="invalid YAML"):
        hp.load_config(bad)


def test_required_and_consistency() -> None:
    with pytest.raises(hp.ConfigError, match="tables: required"):
        hp.load_config({"data": BASE["data"]})
    with pytest.raises(hp.ConfigError, match=r"tables\[X\]: no slot"):
        hp.load_config({**BASE, "tables": [{"name": "C1", "dim": 8}, {"name": "X", "dim": 2}]})
    with pytest.raises(hp.ConfigError, match="data.train: required"):
        hp.load_config({**BASE, "data": {"sparse": [{"name": "C1"}]}})


def test_parse_bytes() -> None:
    assert parse_bytes("256MiB", "x") == 256 * 2**20
    assert parse_bytes("1.5GB", "x") == 1_500_000_000
    assert parse_bytes(1024, "x") == 1024
    with pytest.raises(hp.ConfigError):
        parse_bytes(-1, "x")


def test_roundtrip_through_saved_yaml(tmp_path: Path) -> None:
    cfg = hp.load_config(BASE, overrides=["store.host_cache_bytes=1KiB"])
    save_config(cfg, tmp_path / "config.yaml")
    again = hp.load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_demo_config_loads() -> None:
    cfg = hp.load_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert len(cfg.data.sparse) == 26 and cfg.model.name == "dlrm"
