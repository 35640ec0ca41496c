"""The HBM tier's hot paths: CUDA kernels (``cuda_kernels/*.cu``) and their pure-torch twins, behind one loader.

Every operation has two implementations with one signature: :class:`TorchTwins` (pure torch: the fallback
everywhere and the oracle of the kernel tests) and :class:`CudaKernels` (``cuda_kernels/*.cu`` compiled at run time
by CuPy through NVRTC, launched on torch's current stream on the tensors' memory, no copies). On the CPU,
:class:`~hier_ps.hbm.cpu_kernels.CpuKernels` is the twins with the fused backward + update and the row moves in C
(``cpu_kernels/embedding.c``). :func:`kernels_for` picks one per device, lazily on first use (importing this module
touches no GPU), and logs which, once: ``kernels: cuda``, ``kernels: cpu`` or ``kernels: torch twins (<reason>)``.
``HIER_PS_KERNELS=torch`` forces the twins.

Operations (rows are int64 indices into a storage ``emb T[N, dim]`` with T float32 | float16 | bfloat16):

- ``pooled(emb, rows i64[nnz], offsets i64[B+1], div f32[B] | None) -> f32[B, dim]``: per bag the sum of its rows,
  accumulated in float32, divided by ``div`` (the bag sizes, for mean pooling).
- ``backward_update(opt, emb, state f32[N, S], urows i64[U], seg i64[U+1], bags i64[nnz], grad f32[B, dim],
  div f32[B] | None)``: per unique row u, ``g = sum_j grad[bags[j]] / div[bags[j]]`` over j in ``[seg[u],
  seg[u+1])`` in order, then one optimizer update of row ``urows[u]`` (DESIGN.md contract 3) in place.
- ``update(opt, emb, state, urows, g f32[U, dim])``: the update alone, with given sums (after an all-reduce).
- ``segment_grads(grad, bags, seg, div) -> f32[U, dim]``: the sums alone.
- ``unique_keys(keys u64[n]) -> (unique u64[u] ascending, inverse i64[n])``.
- ``gather_rows(emb, idx i64[n]) -> f32[n, dim]`` and ``scatter_rows(emb, idx, src f32[n, dim])``: pass push / load;
  ``copy_rows(dst, dst_idx, src, src_idx)``: ``dst[dst_idx] = src[src_idx]`` (the rows a pass keeps from the last).

Gradients of duplicate keys are reduced deterministically everywhere: by one thread / one serial loop per output
element in a fixed order, never by float atomics.

Example:
    >>> emb = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> k = kernels_for(emb.device)
    >>> k.pooled(emb, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 3]), None).tolist()
    [[1.0, 2.0], [6.0, 8.0]]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hier_ps.hbm.optimizers import SparseOptimizer

__all__ = ["CudaKernels", "TorchTwins", "kernel_sources", "kernels_for", "unique_u64_torch"]

log = logging.getLogger(__name__)

_CHECKOUT_SRC = Path(__file__).resolve().parents[2] / "cuda_kernels"
# A checkout (or editable install) reads the sources where they are; an installed wheel carries them in the package.
_SRC_DIR = _CHECKOUT_SRC if _CHECKOUT_SRC.is_dir() else Path(__file__).resolve().parents[1] / "cuda_kernels"
_SOURCES = ("embedding.cu", "keys.cu")
_DTYPE_SUFFIX = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_MAX_DIM = 512  # 32 lanes x MAXV elements per thread in embedding.cu
_SIGN = -(2**63)


def kernel_sources() -> dict[str, str]:
    """The NVRTC sources by file name, with ``common.cuh`` inlined (NVRTC gets no include path)."""
    common = (_SRC_DIR / "common.cuh").read_text().replace("#pragma once\n", "")  # inlined: no longer a header
    return {n: (_SRC_DIR / n).read_text().replace('#include "common.cuh"', common) for n in _SOURCES}


def unique_u64_torch(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``unique_keys`` in torch ops on any device: uint64[n] -> (uint64[u] ascending, int64[n])."""
    flipped = keys.view(torch.int64) ^ _SIGN  # int64 order of the flipped keys = uint64 order of the keys
    u, inv = torch.unique(flipped, sorted=True, return_inverse=True)
    return (u ^ _SIGN).view(torch.uint64), inv


