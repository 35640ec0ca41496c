"""convert_criteo: Criteo TSV (plain and gzip) -> Parquet, with clear errors for bad lines."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hier_ps.data import ExampleChunk, ParquetReader, convert_criteo
from hier_ps.data import criteo as criteo_mod
from hier_ps.errors import DataError

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]


def line(label: str, ints: list[str], cats: list[str]) -> str:
    return "\t".join([label, *ints, *cats])


def sample_lines() -> list[str]:
    full = line("1", [str(i) for i in range(13)], [f"{i:08x}" for i in range(26)])
    missing = line("0", [""] * 12 + ["-2"], [""] * 13 + ["FFFFFFFF"] + [""] * 11 + ["ffffffffffffffff"])
    return [full, missing]


def write_tsv(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_convert_values_nulls_and_files(tmp_path: Path, gz: bool) -> None:
    src = write_tsv(tmp_path / ("day.tsv.gz" if gz else "day.tsv"), sample_lines() * 3, gz=gz)
    info = convert_criteo(src, tmp_path / "out", rows_per_file=4)
    assert info["rows"] == 6
    assert info["files"] == [str(tmp_path / "out" / "part-00000.parquet"), str(tmp_path / "out" / "part-00001.parquet")]
    t = pa.concat_tables([pq.read_table(f) for f in info["files"]])
    assert pq.read_table(info["files"][0]).num_rows == 4
    assert t.schema.field("label").type == pa.float32()
    assert all(t.schema.field(c).type == pa.int64() for c in DENSE + SPARSE)
    assert t.column("label").to_pylist() == [1.0, 0.0] * 3
    assert t.column("I3").to_pylist()[:2] == [2, None] and t.column("I13").to_pylist()[:2] == [12, -2]
    assert t.column("C2").to_pylist()[:2] == [1, None]
    assert t.column("C14").to_pylist()[:2] == [13, 0xFFFFFFFF]  # upper-case hex too
    assert t.column("C26").to_pylist()[:2] == [25, -1]  # 16 hex digits keep their bits
    # the reader takes the output as is: nulls become empty bags / 0.0, log1p for the counts
    r = ParquetReader(
        tmp_path / "out", label=["label"], dense=DENSE, slots={c: c for c in SPARSE}, dense_transform="log1p"
    )
    c = ExampleChunk.concat(list(r.iter_chunks(100)))
    assert len(c) == 6 and c.dense[1].tolist()[:12] == [0.0] * 12
    assert c.dense[0, 2] == pytest.approx(np.log1p(2)) and c.dense[1, 12] == pytest.approx(-np.log1p(2))
    assert np.diff(c.sparse["C2"][0]).tolist() == [1, 0] * 3
    assert c.sparse["C26"][1].tolist()[:2] == [25, 2**64 - 1]


def test_line_numbers_across_batches_and_exact_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(criteo_mod, "_BLOCK_BYTES", 4096)  # many small batches
    monkeypatch.setattr(criteo_mod, "_ROW_GROUP", 50)
    lines = [line(str(i % 2), [str(i)] * 13, [f"{i:08x}"] * 26) for i in range(700)]
    info = convert_criteo(write_tsv(tmp_path / "day.tsv", lines), tmp_path / "out", rows_per_file=260)
    assert info["rows"] == 700 and len(info["files"]) == 3
    md = pq.ParquetFile(info["files"][0]).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [50] * 5 + [10]
    assert pq.read_table(info["files"][2]).column("I1").to_pylist() == list(range(520, 700))
    bad = lines.copy()
    bad[612] = line("1", ["1"] * 13, ["0000000g"] + ["0"] * 25)
    with pytest.raises(DataError, match=r"day2.tsv: line 613, column C1: '0000000g' is not a hex number"):
        convert_criteo(write_tsv(tmp_path / "day2.tsv", bad), tmp_path / "out2")
    bad[612] = line("1", ["1"] * 12, ["0"] * 26)
    with pytest.raises(DataError, match=r"day3.tsv: line 613: expected 40 tab-separated fields, got 39"):
        convert_criteo(write_tsv(tmp_path / "day3.tsv", bad), tmp_path / "out3")
    assert not list((tmp_path / "out3").iterdir())  # a failed conversion leaves nothing behind


def test_bad_values_name_file_line_and_column(tmp_path: Path) -> None:
    good = sample_lines()[0]
    cases = [
        (line("1", ["1", "x"] + ["1"] * 11, ["0"] * 26), r"line 2, column I2: invalid value 'x', expected an integer"),
        (line("2", ["1"] * 13, ["0"] * 26), r"line 2, column label: 2, expected 0 or 1"),
        (line("", ["1"] * 13, ["0"] * 26), r"line 2, column label: empty"),
        (line("1", ["1"] * 13, ["1" * 17] + ["0"] * 25), r"line 2, column C1: value longer than 16 hex digits"),
        (good + "\textra", r"line 2: expected 40 tab-separated fields, got 41"),
    ]
    for i, (bad, message) in enumerate(cases):
        src = write_tsv(tmp_path / f"bad{i}.tsv.gz", [good, bad, good], gz=True)
        with pytest.raises(DataError, match=rf"bad{i}.tsv.gz: {message}"):
            convert_criteo(src, tmp_path / f"out{i}")
    with pytest.raises(DataError, match="nope.tsv: input file not found"):
        convert_criteo(tmp_path / "nope.tsv", tmp_path / "o")
    (tmp_path / "broken.tsv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="broken.tsv.gz: "):
        convert_criteo(tmp_path / "broken.tsv.gz", tmp_path / "o")


def test_reconversion_replaces_stale_parts(tmp_path: Path) -> None:
    src = write_tsv(tmp_path / "day.tsv", sample_lines() * 3)
    assert len(convert_criteo(src, tmp_path / "out", rows_per_file=1)["files"]) == 6
    info = convert_criteo(src, tmp_path / "out", rows_per_file=4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert sum(pq.read_metadata(f).num_rows for f in info["files"]) == 6
