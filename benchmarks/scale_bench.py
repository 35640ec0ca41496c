"""Data-parallel scaling on CPU: examples/s of 1 vs 2 ranks, and bytes moved per example by each collective.

Both runs train the demo DLRM on the same examples with the same global batch (1 rank x 2B vs 2 ranks x B), launched
the same way (``torchrun --standalone``), on the same cores: the 1-rank run gets every core as torch threads, the
2-rank run splits them. examples/s is the trainer's own figure for the whole run (read, plan, pull with its
all-reduce, train with its all-reduces, push, checkpoints). Bytes come from the trainer's counters
(``metrics.jsonl`` ``comm_bytes``): the buffer each rank hands to each collective, so the volume can be judged
without a cluster; with the ring algorithm an all-reduce of S bytes moves about 2 (N-1)/N * S bytes in and out of
every rank. The planning collectives (keys to their owners, the replicated working set's lists) count too, and the
plan seconds per pass show each rank planning only its share (``metrics.jsonl`` ``rank_share``).

The runs alternate (1 rank, 2 ranks replicated, 2 ranks row_wise, then again for ``--repeat``) so that load from
other users of the machine falls on all sides alike.

Usage: ``python benchmarks/scale_bench.py [--rows 200000] [--batch 2048] [--dim 16] [--repeat 1]``; prints a table
and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from hier_ps.data import generate_synthetic

REPO = Path(__file__).resolve().parents[1]


def _config(data: Path, run: Path, batch: int, dim: int, pass_rows: int, info: dict, mode: str = "replicated") -> dict:
    slots = [{"name": c, "pooling": "mean" if k == "multi" else "sum"} for c, k in info["sparse"].items()]
    return {
        "run": {"dir": str(run), "seed": 0},
        "data": {"train": str(data / "train"), "dense": info["dense"], "dense_transform": "log1p", "sparse": slots},
        "tables": [{"name": s["name"], "dim": dim} for s in slots],
        "model": {"name": "dlrm", "args": {"bottom": [64, dim], "top": [128, 64]}},
        "store": {"host_cache_bytes": "2GiB"},
        "train": {
            "device": "cpu",
            "batch_size": batch,
            "pass_examples": pass_rows,
            "progress": False,
            "embedding_sharding": mode,
        },
        "checkpoint": {"every_passes": 0},
    }


def _run(nproc: int, cfg: dict, tmp: Path, threads: int | None = None) -> dict:
    cfg_file = tmp / f"cfg-{nproc}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    subprocess.run([*cmd, "-m", "hier_ps", "-q", "train", str(cfg_file)], env=env, check=True, cwd=tmp)
    run = Path(cfg["run"]["dir"])
    summary = json.loads((run / "summary.json").read_text())
    comm: dict[str, int] = {}
    plan_s, planned, stages = 0.0, [], {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.get("comm_bytes", {}).items():
            comm[k] = comm.get(k, 0) + v
        plan_s += rec["seconds"]["plan"]
        for k, v in rec["seconds"].items():
            stages[k] = stages.get(k, 0.0) + v
        share = rec.get("rank_share", {}).get("examples", [rec["examples"]])
        planned = [a + b for a, b in zip(planned, share, strict=True)] if planned else list(share)
    return {
        "summary": summary,
        "comm": comm,
        "threads": threads,
        "plan_s": plan_s,
        "planned_examples": planned,
        "stage_s": stages,
    }


_WHAT = {
    "key_all_to_all": "per pass: each rank's (key, batch, count) pairs to the keys' owners",
    "admission_all_gather": "per pass, tables with admission: every rank's pairs to every rank",
    "working_set_all_gather": "per pass (replicated): owners' sorted keys + counts, and per-batch unique rows",
    "plan_stats_all_gather": "per pass: a few counts per rank for the record",
    "pull_all_reduce": "per pass (replicated): owned rows, summed into the whole working set",
    "row_grad_all_reduce": "per global batch (replicated): summed gradients of the batch's unique rows",
    "row_all_to_all": "per global batch (row_wise): rows a slice reads, from their owners",
    "grad_all_to_all": "per global batch (row_wise): their gradients, back to the owners",
    "dense_all_reduce": "DDP buckets of the dense gradients",
    "other_all_reduce": "losses and counters",
}


def _best(runs: list[dict]) -> dict:
    """The run with the highest examples/s (the least disturbed by other load), its byte counts (the same in every
    run) and the mean plan seconds."""
    best = max(runs, key=lambda r: r["summary"]["examples_per_s"])
    return {
        **best,
        "plan_s": sum(r["plan_s"] for r in runs) / len(runs),
        "all_ex_per_s": [r["summary"]["examples_per_s"] for r in runs],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=2048, help="per-rank batch of the 2-rank run")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--repeat", type=int, default=1, help="rounds of the three runs, alternating")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale_bench_") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        info = generate_synthetic(data, preset="demo", seed=0, train_rows=args.rows, eval_rows=1000)
        pass_rows = args.rows // 2
        runs: dict[str, list[dict]] = {"one": [], "one_1t": [], "two": [], "rw": []}
        for i in range(args.repeat):
            runs["one"].append(_run(1, _config(data, tmp / f"one{i}", 2 * args.batch, args.dim, pass_rows, info), tmp))
            cfg = _config(data, tmp / f"one1t{i}", 2 * args.batch, args.dim, pass_rows, info)
            runs["one_1t"].append(_run(1, cfg, tmp, threads=1))  # the same threads as each of the 2 ranks
            runs["two"].append(_run(2, _config(data, tmp / f"two{i}", args.batch, args.dim, pass_rows, info), tmp))
            cfg = _config(data, tmp / f"rw{i}", args.batch, args.dim, pass_rows, info, "row_wise")
            runs["rw"].append(_run(2, cfg, tmp))
        one, one_1t, two, rw = (_best(runs[k]) for k in ("one", "one_1t", "two", "rw"))
    n = two["summary"]["examples"]
    per_ex = {k: v / n for k, v in sorted(two["comm"].items())}
    per_ex_rw = {k: v / n for k, v in sorted(rw["comm"].items())}
    ring_factor = 2 * (2 - 1) / 2
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "rows": args.rows,
        "global_batch": 2 * args.batch,
        "dim": args.dim,
        "one_rank_ex_per_s": one["summary"]["examples_per_s"],
        "one_rank_threads": one["threads"],
        "two_ranks_ex_per_s": two["summary"]["examples_per_s"],
        "two_ranks_threads_each": two["threads"],
        "two_over_one": two["summary"]["examples_per_s"] / one["summary"]["examples_per_s"],
        "two_ranks_row_wise_ex_per_s": rw["summary"]["examples_per_s"],
        "one_rank_one_thread_ex_per_s": one_1t["summary"]["examples_per_s"],
        "stage_s_best_run": {
            "one_rank": one["stage_s"],
            "one_rank_one_thread": one_1t["stage_s"],
            "two_ranks": two["stage_s"],
            "row_wise": rw["stage_s"],
        },
        "buffer_bytes_per_example": per_ex,
        "ring_bytes_per_example_per_rank": {k: v * ring_factor for k, v in per_ex.items()},
        "row_wise_bytes_per_example": per_ex_rw,
        "row_wise_last_pass_loss": rw["summary"]["train_loss"],
        "ex_per_s_all_runs": {k: _best(v)["all_ex_per_s"] for k, v in runs.items()},
        "plan_s_per_run": {"one_rank": one["plan_s"], "two_ranks": two["plan_s"], "row_wise": rw["plan_s"]},
        "planned_examples_per_rank": {"one_rank": one["planned_examples"], "two_ranks": two["planned_examples"]},
        "one_rank_last_pass_loss": one["summary"]["train_loss"],
        "two_ranks_last_pass_loss": two["summary"]["train_loss"],
    }
    print(f"machine: {res['machine']}; {args.rows:,} examples, global batch {2 * args.batch}, dim {args.dim}")
    print(
        f"1 rank ({one['threads']} threads): {res['one_rank_ex_per_s']:,.0f} ex/s;  2 ranks ({two['threads']} thread "
        f"each): {res['two_ranks_ex_per_s']:,.0f} ex/s  = {res['two_over_one']:.2f}x"
    )
    print(f"2 ranks, row_wise: {res['two_ranks_row_wise_ex_per_s']:,.0f} ex/s (best of {args.repeat})")
    print(f"1 rank, 1 thread: {res['one_rank_one_thread_ex_per_s']:,.0f} ex/s")
    for k, v in res["stage_s_best_run"].items():
        print(f"  stage seconds, {k}: " + ", ".join(f"{s} {t:.2f}" for s, t in v.items()))
    print(
        f"plan seconds per run (read-ahead thread): 1 rank {one['plan_s']:.2f}, 2 ranks {two['plan_s']:.2f}, "
        f"row_wise {rw['plan_s']:.2f}; examples planned per rank: 1 rank {one['planned_examples']}, 2 ranks "
        f"{two['planned_examples']}"
    )
    print(
        f"last pass loss: 1 rank {one['summary']['train_loss']:.7f}, 2 ranks {two['summary']['train_loss']:.7f}, "
        f"row_wise {rw['summary']['train_loss']:.7f}"
    )
    print("replicated mode, 2 ranks: bytes per example (buffer handed to the collective / ring traffic per rank)")
    for k, v in per_ex.items():
        print(f"  {k:24s} {v:10.1f} / {v * ring_factor:10.1f}  {_WHAT.get(k, '')}")
    print("row_wise mode, 2 ranks: bytes per example each rank sends to other ranks")
    for k, v in per_ex_rw.items():
        print(f"  {k:24s} {v:10.1f}  {_WHAT.get(k, '')}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
