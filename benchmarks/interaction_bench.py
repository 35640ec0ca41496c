"""The DLRM's pairwise dots, forward + backward: hier_ps's one-bmm backward vs autograd's own, side by side (CPU).

Both compute ``bmm(v, vᵀ)`` at the strict upper triangle's pairs; the baseline lets autograd differentiate that
(two bmms and an add), ours is :func:`hier_ps.models.layers.pairwise_dots`. The two alternate ``--rounds`` times in
one process; each round times ``--steps`` forward + backward passes of each.

Usage: ``python benchmarks/interaction_bench.py [--threads 1] [--batch 4096] [--vectors 27] [--dim 16]``; prints ms
per forward + backward for each round and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hier_ps.models.layers import pairwise_dots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--vectors", type=int, default=27)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    f = args.vectors
    iu = torch.triu_indices(f, f, offset=1)
    flat = iu[0] * f + iu[1]

    def autograd_dots(v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(v, v.transpose(1, 2)).flatten(1).index_select(1, flat)

    def ours(v: torch.Tensor) -> torch.Tensor:
        return pairwise_dots(v, iu)

    g = torch.Generator().manual_seed(0)
    v = torch.randn(args.batch, f, args.dim, generator=g, requires_grad=True)
    w = torch.randn(args.batch, iu.shape[1], generator=g)

    def ms(fn: object) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            v.grad = None
            (fn(v) * w).sum().backward()  # type: ignore[operator]
        return (time.perf_counter() - t0) / args.steps * 1e3

    ms(autograd_dots), ms(ours)  # warm-up
    base, mine = [], []
    for r in range(args.rounds):
        base.append(ms(autograd_dots))
        mine.append(ms(ours))
        print(f"round {r}: autograd {base[-1]:.2f} ms, hier_ps {mine[-1]:.2f} ms")
    print(
        f"B {args.batch}, F {f}, d {args.dim}, {args.threads} thread(s): median autograd {statistics.median(base):.2f}"
        f" ms, hier_ps {statistics.median(mine):.2f} ms, {statistics.median(base) / statistics.median(mine):.2f}x"
    )


if __name__ == "__main__":
    main()
