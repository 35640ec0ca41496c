"""The CLI through main(argv), in-process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from hier_ps.cli import main


def _config_file(tiny_data: dict, tmp_path: Path) -> Path:
    info, d = tiny_data["info"], tiny_data["dir"]
    slots = [{"name": c, "pooling": "mean" if k == "multi" else "sum"} for c, k in info["sparse"].items()]
    cfg = {
        "run": {"dir": str(tmp_path / "run")},
        "data": {
            "train": str(d / "train" / "*.parquet"),
            "eval": str(d / "eval"),
            "dense": info["dense"],
            "sparse": slots,
        },
        "tables": [{"name": s["name"], "dim": 4} for s in slots],
        "model": {"name": "wide_deep", "args": {"hidden": [8]}},
        "store": {"host_cache_bytes": "64KiB"},
        "train": {"device": "cpu", "batch_size": 1024, "pass_examples": 8192},
    }
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_train_then_eval(tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = _config_file(tiny_data, tmp_path)
    assert main(["-q", "train", str(f), "train.max_passes=2", "eval.every_passes=0"]) == 0
    out = capsys.readouterr().out
    assert "eval AUC" in out and "oracle AUC" in out and "2 passes" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert main(["-q", "eval", str(tmp_path / "run")]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["eval_auc"][0] == pytest.approx(summary["eval_auc"], abs=1e-9)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "missing.yaml"], "config file 'missing.yaml' not found"),
        (["train", "{cfg}", "train.bach_size=2"], "did you mean 'batch_size'"),
        (["train", "{cfg}", "data.train=/nowhere/*.parquet"], "no Parquet files match"),
        (["train", "{cfg}", "tables.C1.dim=-1"], "tables[C1].dim: must be > 0"),
        (["eval", "{tmp}/never_ran"], "not found"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], needle: str
) -> None:
    f = _config_file(tiny_data, tmp_path)
    argv = [a.replace("{cfg}", str(f)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hier-ps: error:") and needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run" / "store").exists()


def test_gen_data_tiny(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["gen-data", str(tmp_path / "d"), "--preset", "tiny", "--train-rows", "2000", "--eval-rows", "500"]) == 0
    )
    assert "oracle AUC" in capsys.readouterr().out
    info = json.loads((tmp_path / "d" / "oracle.json").read_text())
    assert info["train_rows"] == 2000 and info["eval_rows"] == 500


def test_convert_criteo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = "\t".join(["1", *[str(i) for i in range(13)], *[f"{i:08x}" for i in range(26)]])
    (tmp_path / "day.tsv").write_text(line + "\n" + line.replace("1\t", "0\t", 1) + "\n")
    assert main(["convert", "criteo", str(tmp_path / "day.tsv"), str(tmp_path / "out")]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out


def test_python_m_entry_point() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "hier_ps", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "gen-data" in r.stdout


def test_train_resumes_and_refuses_a_changed_model(
    tiny_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    f = _config_file(tiny_data, tmp_path)
    caplog.set_level(logging.INFO, logger="hier_ps")
    assert main(["-q", "train", str(f), "train.max_passes=1", "eval.every_passes=0"]) == 0
    assert main(["train", str(f), "train.max_passes=2", "eval.every_passes=0", "train.progress=false"]) == 0
    assert "2 passes" in capsys.readouterr().out
    assert any("resuming from checkpoint" in r.message for r in caplog.records)
    assert main(["-q", "train", str(f), "model.args.hidden=[16]"]) == 2
    assert "does not fit this config's model" in capsys.readouterr().err
