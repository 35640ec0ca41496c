"""Side-by-side training throughput on CPU: hier_ps's pass trainer vs plain PyTorch, same model and batches.

Both sides train the same DLRM (same init seed) on the same examples of the synthetic demo data, batch by batch in
the same order, with row-wise Adagrad-like sparse updates on the hier_ps side and ``torch.optim.Adagrad`` on sparse
``nn.EmbeddingBag`` gradients on the PyTorch side (the closest stock PyTorch has; it is per-element Adagrad).

What each side's number includes:
- ``hier_ps train stage``: pooled lookup, model, loss, backward, dense step and the fused sparse update — the
  ``seconds.train`` of metrics.jsonl.
- ``hier_ps whole run``: the trainer's own time for every pass (metrics.jsonl ``wall_s``): waiting for the pass to be
  read (Parquet), planned and its new rows pulled (all done in background threads while the previous pass trains,
  so only the first pass and what does not hide shows up: ``exposed_s``), the assembly of the working set on the
  device (load), and training; the write-back of the rows a pass released runs beside the next pass's training.
  Checkpoints and eval are off.
- ``hier_ps whole run, model 10x the host cache``: the same with ``store.host_cache_bytes`` a tenth of the model's row
  bytes (rows go to and come from the SSD store, in the background).
- ``hier_ps train stage, one pass``: the train stage of a fit whose one pass holds every example (``pass_examples``
  = all rows: the whole model is one working set, loaded once). Its batches are exactly the baselines' given batches
  (all rows cut as one stream), and nothing runs beside its training: reading, planning and the pull of its rows come
  before it, as the baselines' reading and planning come before their loops. The ratio to ``fbgemm`` / ``pytorch``
  thus compares training with training, both given their batches; the four-pass ``train stage`` shares the cores
  with the next pass's staging (on a machine of few cores, the staging's CPU time is taken from training).
  ``+ its per-batch plan`` adds the seconds of the per-batch part of its planning (each batch's unique rows, its
  occurrences sorted by row: see :func:`_per_batch_plan_s`), which FBGEMM does inside its timed backward.
- ``hier_ps passes 2..``: the whole run's rate over its passes after the first (whose read, plan and pull nothing
  can hide; its share of a run shrinks as runs get longer): a long run's steady state.
- ``pytorch``: the training loop only, given keys already remapped to dense row indices (planning done for it, free)
  and all batches already in memory (reading done for it, free). Its batches are cut from all rows as one stream, so
  they differ from the others' at pass boundaries.
- ``pytorch, reading its data``: the same loop reading the same Parquet files pass by pass and mapping each pass's
  keys to rows with ``np.searchsorted`` in per-table vocabularies built before timing (see
  :func:`run_pytorch_reading`): from the same input to the same trained model as hier_ps's whole run, with hier_ps's
  batches.
- The DLRM's dot interaction: on the CPU the model runs it with hier_ps's C kernel
  (:func:`hier_ps.models.layers.dot_interaction`); each PyTorch side also runs with torch's bmm path
  (``bmm_interaction()``, ``pytorch_bmm`` and ``pytorch_reading_bmm`` in the JSON) and is reported at the faster of
  the two (named after its number in the table), so the kernel never slows a baseline. FBGEMM's side runs the C
  kernel.
- The dense optimizer: every side builds hier_ps's (``hier_ps.trainer._dense_optimizer``: torch's Adam with
  ``fused=True``, one kernel over all parameters), so that no side gains on the dense step.
- ``fbgemm``: FBGEMM's table-batched embedding (``SplitTableBatchedEmbeddingBagsCodegen``, the kernel TorchRec's
  fused EmbeddingBagCollection runs) with its fused exact row-wise Adagrad on the CPU, same DLRM and batches; the
  training loop only, its inputs (indices and offsets of all slots, table-batched) built before timing. Skipped when
  fbgemm-gpu-cpu is not installed (``pip install fbgemm-gpu-cpu==1.8.0``).
- ``fbgemm, reading its data``: the same FBGEMM loop reading the same Parquet files pass by pass and mapping keys to
  rows as ``pytorch, reading its data`` does (:func:`run_fbgemm_reading`): from the same input to the same trained
  model as hier_ps's whole run. The whole run's ratio to it compares like with like; the ratio to ``fbgemm`` gives
  FBGEMM its reading and key mapping for free.

All sides run in one process, under one OpenMP setting: hier_ps, imported before torch, sets ``GOMP_SPINCOUNT=20000``
(libgomp's idle workers spin 20,000 rounds instead of 300,000) unless the environment sets it or ``OMP_WAIT_POLICY``;
``GOMP_SPINCOUNT=300000`` in the environment runs everything at libgomp's own default. The JSON's ``gomp_spincount``
says which held.

With ``--repeats N`` the sides run in N alternating rounds (ours, ours with the small cache, ours in one pass,
PyTorch, PyTorch with bmm, PyTorch reading, PyTorch reading with bmm, FBGEMM, FBGEMM reading, then again) and each
side's median is reported: the machine is shared, and alternating spreads slow spells over all sides. Before them,
``--warmup N`` (default 1) untimed rounds of every side: a process's first fit pays once for what later ones reuse
(libraries loaded and initialized, OpenMP's threads started, the collection of the imports' garbage), and without a
warm-up only the side that runs first would pay it.

Usage: ``python benchmarks/e2e_bench.py [--rows 200000] [--passes 4] [--batch 4096] [--dim 16] [--repeats 1]
[--warmup 1]``; prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# isort: off
import hier_ps as hp  # before torch: hier_ps's OpenMP spin default then holds for every side (see the docstring)
import numpy as np
import torch
import torch.nn.functional as F

# isort: on
from hier_ps.data import ParquetReader, generate_synthetic
from hier_ps.models import build_model
from hier_ps.models.layers import bmm_interaction
from hier_ps.plan import plan_pass
from hier_ps.trainer import _dense_optimizer


def _config(data: Path, run: Path, pass_rows: int, batch: int, dim: int, info: dict) -> hp.Config:
    slots = [{"name": c, "pooling": "mean" if k == "multi" else "sum"} for c, k in info["sparse"].items()]
    return hp.load_config(
        {
            "run": {"dir": str(run), "seed": 0},
            "data": {"train": str(data / "train"), "dense": info["dense"], "sparse": slots},
            "tables": [{"name": s["name"], "dim": dim} for s in slots],
            "sparse_optimizer": {"name": "rowwise_adagrad", "lr": 0.05},
            "model": {"name": "dlrm", "args": {"bottom": [64, dim], "top": [128, 64]}},
            "store": {"host_cache_bytes": "8GiB"},
            "train": {"device": "cpu", "batch_size": batch, "pass_examples": pass_rows, "progress": False},
            "checkpoint": {"every_passes": 0},
        }
    )


def run_hier_ps(cfg: hp.Config) -> dict:
    with hp.Trainer(cfg) as tr:
        c0 = time.process_time()
        s = tr.fit()
        cpu_s = time.process_time() - c0
        model_bytes = sum(tr.store.num_rows(t) * spec.layout.width * 4 for t, spec in tr.specs.items())
    recs = [json.loads(line) for line in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()]
    return {
        "examples": s["examples"],
        "cpu_s": cpu_s,
        "model_bytes": model_bytes,
        "passes": len(recs),
        "train_s": sum(r["seconds"]["train"] for r in recs),
        "pass_s": sum(r["wall_s"] for r in recs),
        "exposed_s": sum(r["exposed_s"] for r in recs[1:]),
        "exposed_all_s": sum(r["exposed_s"] for r in recs),
        "pass_s_after_first": sum(r["wall_s"] for r in recs[1:]),
        "first_examples": recs[0]["examples"],
        "background_s": sum(r["seconds"]["read"] + r["seconds"]["plan"] for r in recs[1:]),
        "pull_push_s": sum(r["seconds"]["pull"] + r["seconds"]["push"] for r in recs[1:]),
        "load_s": sum(r["seconds"]["load"] for r in recs),
        "host_hit_rate": sum(r["host_cache"]["hits"] for r in recs)
        / max(sum(r["host_cache"]["hits"] + r["host_cache"]["misses"] for r in recs), 1),
    }


def _planned(cfg: hp.Config, rows: int) -> tuple:
    """All examples planned as one pass: keys remapped to dense row indices per table (free for the baselines)."""
    reader = ParquetReader(
        cfg.data.train, label=cfg.data.labels, dense=cfg.data.dense, slots={s.name: s.column for s in cfg.data.sparse}
    )
    chunk = next(reader.iter_chunks(rows))
    slot_tables = {s.name: s.table for s in cfg.data.sparse}
    return chunk, slot_tables, plan_pass(chunk, slot_tables, cfg.train.batch_size, 0, for_training=False)


def _per_batch_plan_s(cfg: hp.Config, rows: int) -> float:
    """Seconds of the per-batch part of planning all rows as one pass (one thread): planning for training less
    planning for lookups only. The rest (each table's working set, keys mapped to rows) the baselines get for free;
    this part (each batch's unique rows, its occurrences sorted by row) FBGEMM does inside its backward."""
    chunk, slot_tables, _ = _planned(cfg, rows)
    t0 = time.perf_counter()
    plan_pass(chunk, slot_tables, cfg.train.batch_size, 0, for_training=False)
    t1 = time.perf_counter()
    plan_pass(chunk, slot_tables, cfg.train.batch_size, 0, for_training=True)
    t2 = time.perf_counter()
    return max((t2 - t1) - (t1 - t0), 0.0)


def _fbgemm_side(cfg: hp.Config, rows: int) -> tuple | None:
    """FBGEMM's side, built: (plan of all rows as one pass, slot -> table, slots, dim, model, TBE module, dense
    optimizer), or None when fbgemm-gpu-cpu is not installed or the tables' dims differ."""
    try:
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            OptimType,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except ImportError:
        return None
    _, slot_tables, plan = _planned(cfg, rows)
    tables = list(plan.keys)
    slots = list(slot_tables)
    dims = {s: cfg.table(slot_tables[s]).dim for s in slots}
    if len(set(dims.values())) != 1:
        return None  # one table-batched module needs one dim here
    dim = next(iter(dims.values()))
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model.name, dense_dim=len(cfg.data.dense), slot_dims=dims, args=cfg.model.args)
    emb = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(len(plan.keys[t]), dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for t in tables],
        feature_table_map=[tables.index(slot_tables[s]) for s in slots],
        optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=cfg.sparse_optimizer.lr,
        eps=cfg.sparse_optimizer.eps,
        pooling_mode=PoolingMode.MEAN,  # single-hot slots: the same as sum
    )
    dense_opt = _dense_optimizer(cfg.dense_optimizer, model.parameters())  # as hier_ps's: fused where torch can
    return plan, slot_tables, slots, dim, model, emb, dense_opt


