"""Exports for serving: a full snapshot of a run's newest checkpoint, or a delta since an earlier export.

An export is a directory, written under a temporary name and renamed into place when complete::

    MANIFEST.json        written last: kind (full | delta), id, parent export, run id, checkpoint, dtype, and per
                         file its crc32 and size
    config.yaml          the run's resolved config (model, slots, tables, seed)
    dense.pt             the dense model's state dict (``torch.load(weights_only=True)``)
    <table>.keys.npy     uint64[n] sorted keys: every live key (full), or the keys changed or added (delta)
    <table>.emb.npy      float32 | float16 [n, dim] their embeddings (no optimizer state, no metadata)
    <table>.deleted.npy  uint64[m] keys deleted since the parent (delta only)

A delta holds the rows whose metadata says they were trained after the parent's checkpoint, the keys that are new
since then, and the keys that are gone (evicted). Applying a full export and then its deltas in order gives exactly
the full export taken at the last delta's checkpoint (:class:`hier_ps.predictor.Predictor` does this).

Example:
    >>> export_run("runs/demo", "exports/full-1")                                 # doctest: +SKIP
    >>> export_run("runs/demo", "exports/delta-2", since="exports/full-1")        # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hier_ps.checkpoint import list_checkpoints, load_state
from hier_ps.config import Config, load_config
from hier_ps.errors import ExportError, StoreError, StoreLockedError
from hier_ps.hbm.working_set import TableSpec, table_specs
from hier_ps.ssd import SSDStore
from hier_ps.ssd.files import fsync_dir
from hier_ps.ssd.table import in_sorted

__all__ = ["EXPORT_FORMAT", "chain_keys", "export_run", "read_array", "read_manifest", "table_file", "verify_file"]

log = logging.getLogger("hier_ps")

EXPORT_FORMAT = 1
MANIFEST = "MANIFEST.json"
_DTYPES = {"fp32": np.float32, "fp16": np.float16}
_SCAN_ROWS = 1 << 18


def table_file(table: str, part: str) -> str:
    """File name of one part (keys, emb, deleted) of a table in an export."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in table)
    return f"{safe}.{part}.npy"


def _crc_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            crc = zlib.crc32(block, crc)
    return crc


def _save(out: Path, name: str, arr: np.ndarray) -> dict[str, Any]:
    path = out / name
    with path.open("wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": name, "crc32": _crc_file(path), "bytes": path.stat().st_size, "rows": len(arr)}


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the export at `path`, checked for format; an ExportError naming the file otherwise."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise ExportError(f"{path}: no such export directory")
    try:
        m = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ExportError(f"{mpath}: missing (not an export, or an export that was never completed)") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"{mpath}: unreadable or corrupt manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != EXPORT_FORMAT or m.get("kind") not in ("full", "delta"):
        raise ExportError(f"{mpath}: not an export manifest of format {EXPORT_FORMAT}")
    return m


def verify_file(export_dir: str | Path, entry: dict[str, Any]) -> Path:
    """Checks one file of an export against its manifest entry (size, crc32); returns its path.

    Raises:
        ExportError: the file is missing or does not match (naming the file).
    """
    path = Path(export_dir) / entry["file"]
    try:
        size = path.stat().st_size
    except OSError:
        raise ExportError(f"{path}: missing file of the export") from None
    if size != entry["bytes"] or _crc_file(path) != entry["crc32"]:
        raise ExportError(f"{path}: checksum or size mismatch (corrupt export file)")
    return path


def read_array(export_dir: str | Path, entry: dict[str, Any], dtype: Any = None) -> np.ndarray:
    """Loads one array of an export, verifying its size and crc32 first; an ExportError naming the file otherwise."""
    path = verify_file(export_dir, entry)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: unreadable array ({e})") from None
    if len(arr) != entry["rows"] or (dtype is not None and arr.dtype != dtype):
        raise ExportError(f"{path}: holds {len(arr)} rows of {arr.dtype}, the manifest says {entry['rows']}")
    return arr


def _checkpoint_config(run_dir: Path, ck_path: Path) -> Config:
    cfg = load_config(ck_path / "config.yaml")
    if cfg.store.dir is None:  # the run may have been moved or named relative to another directory
        cfg.store.dir = str(run_dir / "store")
    return cfg


