"""Checkpoints: the dense state and the data cursor beside a committed store generation.

A checkpoint is a directory ``RUN_DIR/checkpoints/ckpt-<pass>/`` holding ``dense.pt`` (model, dense optimizer, RNG
states; loaded with ``weights_only=True``), ``meta.json`` (pass index, epoch, passes done in the epoch, examples seen,
the store generation it goes with, the length of metrics.jsonl at that moment), the resolved ``config.yaml``, and
``DONE`` — the crc32 of each of those files — written last. It is assembled in a temporary directory, fsynced and
renamed into place, so a checkpoint is either complete and valid or ignored: one whose DONE is missing or whose files
do not match their checksums is skipped with a warning, and the one before it is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hier_ps.ssd.files import fsync_dir

__all__ = ["Checkpoint", "list_checkpoints", "load_state", "prune", "write_checkpoint"]

log = logging.getLogger("hier_ps")


@dataclass
class Checkpoint:
    """A valid checkpoint on disk."""

    path: Path
    meta: dict[str, Any]

    @property
    def pass_index(self) -> int:
        return int(self.meta["pass_index"])

    @property
    def store_generation(self) -> int:
        return int(self.meta["store_generation"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_checkpoint(root: Path, state: dict[str, Any], meta: dict[str, Any], config_yaml: str) -> Checkpoint:
    """Writes a checkpoint atomically under `root` (``RUN_DIR/checkpoints``).

    Args:
        root: checkpoints directory.
        state: tensors and plain containers for ``dense.pt``.
        meta: JSON-able metadata; must hold ``pass_index`` and ``store_generation``.
        config_yaml: the resolved config.
    """
    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{int(meta['pass_index']):08d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / "dense.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    (tmp / "config.yaml").write_text(config_yaml)
    sums = {}
    for f in ("dense.pt", "meta.json", "config.yaml"):
        _fsync_file(tmp / f)
        sums[f] = zlib.crc32((tmp / f).read_bytes())
    (tmp / "DONE").write_text(json.dumps(sums) + "\n")
    _fsync_file(tmp / "DONE")
    fsync_dir(tmp)
    final = root / name
    if final.exists():  # a checkpoint of the same pass from an earlier attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    return Checkpoint(final, meta)


def _validate(path: Path) -> Checkpoint | None:
    try:
        sums = json.loads((path / "DONE").read_text())
        for f, crc in sums.items():
            if zlib.crc32((path / f).read_bytes()) != crc:
                raise ValueError(f"{f} does not match its checksum")
        return Checkpoint(path, json.loads((path / "meta.json").read_text()))
    except (OSError, ValueError, KeyError) as e:
        log.warning("skipping checkpoint %s: incomplete or corrupt (%s)", path, e)
        return None


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Valid checkpoints under `root`, newest first (invalid ones are skipped with a warning)."""
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.glob("ckpt-*"), reverse=True):
        ck = _validate(p)
        if ck is not None:
            out.append(ck)
    return out


def load_state(ck: Checkpoint, device: torch.device) -> dict[str, Any]:
    """The dense state of a checkpoint (``torch.load(weights_only=True)``: no arbitrary pickles)."""
    return torch.load(ck.path / "dense.pt", map_location=device, weights_only=True)


def prune(root: Path, keep: int, valid_generations: set[int] | None) -> None:
    """Keeps the newest `keep` checkpoints whose store generation still exists (None: no such check, for runs of
    several ranks, whose stores keep every generation their checkpoints name); removes the rest and leftovers."""
    kept = 0
    for ck in list_checkpoints(root):
        if kept < keep and (valid_generations is None or ck.store_generation in valid_generations):
            kept += 1
        else:
            shutil.rmtree(ck.path)
    for p in root.glob(".ckpt-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob("ckpt-*"):
        if not (p / "DONE").is_file():
            shutil.rmtree(p, ignore_errors=True)
