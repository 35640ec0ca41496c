"""Streaming Parquet reader: many files, row-group streaming, columns mapped to labels, dense features and slots.

Memory stays at about one chunk plus one Arrow record batch whatever the size of the files: row groups are streamed
with ``ParquetFile.iter_batches`` and re-cut into chunks of exactly ``chunk_rows`` examples across file boundaries.

:meth:`ParquetReader.iter_lazy_chunks` cuts the same chunks but decodes only labels and dense features (which decide
which examples are valid); a :class:`LazyChunk` decodes the sparse columns (list flattening, string hashing) of the
examples it is asked for: a rank of a data-parallel run decodes only its share of each pass.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hier_ps.data.chunk import ExampleChunk
from hier_ps.data.hashing import hash_strings
from hier_ps.errors import DataError

__all__ = ["LazyChunk", "ParquetReader"]

log = logging.getLogger(__name__)

_ON_INVALID = ("error", "skip")
_DENSE_TRANSFORMS = ("none", "log1p")
_KEY_EXPECTED = "int32/int64/uint32/uint64, string, binary, or a list of these"
# Rows per record batch when read_rows is not set: the chunk size, within these bounds (small chunks are cut from
# bigger batches: a record batch has a fixed cost).
_MIN_READ_ROWS, _MAX_READ_ROWS = 1 << 16, 1 << 20


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Globs, directories and files -> existing files: each item sorted, items in order, duplicates dropped."""
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise DataError("no Parquet files match [] (an empty list of paths)")
    files: dict[str, None] = {}
    for item in map(str, items):
        if os.path.isdir(item):
            found = sorted(f for f in glob.glob(os.path.join(glob.escape(item), "*.parquet")) if os.path.isfile(f))
        elif glob.has_magic(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
        else:
            found = [item] if os.path.isfile(item) else []
        if not found:
            raise DataError(f"no Parquet files match {item!r}")
        files.update(dict.fromkeys(found))
    return list(files)


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_key_type(t: pa.DataType) -> bool:
    t = _value_type(t)
    return pa.types.is_integer(t) or t in (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _check_type(role: str, t: pa.DataType) -> str | None:
    """None if a column of type `t` can play `role`, else what was expected."""
    if role == "label":
        ok = pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)
        return None if ok else "float, int or bool"
    if role == "dense":
        return None if pa.types.is_floating(t) or pa.types.is_integer(t) else "float or int"
    ok = _is_key_type(t) or (_is_list(t) and _is_key_type(t.value_type))
    return None if ok else _KEY_EXPECTED


def _keys_of(arr: pa.Array) -> np.ndarray:
    """Keys uint64[n] of a key array without nulls: ints bit for bit (signed via int64), strings hashed."""
    if pa.types.is_dictionary(arr.type):
        indices = arr.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        return _keys_of(arr.dictionary)[indices]
    t = arr.type
    if pa.types.is_integer(t):
        v = arr.to_numpy(zero_copy_only=False)
        if pa.types.is_signed_integer(t):
            return v.astype(np.int64, copy=False).view(np.uint64)
        return v.astype(np.uint64, copy=False)
    return hash_strings(arr)


def _bags(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A slot column -> CSR (offsets int64[n+1], keys uint64[nnz]); null scalars/lists are empty bags."""
    n = len(arr)
    if _is_list(arr.type):
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = arr.flatten()  # skips the values under null lists and honours slicing
        if values.null_count:
            keep = values.is_valid()
            parents = np.repeat(np.arange(n, dtype=np.int64), lengths)
            lengths = np.bincount(parents[keep.to_numpy(zero_copy_only=False)], minlength=n).astype(np.int64)
            values = values.filter(keep)
    else:
        if arr.null_count:
            keep = arr.is_valid()
            lengths = keep.to_numpy(zero_copy_only=False).astype(np.int64)
            values = arr.filter(keep)
        else:  # one key per example
            return np.arange(n + 1, dtype=np.int64), _keys_of(arr)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, _keys_of(values)


def _row_major(cols: list[np.ndarray], n: int) -> np.ndarray:
    """float32[n, len(cols)] from the columns, a block of rows at a time: column by column over the whole array
    would stream it through the caches once per column."""
    out = np.empty((n, len(cols)), np.float32)
    step = max(1, 65536 // max(len(cols), 1))  # a block's rows: 256 KiB
    for lo in range(0, n, step):
        for j, c in enumerate(cols):
            out[lo : lo + step, j] = c[lo : lo + step]
    return out


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


class ParquetReader:
    """Reads examples from Parquet files in order, in chunks of a fixed number of examples.

    Column types accepted: labels float/int/bool with values in [0, 1]; dense features float/int (null -> 0.0);
    slots int (int32/int64/uint32/uint64 and the narrower widths; signed values are reinterpreted bit for bit as
    uint64 through int64, so -1 is 2^64-1), string/large_string/binary (hashed with :func:`hash_strings`), any of
    those dictionary-encoded, and list/large_list of those (multi-hot). A null scalar or null list is an empty bag;
    nulls inside a list are dropped.

    Args:
        paths: a glob pattern (``**`` allowed), a directory (its ``*.parquet``), a file, or a list of these. Each item
            is expanded and sorted; items keep their order; a file matched twice is read once. None: no files, for
            a reader that only converts in-memory Arrow tables (:meth:`convert`).
        label: label columns (one per task).
        dense: dense feature columns, in model input order (may be empty).
        slots: slot name -> column. Several slots may read one column.
        on_invalid: NaN/inf in a label or dense value: ``"error"`` raises :class:`DataError` naming the file, column
            and row; ``"skip"`` drops the example and counts it in :attr:`num_invalid`.
        dense_transform: ``"none"`` or ``"log1p"`` (``sign(x) * log1p(|x|)``, for count features like Criteo's).
        read_rows: rows per Arrow record batch read from a file (bounds memory). None: the chunk size asked for,
            within 65,536 to 1,048,576, so that a pass is usually one record batch and needs no concatenating copy.

    Attributes:
        files: the files, in reading order.
        num_rows: total rows of all files, from the Parquet footers (no data read).
        num_invalid: examples skipped so far because of NaN/inf (``on_invalid="skip"``), over all epochs.

    Raises:
        DataError: no file matches, a file is not readable Parquet, or a column is missing or of the wrong type
            (every file's schema is checked up front from its footer).
        ValueError: an unknown ``on_invalid`` or ``dense_transform``, or ``read_rows < 1``.

    Example:
        >>> r = ParquetReader("data/demo/train", label=["label"], dense=["I1"], slots={"C1": "C1"})  # doctest: +SKIP
        >>> for chunk in r.iter_chunks(65536):  # doctest: +SKIP
        ...     chunk.labels.shape, chunk.sparse["C1"][0].shape  # (65536, 1), (65537,)
    """

    def __init__(
        self,
        paths: str | Sequence[str] | None,
        *,
        label: Sequence[str],
        dense: Sequence[str],
        slots: Mapping[str, str],
        on_invalid: str = "error",
        dense_transform: str = "none",
        read_rows: int | None = None,
    ) -> None:
        if on_invalid not in _ON_INVALID:
            raise ValueError(f"on_invalid must be one of {_ON_INVALID}, got {on_invalid!r}")
        if dense_transform not in _DENSE_TRANSFORMS:
            raise ValueError(f"dense_transform must be one of {_DENSE_TRANSFORMS}, got {dense_transform!r}")
        if read_rows is not None and int(read_rows) < 1:
            raise ValueError(f"read_rows must be >= 1, got {read_rows}")
        self.label = [str(c) for c in label]
        self.dense = [str(c) for c in dense]
        self.slots = {str(s): str(c) for s, c in slots.items()}
        self.on_invalid = on_invalid
        self.dense_transform = dense_transform
        self.read_rows = None if read_rows is None else int(read_rows)
        self.files: list[str] = [] if paths is None else _expand(paths)
        self.columns = list(dict.fromkeys([*self.label, *self.dense, *self.slots.values()]))
        self.num_invalid = 0
        self.num_sparse_decoded = 0  # rows whose slots were decoded (a LazyChunk decodes only those asked for)
        self.num_rows = sum(self._validate(f) for f in self.files)

    def _validate(self, path: str) -> int:
        """Checks a file's schema from its footer; returns its number of rows."""
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
        except Exception as e:  # any failure to read a footer means the file is not usable Parquet
            raise DataError(f"{path}: not a readable Parquet file ({_one_line(e)})") from None
        self._check_schema(schema, path)
        return meta.num_rows

    def convert(self, table: pa.Table | pa.RecordBatch, source: str = "<table>") -> ExampleChunk:
        """Converts an in-memory Arrow table with the same columns and checks as files get.

        Args:
            table: the examples.
            source: what error messages call it.

        Returns:
            One chunk of all the table's valid examples.
        """
        self._check_schema(table.schema, source)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = table.select(self.columns)
        chunks, row_base = [], 0
        for rb in table.to_batches(max_chunksize=self.read_rows or _MAX_READ_ROWS):
            chunks.append(self._convert(rb, source, row_base))
            row_base += rb.num_rows
        if not chunks:
            chunks = [self._convert(pa.RecordBatch.from_pylist([], schema=table.schema), source, 0)]
        return ExampleChunk.concat(chunks)

    def _check_schema(self, schema: pa.Schema, path: str) -> None:
        roles = [(c, "label", "label") for c in self.label] + [(c, "dense", "dense") for c in self.dense]
        roles += [(c, "slot", f"slot {s}") for s, c in self.slots.items()]
        for col, role, what in roles:
            idx = schema.get_field_index(col)
            if idx < 0:
                raise DataError(f"{path}: column {col!r} ({what}) not found; columns are: {', '.join(schema.names)}")
            t = schema.field(idx).type
            expected = _check_type(role, t)
            if expected is not None:
                raise DataError(f"{path}: column {col!r} ({what}) has type {t}, expected {expected}")

    def iter_chunks(self, chunk_rows: int) -> Iterator[ExampleChunk]:
        """Yields chunks of exactly ``chunk_rows`` examples in file order; only the last one may be shorter.

        Chunks are cut across file and row-group boundaries; skipped invalid examples do not count. Each call
        starts again from the first file (a new epoch).

        Raises:
            DataError: a file cannot be read, or holds an invalid value (see the class docstring).
            ValueError: ``chunk_rows < 1``.
        """
        rows = self._batch_rows(chunk_rows)
        return _cut((self._file_chunks(p, self._convert, rows) for p in self.files), chunk_rows, ExampleChunk.concat)

    def iter_lazy_chunks(self, chunk_rows: int) -> Iterator[LazyChunk]:
        """The chunks of :meth:`iter_chunks` (the same examples, the same errors for labels and dense features),
        with their sparse columns left undecoded until :meth:`LazyChunk.take`."""
        rows = self._batch_rows(chunk_rows)
        return _cut((self._file_chunks(p, self._lazy, rows) for p in self.files), chunk_rows, LazyChunk.concat)

    def _batch_rows(self, chunk_rows: int) -> int:
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return self.read_rows or min(max(int(chunk_rows), _MIN_READ_ROWS), _MAX_READ_ROWS)

    def _file_chunks(
        self, path: str, convert: Callable[[pa.RecordBatch, str, int], Any], batch_rows: int
    ) -> Iterator[Any]:
        """The valid examples of one file, one chunk per record batch of `batch_rows` rows (empty ones dropped)."""
        row_base = 0
        try:
            pf = pq.ParquetFile(path)
            batches = pf.iter_batches(batch_size=batch_rows, columns=self.columns)
            while True:
                try:
                    rb = next(batches)
                except StopIteration:
                    break
                c = convert(rb, path, row_base)
                row_base += rb.num_rows
                if len(c):
                    yield c
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: cannot read rows after row {row_base} ({_one_line(e)})") from None

    def _lazy(self, rb: pa.RecordBatch, path: str, row_base: int) -> LazyChunk:
        labels, dense, valid = self._labels_dense(rb, path, row_base)
        rows = np.flatnonzero(valid)
        if len(rows) < rb.num_rows:
            self.num_invalid += int(rb.num_rows - len(rows))
            labels, dense = labels[rows], dense[rows]
        return LazyChunk(self, [(rb, rows, labels, dense)])

    def decode_sparse(self, rb: pa.RecordBatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The slots of a record batch: slot -> CSR (offsets int64[n+1], keys uint64[nnz])."""
        self.num_sparse_decoded += rb.num_rows
        sparse: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        bags_by_column: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for slot, col in self.slots.items():
            if col not in bags_by_column:
                bags_by_column[col] = _bags(rb.column(col))
            sparse[slot] = bags_by_column[col]
        return sparse

    def _convert(self, rb: pa.RecordBatch, path: str, row_base: int) -> ExampleChunk:
        labels, dense, valid = self._labels_dense(rb, path, row_base)
        chunk = ExampleChunk(labels, dense, self.decode_sparse(rb))
        if not valid.all():
            self.num_invalid += int(rb.num_rows - valid.sum())
            chunk = chunk.take(np.flatnonzero(valid))
        return chunk

    def _labels_dense(self, rb: pa.RecordBatch, path: str, row_base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels float32[n, T], dense float32[n, D], valid bool[n]) of a record batch."""
        n = rb.num_rows
        valid = np.ones(n, bool)
        labels = np.empty((n, len(self.label)), np.float32)
        for j, col in enumerate(self.label):
            arr = rb.column(col)
            if arr.null_count:
                bad = _first(arr.is_null().to_numpy(zero_copy_only=False))
                raise DataError(f"{path}: column {col!r}: null label at row {row_base + bad}")
            v = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            finite = np.isfinite(v)
            out = finite & ((v < 0) | (v > 1))
            if out.any():
                bad = _first(out)
                raise DataError(f"{path}: column {col!r}: label {v[bad]} outside [0, 1] at row {row_base + bad}")
            valid &= self._finite(finite, v, path, col, row_base)
            labels[:, j] = v
        cols = []
        for col in self.dense:
            arr = rb.column(col)
            if arr.null_count:
                arr = arr.fill_null(0)
            v = arr.to_numpy(zero_copy_only=False)
            if v.dtype != np.float32 or self.dense_transform != "none":  # float32 as it is: the same values
                v = v.astype(np.float64, copy=False)
                if self.dense_transform == "log1p":
                    with np.errstate(invalid="ignore"):
                        v = np.sign(v) * np.log1p(np.abs(v))
            with np.errstate(over="ignore"):
                v32 = v.astype(np.float32, copy=False)
            valid &= self._finite(np.isfinite(v32), v, path, col, row_base)
            cols.append(v32)
        return labels, _row_major(cols, n), valid

    def _finite(self, finite: np.ndarray, v: np.ndarray, path: str, col: str, row_base: int) -> np.ndarray:
        if self.on_invalid == "error" and not finite.all():
            bad = _first(~finite)
            raise DataError(
                f"{path}: column {col!r}: NaN/inf at row {row_base + bad} (value {v[bad]}); "
                "on_invalid='skip' drops such examples"
            )
        return finite


def _cut(files: Iterator[Iterator[Any]], chunk_rows: int, concat: Callable[[list[Any]], Any]) -> Iterator[Any]:
    """Re-cuts the chunks of every file (file after file) into chunks of exactly ``chunk_rows`` examples, the last
    one shorter (``chunk_rows >= 1``, checked by the callers); ``concat`` joins a list of chunks (ExampleChunk or
    LazyChunk, which both slice)."""
    chunk_rows = int(chunk_rows)
    pending: list[Any] = []
    n_pending = 0
    for file_chunks in files:
        for c in file_chunks:
            pending.append(c)
            n_pending += len(c)
            if n_pending < chunk_rows:
                continue
            whole = concat(pending)
            start = 0
            while n_pending - start >= chunk_rows:
                yield whole.slice(start, start + chunk_rows)
                start += chunk_rows
            # keep the tail as a view; it is copied by the next concat
            pending = [whole.slice(start, n_pending)] if start < n_pending else []
            n_pending -= start
    if n_pending:
        yield concat(pending)


@dataclass
class LazyChunk:
    """Consecutive valid examples whose labels and dense features are decoded but whose slots are not yet.

    Attributes:
        reader: the reader that decodes the slots.
        pieces: (record batch, rows int64[k] of its valid examples in this chunk, labels float32[k, T], dense
            float32[k, D]), one after another.
    """

    reader: ParquetReader
    pieces: list[tuple[pa.RecordBatch, np.ndarray, np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return sum(len(p[1]) for p in self.pieces)

    def slice(self, start: int, stop: int) -> LazyChunk:
        """Examples ``[start, stop)``."""
        out, base = [], 0
        for rb, rows, labels, dense in self.pieces:
            lo, hi = max(start - base, 0), min(stop - base, len(rows))
            if lo < hi:
                out.append((rb, rows[lo:hi], labels[lo:hi], dense[lo:hi]))
            base += len(rows)
        return LazyChunk(self.reader, out)

    @staticmethod
    def concat(chunks: Sequence[LazyChunk]) -> LazyChunk:
        return LazyChunk(chunks[0].reader, [p for c in chunks for p in c.pieces])

    def take(self, idx: np.ndarray) -> ExampleChunk:
        """Examples ``idx`` (int64[m]) in that order, decoding the slots of those examples only.

        Equals ``ExampleChunk`` of the whole chunk ``.take(idx)``, without decoding the other examples' keys.
        """
        idx = np.asarray(idx, np.int64).reshape(-1)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        bounds = np.cumsum([0, *(len(p[1]) for p in self.pieces)])
        parts = []
        for j, (rb, rows, labels, dense) in enumerate(self.pieces):
            lo, hi = np.searchsorted(sorted_idx, bounds[j : j + 2])
            if lo == hi:
                continue
            sel = sorted_idx[lo:hi] - bounds[j]
            sub = rb.select(list(dict.fromkeys(self.reader.slots.values()))).take(pa.array(rows[sel]))
            parts.append(ExampleChunk(labels[sel], dense[sel], self.reader.decode_sparse(sub)))
        if not parts:
            p = self.pieces[0] if self.pieces else None
            t, d = (p[2].shape[1], p[3].shape[1]) if p else (len(self.reader.label), len(self.reader.dense))
            empty = {s: (np.zeros(1, np.int64), np.zeros(0, np.uint64)) for s in self.reader.slots}
            return ExampleChunk(np.zeros((0, t), np.float32), np.zeros((0, d), np.float32), empty)
        whole = ExampleChunk.concat(parts)
        inv = np.empty(len(idx), np.int64)
        inv[order] = np.arange(len(idx))
        return whole if np.array_equal(order, np.arange(len(idx))) else whole.take(inv)


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())
