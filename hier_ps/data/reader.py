"""Streaming Parquet reader: many files, row-group streaming, columns mapped to labels, dense features and slots."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hier_ps.data.chunk import ExampleChunk
from hier_ps.data.hashing import hash_strings
from hier_ps.errors import DataError

__all__ = ["ParquetReader"]


def _expand(paths: str | Sequence[str]) -> list[str]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    files: list[str] = []
    for item in items:
        item = str(item)
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.parquet")))
        elif any(c in item for c in "*?["):
            found = sorted(f for f in glob.glob(item) if os.path.isfile(f))
        else:
            found = [item] if os.path.isfile(item) else []
        if not found:
            raise DataError(f"no Parquet files match {item!r}")
        files.extend(found)
    return files


def _is_key_type(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _scalar_keys(arr: pa.Array) -> np.ndarray:
    """Non-null values of a key column as uint64 (ints bit-for-bit, strings hashed)."""
    t = arr.type
    if pa.types.is_integer(t):
        v = arr.to_numpy(zero_copy_only=False)
        if pa.types.is_signed_integer(t):
            return v.astype(np.int64, copy=False).view(np.uint64)
        return v.astype(np.uint64, copy=False)
    return hash_strings(arr)


class ParquetReader:
    """Reads examples from Parquet files in order, in chunks of a fixed number of examples.

    Args:
        paths: a glob pattern, a directory (its ``*.parquet``), a file, or a list of these; sorted per item.
        label: label columns (one per task): float, int or bool, values in [0, 1].
        dense: dense feature columns: float or int; nulls read as 0.
        slots: slot name -> column. Columns: int (reinterpreted as uint64), string/binary (hashed with
            :func:`hash_strings`), or lists of those (multi-hot). A null value or list is an empty bag; nulls inside a
            list are dropped.
        on_invalid: NaN/inf in labels or dense features: ``"error"`` or ``"skip"`` (dropped, counted in num_invalid).
        dense_transform: ``"none"`` or ``"log1p"`` (sign(x)*log1p(|x|)).
        read_rows: rows per Arrow record batch read from a file (bounds memory).

    Raises:
        DataError: no file matches, a file is unreadable, or a column is missing or of the wrong type.
    """

    def __init__(self, paths: str | Sequence[str], *, label: Sequence[str], dense: Sequence[str],
                 slots: Mapping[str, str], on_invalid: str = "error", dense_transform: str = "none",
                 read_rows: int = 65536) -> None:
        if on_invalid not in ("error", "skip"):
            raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
        if dense_transform not in ("none", "log1p"):
            raise ValueError(f"dense_transform must be 'none' or 'log1p', got {dense_transform!r}")
        self.label, self.dense, self.slots = list(label), list(dense), dict(slots)
        self.on_invalid, self.dense_transform, self.read_rows = on_invalid, dense_transform, read_rows
        self.files = _expand(paths)
        self.columns = list(dict.fromkeys([*self.label, *self.dense, *self.slots.values()]))
        self.num_rows = 0
        self.num_invalid = 0
        for f in self.files:
            self.num_rows += self._validate(f)

    def _validate(self, path: str) -> int:
        try:
            meta = pq.read_metadata(path)
            schema = meta.schema.to_arrow_schema()
        except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
            raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        names = set(schema.names)
        roles = [(c, "label", None) for c in self.label] + [(c, "dense", None) for c in self.dense]
        roles += [(c, "slot", s) for s, c in self.slots.items()]
        for col, role, slot in roles:
            what = f"slot {slot}" if slot else role
            if col not in names:
                raise DataError(f"{path}: column {col!r} ({what}) not found; columns are: {', '.join(schema.names)}")
            t = schema.field(col).type
            if role == "label":
                ok, expect = pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t), "float/int/bool"
            elif role == "dense":
                ok, expect = pa.types.is_floating(t) or pa.types.is_integer(t), "float/int"
            else:
                ok = _is_key_type(t) or (_is_list(t) and _is_key_type(t.value_type))
                expect = "int/string or a list of them"
            if not ok:
                raise DataError(f"{path}: column {col!r} ({what}) has type {t}, expected {expect}")
        return meta.num_rows

    def iter_chunks(self, chunk_rows: int) -> Iterator[ExampleChunk]:
        """Yields chunks of exactly `chunk_rows` examples in file order (only the last may be shorter)."""
        pending: list[ExampleChunk] = []
        n_pending = 0
        for path in self.files:
            pf = pq.ParquetFile(path)
            row_base = 0
            for rb in pf.iter_batches(batch_size=self.read_rows, columns=self.columns):
                c = self._convert(rb, path, row_base)
                row_base += rb.num_rows
                if len(c):
                    pending.append(c)
                    n_pending += len(c)
                while n_pending >= chunk_rows:
                    whole = ExampleChunk.concat(pending)
                    yield whole.slice(0, chunk_rows)
                    rest = whole.slice(chunk_rows, len(whole))
                    pending, n_pending = ([rest] if len(rest) else []), len(rest)
        if n_pending:
            yield ExampleChunk.concat(pending)

    def _convert(self, rb: pa.RecordBatch, path: str, row_base: int) -> ExampleChunk:
        n = rb.num_rows
        valid = np.ones(n, bool)
        labels = np.empty((n, len(self.label)), np.float32)
        for j, col in enumerate(self.label):
            arr = rb.column(col)
            if arr.null_count:
                bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{path}: column {col!r}: null label at row {row_base + bad}")
            v = arr.cast(pa.float32()).to_numpy(zero_copy_only=False)
            finite = np.isfinite(v)
            out = finite & ((v < 0) | (v > 1))
            if out.any():
                bad = int(np.flatnonzero(out)[0])
                raise DataError(f"{path}: column {col!r}: label {v[bad]} outside [0, 1] at row {row_base + bad}")
            valid &= self._check_finite(finite, path, col, row_base)
            labels[:, j] = v
        dense = np.empty((n, len(self.dense)), np.float32)
        for j, col in enumerate(self.dense):
            v = pc.fill_null(rb.column(col), 0).cast(pa.float32()).to_numpy(zero_copy_only=False)
            valid &= self._check_finite(np.isfinite(v), path, col, row_base)
            dense[:, j] = v
        if self.dense_transform == "log1p" and dense.size:
            dense = np.sign(dense) * np.log1p(np.abs(dense))
        sparse = {slot: self._bags(rb.column(col)) for slot, col in self.slots.items()}
        chunk = ExampleChunk(labels, dense, sparse)
        if not valid.all():
            self.num_invalid += int((~valid).sum())
            chunk = chunk.take(np.flatnonzero(valid))
        return chunk

    def _check_finite(self, finite: np.ndarray, path: str, col: str, row_base: int) -> np.ndarray:
        if self.on_invalid == "error" and not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{path}: column {col!r}: NaN/inf at row {row_base + bad} "
                            "(set data.on_invalid: skip to drop such examples)")
        return finite

    @staticmethod
    def _bags(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        n = len(arr)
        if _is_list(arr.type):
            values = arr.flatten()
            parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
            if values.null_count:
                keep = values.is_valid().to_numpy(zero_copy_only=False)
                values, parents = values.filter(pa.array(keep)), parents[keep]
            lengths = np.bincount(parents, minlength=n)
            keys = _scalar_keys(values)
        else:
            present = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(n, bool)
            lengths = present.astype(np.int64)
            keys = _scalar_keys(arr.filter(pa.array(present)) if arr.null_count else arr)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets, keys