def _fbgemm_inputs(slots: list[str], parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple:
    """One batch's table-batched TBE inputs (indices int64[nnz], offsets int64[S*B+1]) from each slot's (offsets
    int64[B+1] from 0, rows int64[nnz_s])."""
    idx, offs, base = [], [], 0
    for s in slots:
        off, rows = parts[s]
        idx.append(rows)
        offs.append(off[:-1] + base)
        base += int(off[-1])
    offsets = torch.from_numpy(np.concatenate([*offs, [base]]).astype(np.int64))
    return torch.from_numpy(np.concatenate(idx).astype(np.int64)), offsets


def _fbgemm_step(
    side: tuple, indices: torch.Tensor, offsets: torch.Tensor, dense: np.ndarray, labels: np.ndarray
) -> None:
    """One training step of FBGEMM's side (see :func:`_fbgemm_side`) on one batch's TBE inputs."""
    _, _, slots, dim, model, emb, dense_opt = side
    out = emb(indices, offsets)
    # One split, as TorchRec's KeyedTensor.to_dict: its backward is one concatenation, where a slice per slot
    # would give each slot's gradient as a zero-filled copy of the whole output, summed.
    sparse = dict(zip(slots, torch.split(out, dim, dim=1), strict=True))
    logits = model(torch.from_numpy(dense), sparse).reshape(len(dense), -1)
    loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels))
    dense_opt.zero_grad(set_to_none=True)
    loss.backward()  # the row-wise Adagrad update of the touched rows happens here, fused
    dense_opt.step()


