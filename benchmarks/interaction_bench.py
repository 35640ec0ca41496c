"""The DLRM's interaction ``[x, dots of all vector pairs]``, forward + backward, three ways side by side (CPU).

All three take F vectors ``[B, d]`` (the bottom MLP's output and the slots' pooled vectors, as the DLRM gets them)
and give ``[x, dots]``:

- ``autograd``: plain PyTorch: ``torch.stack``, ``bmm(v, vᵀ)`` at the strict upper triangle, ``torch.cat``, all
  differentiated by autograd (two bmms and an add backward);
- ``bmm``: :func:`hier_ps.models.layers.pairwise_dots` between the same stack and cat (one gather and one bmm
  backward): what the DLRM runs on CUDA, in float64, or with ``HIER_PS_KERNELS=torch``;
- ``C``: :func:`hier_ps.models.layers.dot_interaction`, the C kernels (``cpu_kernels/interaction.c``): what the DLRM
  runs on the CPU in float32.

The three alternate ``--rounds`` times in one process; each round times ``--steps`` forward + backward passes of
each.

Usage: ``python benchmarks/interaction_bench.py [--threads 1] [--batch 4096] [--vectors 27] [--dim 16]``; prints ms
per forward + backward for each round and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from hier_ps.hbm import cpu_kernels
from hier_ps.models.layers import dot_interaction, pairwise_dots


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

    def autograd(vs: list[torch.Tensor]) -> torch.Tensor:
        v = torch.stack(vs, dim=1)
        return torch.cat([vs[0], torch.bmm(v, v.transpose(1, 2)).flatten(1).index_select(1, flat)], dim=1)

    def bmm(vs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([vs[0], pairwise_dots(torch.stack(vs, dim=1), iu)], dim=1)

    def c(vs: list[torch.Tensor]) -> torch.Tensor:
        return dot_interaction(vs, iu, keep_first=True)

    sides: dict[str, Callable[[list[torch.Tensor]], torch.Tensor]] = {"autograd": autograd, "bmm": bmm}
    if cpu_kernels.optional() is not None:
        sides["C"] = c
    else:
        print("no C kernels here (no compiler, or HIER_PS_KERNELS=torch): autograd and bmm only")

    g = torch.Generator().manual_seed(0)
    whole = torch.randn(f * args.batch, args.dim, generator=g)  # one block per vector, as the pooled output is
    vs = [t.requires_grad_(True) for t in (whole[i * args.batch : (i + 1) * args.batch].clone() for i in range(f))]
    w = torch.randn(args.batch, args.dim + iu.shape[1], generator=g)

    def ms(fn: Callable[[list[torch.Tensor]], torch.Tensor]) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            for v in vs:
                v.grad = None
            (fn(vs) * w).sum().backward()
        return (time.perf_counter() - t0) / args.steps * 1e3

    for fn in sides.values():  # warm-up
        ms(fn)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, fn in sides.items():
            times[name].append(ms(fn))
        print(f"round {r}: " + ", ".join(f"{name} {t[-1]:.2f} ms" for name, t in times.items()))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"B {args.batch}, F {f}, d {args.dim}, {args.threads} thread(s), medians: "
        + ", ".join(f"{name} {m:.2f} ms" for name, m in med.items())
        + "; "
        + ", ".join(f"autograd / {name} {med['autograd'] / med[name]:.2f}x" for name in med if name != "autograd")
    )


if __name__ == "__main__":
    main()
