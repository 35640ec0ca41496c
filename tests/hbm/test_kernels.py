"""The HBM kernels: torch twins against DESIGN.md's formulas (CPU), kernel sources through nvcc (CPU, where nvcc
is installed), and the CUDA kernels against the twins (``requires_cuda``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hier_ps.config import SparseOptimizerConfig
from hier_ps.hbm import kernels as K
from hier_ps.hbm.optimizers import make_sparse_optimizer
from tests.hbm.test_optimizers import CFG, reference

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TWINS = K.TorchTwins()


def _csr(rng: np.random.Generator, n_bags: int, n_rows: int, max_len: int, hot: bool = False):
    """Random bags (some empty) over rows [0, n_rows); `hot`: most occurrences hit row 0."""
    lengths = rng.integers(0, max_len + 1, n_bags)
    lengths[: max(1, n_bags // 5)] = 0  # empty bags
    rng.shuffle(lengths)
    nnz = int(lengths.sum())
    rows = rng.integers(0, n_rows, nnz)
    if hot:
        rows[rng.random(nnz) < 0.8] = 0
    offsets = np.zeros(n_bags + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return torch.from_numpy(rows), torch.from_numpy(offsets), torch.from_numpy(lengths)


def _segments(rows: torch.Tensor, lengths: torch.Tensor):
    """(unique rows, bags of the occurrences sorted by row (stable), CSR over them) — as BatchLookup builds them."""
    urows, inv = torch.unique(rows, return_inverse=True)
    bag = torch.repeat_interleave(torch.arange(len(lengths), device=rows.device), lengths)
    order = torch.sort(inv, stable=True).indices
    seg = torch.zeros(len(urows) + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(inv, minlength=len(urows)), 0, out=seg[1:])
    return urows, bag[order], seg


# ---------------------------------------------------------------------------------------------- twins vs formulas
@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_pooled_is_the_float32_sum_of_the_stored_rows(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.normal(size=(50, 8)).astype(np.float32)).to(dtype)
    rows, offsets, lengths = _csr(rng, 40, 50, 6)
    div = lengths.clamp(min=1).float()
    stored = emb.double().numpy()
    for d in (None, div):
        out = TWINS.pooled(emb, rows, offsets, d).numpy()
        for b in range(40):
            lo, hi = int(offsets[b]), int(offsets[b + 1])
            expect = stored[rows[lo:hi].numpy()].sum(0) / (1 if d is None else max(hi - lo, 1))
            np.testing.assert_allclose(out[b], expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("mean", [False, True])
def test_twin_backward_update_sums_duplicates_then_updates_once(opt: str, mean: bool) -> None:
    """Duplicate keys (a very hot one included): one update per unique row with the sum of its occurrences'
    gradients, by DESIGN.md contract 3 (float64 reference); rows not touched stay as they were."""
    rng = np.random.default_rng(1)
    n, dim = 30, 5
    o = make_sparse_optimizer(SparseOptimizerConfig(name=opt, **CFG))
    w0 = rng.normal(size=(n, dim)).astype(np.float32)
    emb, state = torch.from_numpy(w0.copy()), torch.zeros(n, o.state_width(dim))
    rows, _, lengths = _csr(rng, 25, n, 5, hot=True)
    grad = torch.from_numpy(rng.normal(size=(25, dim)).astype(np.float32))
    div = lengths.clamp(min=1).float() if mean else None
    urows, bags, seg = _segments(rows, lengths)
    TWINS.backward_update(o, emb, state, urows, seg, bags, grad, div)

    g_occ = grad.double().numpy()[np.repeat(np.arange(25), lengths.numpy())]
    if mean:
        g_occ = g_occ / np.repeat(div.double().numpy(), lengths.numpy())[:, None]
    g = np.zeros((n, dim))
    np.add.at(g, rows.numpy(), g_occ)
    u = urows.numpy()
    expect = w0.astype(np.float64).copy()
    expect[u] = reference(opt, w0[u], [g[u]])
    np.testing.assert_allclose(emb.numpy(), expect, rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(n), u)
    assert np.array_equal(emb.numpy()[untouched], w0[untouched])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_twin_update_of_16bit_rows_computes_in_float32_and_rounds_once(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(2)
    o = make_sparse_optimizer(SparseOptimizerConfig(name="adam", **CFG))
    w = torch.from_numpy(rng.normal(size=(9, 4)).astype(np.float32)).to(dtype)
    st = torch.zeros(9, o.state_width(4))
    g = torch.from_numpy(rng.normal(size=(3, 4)).astype(np.float32))
    urows = torch.tensor([7, 0, 4])
    w32, st32 = w.float(), st.clone()
    TWINS.update(o, w, st, urows, g)
    w_ref, s_ref = w32[urows], st32[urows]
    o.update(w_ref, s_ref, g)
    assert torch.equal(w[urows], w_ref.to(dtype))
    assert torch.equal(st[urows], s_ref)  # optimizer state stays float32


def test_twin_unique_keys_orders_as_uint64_and_inverts() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64 - 1, 500, dtype=np.uint64, endpoint=True)
    keys[::3] = keys[0]
    keys[1] = np.uint64(2**63)  # sign bit set: must sort after every key below 2**63
    for k in (keys, np.zeros(0, np.uint64)):
        eu, einv = np.unique(k, return_inverse=True)
        for f in (TWINS.unique_keys, K.unique_u64_torch):  # the numpy path (CPU) and the torch path (CUDA twin)
            u, inv = f(torch.from_numpy(k))
            assert np.array_equal(u.numpy(), eu) and np.array_equal(inv.numpy(), einv.reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_twin_gather_scatter_round_trip(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(4)
    emb = torch.zeros(20, 3, dtype=dtype)
    src = torch.from_numpy(rng.normal(size=(6, 3)).astype(np.float32))
    idx = torch.tensor([19, 0, 5, 6, 11, 2])
    TWINS.scatter_rows(emb, idx, src)
    back = TWINS.gather_rows(emb, idx)
    assert back.dtype == torch.float32
    assert torch.equal(back, src.to(dtype).float())
    TWINS.scatter_rows(emb, idx, back)  # float32 values of stored rows go back to the same bits
    assert torch.equal(TWINS.gather_rows(emb, idx), back)


def test_kernels_for_cpu_is_the_twins() -> None:
    assert isinstance(K.kernels_for("cpu"), K.TorchTwins) and not isinstance(K.kernels_for("cpu"), K.CudaKernels)


def test_cuda_kernel_wrappers_hand_the_kernels_int64_indices_and_float32_values() -> None:
    """The kernels read raw pointers: the wrappers cast indices to int64 and gradients/divisors/sources to float32
    (contiguous) first, and a launch with tensors on two devices is refused. Runs on CPU with the launch recorded."""
    import types

    kernels = object.__new__(K.CudaKernels)  # no __init__: no CuPy here
    kernels._cp = types.SimpleNamespace(uint64=np.uint64)
    launched: list[tuple] = []
    kernels._launch = lambda mod, name, grid, block, args: launched.append(args)
    emb, state = torch.zeros(8, 4), torch.zeros(8, 1)
    i32 = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    kernels.pooled(emb, i32, torch.tensor([0, 1, 4], dtype=torch.int32), torch.ones(2, dtype=torch.float64))
    kernels.backward_update(
        make_sparse_optimizer(SparseOptimizerConfig(name="rowwise_adagrad", **CFG)),
        emb,
        state,
        torch.tensor([0, 2, 5], dtype=torch.int32),
        torch.tensor([0, 1, 3, 4], dtype=torch.int32),
        torch.tensor([0, 1, 1, 1], dtype=torch.int32),
        torch.ones(2, 4, dtype=torch.float64).t().contiguous().t(),  # float64 and not contiguous
        None,
    )
    kernels.gather_rows(emb, i32)
    kernels.scatter_rows(emb, i32, torch.ones(4, 4, dtype=torch.float64))
    tensors = [a for args in launched for a in args if isinstance(a, torch.Tensor) and a is not emb and a is not state]
    assert len(launched) == 4 and len(tensors) == 12  # 4 + 4 + 2 + 2: every index and value tensor
    for t in tensors:
        assert t.dtype in (torch.int64, torch.float32) and t.is_contiguous(), t.dtype
    with pytest.raises(TypeError, match="float32"):
        kernels.backward_update(
            make_sparse_optimizer(SparseOptimizerConfig(name="adagrad", **CFG)),
            emb,
            torch.zeros(8, 4, dtype=torch.float16),
            *(torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([0])),
            torch.ones(1, 4),
            None,
        )
    with pytest.raises(ValueError, match="several devices"):
        K.CudaKernels._launch(kernels, "keys.cu", "gather_rows_f32", 1, (1, 1), (emb, torch.zeros(1, device="meta")))


# ---------------------------------------------------------------------------------------------- sources compile
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_cuda_kernels_fall_back_to_the_twins_for_rows_wider_than_a_kernel_takes(opt: str) -> None:
    """dim > 512 (and non-contiguous storage) takes the twins' steps: equal to them, no recursion between the
    kernel class's update and backward_update. Runs on CPU: the fallback never touches CuPy."""
    kernels = object.__new__(K.CudaKernels)  # no __init__: no CuPy here, and the fallback must not need it
    o = make_sparse_optimizer(SparseOptimizerConfig(name=opt, **CFG))
    rng = np.random.default_rng(3)
    dim = 600
    emb = torch.from_numpy(rng.normal(size=(20, dim)).astype(np.float32))
    state = torch.from_numpy(np.abs(rng.normal(size=(20, o.state_width(dim)))).astype(np.float32))
    rows, _, lengths = _csr(rng, 12, 20, 4, hot=True)
    urows, bags, seg = _segments(rows, lengths)
    grad = torch.from_numpy(rng.normal(size=(12, dim)).astype(np.float32))
    g = torch.from_numpy(rng.normal(size=(len(urows), dim)).astype(np.float32))
    for call in ("backward_update", "update"):
        a = (emb.clone(), state.clone())
        b = (emb.clone(), state.clone())
        if call == "update":
            kernels.update(o, *a, urows, g)
            TWINS.update(o, *b, urows, g)
        else:
            kernels.backward_update(o, *a, urows, seg, bags, grad, None)
            TWINS.backward_update(o, *b, urows, seg, bags, grad, None)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), call
        assert not torch.equal(a[0], emb), call  # the update happened


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("name", sorted(K.kernel_sources()))
def test_kernel_source_compiles_with_nvcc_and_has_every_kernel_the_loader_calls(name: str, tmp_path: Path) -> None:
    """The NVRTC source as the loader hands it to CuPy (common.cuh inlined, no include path) builds for sm_90."""
    src = tmp_path / name
    src.write_text(K.kernel_sources()[name])
    ptx = tmp_path / "out.ptx"
    r = subprocess.run(
        [NVCC, "-arch=sm_90", "-std=c++17", "--ptx", str(src), "-o", str(ptx)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    text = ptx.read_text()
    entries = {m.group(1): m.group(2).count(".param") for m in re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)", text)}
    suffixes = ("fp32", "fp16", "bf16")
    want = {
        "embedding.cu": {f"pooled_forward_{s}" for s in suffixes}
        | {f"backward_{o}_{s}" for o in OPTIMIZERS for s in suffixes},
        "keys.cu": {"mark_heads", "write_unique"} | {f"{k}_rows_{s}" for k in ("gather", "scatter") for s in suffixes},
    }[name]
    assert want <= set(entries), sorted(want - set(entries))
    # Parameter counts = the argument tuples CudaKernels passes (a mismatch would read garbage on the GPU).
    n_args = {
        "pooled_forward": 7,
        "backward": 20,
        "mark_heads": 3,
        "write_unique": 7,
        "gather_rows": 5,
        "scatter_rows": 5,
    }
    for k in want:
        assert entries[k] == next(v for p, v in n_args.items() if k.startswith(p)), k


# ---------------------------------------------------------------------------------------------- kernels vs twins
@pytest.fixture(scope="module")
def cuda_kernels() -> K.CudaKernels:
    return K.CudaKernels()  # a GPU machine without cupy fails here, loudly: the kernels are what is tested


SHAPES = [(1000, 4, 300, 3, False), (5000, 16, 4096, 8, True), (300, 128, 200, 40, True), (2000, 512, 64, 5, False)]


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_pooled_matches_twin(cuda_kernels: K.CudaKernels, dtype: torch.dtype, shape: tuple) -> None:
    n, dim, bags, max_len, hot = shape
    rng = np.random.default_rng(5)
    emb = torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32)).to(dtype).cuda()
    rows, offsets, lengths = (t.cuda() for t in _csr(rng, bags, n, max_len, hot))
    for div in (None, lengths.clamp(min=1).float()):
        got = cuda_kernels.pooled(emb, rows, offsets, div)
        want = TWINS.pooled(emb.cpu(), rows.cpu(), offsets.cpu(), None if div is None else div.cpu())
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got, cuda_kernels.pooled(emb, rows, offsets, div))  # same bits twice


