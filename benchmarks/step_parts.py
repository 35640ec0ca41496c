"""Where the train step's time goes: hier_ps's sparse parts timed one by one, over one e2e_bench-like run (CPU).

Wraps the parts of the table-batched step with timers and trains the e2e_bench DLRM (26 slots, dim 16, batch 4096,
row-wise Adagrad) once: building each batch's lookup (in C from the pass plan, or, on ranks, without the C library
and in trees before it, from ``PassPlan.batch``'s views by numpy), the pooled forward, the gradient segments, the
segment sums, the fused update (the twins' sums and update, or the C kernel's fused pass: ``HIER_PS_KERNELS=torch``
forces the twins), and the whole train stage (its remainder is the model, the loss, autograd and the dense step,
which the PyTorch baseline runs the same). Parts a tree does not have are skipped, so that the script times an older
checkout too (``PYTHONPATH=<its root>``). Run it with ``--threads 1`` to read the parts without OpenMP's spread.

Usage: ``python benchmarks/step_parts.py [--rows 200000] [--threads 1]``; prints seconds per part.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import e2e_bench  # the same config and data as e2e_bench

from hier_ps import plan, trainer
from hier_ps.data import generate_synthetic
from hier_ps.hbm import batched, cpu_kernels, kernels

PARTS = {
    "batch views (numpy)": (plan.PassPlan, "batch"),
    "lookup build (numpy)": (batched.BatchLookup, "__init__"),
    "lookup build (C)": (getattr(batched, "PassLookups", None), "lookup"),
    "pooled forward": (batched.BatchLookup, "forward"),
    "segments": (batched.BatchLookup, "_segments"),
    "segment sums": (kernels.TorchTwins, "segment_grads"),
    "update": (kernels.TorchTwins, "update"),
    "C backward+update": (cpu_kernels.CpuKernels, "backward_update"),
    "train stage (all)": (trainer.Trainer, "_train_pass"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spent = {name: 0.0 for name, (owner, _) in PARTS.items() if owner is not None}
    for name, (owner, attr) in PARTS.items():
        if owner is None:
            continue
        fn = getattr(owner, attr)

        def timed(*a, _fn=fn, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(owner, attr, functools.wraps(fn)(timed))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        info = generate_synthetic(data, preset="demo", seed=0, train_rows=args.rows, eval_rows=1000)
        cfg = e2e_bench._config(data, Path(tmp) / "run", args.rows // 4, 4096, 16, info)
        e2e_bench.run_hier_ps(cfg)
    print(f"{args.rows:,} examples, batch 4096, {args.threads} torch thread(s)")
    for name, s in spent.items():
        print(f"  {name:<22}{s:8.3f} s")


if __name__ == "__main__":
    main()
