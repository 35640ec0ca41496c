"""Synthetic Criteo-like data with labels drawn from a planted model, so the best achievable AUC is known.

Each slot draws key ranks from a Zipf-like (log-uniform, exponent 1) distribution over its vocabulary, and scrambles
ranks into positive int64 keys with a 64-bit mixer. The planted model gives each key a weight that is a pure hash
function of (seed, slot, rank) — no table of vocabulary size, so vocabularies up to 10^8 cost nothing — with frequent
keys carrying most of the signal. ``logit = bias + Σ_slots w_slot(key) (mean over a multi-hot bag) + dense @ w_dense``
and ``label ~ Bernoulli(sigmoid(logit))``. The oracle AUC is the AUC of those true probabilities on the eval split.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hier_ps.data.hashing import hash_strings
from hier_ps.metrics import auc, logloss

__all__ = ["PRESETS", "generate_synthetic"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Preset:
    """Shape of a synthetic data set."""

    train_rows: int
    eval_rows: int
    num_dense: int
    vocab: tuple[int, ...]  # one vocabulary size per slot
    multi_hot: tuple[int, ...]  # indices of multi-hot slots (0..max_len keys per example)
    max_len: int = 5
    slot_scale: float = 0.45  # std of a head key's weight
    dense_scale: float = 0.25
    head: float = 200.0  # ranks beyond ~head get smaller weights: signal lives in frequent keys
    bias: float = -1.2
    rows_per_file: int = 500_000


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        train_rows=2_000_000, eval_rows=200_000, num_dense=13,
        vocab=(1_000, 500, 3_000_000, 800_000, 300, 25, 12_000, 600, 3, 90_000, 5_000, 2_000_000, 3_000, 25, 14_000,
               1_500_000, 10, 5_500, 2_000, 4, 2_500_000, 15, 15, 200_000, 100, 50_000),
        multi_hot=(23, 24, 25),
    ),
    "tiny": Preset(train_rows=20_000, eval_rows=5_000, num_dense=4, vocab=(20, 300, 2_000, 50, 1_000, 500),
                   multi_hot=(5,), rows_per_file=8_000, head=50.0),
}


def _normal_from_hash(h: np.ndarray) -> np.ndarray:
    """A standard normal per uint64 hash (Box-Muller from its two 32-bit halves)."""
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0**32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class _Planted:
    def __init__(self, p: Preset, seed: int) -> None:
        self.p = p
        names = hash_strings([f"slot{s}" for s in range(len(p.vocab))])
        self.salts = list(_mix64(names ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
        rng = np.random.default_rng([seed, 99])
        self.w_dense = rng.normal(0, p.dense_scale, p.num_dense)

    def ranks(self, rng: np.random.Generator, s: int, n: int) -> np.ndarray:
        v = self.p.vocab[s]
        r = np.floor(np.exp(rng.random(n) * np.log(v + 1.0))).astype(np.int64) - 1
        return np.clip(r, 0, v - 1)

    def keys(self, s: int, ranks: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            k = _mix64(ranks.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ self.salts[s])
        return (k & np.uint64(0x7FFFFFFFFFFFFFFF)).astype(np.int64)

    def weights(self, s: int, ranks: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            h = _mix64(ranks.astype(np.uint64) ^ (self.salts[s] * np.uint64(3)))
        return self.p.slot_scale * _normal_from_hash(h) / np.sqrt(1.0 + ranks / self.p.head)


def _write_split(out: Path, planted: _Planted, rows: int, seed: int, split: int, rows_per_file: int) -> np.ndarray:
    """Writes one split; returns its true probabilities."""
    p = planted.p
    out.mkdir(parents=True, exist_ok=True)
    probs = []
    for f, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        rng = np.random.default_rng([seed, split, f])
        cols: dict[str, pa.Array] = {}
        dense = rng.standard_normal((n, p.num_dense)).astype(np.float32)
        logit = p.bias + dense.astype(np.float64) @ planted.w_dense
        for s in range(len(p.vocab)):
            if s in p.multi_hot:
                lengths = rng.integers(0, p.max_len + 1, n)
                offsets = np.zeros(n + 1, np.int64)
                np.cumsum(lengths, out=offsets[1:])
                r = planted.ranks(rng, s, int(offsets[-1]))
                sums = np.bincount(np.repeat(np.arange(n), lengths), planted.weights(s, r), minlength=n)
                logit += np.where(lengths > 0, sums / np.maximum(lengths, 1), 0.0)
                cols[f"C{s + 1}"] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(planted.keys(s, r)))
            else:
                r = planted.ranks(rng, s, n)
                logit += planted.weights(s, r)
                cols[f"C{s + 1}"] = pa.array(planted.keys(s, r))
        prob = 1.0 / (1.0 + np.exp(-logit))
        label = (rng.random(n) < prob).astype(np.float32)
        table = pa.table({"label": label, **{f"I{j + 1}": dense[:, j] for j in range(p.num_dense)}, **cols})
        pq.write_table(table, out / f"part-{f:05d}.parquet", row_group_size=65536)
        probs.append((prob, label))
    return np.concatenate([x[0] for x in probs]), np.concatenate([x[1] for x in probs])


def generate_synthetic(out_dir: str | Path, *, preset: str = "demo", seed: int = 0, train_rows: int | None = None,
                       eval_rows: int | None = None, rows_per_file: int | None = None) -> dict:
    """Writes a synthetic data set: ``train/part-*.parquet``, ``eval/part-*.parquet`` and ``oracle.json`` (last).

    Args:
        out_dir: output directory (created).
        preset: ``demo`` (2M + 200k rows, 13 dense, 26 slots of which C24-C26 multi-hot, vocabularies 3..3M) or
            ``tiny`` (20k + 5k rows, 4 dense, 6 slots, C6 multi-hot).
        seed: same seed, same bytes.
        train_rows, eval_rows, rows_per_file: override the preset.

    Returns:
        The contents of oracle.json: oracle_auc, oracle_logloss, rows, columns.
    """
    if preset not in PRESETS:
        from hier_ps.errors import ConfigError

        raise ConfigError(f"unknown synthetic preset {preset!r} (presets: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    out = Path(out_dir)
    n_train = p.train_rows if train_rows is None else train_rows
    n_eval = p.eval_rows if eval_rows is None else eval_rows
    per_file = rows_per_file or p.rows_per_file
    planted = _Planted(p, seed)
    _write_split(out / "train", planted, n_train, seed, 0, per_file)
    prob, label = _write_split(out / "eval", planted, n_eval, seed, 1, per_file)
    info = {
        "oracle_auc": auc(label, prob) if n_eval else None,
        "oracle_logloss": logloss(label, prob) if n_eval else None,
        "eval_positive_rate": float(label.mean()) if n_eval else None,
        "train_rows": n_train,
        "eval_rows": n_eval,
        "seed": seed,
        "preset": preset,
        "label": "label",
        "dense": [f"I{j + 1}" for j in range(p.num_dense)],
        "sparse": {f"C{s + 1}": "multi" if s in p.multi_hot else "single" for s in range(len(p.vocab))},
    }
    tmp = out / "oracle.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / "oracle.json")
    return info
