"""The HBM tier's fused kernels on one GPU, side by side with the GPU's copy bandwidth and with stock PyTorch.

Rows (issue 5's targets):
- ``copy``: device-to-device copy bandwidth of this GPU (bytes read + written per second), the yardstick.
- ``fused``: one training step of the sparse part with hier_ps's kernels: pooled lookup of all slots of a batch
  (one call), then the backward fused with the optimizer (one call: deterministic segment sums of duplicate keys,
  one row-wise Adagrad update per unique row). Effective bandwidth = bytes of rows, state, gradients and indices
  read and written, over the step time; target >= 0.6x ``copy``.
- ``twins``: the same step with the pure-torch twins on the same GPU (``embedding_bag``, sort, segment sums).
- ``torch``: ``nn.EmbeddingBag(sparse=True)`` + ``torch.optim.Adagrad`` (the closest stock sparse optimizer; it
  is per-element Adagrad, a little more state traffic than row-wise) on the same batches; target: ``fused`` >= 3x
  faster.
- ``fbgemm``: FBGEMM's ``SplitTableBatchedEmbeddingBagsCodegen`` with fused EXACT_ROWWISE_ADAGRAD on the GPU, when a
  CUDA fbgemm-gpu is installed (else the line says why not); target: ``fused`` >= 1.0x.
- ``--e2e``: the demo DLRM through ``hp.Trainer`` on the GPU at batch 8192: examples/s with ``store.hbm_bytes``
  under the model size (many passes) vs unlimited (target ratio >= 0.8).

The sides run interleaved (round after round), so drifts hit all alike. The gradient fed backward is a fixed random
tensor (no dense model): these rows time the embedding part alone.

Usage: ``python benchmarks/kernel_bench.py [--rows 4000000] [--dim 128] [--slots 26] [--batch 8192] [--hot 1]
[--dtype fp32] [--rounds 20] [--e2e]``. On a machine without CUDA it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 10) -> float:
    """Bytes read + written per second by a device-to-device copy of `nbytes`."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    t = min(_timed(lambda: b.copy_(a)) for _ in range(reps))
    return 2 * nbytes / t


