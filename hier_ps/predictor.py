"""Serving: score examples with an export (a full snapshot plus deltas applied in order).

Scores equal the trainer's eval scores for the same checkpoint: the same planning, the same pooled lookup and the
same dense model; a key without a row reads as its initial row (a pure function of seed, table and key), or as zeros
in tables with admission, exactly as in the trainer's eval.

The in-memory index of a table is its sorted key array (8 bytes per row, looked up by binary search), so it costs
``8 / (dim * bytes per value)`` over the row bytes: 12.5% at dim 16 fp32, 25% at dim 16 fp16.

Example:
    >>> p = Predictor("exports/full-1")                       # doctest: +SKIP
    >>> p.apply_delta("exports/delta-2")                      # doctest: +SKIP
    >>> scores = p.predict("data/demo/eval")                  # doctest: +SKIP  float32[n] (one task) or [n, T]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from hier_ps.config import load_config
from hier_ps.data import ParquetReader
from hier_ps.errors import ExportError
from hier_ps.export import read_array, read_manifest, verify_file
from hier_ps.hbm.rows import init_embeddings
from hier_ps.models import build_model_for
from hier_ps.plan import plan_pass
from hier_ps.ssd.table import in_sorted

__all__ = ["Predictor"]

log = logging.getLogger("hier_ps")


class _Table:
    """One table in memory: sorted keys uint64[n] and their embeddings float32|float16 [n, dim]."""

    def __init__(self, keys: np.ndarray, emb: np.ndarray) -> None:
        self.keys, self.emb = keys, emb


class Predictor:
    """Scores examples with an exported model.

    Args:
        path: a full export directory (see :mod:`hier_ps.export`).
        deltas: delta exports to apply after it, oldest first.
        model: the dense model for runs trained with a custom ``nn.Module`` (its weights are loaded from the
            export); default: built from the export's config.
        batch_size: examples per forward pass (default: the config's eval.batch_size).

    Raises:
        ExportError: a missing or corrupt file, `path` is a delta, or a delta does not follow what is loaded.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        deltas: Sequence[str | Path] = (),
        model: torch.nn.Module | None = None,
        batch_size: int | None = None,
    ) -> None:
        path = Path(path)
        m = read_manifest(path)
        if m["kind"] != "full":
            raise ExportError(f"{path / 'MANIFEST.json'}: a delta export; load its full export first, then the delta")
        self._check_files(path, m)
        self.cfg = load_config(path / "config.yaml")
        cfg = self.cfg
        self.tables: dict[str, _Table] = {}
        for name, t in m["tables"].items():
            keys, emb = read_array(path, t["keys"], np.uint64), read_array(path, t["emb"])
            if emb.shape != (len(keys), t["dim"]):
                raise ExportError(f"{path / t['emb']['file']}: shape {emb.shape}, expected ({len(keys)}, {t['dim']})")
            self.tables[name] = _Table(keys, emb)
        missing = [t.name for t in cfg.tables if t.name not in self.tables]
        if missing:
            raise ExportError(f"{path / 'MANIFEST.json'}: table {missing[0]!r} of the config is not in the export")
        self.slot_tables = {s.name: s.table for s in cfg.data.sparse}
        self.pooling = {s.name: s.pooling.value for s in cfg.data.sparse}
        self.num_tasks = len(cfg.data.labels)
        self.model = (model if model is not None else build_model_for(cfg)).eval()
        self._load_dense(path, self.model)
        self.batch_size = batch_size or cfg.eval.batch_size
        self.manifest = m
        self.chain = [m["id"]]
        for d in deltas:
            self.apply_delta(d)

    @staticmethod
    def _load_dense(path: Path, model: torch.nn.Module) -> None:
        """Loads an export's dense weights into `model` (all or nothing: load_state_dict checks before copying)."""
        try:
            state = torch.load(path / "dense.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"{path / 'dense.pt'}: does not fit the model ({first})") from None

    @staticmethod
    def _check_files(path: Path, m: dict[str, Any]) -> None:
        for entry in m["files"].values():
            verify_file(path, entry)

    @property
    def export_id(self) -> str:
        """Id of the newest export applied (a delta's parent must be this)."""
        return self.chain[-1]

    @property
    def pass_index(self) -> int:
        """Passes trained at the checkpoint of the newest export applied."""
        return int(self.manifest["pass_index"])

    def apply_delta(self, path: str | Path) -> None:
        """Applies a delta export whose parent is the newest export applied; all tables change together or none.

        Raises:
            ExportError: not a delta, its parent is another export, or a file is missing or corrupt.
        """
        path = Path(path)
        m = read_manifest(path)
        if m["kind"] != "delta":
            raise ExportError(f"{path / 'MANIFEST.json'}: a full export, not a delta (load it with Predictor(path))")
        if m["parent"]["id"] != self.export_id:
            raise ExportError(
                f"{path / 'MANIFEST.json'}: its parent is export {m['parent']['id']} but the newest applied is "
                f"{self.export_id} (deltas must be applied in order, on their own base)"
            )
        self._check_files(path, m)
        new: dict[str, _Table] = {}
        for name, t in m["tables"].items():
            if name not in self.tables:
                raise ExportError(f"{path / 'MANIFEST.json'}: table {name!r} is not in the loaded export")
            cur = self.tables[name]
            keys = read_array(path, t["keys"], np.uint64)
            emb = read_array(path, t["emb"], cur.emb.dtype)
            gone = read_array(path, t["deleted"], np.uint64)
            if emb.shape != (len(keys), cur.emb.shape[1]):
                raise ExportError(f"{path / t['emb']['file']}: shape {emb.shape} does not fit table {name!r}")
            keep = ~in_sorted(np.sort(np.concatenate([keys, gone])), cur.keys)[1]
            all_keys = np.concatenate([cur.keys[keep], keys])
            order = np.argsort(all_keys, kind="stable")
            new[name] = _Table(all_keys[order], np.concatenate([cur.emb[keep], emb])[order])
            if len(new[name].keys) != t["live_rows"]:
                raise ExportError(
                    f"{path / 'MANIFEST.json'}: table {name!r} should hold {t['live_rows']} rows after this delta but "
                    f"holds {len(new[name].keys)} (applied on the wrong base?)"
                )
        self._load_dense(path, self.model)  # the last check that can fail: then nothing below can
        self.tables.update(new)
        self.manifest = m
        self.chain.append(m["id"])

    def lookup(self, table: str, keys: np.ndarray) -> np.ndarray:
        """Embeddings float32[n, dim] of `keys` uint64[n]; keys without a row read as in the trainer's eval."""
        t = self.tables[table]
        keys = np.asarray(keys).astype(np.uint64, copy=False).reshape(-1)
        pos, found = in_sorted(t.keys, keys)
        out = np.zeros((len(keys), t.emb.shape[1]), np.float32)
        out[found] = t.emb[pos[found]]
        tc = self.cfg.table(table)
        if tc.admission is None and not found.all():
            out[~found] = init_embeddings(self.cfg.run.seed, table, keys[~found], tc.dim, tc.init)
        return out

    @property
    def index_bytes(self) -> int:
        """Memory of the key indexes."""
        return sum(t.keys.nbytes for t in self.tables.values())

    @property
    def row_bytes(self) -> int:
        """Memory of the embeddings."""
        return sum(t.emb.nbytes for t in self.tables.values())

    def _reader(self, paths: Any) -> ParquetReader:
        cfg = self.cfg
        return ParquetReader(
            paths,
            label=[],
            dense=cfg.data.dense,
            slots={s.name: s.column for s in cfg.data.sparse},
            on_invalid="error",  # a skipped example would shift every score after it
            dense_transform=cfg.data.dense_transform.value,
        )

    def predict(self, data: pa.Table | str | Path | Sequence[str | Path]) -> np.ndarray:
        """Scores (sigmoid of the logits) of every example, in input order.

        Args:
            data: an Arrow table, or Parquet paths (files, directories, globs) with the config's dense and slot
                columns (labels are not needed).

        Returns:
            float32[n] for one task, float32[n, T] for T tasks.
        """
        if isinstance(data, pa.Table | pa.RecordBatch):
            reader = self._reader(None)
            chunks: Any = [reader.convert(data)]
        else:
            reader = self._reader([str(p) for p in data] if isinstance(data, list | tuple) else str(data))
            chunks = reader.iter_chunks(max(self.batch_size, 65536))
        out = []
        with torch.no_grad():
            for chunk in chunks:
                plan = plan_pass(chunk, self.slot_tables, self.batch_size, -1, for_training=False)
                emb = {n: torch.from_numpy(self.lookup(n, k)) for n, k in plan.keys.items()}
                for i in range(plan.num_batches):
                    b = plan.batch(i)
                    pooled = {}
                    for slot, table in self.slot_tables.items():
                        off, idx = b.slots[slot]
                        pooled[slot] = F.embedding_bag(
                            torch.from_numpy(idx),
                            emb[table],
                            torch.from_numpy(off),
                            mode=self.pooling[slot],
                            include_last_offset=True,
                        )
                    logits = self.model(torch.from_numpy(b.dense), pooled).reshape(len(b), self.num_tasks)
                    out.append(torch.sigmoid(logits).numpy())
        s = np.concatenate(out) if out else np.zeros((0, self.num_tasks), np.float32)
        return s[:, 0] if self.num_tasks == 1 else s
