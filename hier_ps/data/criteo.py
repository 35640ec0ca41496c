"""Criteo TSV (Kaggle / Terabyte day files) -> Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hier_ps.errors import DataError

__all__ = ["convert_criteo"]

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]

_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def _hex_to_int64(arr: pa.Array, path: str, col: str) -> pa.Array:
    """Hex strings (up to 16 digits) -> int64 bit patterns; null or empty -> null. Vectorized per digit position."""
    arr = arr.cast(pa.large_binary()).fill_null(b"")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64, n + 1, arr.offset * 8)
    buf = arr.buffers()[2]
    data = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if n and lengths.max() > 16:
        raise DataError(f"{path}: column {col}: value longer than 16 hex digits")
    v = np.zeros(n, np.uint64)
    for j in range(int(lengths.max()) if n else 0):
        live = np.flatnonzero(lengths > j)
        nib = _NIBBLE[data[starts[live] + j]]
        if (nib == 255).any():
            raise DataError(f"{path}: column {col}: not a hex string near value {int(live[np.argmax(nib == 255)])} "
                            "of a block")
        v[live] = (v[live] << np.uint64(4)) | nib.astype(np.uint64)
    return pa.array(v.view(np.int64), mask=lengths == 0)


def convert_criteo(in_path: str | Path, out_dir: str | Path, *, rows_per_file: int = 1_000_000) -> dict:
    """Converts a Criteo TSV file (optionally .gz) to Parquet files ``OUT_DIR/part-00000.parquet``, ...

    Each line is ``label \\t I1..I13 \\t C1..C26``; empty fields are missing. Output columns: ``label`` float32,
    ``I1..I13`` int64 (null where missing), ``C1..C26`` int64 parsed from hex (null where missing).

    Returns:
        {"rows": n, "files": [paths]}.

    Raises:
        DataError: the input is missing, a line has the wrong number of fields, or a value does not parse.
    """
    path = str(in_path)
    if not Path(path).is_file():
        raise DataError(f"{path}: input file not found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ["label", *DENSE, *SPARSE]
    types = {"label": pa.float32(), **dict.fromkeys(DENSE, pa.int64()), **dict.fromkeys(SPARSE, pa.string())}
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, block_size=16 << 20),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True, null_values=[""]),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: {' '.join(str(e).split())}") from None
    files: list[str] = []
    writer, in_file, total = None, 0, 0
    schema = pa.schema([("label", pa.float32()), *[(c, pa.int64()) for c in DENSE + SPARSE]])
    try:
        while True:
            try:
                rb = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise DataError(f"{path}: {' '.join(str(e).split())}") from None
            cols = [rb.column("label"), *[rb.column(c) for c in DENSE]]
            cols += [_hex_to_int64(rb.column(c), path, c) for c in SPARSE]
            table = pa.Table.from_arrays(cols, schema=schema)
            pos = 0
            while pos < table.num_rows:
                if writer is None:
                    files.append(str(out / f"part-{len(files):05d}.parquet"))
                    writer, in_file = pq.ParquetWriter(files[-1], schema), 0
                take = min(rows_per_file - in_file, table.num_rows - pos)
                writer.write_table(table.slice(pos, take), row_group_size=65536)
                pos, in_file, total = pos + take, in_file + take, total + take
                if in_file >= rows_per_file:
                    writer.close()
                    writer = None
    finally:
        if writer is not None:
            writer.close()
    return {"rows": total, "files": files}