def make_batch(args: argparse.Namespace, rng: np.random.Generator) -> dict:
    """One table-batched batch: `slots` slots of `hot` keys each over one table of `rows` rows (Zipf-ish keys)."""
    n_bags = args.slots * args.batch
    lengths = np.full(n_bags, args.hot, np.int64)
    nnz = int(lengths.sum())
    rows = (rng.zipf(1.2, nnz) - 1) % args.rows  # skewed: duplicates and very hot keys, as in ads data
    offsets = np.zeros(n_bags + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    urows, inv = np.unique(rows, return_inverse=True)
    dev = "cuda"
    t = {k: torch.from_numpy(v).to(dev) for k, v in dict(rows=rows, offsets=offsets, urows=urows).items()}
    t["inv"] = torch.from_numpy(inv.reshape(-1)).to(dev)
    t["lengths"] = torch.from_numpy(lengths).to(dev)
    t["grad"] = torch.randn(n_bags, args.dim, device=dev)
    return t


def segments(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Occurrence bags sorted by unique row (stable) and their CSR, as BatchLookup builds them each step."""
    inv = b["inv"]
    bag = torch.repeat_interleave(torch.arange(len(b["lengths"]), device=inv.device), b["lengths"])
    order = torch.sort(inv, stable=True).indices
    seg = torch.zeros(len(b["urows"]) + 1, dtype=torch.int64, device=inv.device)
    torch.cumsum(torch.bincount(inv, minlength=len(b["urows"])), 0, out=seg[1:])
    return bag[order], seg


def step_bytes(b: dict, dim: int, elem: int) -> int:
    """Bytes a fused step moves: forward rows read + pooled written; backward gradients read per occurrence, unique
    rows and row-wise state read and written; the index arrays."""
    nnz, bags, u = len(b["rows"]), len(b["offsets"]) - 1, len(b["urows"])
    fwd = nnz * dim * elem + bags * dim * 4 + (nnz + bags + 1) * 8
    bwd = nnz * dim * 4 + u * (2 * dim * elem + 2 * 4) + (2 * nnz + 2 * u + 1) * 8
    return fwd + bwd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--slots", type=int, default=26)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--hot", type=int, default=1, help="keys per slot and example")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--e2e", action="store_true", help="also the end-to-end demo DLRM (HBM budget vs fitting)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernel_bench: needs a CUDA device (none found); nothing measured")
        return 0

    from hier_ps.config import SparseOptimizerConfig
    from hier_ps.hbm.kernels import CudaKernels, TorchTwins
    from hier_ps.hbm.optimizers import make_sparse_optimizer

    gpu = torch.cuda.get_device_name()
    dtype = DTYPES[args.dtype]
    rng = np.random.default_rng(0)
    kern, twins = CudaKernels(), TorchTwins()
    ocfg = SparseOptimizerConfig(name="rowwise_adagrad", lr=0.05, eps=1e-8)
    opt = make_sparse_optimizer(ocfg)
    emb = (torch.randn(args.rows, args.dim, device="cuda") * 0.01).to(dtype)
    state = torch.zeros(args.rows, 1, device="cuda")
    batches = [make_batch(args, rng) for _ in range(4)]

    def ours(impl):
        def run(b):
            impl.pooled(emb, b["rows"], b["offsets"], None)
            bags, seg = segments(b)  # timed: the sort is part of every step
            impl.backward_update(opt, emb, state, b["urows"], seg, bags, b["grad"], None)

        return run

    bag_mod = torch.nn.EmbeddingBag(args.rows, args.dim, mode="sum", sparse=True).cuda()
    torch_opt = torch.optim.Adagrad(bag_mod.parameters(), lr=0.05)

    def stock(b):
        out = F.embedding_bag(
            b["rows"], bag_mod.weight, b["offsets"], mode="sum", sparse=True, include_last_offset=True
        )
        torch_opt.zero_grad(set_to_none=True)
        out.backward(b["grad"])
        torch_opt.step()

    sides = {"fused": ours(kern), "twins": ours(twins), "torch": stock}
    fb = _fbgemm(args, batches)
    if isinstance(fb, str):
        fb_note = fb
    else:
        sides["fbgemm"], fb_note = fb, ""
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds + 2):  # two warm-up rounds (compilation, allocator)
        for name, fn in sides.items():
            b = batches[r % len(batches)]
            t = _timed(lambda fn=fn, b=b: fn(b))
            if r >= 2:
                times[name].append(t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    copy_bw = copy_bandwidth()
    nbytes = float(np.mean([step_bytes(b, args.dim, emb.element_size()) for b in batches]))
    res = {
        "gpu": gpu,
        "args": vars(args),
        "copy_GBps": copy_bw / 1e9,
        "step_ms": {k: v * 1e3 for k, v in med.items()},
        "fused_GBps": nbytes / med["fused"] / 1e9,
        "fused_vs_copy": nbytes / med["fused"] / copy_bw,
        "torch_over_fused": med["torch"] / med["fused"],
        "twins_over_fused": med["twins"] / med["fused"],
        "fbgemm_over_fused": med["fbgemm"] / med["fused"] if "fbgemm" in med else None,
        "fbgemm_note": fb_note,
        "unique_per_batch": float(np.mean([len(b["urows"]) for b in batches])),
    }
    print(f"GPU: {gpu}; table {args.rows} x {args.dim} {args.dtype}, {args.slots} slots x batch {args.batch}")
    print(f"copy bandwidth           {res['copy_GBps']:8.1f} GB/s")
    print(
        f"fused step               {res['step_ms']['fused']:8.3f} ms  {res['fused_GBps']:7.1f} GB/s "
        f"= {res['fused_vs_copy']:.2f}x copy (target >= 0.6)"
    )
    print(f"torch twins step         {res['step_ms']['twins']:8.3f} ms  ({res['twins_over_fused']:.2f}x fused)")
    print(
        f"EmbeddingBag+Adagrad     {res['step_ms']['torch']:8.3f} ms  ({res['torch_over_fused']:.2f}x fused, "
        "target >= 3)"
    )
    if "fbgemm" in med:
        print(
            f"fbgemm TBE rowwise       {res['step_ms']['fbgemm']:8.3f} ms  ({res['fbgemm_over_fused']:.2f}x fused, "
            "target >= 1)"
        )
    else:
        print(f"fbgemm: not run ({fb_note})")
    if args.e2e:
        res["e2e"] = _e2e()
        print(f"e2e demo DLRM batch 8192: {json.dumps(res['e2e'])}")
    print(json.dumps(res))
    return 0


def _fbgemm(args: argparse.Namespace, batches: list[dict]):
    """FBGEMM's TBE step on the GPU, or a string saying why not."""
    try:
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            OptimType,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as e:  # not installed, or a CPU-only build
        return f"fbgemm_gpu not importable: {type(e).__name__}: {e}"
    try:
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(args.rows, args.dim, EmbeddingLocation.DEVICE, ComputeDevice.CUDA)],
            feature_table_map=[0] * args.slots,
            optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
            learning_rate=0.05,
            eps=1e-8,
            pooling_mode=PoolingMode.SUM,
        ).cuda()
    except Exception as e:
        return f"fbgemm_gpu has no usable CUDA TBE here: {type(e).__name__}: {e}"

    def run(b):
        # TBE wants feature-major bags; ours are slot-major too (bag j*B+i), the same layout.
        out = tbe(b["rows"], b["offsets"])
        out.backward(b["grad"].view(args.slots, args.batch, args.dim).permute(1, 0, 2).reshape(args.batch, -1))

    return run