def chain_keys(export_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The live keys per table at an export (its full base with every delta of its chain applied).

    Returns:
        (the export's manifest, table -> sorted uint64 keys).
    """
    chain: list[tuple[Path, dict[str, Any]]] = []
    path = Path(export_dir)
    while True:
        m = read_manifest(path)
        chain.append((path, m))
        if m["kind"] == "full":
            break
        parent = m["parent"]
        ppath = Path(parent["path"])
        if not ppath.is_absolute():
            ppath = path.parent / ppath
        if read_manifest(ppath)["id"] != parent["id"]:
            raise ExportError(f"{ppath}: is not the parent export that {path / MANIFEST} names (id differs)")
        path = ppath
    keys: dict[str, np.ndarray] = {}
    for p, m in reversed(chain):
        for name, t in m["tables"].items():
            k = read_array(p, t["keys"], np.uint64)
            if m["kind"] == "full":
                keys[name] = k
                continue
            gone = read_array(p, t["deleted"], np.uint64)
            cur = keys.get(name, np.zeros(0, np.uint64))
            cur = cur[~in_sorted(np.sort(gone), cur)[1]]
            keys[name] = np.union1d(cur, k)
    return chain[0][1], keys


def export_run(
    run_dir: str | Path, out: str | Path, *, dtype: str = "fp32", since: str | Path | None = None
) -> dict[str, Any]:
    """Writes a full export of the run's newest valid checkpoint, or a delta since the export `since`.

    Args:
        run_dir: a run directory (config.yaml, checkpoints/, the store).
        out: the export directory to create (must not exist).
        dtype: embedding type of the export, ``fp32`` or ``fp16``.
        since: an earlier export (full or delta) of the same run: write a delta against it.

    Returns:
        The manifest written.

    Raises:
        ExportError: `out` exists, the run has no valid checkpoint, the run is still writing (its store is locked),
            `since` is not an earlier export of this run, or a file is missing or corrupt.
    """
    if dtype not in _DTYPES:
        raise ExportError(f"--dtype: expected fp32 or fp16, got {dtype!r}")
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists (exports are never overwritten)")
    t_start = time.perf_counter()
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    cks = list_checkpoints(run_dir / "checkpoints")
    if not cks:
        raise ExportError(f"{run_dir / 'checkpoints'}: no valid checkpoint to export (has this run trained?)")
    ck = cks[0]
    cfg = _checkpoint_config(run_dir, ck.path)
    run_id = ck.meta.get("run_id")
    parent_m, parent_keys = chain_keys(since) if since is not None else (None, {})
    if parent_m is not None:
        if parent_m["run_id"] != run_id:
            raise ExportError(f"{Path(since) / MANIFEST}: an export of another run (run id differs); export a full")
        if parent_m["pass_index"] > ck.pass_index:
            raise ExportError(
                f"{Path(since) / MANIFEST}: taken after pass {parent_m['pass_index']}, later than the run's newest "
                f"checkpoint (pass {ck.pass_index})"
            )
    specs = table_specs(cfg)
    try:
        store = SSDStore(
            cfg.store_dir, {n: s.layout.width for n, s in specs.items()}, generation=ck.store_generation, readonly=True
        )
    except StoreLockedError as e:
        raise ExportError(f"run {str(run_dir)!r} is still writing: {e}") from None
    except StoreError as e:
        raise ExportError(f"checkpoint {ck.path}: its store cannot be read ({e})") from None

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        with store:
            since_pass = parent_m["pass_index"] if parent_m else None
            tables = {n: _export_table(store, tmp, specs[n], _DTYPES[dtype], parent_keys, since_pass) for n in specs}
        state = load_state(ck, torch.device("cpu"))
        torch.save({"model": state["model"]}, tmp / "dense.pt")
        shutil.copyfile(ck.path / "config.yaml", tmp / "config.yaml")
        files = {}
        for name in ("dense.pt", "config.yaml"):
            p = tmp / name
            with p.open("rb") as f:
                os.fsync(f.fileno())
            files[name] = {"file": name, "crc32": _crc_file(p), "bytes": p.stat().st_size}
        manifest: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "kind": "delta" if parent_m else "full",
            "id": uuid.uuid4().hex,
            "parent": {"id": parent_m["id"], "path": str(Path(since).resolve())} if parent_m else None,
            "run_id": run_id,
            "run_dir": str(run_dir.resolve()),
            "checkpoint": ck.path.name,
            "pass_index": ck.pass_index,
            "examples_seen": ck.meta.get("examples_seen"),
            "store_generation": ck.store_generation,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dtype": dtype,
            "tables": tables,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        with (tmp / MANIFEST).open("rb") as f:
            os.fsync(f.fileno())
        fsync_dir(tmp)
        tmp.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rows = sum(t["keys"]["rows"] for t in tables.values())
    log.info(
        "exported %s (%s, %d rows%s) of checkpoint %s in %.2f s",
        out,
        manifest["kind"],
        rows,
        f", {sum(t['deleted']['rows'] for t in tables.values())} deleted" if parent_m else "",
        ck.path.name,
        time.perf_counter() - t_start,
    )
    return manifest


def _export_table(
    store: SSDStore,
    out: Path,
    spec: TableSpec,
    dtype: Any,
    chain: dict[str, np.ndarray],
    parent_pass: int | None,
) -> dict[str, Any]:
    """Writes one table's arrays; with `parent_pass`, only what changed since the parent's checkpoint (`chain`:
    table -> the parent's live keys)."""
    name, layout = spec.name, spec.layout
    parent_keys = None if parent_pass is None else chain.get(name, np.zeros(0, np.uint64))
    keys = store.keys(name)
    parts_k, parts_e = [], []
    for i in range(0, len(keys), _SCAN_ROWS):
        k = keys[i : i + _SCAN_ROWS]
        rows, _ = store.read(name, k)
        if parent_keys is not None:
            last_pass = np.ascontiguousarray(rows[:, layout.dim + layout.state :]).view(np.int64)[:, 1]
            changed = (last_pass >= parent_pass) | ~in_sorted(parent_keys, k)[1]
            k, rows = k[changed], rows[changed]
        parts_k.append(k)
        parts_e.append(np.asarray(rows[:, : layout.dim], dtype=dtype))
    out_keys = np.concatenate(parts_k) if parts_k else np.zeros(0, np.uint64)
    emb = np.concatenate(parts_e) if parts_e else np.zeros((0, layout.dim), dtype)
    entry: dict[str, Any] = {
        "dim": layout.dim,
        "live_rows": len(keys),
        "keys": _save(out, table_file(name, "keys"), out_keys),
        "emb": _save(out, table_file(name, "emb"), emb),
    }
    if parent_keys is not None:
        gone = parent_keys[~in_sorted(keys, parent_keys)[1]]
        entry["deleted"] = _save(out, table_file(name, "deleted"), gone)
    return entry