@pytest.mark.requires_cuda
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_backward_update_matches_twin_and_is_deterministic(
    cuda_kernels: K.CudaKernels, opt: str, dtype: torch.dtype, shape: tuple
) -> None:
    n, dim, bags, max_len, hot = shape
    rng = np.random.default_rng(6)
    o = make_sparse_optimizer(SparseOptimizerConfig(name=opt, **CFG))
    w0 = torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32)).to(dtype)
    st0 = torch.from_numpy(np.abs(rng.normal(size=(n, o.state_width(dim)))).astype(np.float32))
    rows, _, lengths = _csr(rng, bags, n, max_len, hot)
    grad = torch.from_numpy(rng.normal(size=(bags, dim)).astype(np.float32))
    div = lengths.clamp(min=1).float()
    urows, bsorted, seg = _segments(rows, lengths)
    w_t, st_t = w0.clone(), st0.clone()
    TWINS.backward_update(o, w_t, st_t, urows, seg, bsorted, grad, div)
    runs = []
    for _ in range(2):
        w_c, st_c = w0.cuda(), st0.cuda()
        args = (urows.cuda(), seg.cuda(), bsorted.cuda(), grad.cuda(), div.cuda())
        cuda_kernels.backward_update(o, w_c, st_c, *args)
        runs.append((w_c.cpu(), st_c.cpu()))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(runs[0][0].float(), w_t.float(), **tol)
    torch.testing.assert_close(runs[0][1], st_t, rtol=1e-4, atol=1e-5)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.requires_cuda
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_cuda_update_with_given_sums_matches_twin(cuda_kernels: K.CudaKernels, opt: str) -> None:
    rng = np.random.default_rng(7)
    o = make_sparse_optimizer(SparseOptimizerConfig(name=opt, **CFG))
    w0 = torch.from_numpy(rng.normal(size=(100, 24)).astype(np.float32))
    st0 = torch.zeros(100, o.state_width(24))
    urows = torch.from_numpy(rng.choice(100, 40, replace=False))
    g = torch.from_numpy(rng.normal(size=(40, 24)).astype(np.float32))
    w_t, st_t = w0.clone(), st0.clone()
    TWINS.update(o, w_t, st_t, urows, g)
    w_c, st_c = w0.cuda(), st0.cuda()
    cuda_kernels.update(o, w_c, st_c, urows.cuda(), g.cuda())
    torch.testing.assert_close(w_c.cpu(), w_t, rtol=1e-4, atol=1e-5)