class TorchTwins:
    """Pure-torch implementations: the fallback on every device and the oracle of the CUDA and CPU kernels."""

    name = "torch twins"

    def pooled(
        self, emb: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor, div: torch.Tensor | None
    ) -> torch.Tensor:
        if emb.dtype == torch.float32:
            out = F.embedding_bag(rows, emb, offsets, mode="sum", include_last_offset=True)
        else:  # float32 accumulation of 16-bit rows
            occ = emb.index_select(0, rows).float()
            ar = torch.arange(len(rows), device=rows.device)
            out = F.embedding_bag(ar, occ, offsets, mode="sum", include_last_offset=True)
        return out if div is None else out.div_(div.unsqueeze(1))

    def segment_grads(
        self, grad: torch.Tensor, bags: torch.Tensor, seg: torch.Tensor, div: torch.Tensor | None
    ) -> torch.Tensor:
        # embedding_bag's sum reduces each segment serially in order (one bag per task on CPU, one thread per
        # element on CUDA): deterministic, and no [nnz, dim] temporary of per-occurrence gradients.
        src = grad if div is None else grad / div.unsqueeze(1)
        return F.embedding_bag(bags, src, seg, mode="sum", include_last_offset=True)

    def update(
        self, opt: SparseOptimizer, emb: torch.Tensor, state: torch.Tensor, urows: torch.Tensor, g: torch.Tensor
    ) -> None:
        w = emb.index_select(0, urows)
        if w.dtype != torch.float32:
            w = w.float()
        st = state.index_select(0, urows)
        opt.update(w, st, g)
        emb.index_copy_(0, urows, w.to(emb.dtype))
        if st.shape[1]:
            state.index_copy_(0, urows, st)

    def backward_update(
        self,
        opt: SparseOptimizer,
        emb: torch.Tensor,
        state: torch.Tensor,
        urows: torch.Tensor,
        seg: torch.Tensor,
        bags: torch.Tensor,
        grad: torch.Tensor,
        div: torch.Tensor | None,
    ) -> None:
        self.update(opt, emb, state, urows, self.segment_grads(grad, bags, seg, div))

    def unique_keys(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if keys.device.type == "cpu":
            u, inv = np.unique(keys.numpy(), return_inverse=True)
            return torch.from_numpy(u), torch.from_numpy(inv.reshape(-1).astype(np.int64))
        return unique_u64_torch(keys)

    def gather_rows(self, emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return emb.index_select(0, idx).float()

    def scatter_rows(self, emb: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
        emb.index_copy_(0, idx, src.to(emb.dtype))

    def copy_rows(self, dst: torch.Tensor, dst_idx: torch.Tensor, src: torch.Tensor, src_idx: torch.Tensor) -> None:
        self.scatter_rows(dst, dst_idx, self.gather_rows(src, src_idx))


def _i64(t: torch.Tensor) -> torch.Tensor:
    """An index tensor as the kernels read it: int64, contiguous (a no-op when it already is)."""
    return t.to(torch.int64).contiguous()


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient or divisor tensor as the kernels read it: float32, contiguous (a no-op when it already is)."""
    return None if t is None else t.to(torch.float32).contiguous()


def _block(dim: int) -> tuple[int, int]:
    """(threads per row, rows per block): a power of two <= 32 lanes per row, 256 threads per block."""
    x = 1
    while x < min(dim, 32):
        x *= 2
    return x, 256 // x


class CudaKernels(TorchTwins):
    """The ``cuda_kernels/*.cu`` kernels, compiled by CuPy/NVRTC; falls back to the twin where a kernel does not
    apply (dim > 512, tensors on another device)."""

    name = "cuda"

    def __init__(self) -> None:
        import cupy  # only on CUDA machines, only when first used

        self._cp = cupy
        self._streams: dict[tuple[int, int | None], Any] = {}
        src = kernel_sources()
        self._mods = {n: cupy.RawModule(code=s, options=("--std=c++17", "--fmad=false")) for n, s in src.items()}
        for m in self._mods.values():
            m.compile()  # compile now, so a broken toolchain is found once, here, not mid-pass

    def _fn(self, mod: str, name: str) -> Any:
        return self._mods[mod].get_function(name)

    def _launch(self, mod: str, name: str, grid: int, block: tuple[int, int], args: tuple) -> None:
        cp = self._cp
        dev = next(a.device for a in args if isinstance(a, torch.Tensor))
        devices = {str(a.device) for a in args if isinstance(a, torch.Tensor)}
        if len(devices) > 1:  # a raw pointer into another device's memory would be read as if it were this one's
            raise ValueError(f"kernel {name}: tensors on several devices ({', '.join(sorted(devices))})")
        ptr = torch.cuda.current_stream(dev).cuda_stream
        key = (ptr, dev.index)  # the default stream is 0 on every device
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = cp.cuda.ExternalStream(ptr, dev.index)
        conv = tuple(cp.uint64(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args)
        # CuPy's current device is its own (default 0), not torch's: launch on the tensors' device, one rank per GPU
        with cp.cuda.Device(dev.index), stream:
            self._fn(mod, name)((max(grid, 1),), block, conv)

    def pooled(
        self, emb: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor, div: torch.Tensor | None
    ) -> torch.Tensor:
        dim, n_bags = emb.shape[1], len(offsets) - 1
        out = torch.empty(n_bags, dim, dtype=torch.float32, device=emb.device)
        if n_bags == 0:
            return out
        bx, by = _block(dim)
        rows, offsets, div = _i64(rows), _i64(offsets), _f32(div)
        args = (emb, rows, offsets, self._cp.uint64(0) if div is None else div, np.int64(n_bags), np.int32(dim), out)
        self._launch("embedding.cu", f"pooled_forward_{_DTYPE_SUFFIX[emb.dtype]}", -(-n_bags // by), (bx, by), args)
        return out

    def backward_update(
        self,
        opt: SparseOptimizer,
        emb: torch.Tensor,
        state: torch.Tensor,
        urows: torch.Tensor,
        seg: torch.Tensor,
        bags: torch.Tensor,
        grad: torch.Tensor,
        div: torch.Tensor | None,
    ) -> None:
        dim, n = emb.shape[1], len(urows)
        if dim > _MAX_DIM or not emb.is_contiguous() or not state.is_contiguous():
            # The twins' steps by name: TorchTwins.backward_update calls self.update, which is ours and comes back.
            g = TorchTwins.segment_grads(self, grad, bags, seg, div)
            return TorchTwins.update(self, opt, emb, state, urows, g)
        if n == 0:
            return None
        if state.dtype != torch.float32:
            raise TypeError(f"optimizer state must be float32, got {state.dtype}")
        div = _f32(div)
        c = opt.cfg
        alpha = c.alpha if c.alpha is not None else c.lr
        hyper = [
            np.float32(x)
            for x in (c.lr, c.eps, c.beta1, c.beta2, alpha, c.beta, c.l1, c.l2, 1.0 - c.beta1, 1.0 - c.beta2)
        ]
        bx, by = _block(dim)
        st_w = state.shape[1]
        st = state if st_w else torch.empty(1, device=emb.device)  # a valid pointer the SGD kernel never reads
        args = (
            emb,
            st,
            np.int32(st_w),
            _i64(urows),
            np.int64(n),
            _i64(seg),
            _i64(bags),
            _f32(grad),
            self._cp.uint64(0) if div is None else div,
            np.int32(dim),
            *hyper,
        )
        self._launch("embedding.cu", f"backward_{opt.name}_{_DTYPE_SUFFIX[emb.dtype]}", -(-n // by), (bx, by), args)
        return None

    def update(
        self, opt: SparseOptimizer, emb: torch.Tensor, state: torch.Tensor, urows: torch.Tensor, g: torch.Tensor
    ) -> None:
        if emb.shape[1] > _MAX_DIM or not emb.is_contiguous() or not state.is_contiguous():
            return TorchTwins.update(self, opt, emb, state, urows, g)
        ar = torch.arange(len(urows) + 1, device=urows.device)
        return self.backward_update(opt, emb, state, urows, ar, ar[:-1], g, None)

    def unique_keys(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(keys)
        if keys.device.type != "cuda" or n == 0:
            return super().unique_keys(keys)
        flipped, perm = torch.sort(keys.view(torch.int64) ^ _SIGN, stable=True)
        sorted_keys = (flipped ^ _SIGN).contiguous()
        head = torch.empty(n, dtype=torch.int64, device=keys.device)
        grid = -(-n // 256)
        self._launch("keys.cu", "mark_heads", grid, (256, 1), (sorted_keys, np.int64(n), head))
        pos = torch.cumsum(head, 0)
        n_unique = int(pos[-1])
        unique = torch.empty(n_unique, dtype=torch.int64, device=keys.device)
        inverse = torch.empty(n, dtype=torch.int64, device=keys.device)
        args = (sorted_keys, perm, head, pos, np.int64(n), unique, inverse)
        self._launch("keys.cu", "write_unique", grid, (256, 1), args)
        return unique.view(torch.uint64), inverse

    def gather_rows(self, emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        n, dim = len(idx), emb.shape[1]
        out = torch.empty(n, dim, dtype=torch.float32, device=emb.device)
        if n and emb.is_contiguous():
            bx, by = _block(dim)
            args = (emb, _i64(idx), np.int64(n), np.int32(dim), out)
            self._launch("keys.cu", f"gather_rows_{_DTYPE_SUFFIX[emb.dtype]}", -(-n // by), (bx, by), args)
            return out
        return super().gather_rows(emb, idx)

    def scatter_rows(self, emb: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
        n, dim = len(idx), emb.shape[1]
        if not n:
            return
        if not emb.is_contiguous():
            return super().scatter_rows(emb, idx, src)
        bx, by = _block(dim)
        args = (emb, _i64(idx), np.int64(n), np.int32(dim), _f32(src))
        self._launch("keys.cu", f"scatter_rows_{_DTYPE_SUFFIX[emb.dtype]}", -(-n // by), (bx, by), args)


_CHOSEN: dict[str, TorchTwins] = {}


def kernels_for(device: str | torch.device) -> TorchTwins:
    """The implementation for tensors on `device`: the CUDA kernels on CUDA, the C kernel on the CPU
    (:mod:`hier_ps.hbm.cpu_kernels`), else (or when those cannot be built) the twins.

    Decided once per device type, on first use, and logged (warning level when CUDA falls back to the twins).
    """
    kind = torch.device(device).type
    if kind in _CHOSEN:
        return _CHOSEN[kind]
    impl: TorchTwins
    if kind not in ("cuda", "cpu"):
        impl, why = TorchTwins(), f"device {kind}"
    elif os.environ.get("HIER_PS_KERNELS", "").lower() == "torch":
        impl, why = TorchTwins(), "HIER_PS_KERNELS=torch"
    else:
        try:
            if kind == "cuda":
                impl, why = CudaKernels(), ""
            else:
                from hier_ps.hbm.cpu_kernels import CpuKernels  # imports this module: not at the top

                impl, why = CpuKernels(), ""
        except Exception as e:  # no cupy, no NVRTC, no C compiler, a compile error: all mean "use the twins"
            impl, why = TorchTwins(), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if why:
        (log.warning if kind == "cuda" else log.info)("kernels: torch twins (%s)", why)
    else:
        (log.warning if kind == "cuda" else log.info)("kernels: %s", impl.name)
    _CHOSEN[kind] = impl
    return impl