def run_fbgemm(cfg: hp.Config, rows: int) -> dict | None:
    """FBGEMM's training loop given every batch's inputs built before timing."""
    side = _fbgemm_side(cfg, rows)
    if side is None:
        return None
    plan, _, slots = side[:3]
    inputs = []
    for i in range(plan.num_batches):
        b = plan.batch(i)
        inputs.append((b, *_fbgemm_inputs(slots, b.slots)))
    t0, c0 = time.perf_counter(), time.process_time()
    for b, indices, offsets in inputs:
        _fbgemm_step(side, indices, offsets, b.dense, b.labels)
    return {"examples": plan.num_examples, "train_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def _read_mapped(
    cfg: hp.Config, vocab: dict[str, np.ndarray], slot_tables: dict[str, str]
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """The reading sides' input, batch by batch: the train Parquet files read pass by pass (hier_ps's reader), each
    pass's keys mapped to rows with ``np.searchsorted`` in every table's sorted vocabulary, then cut into batches.

    Yields:
        (dense float32[B, D], labels float32[B, T], slot -> (offsets int64[B+1] from 0, rows int64[nnz])).
    """
    reader = ParquetReader(
        cfg.data.train, label=cfg.data.labels, dense=cfg.data.dense, slots={s.name: s.column for s in cfg.data.sparse}
    )
    bs = cfg.train.batch_size
    for part in reader.iter_chunks(int(cfg.train.pass_examples)):
        local = {s: np.searchsorted(vocab[slot_tables[s]], keys) for s, (_, keys) in part.sparse.items()}
        for lo in range(0, len(part), bs):
            hi = min(lo + bs, len(part))
            cut = {}
            for slot, (off, _) in part.sparse.items():
                a, b = int(off[lo]), int(off[hi])
                cut[slot] = (off[lo : hi + 1] - a, local[slot][a:b])
            yield part.dense[lo:hi], part.labels[lo:hi], cut


def run_fbgemm_reading(cfg: hp.Config, rows: int) -> dict | None:
    """FBGEMM's training loop reading its own data, as :func:`run_pytorch_reading` does: the same Parquet files
    pass by pass, each pass's keys mapped to rows with ``np.searchsorted`` in every table's sorted vocabulary
    (built before timing), the table-batched inputs built per batch, then the same steps as :func:`run_fbgemm`. One
    plain loop: reading and mapping do not overlap training."""
    side = _fbgemm_side(cfg, rows)
    if side is None:
        return None
    plan, slot_tables, slots = side[:3]
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for dense, labels, cut in _read_mapped(cfg, plan.keys, slot_tables):
        indices, offsets = _fbgemm_inputs(slots, cut)
        _fbgemm_step(side, indices, offsets, dense, labels)
        n += len(dense)
    return {"examples": n, "train_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def run_pytorch(cfg: hp.Config, rows: int) -> dict:
    chunk, slot_tables, plan = _planned(cfg, rows)
    torch.manual_seed(cfg.run.seed)
    dims = {s.name: cfg.table(s.table).dim for s in cfg.data.sparse}
    model = build_model(cfg.model.name, dense_dim=len(cfg.data.dense), slot_dims=dims, args=cfg.model.args)
    bags = torch.nn.ModuleDict(
        {t: torch.nn.EmbeddingBag(len(plan.keys[t]), cfg.table(t).dim, mode="sum", sparse=True) for t in plan.keys}
    )
    dense_opt = _dense_optimizer(cfg.dense_optimizer, model.parameters())  # as hier_ps's: fused where torch can
    sparse_opt = torch.optim.Adagrad(bags.parameters(), lr=cfg.sparse_optimizer.lr)
    pooling = {s.name: s.pooling.value for s in cfg.data.sparse}
    batches = [plan.batch(i) for i in range(plan.num_batches)]
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        sparse = {}
        for slot, (off, idx) in b.slots.items():
            bag = bags[slot_tables[slot]]
            sparse[slot] = F.embedding_bag(
                torch.from_numpy(idx),
                bag.weight,
                torch.from_numpy(off),
                mode=pooling[slot],
                sparse=True,
                include_last_offset=True,
            )
        logits = model(torch.from_numpy(b.dense), sparse).reshape(len(b), -1)
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(b.labels))
        dense_opt.zero_grad(set_to_none=True)
        sparse_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()
        sparse_opt.step()
    return {"examples": len(chunk), "train_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def run_pytorch_reading(cfg: hp.Config, rows: int) -> dict:
    """The PyTorch loop of :func:`run_pytorch`, reading its own data: the same Parquet files pass by pass (the
    same reader as hier_ps's), each pass's keys mapped to rows with ``np.searchsorted`` in every table's sorted
    vocabulary (built before timing from all the data, given for free), then the same batches and steps. One plain
    loop, as a script without a data loader writes it: reading and mapping do not overlap training."""
    chunk, slot_tables, plan = _planned(cfg, rows)
    vocab = plan.keys
    del chunk, plan
    torch.manual_seed(cfg.run.seed)
    dims = {s.name: cfg.table(s.table).dim for s in cfg.data.sparse}
    model = build_model(cfg.model.name, dense_dim=len(cfg.data.dense), slot_dims=dims, args=cfg.model.args)
    bags = torch.nn.ModuleDict(
        {t: torch.nn.EmbeddingBag(len(vocab[t]), cfg.table(t).dim, mode="sum", sparse=True) for t in vocab}
    )
    dense_opt = _dense_optimizer(cfg.dense_optimizer, model.parameters())  # as hier_ps's: fused where torch can
    sparse_opt = torch.optim.Adagrad(bags.parameters(), lr=cfg.sparse_optimizer.lr)
    pooling = {s.name: s.pooling.value for s in cfg.data.sparse}
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for dense, labels, cut in _read_mapped(cfg, vocab, slot_tables):
        sparse = {}
        for slot, (off, rows) in cut.items():
            sparse[slot] = F.embedding_bag(
                torch.from_numpy(rows),
                bags[slot_tables[slot]].weight,
                torch.from_numpy(off),
                mode=pooling[slot],
                sparse=True,
                include_last_offset=True,
            )
        logits = model(torch.from_numpy(dense), sparse).reshape(len(dense), -1)
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels))
        dense_opt.zero_grad(set_to_none=True)
        sparse_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()
        sparse_opt.step()
        n += len(dense)
    return {"examples": n, "train_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def _median_run(runs: list[dict], key: str | None = None) -> dict:
    """The run with the median examples/s (by `key`; default its train_s or, for hier_ps, its pass_s)."""
    key = key or ("pass_s" if "pass_s" in runs[0] else "train_s")
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds of every side before the timed ones (0: none)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:  # on a shared machine, 1 thread per side avoids OpenMP spinning against the other users
        torch.set_num_threads(args.threads)
    sides = (
        "ours",
        "small",
        "one_pass",
        "pytorch",
        "pytorch_bmm",
        "pytorch_reading",
        "pytorch_reading_bmm",
        "fbgemm",
        "fbgemm_reading",
    )
    runs: dict[str, list] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        info = generate_synthetic(data, preset="demo", seed=0, train_rows=args.rows, eval_rows=1000)
        for r in range(args.warmup + args.repeats):
            if r == 0 and args.warmup:
                print(f"warm-up: {args.warmup} untimed round(s) of every side first", flush=True)
            timed = r >= args.warmup
            cfg = _config(data, Path(tmp) / f"run{r}", args.rows // args.passes, args.batch, args.dim, info)
            one = {"ours": run_hier_ps(cfg)}
            small = _config(data, Path(tmp) / f"small{r}", args.rows // args.passes, args.batch, args.dim, info)
            small.store.host_cache_bytes = max(one["ours"]["model_bytes"] // 10, 1)
            one["small"] = run_hier_ps(small)
            one_cfg = _config(data, Path(tmp) / f"one{r}", args.rows, args.batch, args.dim, info)
            one["one_pass"] = run_hier_ps(one_cfg) | {"per_batch_plan_s": _per_batch_plan_s(one_cfg, args.rows)}
            one["pytorch"] = run_pytorch(cfg, args.rows)
            with bmm_interaction():
                one["pytorch_bmm"] = run_pytorch(cfg, args.rows)
            one["pytorch_reading"] = run_pytorch_reading(cfg, args.rows)
            with bmm_interaction():
                one["pytorch_reading_bmm"] = run_pytorch_reading(cfg, args.rows)
            one["fbgemm"] = run_fbgemm(cfg, args.rows)
            one["fbgemm_reading"] = run_fbgemm_reading(cfg, args.rows)
            if timed:
                for side, result in one.items():
                    runs[side].append(result)
    ours, ours_small = _median_run(runs["ours"]), _median_run(runs["small"])
    one_pass = _median_run(runs["one_pass"], "train_s")
    # Each PyTorch side at the faster of its two interaction paths (the C kernel or torch's bmm)
    base, base_bmm = _median_run(runs["pytorch"]), _median_run(runs["pytorch_bmm"])
    io, io_bmm = _median_run(runs["pytorch_reading"]), _median_run(runs["pytorch_reading_bmm"])
    base = base if base["train_s"] <= base_bmm["train_s"] else base_bmm
    base_io = io if io["train_s"] <= io_bmm["train_s"] else io_bmm
    fb = _median_run(runs["fbgemm"]) if all(runs["fbgemm"]) else None
    fb_io = _median_run(runs["fbgemm_reading"]) if all(runs["fbgemm_reading"]) else None
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "rows": args.rows,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "passes": ours["passes"],
        "exposed_s_after_first_pass": ours["exposed_s"],
        "exposed_s_all_passes": ours["exposed_all_s"],
        "exposed_share_of_wall": ours["exposed_s"] / max(ours["pass_s_after_first"], 1e-9),
        "read_plan_s_after_first_pass": ours["background_s"],
        "pull_push_s_after_first_pass": ours["pull_push_s"],
        "load_s": ours["load_s"],
        "batch": args.batch,
        "dim": args.dim,
        "hier_ps_train_ex_s": ours["examples"] / ours["train_s"],
        "hier_ps_pass_ex_s": ours["examples"] / ours["pass_s"],
        "pytorch_train_ex_s": base["examples"] / base["train_s"],
        "pytorch_reading_ex_s": base_io["examples"] / base_io["train_s"],
        "pytorch_interaction": "bmm" if base is base_bmm else "C",
        "pytorch_reading_interaction": "bmm" if base_io is io_bmm else "C",
    }
    res["hier_ps_one_pass_train_ex_s"] = one_pass["examples"] / one_pass["train_s"]
    res["hier_ps_one_pass_whole_ex_s"] = one_pass["examples"] / one_pass["pass_s"]
    res["ratio_one_pass_train"] = res["hier_ps_one_pass_train_ex_s"] / res["pytorch_train_ex_s"]
    res["per_batch_plan_s"] = one_pass["per_batch_plan_s"]
    res["hier_ps_one_pass_train_sort_ex_s"] = one_pass["examples"] / (
        one_pass["train_s"] + one_pass["per_batch_plan_s"]
    )
    res["host_cache_bytes_small"] = ours["model_bytes"] // 10
    res["model_bytes"] = ours["model_bytes"]
    res["hier_ps_small_cache_ex_s"] = ours_small["examples"] / ours_small["pass_s"]
    res["small_cache_hit_rate"] = ours_small["host_hit_rate"]
    res["small_cache_exposed_share"] = ours_small["exposed_s"] / max(ours_small["pass_s_after_first"], 1e-9)
    res["ratio_small_cache"] = res["hier_ps_small_cache_ex_s"] / res["hier_ps_pass_ex_s"]
    res["fbgemm_train_ex_s"] = fb["examples"] / fb["train_s"] if fb else None
    res["ratio_vs_fbgemm"] = res["hier_ps_pass_ex_s"] / res["fbgemm_train_ex_s"] if fb else None
    res["ratio_train_vs_fbgemm"] = res["hier_ps_train_ex_s"] / res["fbgemm_train_ex_s"] if fb else None
    res["ratio_one_pass_train_vs_fbgemm"] = (
        res["hier_ps_one_pass_train_ex_s"] / res["fbgemm_train_ex_s"] if fb else None
    )
    res["ratio_one_pass_train_sort_vs_fbgemm"] = (
        res["hier_ps_one_pass_train_sort_ex_s"] / res["fbgemm_train_ex_s"] if fb else None
    )
    res["fbgemm_reading_ex_s"] = fb_io["examples"] / fb_io["train_s"] if fb_io else None
    res["ratio_vs_fbgemm_reading"] = res["hier_ps_pass_ex_s"] / res["fbgemm_reading_ex_s"] if fb_io else None
    res["ratio_train"] = res["hier_ps_train_ex_s"] / res["pytorch_train_ex_s"]
    res["ratio_pass"] = res["hier_ps_pass_ex_s"] / res["pytorch_train_ex_s"]
    res["ratio_pass_vs_pytorch_reading"] = res["hier_ps_pass_ex_s"] / res["pytorch_reading_ex_s"]
    # passes 2.. only: the first pass's read + plan + pull cannot hide behind anything (its share shrinks with the
    # number of passes); this is the rate of a long run's steady state
    # (none with one pass)
    steady = ours["passes"] > 1
    res["hier_ps_steady_ex_s"] = (
        (ours["examples"] - ours["first_examples"]) / ours["pass_s_after_first"] if steady else None
    )
    res["ratio_steady_vs_pytorch_reading"] = (
        res["hier_ps_steady_ex_s"] / res["pytorch_reading_ex_s"] if steady else None
    )
    # CPU seconds (all threads of the process) per example: less sensitive to other users of a shared machine than
    # wall time, but blind to overlap. hier_ps's count covers its whole fit (read, plan, pull, load, train, push, all
    # threads); the baselines' only their training loops.
    res["cpu_us_per_example"] = {
        "hier_ps": 1e6 * ours["cpu_s"] / ours["examples"],
        "hier_ps_small_cache": 1e6 * ours_small["cpu_s"] / ours_small["examples"],
        "pytorch": 1e6 * base["cpu_s"] / base["examples"],
        "pytorch_reading": 1e6 * base_io["cpu_s"] / base_io["examples"],
        "fbgemm": 1e6 * fb["cpu_s"] / fb["examples"] if fb else None,
        "fbgemm_reading": 1e6 * fb_io["cpu_s"] / fb_io["examples"] if fb_io else None,
    }
    res["all_runs_ex_s"] = {  # hier_ps by its pass_s, but the one-pass side by its train stage
        side: [
            (r["examples"] / (r["pass_s"] if "pass_s" in r and side != "one_pass" else r["train_s"])) if r else None
            for r in side_runs
        ]
        for side, side_runs in runs.items()
    }
    print(f"{'side':<32}{'examples/s':>14}")
    print(f"{'hier_ps train stage':<32}{res['hier_ps_train_ex_s']:>14,.0f}")
    print(f"{'hier_ps whole run':<32}{res['hier_ps_pass_ex_s']:>14,.0f}")
    print(f"{'hier_ps whole run, cache 1/10':<32}{res['hier_ps_small_cache_ex_s']:>14,.0f}")
    print(f"{'hier_ps train stage, one pass':<32}{res['hier_ps_one_pass_train_ex_s']:>14,.0f}")
    print(f"{'  + its per-batch plan':<32}{res['hier_ps_one_pass_train_sort_ex_s']:>14,.0f}")
    print(f"{'hier_ps whole run, one pass':<32}{res['hier_ps_one_pass_whole_ex_s']:>14,.0f}")
    if steady:
        print(f"{'hier_ps passes 2.. (steady)':<32}{res['hier_ps_steady_ex_s']:>14,.0f}")
    pt, ptr = res["pytorch_interaction"], res["pytorch_reading_interaction"]
    print(f"{'pytorch EmbeddingBag+Adagrad':<32}{res['pytorch_train_ex_s']:>14,.0f}  (interaction: {pt})")
    print(f"{'pytorch, reading its data':<32}{res['pytorch_reading_ex_s']:>14,.0f}  (interaction: {ptr})")
    if fb:
        print(f"{'fbgemm TBE fused rw-Adagrad':<32}{res['fbgemm_train_ex_s']:>14,.0f}")
        print(f"{'fbgemm, reading its data':<32}{res['fbgemm_reading_ex_s']:>14,.0f}")
        print(
            f"ratio vs fbgemm given its batches: whole run {res['ratio_vs_fbgemm']:.2f}x, train stage "
            f"{res['ratio_train_vs_fbgemm']:.2f}x; vs fbgemm reading its data: whole run "
            f"{res['ratio_vs_fbgemm_reading']:.2f}x; train stage of one pass (same batches) "
            f"{res['ratio_one_pass_train_vs_fbgemm']:.2f}x, with its per-batch plan "
            f"{res['ratio_one_pass_train_sort_vs_fbgemm']:.2f}x"
        )
    else:
        print("fbgemm: not installed, skipped")
    print(
        f"model {res['model_bytes'] / 2**20:.1f} MiB of rows; host cache 1/10 of it vs all in RAM: "
        f"{res['ratio_small_cache']:.2f}x (hit rate {res['small_cache_hit_rate']:.2f})"
    )
    print(
        f"ratio (train stage / pytorch): {res['ratio_train']:.2f}x; (whole run / pytorch): {res['ratio_pass']:.2f}x; "
        f"(train stage of one pass / pytorch): {res['ratio_one_pass_train']:.2f}x"
    )
    print(
        f"ratio vs pytorch reading its data: whole run {res['ratio_pass_vs_pytorch_reading']:.2f}x"
        + (f", passes 2.. {res['ratio_steady_vs_pytorch_reading']:.2f}x" if steady else "")
    )
    if steady:
        print(
            f"passes 2..{ours['passes']}: read + plan {ours['background_s']:.2f} s and pull + push "
            f"{ours['pull_push_s']:.2f} s in the background, {ours['exposed_s']:.3f} s exposed "
            f"({100 * res['exposed_share_of_wall']:.1f}% of their wall time); load {ours['load_s']:.2f} s in all"
        )
    print(
        "CPU us per example (all threads): "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["cpu_us_per_example"].items() if v)
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