@pytest.mark.requires_cuda
def test_cuda_unique_keys_matches_numpy(cuda_kernels: K.CudaKernels) -> None:
    rng = np.random.default_rng(8)
    keys = rng.integers(0, 2**64 - 1, 100_000, dtype=np.uint64, endpoint=True)
    keys[rng.random(len(keys)) < 0.5] = np.uint64(2**63 + 5)  # a very hot key with the sign bit set
    u, inv = cuda_kernels.unique_keys(torch.from_numpy(keys).cuda())
    eu, einv = np.unique(keys, return_inverse=True)
    assert np.array_equal(u.cpu().numpy(), eu) and np.array_equal(inv.cpu().numpy(), einv.reshape(-1))


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_gather_scatter_match_twin(cuda_kernels: K.CudaKernels, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(9)
    src = torch.from_numpy(rng.normal(size=(3000, 96)).astype(np.float32))
    idx = torch.from_numpy(rng.permutation(5000)[:3000])
    e_t, e_c = torch.zeros(5000, 96, dtype=dtype), torch.zeros(5000, 96, dtype=dtype).cuda()
    TWINS.scatter_rows(e_t, idx, src)
    cuda_kernels.scatter_rows(e_c, idx.cuda(), src.cuda())
    assert torch.equal(e_c.cpu(), e_t)  # both round to nearest even
    assert torch.equal(cuda_kernels.gather_rows(e_c, idx.cuda()).cpu(), TWINS.gather_rows(e_t, idx))
