"""Export and serving on CPU: export throughput, delta size after one pass, Predictor examples/s.

One run trains the demo DLRM for ``--passes - 1`` passes with admission and TTL eviction on every table, writes a
full export, trains one more pass, writes a delta since the full export and a second full export, then scores the
eval set with the Predictor (full + delta) and, side by side, with the trainer's own eval over the same checkpoint.

What each number includes:
- ``export rows/s``: the whole ``export_run`` call (reading the store at the checkpoint, writing and fsyncing the
  arrays, the dense weights and the manifest), per row written.
- ``delta / full``: bytes of the delta export's arrays over the second full export's, both at the same checkpoint.
- ``predictor ex/s``: ``Predictor.predict(eval dir)``: Parquet read, planning, lookups, the dense model.
  ``trainer eval ex/s``: ``Trainer.evaluate()`` on the same examples (the same work, rows read from the host cache).

Usage: ``python benchmarks/serve_bench.py [--rows 600000] [--passes 4] [--eval-rows 100000] [--dim 16]``; prints
a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hier_ps as hp
from hier_ps.data import generate_synthetic


def _config(data: Path, run: Path, pass_rows: int, dim: int, info: dict, max_passes: int) -> hp.Config:
    slots = [{"name": c, "pooling": "mean" if k == "multi" else "sum"} for c, k in info["sparse"].items()]
    return hp.load_config(
        {
            "run": {"dir": str(run), "seed": 0},
            "data": {
                "train": str(data / "train"),
                "eval": str(data / "eval"),
                "dense": info["dense"],
                "dense_transform": "log1p",
                "sparse": slots,
            },
            "tables": [
                {
                    "name": s["name"],
                    "dim": dim,
                    "admission": {"min_count": 2, "sketch_bytes": "1MiB"},
                    "eviction": {"ttl_passes": 2},
                }
                for s in slots
            ],
            "model": {"name": "dlrm", "args": {"bottom": [64, dim], "top": [128, 64]}},
            "store": {"host_cache_bytes": "2GiB"},
            "train": {
                "device": "cpu",
                "batch_size": 4096,
                "pass_examples": pass_rows,
                "max_passes": max_passes,
                "progress": False,
            },
            "eval": {"every_passes": 0},
        }
    )


def _array_bytes(m: dict) -> int:
    return sum(t[p]["bytes"] for t in m["tables"].values() for p in ("keys", "emb", "deleted") if p in t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=600_000, help="train examples (all passes)")
    p.add_argument("--passes", type=int, default=4, help="passes; the delta covers the last one")
    p.add_argument("--eval-rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        tmp = Path(tmp)
        data, run, ex = tmp / "data", tmp / "run", tmp / "exports"
        info = generate_synthetic(data, preset="demo", seed=0, train_rows=args.rows, eval_rows=args.eval_rows)

        pass_rows = args.rows // args.passes
        with hp.Trainer(_config(data, run, pass_rows, args.dim, info, args.passes - 1)) as tr:
            tr.fit()
        t0 = time.perf_counter()
        full1 = hp.export_run(run, ex / "full-1")
        t_full1 = time.perf_counter() - t0

        with hp.Trainer(_config(data, run, pass_rows, args.dim, info, args.passes)) as tr:
            tr.fit()
            t0 = time.perf_counter()
            ev = tr.evaluate(return_scores=True)
            t_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        delta = hp.export_run(run, ex / "delta-2", since=ex / "full-1")
        t_delta = time.perf_counter() - t0
        t0 = time.perf_counter()
        full2 = hp.export_run(run, ex / "full-2")
        t_full2 = time.perf_counter() - t0

        t0 = time.perf_counter()
        pred = hp.Predictor(ex / "full-1", deltas=[ex / "delta-2"])
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = pred.predict(data / "eval")
        t_pred = time.perf_counter() - t0
        max_diff = float(np.abs(scores - ev["scores"][:, 0]).max())

    rows_full1 = sum(t["keys"]["rows"] for t in full1["tables"].values())
    rows_full2 = sum(t["keys"]["rows"] for t in full2["tables"].values())
    rows_delta = sum(t["keys"]["rows"] for t in delta["tables"].values())
    deleted = sum(t["deleted"]["rows"] for t in delta["tables"].values())
    n_eval = len(scores)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
        "train_rows": args.rows,
        "passes": args.passes,
        "eval_rows": n_eval,
        "dim": args.dim,
        "full_export_rows": rows_full1,
        "full_export_s": t_full1,
        "full_export_rows_per_s": rows_full1 / t_full1,
        "second_full_rows": rows_full2,
        "second_full_s": t_full2,
        "second_full_rows_per_s": rows_full2 / t_full2,
        "delta_rows": rows_delta,
        "delta_deleted": deleted,
        "delta_s": t_delta,
        "delta_bytes": _array_bytes(delta),
        "full_bytes": _array_bytes(full2),
        "delta_over_full": _array_bytes(delta) / _array_bytes(full2),
        "predictor_load_s": t_load,
        "predictor_ex_per_s": n_eval / t_pred,
        "trainer_eval_ex_per_s": n_eval / t_eval,
        "predictor_over_trainer_eval": (n_eval / t_pred) / (n_eval / t_eval),
        "index_over_row_bytes": pred.index_bytes / pred.row_bytes,
        "max_score_diff_vs_trainer_eval": max_diff,
    }
    print(
        f"machine: {res['machine']}; {args.rows:,} train rows in {args.passes} passes, {n_eval:,} eval rows, "
        f"dim {args.dim}"
    )
    last = f"pass {args.passes}"
    for name, n, t in ((f"pass {args.passes - 1}", rows_full1, t_full1), (last, rows_full2, t_full2)):
        print(f"full export after {name}: {n:,} rows in {t:.2f} s = {n / t:,.0f} rows/s")
    mib = 2**20
    print(
        f"delta after {last}: {rows_delta:,} rows + {deleted:,} deleted in {t_delta:.2f} s; "
        f"{res['delta_bytes'] / mib:.1f} MiB vs full {res['full_bytes'] / mib:.1f} MiB = {res['delta_over_full']:.2f}"
    )
    print(
        f"predictor: load full + delta {t_load:.2f} s, {res['predictor_ex_per_s']:,.0f} ex/s vs trainer eval "
        f"{res['trainer_eval_ex_per_s']:,.0f} ex/s = {res['predictor_over_trainer_eval']:.2f}x; index "
        f"{res['index_over_row_bytes']:.1%} of row bytes; max |score diff| {max_diff:.1e}"
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
