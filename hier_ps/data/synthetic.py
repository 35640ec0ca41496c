"""Synthetic Criteo-like data with labels drawn from a planted model, so the best achievable AUC is known.

Each slot draws key *ranks* from a Zipf-like distribution over its vocabulary (``P(rank r) ~ 1/(r+1)^zipf``) and
scrambles ranks into positive int64 keys with a 64-bit mixer (splitmix64's finalizer), so keys look like hashed ids.
The planted model gives each key a weight that is a pure hash function of (seed, slot, rank), never a table of
vocabulary size, so vocabularies up to 10^8 and beyond cost no memory; weights shrink with rank, so frequent keys
carry most of the signal and a model trained on the train split can come close to the oracle:

    logit = bias + sum over slots of w_slot(key)  (the mean over a multi-hot bag; an empty bag adds 0)
                 + dense @ w_dense
    label ~ Bernoulli(sigmoid(logit))

The oracle AUC / logloss are those of the true probabilities on the eval split. Rows are made in blocks of 64Ki with
one random generator per (seed, split, block), so the data are a pure function of the seed: the same seed gives the
same bytes, and a smaller ``train_rows`` gives a prefix of the larger data set whatever ``rows_per_file`` is.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hier_ps.data.hashing import hash_strings
from hier_ps.errors import ConfigError
from hier_ps.metrics import auc, logloss

__all__ = ["PRESETS", "Preset", "generate_synthetic"]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  #: bumped whenever the same seed would give different data
_BLOCK = 65536  # rows per random generator and per Parquet row group
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POSITIVE = np.uint64(0x7FFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 with good avalanche (vectorized)."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Preset:
    """Shape of a synthetic data set and scales of its planted model."""

    train_rows: int  #: rows of the train split
    eval_rows: int  #: rows of the eval split
    num_dense: int  #: dense columns I1..I<num_dense>, standard normal float32
    vocab: tuple[int, ...]  #: vocabulary size of each slot C1, C2, ...
    multi_hot: tuple[int, ...]  #: 0-based indices of the multi-hot slots (0..max_len keys per example)
    max_len: int = 5  #: longest multi-hot bag
    zipf: float = 1.0  #: exponent of the rank distribution; below 1 makes the tail heavier (more distinct keys)
    slot_scale: float = 0.27  #: std of the weight of a slot's most frequent keys (times a per-slot factor)
    dense_scale: float = 0.15  #: std of the dense weights
    head: float = 1000.0  #: a key of rank r has weight std ~ 1/sqrt(1 + r/head): signal lives in frequent keys
    bias: float = -1.2  #: bias of the logit (sets the positive rate)
    rows_per_file: int = 500_000  #: rows per Parquet file


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        train_rows=2_000_000,
        eval_rows=200_000,
        num_dense=13,
        # C1..C26: a Criteo-like mix of tiny, mid-size and huge vocabularies
        vocab=(
            *(1_000, 500, 10_000_000, 800_000, 300, 25, 12_000, 600, 3, 90_000, 5_000, 3_000_000, 3_000),
            *(25, 14_000, 1_500_000, 10, 5_500, 2_000, 4, 5_000_000, 15, 15, 200_000, 100, 50_000),
        ),
        multi_hot=(23, 24, 25),
    ),
    "tiny": Preset(
        train_rows=20_000,
        eval_rows=5_000,
        num_dense=4,
        vocab=(20, 300, 2_000, 50, 1_000, 500),
        multi_hot=(5,),
        rows_per_file=8_000,
        slot_scale=0.6,
        head=50.0,
    ),
}


def _normal_from_hash(h: np.ndarray) -> np.ndarray:
    """A standard normal per uint64 hash (Box-Muller from its two 32-bit halves)."""
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0**32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class _Planted:
    """The planted model of a preset and seed: key ranks -> keys and weights, all pure functions of the seed."""

    def __init__(self, p: Preset, seed: int) -> None:
        self.p = p
        names = hash_strings([f"C{s + 1}" for s in range(len(p.vocab))])
        self.key_salt = _mix64(names ^ _mix64(np.uint64(seed) ^ _GOLDEN))
        self.weight_salt = _mix64(self.key_salt ^ np.uint64(0x5851F42D4C957F2D))
        rng = np.random.default_rng([seed, 0xD1CE])
        self.slot_factor = rng.uniform(0.25, 1.25, len(p.vocab))  # some slots matter more than others
        self.w_dense = rng.normal(0.0, p.dense_scale, p.num_dense)

    def ranks(self, rng: np.random.Generator, s: int, n: int) -> np.ndarray:
        """int64[n] ranks in [0, vocab) by inverse transform of the continuous Zipf density on [1, vocab + 1]."""
        v, a = self.p.vocab[s], self.p.zipf
        u = rng.random(n)
        if a == 1.0:
            x = np.exp(u * math.log(v + 1.0))
        else:
            x = (1.0 + u * ((v + 1.0) ** (1.0 - a) - 1.0)) ** (1.0 / (1.0 - a))
        return np.clip(np.floor(x).astype(np.int64) - 1, 0, v - 1)

    def keys(self, s: int, ranks: np.ndarray) -> np.ndarray:
        """Positive int64 keys of ranks of slot `s` (a scramble: distinct ranks give distinct keys but for ~2^-63)."""
        with np.errstate(over="ignore"):
            k = _mix64((ranks.astype(np.uint64) + np.uint64(1)) * _GOLDEN ^ self.key_salt[s])
        return (k & _POSITIVE).view(np.int64)

    def weights(self, s: int, ranks: np.ndarray) -> np.ndarray:
        """float64 weights of ranks of slot `s`: a hash-seeded normal, shrinking with rank."""
        with np.errstate(over="ignore"):
            h = _mix64(ranks.astype(np.uint64) * _GOLDEN ^ self.weight_salt[s])
        scale = self.p.slot_scale * self.slot_factor[s]
        return scale * _normal_from_hash(h) / np.sqrt(1.0 + ranks / self.p.head)


def _schema(p: Preset) -> pa.Schema:
    fields = [pa.field("label", pa.float32())] + [pa.field(f"I{j + 1}", pa.float32()) for j in range(p.num_dense)]
    for s in range(len(p.vocab)):
        fields.append(pa.field(f"C{s + 1}", pa.list_(pa.int64()) if s in p.multi_hot else pa.int64()))
    return pa.schema(fields)


def _block(planted: _Planted, schema: pa.Schema, seed: int, split: int, b: int, n: int) -> tuple[pa.Table, np.ndarray]:
    """The first `n` rows of block `b` of a split: (table, true probabilities float64[n]).

    The whole block is always drawn and then cut, so a row's values never depend on how many rows were asked for.
    """
    p = planted.p
    rng = np.random.default_rng([seed, split, b])
    want, n = n, _BLOCK
    dense = rng.standard_normal((n, p.num_dense), dtype=np.float32)
    logit = p.bias + dense.astype(np.float64) @ planted.w_dense
    cols: list[pa.Array] = [pa.array(dense[:, j]) for j in range(p.num_dense)]
    for s in range(len(p.vocab)):
        if s in p.multi_hot:
            lengths = rng.integers(0, p.max_len + 1, n)
            offsets = np.zeros(n + 1, np.int32)
            np.cumsum(lengths, out=offsets[1:])
            r = planted.ranks(rng, s, int(offsets[-1]))
            sums = np.bincount(np.repeat(np.arange(n), lengths), planted.weights(s, r), minlength=n)
            logit += sums / np.maximum(lengths, 1)  # mean over the bag; an empty bag adds 0
            cols.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(planted.keys(s, r))))
        else:
            r = planted.ranks(rng, s, n)
            logit += planted.weights(s, r)
            cols.append(pa.array(planted.keys(s, r)))
    prob = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(n) < prob).astype(np.float32)
    table = pa.Table.from_arrays([pa.array(label), *cols], schema=schema)
    return (table, prob) if want == n else (table.slice(0, want), prob[:want])


def _write_split(
    out: Path, planted: _Planted, seed: int, split: int, rows: int, rows_per_file: int
) -> tuple[np.ndarray, np.ndarray]:
    """Writes one split as part-NNNNN.parquet files; returns (labels float32[rows], probabilities float64[rows])."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("part-*.parquet"):
        stale.unlink()
    schema = _schema(planted.p)
    labels, probs = [], []
    writer: pq.ParquetWriter | None = None
    if rows == 0:  # an empty split is still a readable data set
        pq.write_table(schema.empty_table(), out / "part-00000.parquet")
    try:
        for b, start in enumerate(range(0, rows, _BLOCK)):
            table, prob = _block(planted, schema, seed, split, b, min(_BLOCK, rows - start))
            labels.append(table.column("label").to_numpy())
            probs.append(prob)
            pos = 0
            while pos < table.num_rows:  # cut the block at file boundaries
                row = start + pos
                if writer is None:
                    writer = pq.ParquetWriter(out / f"part-{row // rows_per_file:05d}.parquet", schema)
                take = min(table.num_rows - pos, rows_per_file - row % rows_per_file)
                writer.write_table(table.slice(pos, take), row_group_size=_BLOCK)
                pos += take
                if (row + take) % rows_per_file == 0:
                    writer.close()
                    writer = None
    finally:
        if writer is not None:
            writer.close()
    if not labels:
        return np.zeros(0, np.float32), np.zeros(0)
    return np.concatenate(labels), np.concatenate(probs)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def generate_synthetic(
    out_dir: str | Path,
    *,
    preset: str = "demo",
    seed: int = 0,
    train_rows: int | None = None,
    eval_rows: int | None = None,
    rows_per_file: int | None = None,
) -> dict:
    """Writes a synthetic Criteo-like data set with a known oracle.

    Layout: ``OUT_DIR/train/part-00000.parquet ...``, ``OUT_DIR/eval/part-00000.parquet ...`` and
    ``OUT_DIR/oracle.json``, written last and atomically (temp file + rename): its presence means the data set is
    complete. Any earlier ``oracle.json`` is removed first and earlier ``part-*.parquet`` files are replaced.
    Columns: ``label`` float32 0/1, ``I1..`` float32, ``C1..`` int64 (multi-hot slots ``list<int64>`` with 0 to
    ``max_len`` keys). Row groups hold 64Ki rows.

    Args:
        out_dir: output directory (created).
        preset: ``"demo"`` (2M + 200k rows, I1-I13, C1-C26 with C24-C26 multi-hot, vocabularies from 3 to 10^7, a few
            million distinct keys) or ``"tiny"`` (20k + 5k rows, I1-I4, C1-C6 with C6 multi-hot, vocabularies <= 2k).
        seed: a non-negative integer; the same seed (and sizes) gives byte-identical files.
        train_rows: rows of the train split (default: the preset's).
        eval_rows: rows of the eval split (default: the preset's).
        rows_per_file: rows per Parquet file (default: the preset's); does not change the data.

    Returns:
        The contents of oracle.json: ``oracle_auc`` and ``oracle_logloss`` (of the true probabilities on the eval
        split; null when it has no rows or one class), ``eval_positive_rate``, ``train_positive_rate``,
        ``train_rows``, ``eval_rows``, ``seed``, ``preset``, ``label`` (the label column), ``dense`` (the dense
        columns), ``sparse`` (column -> ``"single"`` or ``"multi"``), ``vocab`` (column -> vocabulary size),
        ``generator_version``.

    Raises:
        ConfigError: an unknown preset, or a negative seed or size.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown synthetic preset {preset!r} (presets: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    n_train = p.train_rows if train_rows is None else int(train_rows)
    n_eval = p.eval_rows if eval_rows is None else int(eval_rows)
    per_file = p.rows_per_file if rows_per_file is None else int(rows_per_file)
    for name, value, low in (("seed", seed, 0), ("train_rows", n_train, 0), ("eval_rows", n_eval, 0)):
        if int(value) < low:
            raise ConfigError(f"{name}: must be >= {low}, got {value}")
    if per_file < 1:
        raise ConfigError(f"rows_per_file: must be >= 1, got {per_file}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "oracle.json").unlink(missing_ok=True)
    planted = _Planted(p, int(seed))
    train_label, _ = _write_split(out / "train", planted, int(seed), 0, n_train, per_file)
    eval_label, eval_prob = _write_split(out / "eval", planted, int(seed), 1, n_eval, per_file)
    two_classes = n_eval > 0 and 0 < eval_label.sum() < n_eval
    info = {
        "oracle_auc": auc(eval_label, eval_prob) if two_classes else None,
        "oracle_logloss": logloss(eval_label, eval_prob) if n_eval else None,
        "eval_positive_rate": _finite_or_none(float(eval_label.mean())) if n_eval else None,
        "train_positive_rate": _finite_or_none(float(train_label.mean())) if n_train else None,
        "train_rows": n_train,
        "eval_rows": n_eval,
        "seed": int(seed),
        "preset": preset,
        "label": "label",
        "dense": [f"I{j + 1}" for j in range(p.num_dense)],
        "sparse": {f"C{s + 1}": "multi" if s in p.multi_hot else "single" for s in range(len(p.vocab))},
        "vocab": {f"C{s + 1}": v for s, v in enumerate(p.vocab)},
        "generator_version": GENERATOR_VERSION,
    }
    tmp = out / f".oracle.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / "oracle.json")
    log.info(
        "synthetic %s data: %d train + %d eval rows in %s (oracle AUC %s)",
        preset,
        n_train,
        n_eval,
        out,
        "n/a" if info["oracle_auc"] is None else f"{info['oracle_auc']:.4f}",
    )
    return info
