"""Criteo TSV (Kaggle display-advertising / Terabyte day files) -> Parquet, streaming and vectorized.

Each input line is ``label \\t I1 .. I13 \\t C1 .. C26``: a 0/1 label, 13 integer counts and 26 categorical features
as 8-hex-digit strings; any field but the label may be empty (missing).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hier_ps.errors import DataError

__all__ = ["CRITEO_DENSE", "CRITEO_SPARSE", "convert_criteo"]

log = logging.getLogger(__name__)

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
_NAMES = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]
_SCHEMA = pa.schema([("label", pa.float32()), *[(c, pa.int64()) for c in CRITEO_DENSE + CRITEO_SPARSE]])
_ROW_GROUP = 65536
_BLOCK_BYTES = 16 << 20  # bytes of text parsed per batch
_PART = re.compile(r"part-(\d{5})\.parquet")

# hex digit value of every byte; 255 marks a byte that is not a hex digit
_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _hex_to_int64(arr: pa.Array, path: str, col: str, first_line: int) -> pa.Array:
    """Hex strings (1-16 digits) -> int64 bit patterns; null or empty -> null. One numpy step per digit position."""
    arr = arr.cast(pa.binary()).fill_null(b"")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4).astype(np.int64)
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], offsets[1:] - offsets[:-1]
    max_len = int(lengths.max()) if n else 0
    if max_len > 16:
        bad = int(np.argmax(lengths > 16))
        raise DataError(f"{path}: line {first_line + bad}, column {col}: value longer than 16 hex digits")
    v = np.zeros(n, np.uint64)
    bad = np.zeros(n, bool)
    for j in range(max_len):
        live = lengths > j
        nib = _NIBBLE[data[np.minimum(starts + j, len(data) - 1)]]
        bad |= live & (nib == 255)
        v = np.where(live, (v << np.uint64(4)) | nib.astype(np.uint64), v)
    if bad.any():
        i = int(np.argmax(bad))
        text = arr[i].as_py().decode(errors="replace")
        raise DataError(f"{path}: line {first_line + i}, column {col}: {text!r} is not a hex number")
    return pa.array(v.view(np.int64), mask=lengths == 0)


def _csv_error(path: str, e: BaseException) -> DataError:
    """A pyarrow CSV error as one line naming the file, the line and the column."""
    msg = " ".join(str(e).split())
    row = re.search(r"Row #(\d+)", msg)
    where = f"line {row[1]}" if row else "a line"
    fields = re.search(r"Expected (\d+) columns, got (\d+)", msg)
    if fields:
        return DataError(f"{path}: {where}: expected {fields[1]} tab-separated fields, got {fields[2]}")
    col, value = re.search(r"column #(\d+)", msg), re.search(r"invalid value '(.*)'", msg)
    if col and value and int(col[1]) < len(_NAMES):
        name = _NAMES[int(col[1])]
        what = "a number" if name == "label" else "an integer"
        return DataError(f"{path}: {where}, column {name}: invalid value {value[1]!r}, expected {what}")
    return DataError(f"{path}: {msg}")


class _PartWriter:
    """Writes ``part-NNNNN.parquet`` files of `rows_per_file` rows in row groups of exactly 64Ki rows.

    Files are written under temporary names and renamed only by :meth:`finish`, so a failed conversion leaves no
    partial output; :meth:`abort` deletes the temporary files.
    """

    def __init__(self, out: Path, rows_per_file: int) -> None:
        self.out, self.rows_per_file = out, rows_per_file
        self.tmp_files: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = self._in_file = 0

    def write(self, table: pa.Table) -> None:
        pos = 0
        while pos < table.num_rows:
            if self._writer is None:
                self.tmp_files.append(self.out / f".part-{len(self.tmp_files):05d}.parquet.tmp")
                self._writer = pq.ParquetWriter(self.tmp_files[-1], _SCHEMA)
                self._in_file = 0
            take = min(self.rows_per_file - self._in_file, table.num_rows - pos)
            self._buffer.append(table.slice(pos, take))
            self._buffered += take
            self._in_file += take
            pos += take
            if self._buffered >= _ROW_GROUP:
                self._flush(self._buffered - self._buffered % _ROW_GROUP)
            if self._in_file == self.rows_per_file:
                self._close_file()

    def _flush(self, rows: int) -> None:
        t = pa.concat_tables(self._buffer)
        self._writer.write_table(t.slice(0, rows), row_group_size=_ROW_GROUP)
        self._buffer = [t.slice(rows)] if rows < t.num_rows else []
        self._buffered = t.num_rows - rows

    def _close_file(self) -> None:
        if self._buffered:
            self._flush(self._buffered)
        self._writer.close()
        self._writer = None

    def finish(self) -> list[str]:
        """Closes the last file and renames all into place; removes stale parts of an earlier conversion."""
        if self._writer is not None:
            self._close_file()
        files = []
        for i, tmp in enumerate(self.tmp_files):
            final = self.out / f"part-{i:05d}.parquet"
            os.replace(tmp, final)
            files.append(str(final))
        stale = [p for p in self.out.iterdir() if (m := _PART.fullmatch(p.name)) and int(m[1]) >= len(files)]
        if stale:
            log.warning("removing %d stale part files of an earlier conversion from %s", len(stale), self.out)
            for p in stale:
                p.unlink()
        return files

    def abort(self) -> None:
        """Closes and deletes the temporary files."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for tmp in self.tmp_files:
            tmp.unlink(missing_ok=True)