def _e2e() -> dict:
    """Demo DLRM on the GPU, batch 8192: examples/s with an HBM budget below the model vs unlimited."""
    import hier_ps as hp
    from hier_ps.data import generate_synthetic

    out = {}
    with tempfile.TemporaryDirectory() as d:
        info = generate_synthetic(Path(d) / "data", preset="demo", train_rows=2_000_000, eval_rows=1000, seed=0)
        slots = [{"name": c, "pooling": "mean" if k == "multi" else "sum"} for c, k in info["sparse"].items()]
        for name, budget in (("fits", None), ("budget", "auto")):
            cfg = {
                "run": {"dir": str(Path(d) / name), "seed": 0},
                "data": {"train": str(Path(d) / "data" / "train"), "dense": info["dense"], "sparse": slots},
                "tables": [{"name": s["name"], "dim": 16} for s in slots],
                "model": {"name": "dlrm", "args": {"bottom": [64, 16], "top": [128, 64]}},
                "train": {"device": "cuda", "batch_size": 8192, "pass_examples": 2_000_000, "progress": False},
                "checkpoint": {"every_passes": 0},
            }
            if budget:  # a tenth of the model's embedding bytes: many passes, rows streamed through HBM
                cfg["train"]["pass_examples"] = "auto"
                cfg.setdefault("store", {})["hbm_bytes"] = out["fits"]["model_bytes"] // 10
            with hp.Trainer(hp.load_config(cfg)) as tr:
                t0 = time.perf_counter()
                s = tr.fit()
                wall = time.perf_counter() - t0
                mb = sum(tr.store.num_rows(t) * (sp.dim + sp.layout.state) * 4 for t, sp in tr.specs.items())
            out[name] = {"examples_per_s": s["examples"] / wall, "passes": s["passes"], "model_bytes": mb}
    out["budget_over_fits"] = out["budget"]["examples_per_s"] / out["fits"]["examples_per_s"]
    return out


if __name__ == "__main__":
    sys.exit(main())
