"""The CPU kernels (``cpu_kernels/*.c``): built on first use, called by ctypes (which releases the GIL per call).

:class:`CpuKernels` is :class:`~hier_ps.hbm.kernels.TorchTwins` with these in C, for float32 rows:

- ``backward_update`` and ``update`` (dim <= 512): one pass over the unique rows of a batch that sums each row's
  gradients and updates the row and its state in place, the rows' memory prefetched ahead. The twins run the same
  step as a dozen torch ops over ``[U, dim]`` temporaries.
- ``gather_rows``, ``scatter_rows`` and ``copy_rows`` (a pass's load and push): one prefetched pass per move, where
  the twins' ``copy_rows`` gathers into a temporary and scatters it.

Everything else (and 16-bit rows) stays with the twins. The models' DLRM interaction runs
:func:`dot_interaction` / :func:`dot_interaction_backward` (``cpu_kernels/interaction.c``) on float32 CPU vectors
(:func:`hier_ps.models.layers.dot_interaction`). Three numpy paths have C twins in the same library, with the
same results to the bit: :func:`plan_batches` (``cpu_kernels/plan.c``) and :func:`unique_inverse_counts`
(``cpu_kernels/unique.c``) for :mod:`hier_ps.plan`, and the uniform
initial rows (``cpu_kernels/rows.c``) for :mod:`hier_ps.hbm.rows`; :func:`optional` says whether they run.

The sources are compiled once per source text, flags, compiler and CPU, with ``$CC`` (else ``cc``/``gcc``/``clang``),
into ``$HIER_PS_CACHE`` (default ``~/.cache/hier_ps``) as ``cpu_kernels-<hash>.so``. Where no compiler works,
:func:`load` raises, and the loader (:func:`hier_ps.hbm.kernels.kernels_for`) uses the twins and logs why.

Example:
    >>> import torch
    >>> from hier_ps.config import SparseOptimizerConfig
    >>> from hier_ps.hbm.optimizers import make_sparse_optimizer
    >>> emb, state = torch.ones(3, 2), torch.zeros(3, 0)
    >>> sgd = make_sparse_optimizer(SparseOptimizerConfig(name="sgd", lr=0.5))
    >>> CpuKernels().update(sgd, emb, state, torch.tensor([2]), torch.tensor([[1.0, -1.0]]))
    >>> emb.tolist()
    [[1.0, 1.0], [1.0, 1.0], [0.5, 1.5]]
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hier_ps.hbm.kernels import TorchTwins
from hier_ps.hbm.optimizers import SparseOptimizer

__all__ = [
    "BatchAssembler",
    "CpuKernels",
    "dot_interaction",
    "dot_interaction_backward",
    "interaction_fits",
    "load",
    "optional",
    "plan_batches",
    "unique_inverse_counts",
]

_CHECKOUT_SRC = Path(__file__).resolve().parents[2] / "cpu_kernels"
# A checkout (or editable install) reads the sources where they are; an installed wheel carries them in the package.
_SRC_DIR = _CHECKOUT_SRC if _CHECKOUT_SRC.is_dir() else Path(__file__).resolve().parents[1] / "cpu_kernels"
_SOURCES = ("embedding.c", "plan.c", "unique.c", "rows.c", "interaction.c", "batch.c")  # one library
_HEADERS = ("parallel.h",)  # included by the sources: part of the cache key
# No fused multiply-adds, as the twins and the CUDA kernels (--fmad=false): gcc's -std=c11 (not gnu11) implies
# -ffp-contract=off, clang's does not.
_FLAGS = ("-O3", "-march=native", "-std=c11", "-ffp-contract=off", "-shared", "-fPIC", "-pthread")
_OPTS = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2, "adam": 3, "ftrl": 4}
_MAX_DIM = 512  # MAXD in embedding.c
log = logging.getLogger(__name__)
_LIB: ctypes.CDLL | None = None
_LOCK = threading.Lock()  # one build per process, when several threads first need the library at once


class _Hyper(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_float) for n in ("lr", "eps", "beta1", "beta2", "alpha", "beta", "l1", "l2", "omb1", "omb2")
    ]


def _compiler() -> str:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise RuntimeError("no C compiler (set CC, or install gcc)")


def _cpu_id() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({x for x in lines if x.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get("HIER_PS_CACHE") or Path.home() / ".cache" / "hier_ps")


def load() -> ctypes.CDLL:
    """The built kernel library: compiled on first use (about a second), then read from the cache.

    Raises:
        RuntimeError: no compiler, an unwritable cache, or a source that does not compile (the message has the
            compiler's first line).
    """
    with _LOCK:
        if _LIB is None:
            _build_and_load()
        assert _LIB is not None
        return _LIB


def _build_and_load() -> None:
    """Builds the library unless the cache has it, loads it and declares its functions' types (under _LOCK)."""
    global _LIB
    cc = _compiler()
    paths = [_SRC_DIR / name for name in _SOURCES]
    srcs = [p.read_bytes() for p in [*paths, *(_SRC_DIR / name for name in _HEADERS)]]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(b"\0".join([*srcs, " ".join(_FLAGS).encode(), version.encode(), _cpu_id().encode()]))
    out = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if not out.is_file():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=out.stem, suffix=".so.tmp", dir=out.parent)
        except OSError as e:
            raise RuntimeError(f"cannot write the kernel cache {out.parent} (set HIER_PS_CACHE): {e}") from e
        os.close(fd)
        try:
            done = subprocess.run(
                [cc, *_FLAGS, "-o", tmp, *map(str, paths), "-lm"], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
                raise RuntimeError(f"{cc} could not build {' + '.join(_SOURCES)}: {first}")
            os.replace(tmp, out)  # whole or not at all: another process may be loading it
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(out))
    fn = lib.backward_update_fp32
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [ctypes.c_int, p, p, ctypes.c_int, p, i64, p, p, p, p, ctypes.c_int, ctypes.POINTER(_Hyper)]
    fn.argtypes += [ctypes.c_int]
    fn.restype = ctypes.c_int
    lib.move_rows_fp32.argtypes = [p, p, i64, p, p, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.move_rows_fp32.restype = ctypes.c_int
    lib.plan_batches.argtypes = [p, p, i64, i64, i64, i64, p, ctypes.c_int, p, p, p, p, p, p, p]
    lib.plan_batches.restype = i64
    lib.batch_lookup.argtypes = [ctypes.c_int, p, p, p, p, i64, i64, p, p, p, ctypes.c_int, i64, *[p] * 12]
    lib.batch_lookup.restype = None
    lib.unique_inverse_counts_u64.argtypes = [p, i64, i64, p, p, p]
    lib.unique_inverse_counts_u64.restype = i64
    lib.init_uniform_fp32.argtypes = [ctypes.c_uint64, p, i64, ctypes.c_int, ctypes.c_int, ctypes.c_double, p, i64]
    lib.init_uniform_fp32.restype = None
    sizes = [p, p, ctypes.c_int, ctypes.c_int, i64, ctypes.c_int]  # vectors, strides, F, d, batch, keep_first
    lib.dot_interaction_fwd_fp32.argtypes = [*sizes, p, i64, ctypes.c_int]
    lib.dot_interaction_bwd_fp32.argtypes = [*sizes, p, i64, p, ctypes.c_int]
    lib.dot_interaction_fwd_fp32.restype = lib.dot_interaction_bwd_fp32.restype = ctypes.c_int
    _LIB = lib


_OPTIONAL: Any = False  # not decided yet


def optional() -> ctypes.CDLL | None:
    """The library for the paths that have a C twin (planning, initial rows, the DLRM interaction), or None:
    ``HIER_PS_KERNELS=torch`` or no library could be built (logged once). Decided once per process."""
    global _OPTIONAL
    if _OPTIONAL is False:
        lib = None
        if os.environ.get("HIER_PS_KERNELS", "").lower() != "torch":
            try:
                lib = load()
            except Exception as e:  # no compiler, a compile error: the numpy paths compute the same
                log.info(
                    "cpu kernels: numpy paths (%s: %s)", type(e).__name__, str(e).splitlines()[0] if str(e) else ""
                )
        _OPTIONAL = lib
    return _OPTIONAL


def plan_batches(loc: np.ndarray, offsets: list[np.ndarray], batch_size: int, n_rows: int) -> dict[str, np.ndarray]:
    """One table's per-batch plan in C (``cpu_kernels/plan.c``): the PassPlan fields ``urow_offsets``, ``urows``,
    ``urow_counts``, ``occ_offsets``, ``sorted_slot``, ``sorted_example`` and the positions ``rel`` (int64[n]) of
    each occurrence among its batch's unique rows, exactly as :func:`hier_ps.plan._plan_table` computes them.

    The occurrences are read as a pass's chunk holds them, without per-occurrence batch or example arrays.

    Args:
        loc: int64[n] each occurrence's row in [0, n_rows), the table's slots' occurrences concatenated in slot order.
        offsets: each of the table's slots' CSR offsets (int64[examples+1]), in slot order.
        batch_size: batch b is examples [b * batch_size, (b + 1) * batch_size).
        n_rows: rows of the working set.

    Raises:
        RuntimeError: the library cannot be built (:func:`load`).
        MemoryError: the kernel's scratch (6 int64 per occurrence of the largest batch) could not be allocated.
        ValueError: `loc` is not as long as the slots' occurrences, or the slots' offsets differ in length.
    """
    offsets = [np.ascontiguousarray(o, np.int64) for o in offsets]
    n_examples = len(offsets[0]) - 1
    n_batches = -(-n_examples // batch_size)
    bounds = np.cumsum([0, *(int(o[-1] - o[0]) for o in offsets)], dtype=np.int64)
    n = int(bounds[-1])
    loc = np.ascontiguousarray(loc, np.int64)
    if len(loc) != n or any(len(o) != n_examples + 1 for o in offsets):
        raise ValueError(f"plan_batches: {len(loc)} rows for {n} occurrences, or slots of unequal lengths")
    ptrs = (ctypes.c_void_p * len(offsets))(*(o.ctypes.data for o in offsets))
    out = {
        "urow_offsets": np.empty(n_batches + 1, np.int64),
        "urows": np.empty(n, np.int64),
        "urow_counts": np.empty(n, np.int64),
        "occ_offsets": np.empty(n_batches + 1, np.int64),
        "sorted_slot": np.empty(n, np.int16),
        "sorted_example": np.empty(n, np.int32),
        "rel": np.empty(n, np.int64),
    }
    args = [loc.ctypes.data, ctypes.cast(ptrs, ctypes.c_void_p), n_examples, batch_size, max(n_rows, 1), n_batches]
    args += [bounds.ctypes.data, len(offsets)] + [out[k].ctypes.data for k in out]
    pairs = load().plan_batches(*args)
    if pairs < 0:
        raise MemoryError(f"plan_batches: out of memory for {n} occurrences")
    out["urows"], out["urow_counts"] = out["urows"][:pairs].copy(), out["urow_counts"][:pairs].copy()
    return out


class BatchAssembler:
    """One group's per-batch lookup arrays in C (``cpu_kernels/batch.c``), straight from a pass plan's arrays: the
    arrays :class:`hier_ps.hbm.batched.BatchLookup` builds with numpy from ``PassPlan.batch(i)``, in one call per
    batch instead of a view and a few numpy calls per slot and table.

    Args:
        slots: the part's slots, in part order: (the pass's CSR offsets int64[examples+1], the slot's local rows
            int64[nnz], its table's first row in the group, mean-pooled).
        tables: the group's training tables, in group order: (PassPlan's urow_offsets, urows, urow_counts,
            occ_offsets, sorted_slot, sorted_example of the table, its first row in the group, the part position of
            each of the table's slots).
        batch_size: examples per batch.
        n_examples: examples of the pass.

    Raises:
        RuntimeError: the library cannot be built (:func:`load`).
    """

    def __init__(
        self,
        slots: list[tuple[np.ndarray, np.ndarray, int, bool]],
        tables: list[tuple[np.ndarray, ...]],
        batch_size: int,
        n_examples: int,
    ) -> None:
        self._lib = load()
        i64 = np.int64
        self._off = [np.ascontiguousarray(o, i64) for o, _, _, _ in slots]
        self._loc = [np.ascontiguousarray(loc, i64) for _, loc, _, _ in slots]
        self._base = np.array([b for _, _, b, _ in slots], i64)
        self._mean = np.array([m for _, _, _, m in slots], np.uint8)
        kinds = (i64, i64, i64, i64, np.int16, np.int32)
        self._tab = [[np.ascontiguousarray(t[f], kinds[f]) for t in tables] for f in range(6)]
        self._tbase = np.array([t[6] for t in tables], i64)
        self._first = np.concatenate([np.asarray(t[7], i64) for t in tables] or [np.zeros(0, i64)])
        self._fstart = np.cumsum([0, *(len(t[7]) for t in tables)], dtype=i64)[:-1].copy()
        self._ptrs = [self._pointers(a) for a in (self._off, self._loc, *self._tab)]
        # The addresses every call passes, taken once (the arrays above keep them valid)
        ptr = [a.ctypes.data for a in self._ptrs]
        self._slot_args = (len(self._off), ptr[0], ptr[1], self._base.ctypes.data, self._mean.ctypes.data)
        self._table_args = (*ptr[2:], self._tbase.ctypes.data, self._first.ctypes.data, self._fstart.ctypes.data)
        self._has_mean = bool(self._mean.any())
        self.batch_size, self.n_examples = batch_size, n_examples
        # Per batch: its occurrences (rows, bags) and its unique rows, from the CSR bounds of all batches at once.
        n_batches = -(-n_examples // batch_size)
        bounds = np.minimum(np.arange(n_batches + 1, dtype=i64) * batch_size, n_examples)
        self._nnz = sum((np.diff(o[bounds]) for o in self._off), np.zeros(n_batches, i64))
        self._n_urows = sum((np.diff(uo) for uo in self._tab[0]), np.zeros(n_batches, i64))
        self._n_bags = sum((np.diff(oo) for oo in self._tab[3]), np.zeros(n_batches, i64))

    @staticmethod
    def _pointers(arrays: list[np.ndarray]) -> np.ndarray:
        return np.array([a.ctypes.data for a in arrays] or [0], np.uintp)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        """Batch i's arrays: rows int64[nnz], offsets int64[k*B+1], div float32[k*B] (only with mean slots), urows
        int64[U], bags int64[occ], seg int64[U+1] (see ``BatchLookup._part``)."""
        x0 = i * self.batch_size
        nb = min(self.batch_size, self.n_examples - x0)
        k = self._slot_args[0]
        out = {
            "rows": np.empty(self._nnz[i], np.int64),
            "offsets": np.empty(k * nb + 1, np.int64),
            "div": np.empty(k * nb, np.float32) if self._has_mean else None,
            "urows": np.empty(self._n_urows[i], np.int64),
            "bags": np.empty(self._n_bags[i], np.int64),
            "seg": np.empty(self._n_urows[i] + 1, np.int64),
        }
        self._lib.batch_lookup(
            *self._slot_args, x0, nb, out["rows"].ctypes.data, out["offsets"].ctypes.data, _ptr_np(out["div"]),
            len(self._tbase), i, *self._table_args,
            out["urows"].ctypes.data, out["bags"].ctypes.data, out["seg"].ctypes.data,
        )  # fmt: skip
        return out


def _ptr_np(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def unique_inverse_counts(
    keys: np.ndarray, max_distinct: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``np.unique(keys, return_inverse=True, return_counts=True)`` of uint64[n] keys in C (``cpu_kernels/unique.c``:
    a hash table over the occurrences, a radix sort of the distinct keys only): (uniq uint64[m] ascending, inverse
    int64[n], counts int64[m]), numpy's arrays exactly; None as soon as more than `max_distinct` distinct keys turn
    up (there a sort of all keys is faster: the caller's).

    Raises:
        RuntimeError: the library cannot be built (:func:`load`).
        MemoryError: the kernel's temporaries could not be allocated.
    """
    keys = np.ascontiguousarray(keys, np.uint64).reshape(-1)
    n = len(keys)
    cap = n if max_distinct is None else max_distinct
    uniq, inverse, counts = np.empty(n, np.uint64), np.empty(n, np.int64), np.empty(n, np.int64)
    args = (keys.ctypes.data, n, cap, uniq.ctypes.data, inverse.ctypes.data, counts.ctypes.data)
    m = load().unique_inverse_counts_u64(*args)
    if m == -2:
        return None
    if m < 0:
        raise MemoryError(f"unique_inverse_counts: out of memory for {n} keys")
    return uniq[:m].copy(), inverse, counts[:m].copy()


def interaction_fits(vecs: list[torch.Tensor]) -> bool:
    """Whether :func:`dot_interaction` takes these vectors: at least two float32 CPU ``[B, d]`` tensors of one shape
    with unit column stride."""
    if len(vecs) < 2:
        return False
    shape = vecs[0].shape
    return all(
        v.device.type == "cpu" and v.dtype == torch.float32 and v.dim() == 2 and v.shape == shape and v.stride(1) == 1
        for v in vecs
    )


def _vector_args(vecs: list[torch.Tensor]) -> tuple[Any, np.ndarray]:
    """The vectors' data pointers (a C array) and row strides in floats (int64, kept alive by the caller)."""
    ptrs = (ctypes.c_void_p * len(vecs))(*(v.data_ptr() for v in vecs))
    return ptrs, np.array([v.stride(0) for v in vecs], np.int64)


def dot_interaction(vecs: list[torch.Tensor], keep_first: bool) -> torch.Tensor:
    """``[v_0 if keep_first, <v_i, v_j> for i < j in triu order]`` per example, float32[B, keep_first * d + pairs]
    (``cpu_kernels/interaction.c``), for vectors that :func:`interaction_fits`.

    Raises:
        RuntimeError: the library cannot be built (:func:`load`).
        MemoryError: a thread's scratch could not be allocated.
    """
    b, d = vecs[0].shape
    f = len(vecs)
    z = torch.empty(b, (d if keep_first else 0) + f * (f - 1) // 2)
    ptrs, strides = _vector_args(vecs)
    rc = load().dot_interaction_fwd_fp32(
        ptrs, strides.ctypes.data, f, d, b, int(keep_first), z.data_ptr(), z.stride(0), torch.get_num_threads()
    )
    _check(rc, "dot_interaction_fwd_fp32")
    return z


def dot_interaction_backward(vecs: list[torch.Tensor], gz: torch.Tensor, keep_first: bool) -> torch.Tensor:
    """The vectors' gradients, float32[F, B, d], from ``gz`` (laid out as :func:`dot_interaction`'s output)."""
    b, d = vecs[0].shape
    f = len(vecs)
    gz = gz.to(torch.float32)
    if gz.stride(1) != 1:
        gz = gz.contiguous()
    gv = torch.empty(f, b, d)
    ptrs, strides = _vector_args(vecs)
    rc = load().dot_interaction_bwd_fp32(
        ptrs,
        strides.ctypes.data,
        f,
        d,
        b,
        int(keep_first),
        gz.data_ptr(),
        gz.stride(0),
        gv.data_ptr(),
        torch.get_num_threads(),
    )
    _check(rc, "dot_interaction_bwd_fp32")
    return gv


def _check(rc: int, name: str) -> None:
    if rc == -1:
        raise MemoryError(f"{name}: out of memory for a thread's scratch")
    if rc != 0:  # interaction_fits rules this out; a mismatch of source and loader would land here
        raise RuntimeError(f"cpu kernel {name} refused its sizes (rc {rc})")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _fits(emb: torch.Tensor, state: torch.Tensor) -> bool:
    """Whether the C kernel takes these rows: float32 on the CPU, dim <= 512, row-major storage and state."""
    return (
        emb.device.type == "cpu"
        and emb.dtype == torch.float32
        and state.dtype == torch.float32
        and emb.shape[1] <= _MAX_DIM
        and emb.is_contiguous()
        and state.is_contiguous()
    )


def _movable(*ts: torch.Tensor) -> bool:
    """Whether the C row move takes these: float32 CPU matrices whose rows' columns are adjacent (rows may be
    strided, e.g. the embedding columns of packed rows)."""
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] <= 1)
        for t in ts
    )


class CpuKernels(TorchTwins):
    """The twins, with the fused backward + update and the row moves in C (``cpu_kernels/embedding.c``) where they
    apply.

    Raises:
        RuntimeError: from :func:`load`, when the kernel cannot be built.
    """

    name = "cpu"

    def __init__(self) -> None:
        lib = load()
        self._fn, self._move = lib.backward_update_fp32, lib.move_rows_fp32

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
        if not _fits(emb, state):
            return super().backward_update(opt, emb, state, urows, seg, bags, grad, div)
        c = opt.cfg
        alpha = c.alpha if c.alpha is not None else c.lr
        h = _Hyper(c.lr, c.eps, c.beta1, c.beta2, alpha, c.beta, c.l1, c.l2, 1.0 - c.beta1, 1.0 - c.beta2)
        # the kernel reads these as int64 / float32 arrays: each conversion is a no-op when already so
        urows, seg, bags = (t.to(torch.int64).contiguous() for t in (urows, seg, bags))
        grad = grad.to(torch.float32).contiguous()
        div = None if div is None else div.to(torch.float32).contiguous()
        st = state if state.shape[1] else torch.empty(1)  # a valid pointer the SGD kernel never reads
        rc = self._fn(
            _OPTS[opt.name],
            _ptr(emb),
            _ptr(st),
            state.shape[1],
            _ptr(urows),
            len(urows),
            _ptr(seg),
            _ptr(bags),
            _ptr(grad),
            _ptr(div),
            emb.shape[1],
            ctypes.byref(h),
            torch.get_num_threads(),
        )
        if rc != 0:  # _fits and _OPTS rule this out; a mismatch of source and loader would land here
            raise RuntimeError(f"cpu kernel backward_update_fp32 refused opt={opt.name} dim={emb.shape[1]}")
        return None

    def update(
        self, opt: SparseOptimizer, emb: torch.Tensor, state: torch.Tensor, urows: torch.Tensor, g: torch.Tensor
    ) -> None:
        if not _fits(emb, state):
            return super().update(opt, emb, state, urows, g)
        ar = torch.arange(len(urows) + 1)
        return self.backward_update(opt, emb, state, urows, ar, ar[:-1], g, None)

    def _rows(
        self, dst: torch.Tensor, dst_idx: torch.Tensor | None, src: torch.Tensor, src_idx: torch.Tensor | None, n: int
    ) -> None:
        """dst[dst_idx] = src[src_idx], n rows (a None index: the rows in order)."""
        if n == 0 or dst.shape[1] == 0:
            return
        di = None if dst_idx is None else dst_idx.to(torch.int64).contiguous()
        si = None if src_idx is None else src_idx.to(torch.int64).contiguous()
        self._move(
            _ptr(dst),
            _ptr(di),
            dst.stride(0),
            _ptr(src),
            _ptr(si),
            src.stride(0),
            n,
            dst.shape[1],
            torch.get_num_threads(),
        )

    def gather_rows(self, emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not _movable(emb):
            return super().gather_rows(emb, idx)
        out = torch.empty(len(idx), emb.shape[1])
        self._rows(out, None, emb, idx, len(idx))
        return out

    def scatter_rows(self, emb: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
        if not _movable(emb, src) or src.shape != (len(idx), emb.shape[1]):
            return super().scatter_rows(emb, idx, src)
        self._rows(emb, idx, src, None, len(idx))
        return None

    def copy_rows(self, dst: torch.Tensor, dst_idx: torch.Tensor, src: torch.Tensor, src_idx: torch.Tensor) -> None:
        if not _movable(dst, src) or dst.shape[1] != src.shape[1] or len(dst_idx) != len(src_idx):
            return super().copy_rows(dst, dst_idx, src, src_idx)
        self._rows(dst, dst_idx, src, src_idx, len(dst_idx))
        return None