def _convert_batch(rb: pa.RecordBatch, path: str, first_line: int) -> pa.Table:
    label = rb.column("label")
    v = label.fill_null(np.nan).to_numpy(zero_copy_only=False)
    bad = ~((v == 0) | (v == 1))
    if bad.any():
        i = int(np.argmax(bad))
        what = "empty" if label[i].as_py() is None else f"{v[i]:g}, expected 0 or 1"
        raise DataError(f"{path}: line {first_line + i}, column label: {what}")
    cols = [label, *[rb.column(c) for c in CRITEO_DENSE]]
    cols += [_hex_to_int64(rb.column(c), path, c, first_line) for c in CRITEO_SPARSE]
    return pa.Table.from_arrays(cols, schema=_SCHEMA)


def convert_criteo(in_path: str | Path, out_dir: str | Path, *, rows_per_file: int = 1_000_000) -> dict:
    """Converts a Criteo TSV file (optionally ``.gz``/``.bz2``) to Parquet files ``OUT_DIR/part-00000.parquet``, ...

    The input is streamed (``pyarrow.csv.open_csv``, 16 MiB blocks) and parsed without per-value Python: output
    columns are ``label`` float32 (must be 0 or 1), ``I1..I13`` int64 (null where empty) and ``C1..C26`` int64 parsed
    from the hex strings (null where empty), in files of `rows_per_file` rows with 64Ki-row row groups. Files are
    renamed into place only when the whole input converted; ``part-*.parquet`` files of an earlier, longer conversion
    into the same directory are removed.

    Args:
        in_path: the TSV file (no header, tab-separated, no quoting).
        out_dir: output directory (created).
        rows_per_file: rows per Parquet file.

    Returns:
        ``{"rows": n, "files": [paths]}``.

    Raises:
        DataError: the input is missing or unreadable, a line has the wrong number of fields, or a value does not
            parse (the message names the file, and the line and column where known).
        ValueError: ``rows_per_file < 1``.
    """
    if int(rows_per_file) < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    path = str(in_path)
    if not Path(path).is_file():
        raise DataError(f"{path}: input file not found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    types = {
        "label": pa.float32(),
        **dict.fromkeys(CRITEO_DENSE, pa.int64()),
        **dict.fromkeys(CRITEO_SPARSE, pa.string()),
    }
    try:
        reader = pacsv.open_csv(
            path,
            # serial reading keeps physical line numbers in pyarrow's errors (and is no slower on a few cores)
            read_options=pacsv.ReadOptions(column_names=_NAMES, block_size=_BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=[""]),
        )
    except (pa.ArrowException, OSError) as e:
        raise _csv_error(path, e) from None
    writer = _PartWriter(out, int(rows_per_file))
    rows = 0
    try:
        while True:
            try:
                rb = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as e:
                raise _csv_error(path, e) from None
            writer.write(_convert_batch(rb, path, rows + 1))
            rows += rb.num_rows
        files = writer.finish()
    except BaseException:
        writer.abort()
        raise
    log.info("converted %d rows of %s into %d Parquet files in %s", rows, path, len(files), out)
    return {"rows": rows, "files": files}
