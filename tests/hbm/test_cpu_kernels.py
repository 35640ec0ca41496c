"""The C kernels (``cpu_kernels/embedding.c``: the fused backward + update, the row moves) against the torch twins,
their bits across thread counts, their fallbacks, and the loader's choice on the CPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hier_ps.config import SparseOptimizerConfig
from hier_ps.hbm import cpu_kernels as C
from hier_ps.hbm import kernels as K
from hier_ps.hbm.optimizers import make_sparse_optimizer
from tests.hbm.test_kernels import OPTIMIZERS, SHAPES, TWINS, _csr, _segments
from tests.hbm.test_optimizers import CFG


@pytest.fixture(scope="module")
def cpu() -> C.CpuKernels:
    try:
        return C.CpuKernels()
    except RuntimeError as e:  # CI and dev machines have gcc; a machine without one runs the twins
        pytest.skip(f"no C kernel here: {e}")


def _case(opt: str, shape: tuple, seed: int):
    n, dim, bags, max_len, hot = shape
    rng = np.random.default_rng(seed)
    o = make_sparse_optimizer(SparseOptimizerConfig(name=opt, **CFG))
    w0 = torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32))
    st0 = torch.from_numpy(np.abs(rng.normal(size=(n, o.state_width(dim)))).astype(np.float32))
    rows, _, lengths = _csr(rng, bags, n, max_len, hot)
    grad = torch.from_numpy(rng.normal(size=(bags, dim)).astype(np.float32))
    return o, w0, st0, rows, lengths, grad


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mean", [False, True])
def test_backward_update_matches_twin(cpu: C.CpuKernels, opt: str, shape: tuple, mean: bool) -> None:
    """Empty bags, duplicate and very hot keys, dims up to 512: the rows and the state the twin computes, to
    rounding (the twin's row-wise mean sums in another order); rows not touched keep their bits."""
    o, w0, st0, rows, lengths, grad = _case(opt, shape, 11)
    div = lengths.clamp(min=1).float() if mean else None
    urows, bags, seg = _segments(rows, lengths)
    w_t, st_t, w_c, st_c = w0.clone(), st0.clone(), w0.clone(), st0.clone()
    TWINS.backward_update(o, w_t, st_t, urows, seg, bags, grad, div)
    cpu.backward_update(o, w_c, st_c, urows, seg, bags, grad, div)
    torch.testing.assert_close(w_c, w_t, rtol=1e-5, atol=1e-6)
    # FTRL's z adds g - sigma * w to z: terms of order 1 that can cancel to a small z, whose rounding is then the
    # terms' (1e-6), not its own (seen: 1.5e-6 on a z of -2.8e-3, the two sums' orders differing on an AVX-512 CPU).
    torch.testing.assert_close(st_c, st_t, rtol=1e-5, atol=1e-5 if opt == "ftrl" else 1e-6)
    untouched = torch.ones(len(w0), dtype=torch.bool)
    untouched[urows] = False
    assert torch.equal(w_c[untouched], w0[untouched]) and torch.equal(st_c[untouched], st0[untouched])
    assert not torch.equal(w_c[urows], w0[urows])  # it did update


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_same_bits_with_any_thread_count_and_twice(cpu: C.CpuKernels, opt: str) -> None:
    o, w0, st0, rows, lengths, grad = _case(opt, (200_000, 16, 40_000, 4, False), 12)  # rows for 4 threads
    urows, bags, seg = _segments(rows, lengths)
    assert len(urows) > 4 * 4096  # else the kernel runs one thread whatever it is asked
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 4, 4, 3):
            torch.set_num_threads(threads)
            w, st = w0.clone(), st0.clone()
            cpu.backward_update(o, w, st, urows, seg, bags, grad, lengths.clamp(min=1).float())
            runs.append((w, st))
    finally:
        torch.set_num_threads(before)
    for w, st in runs[1:]:
        assert torch.equal(w, runs[0][0]) and torch.equal(st, runs[0][1])


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_update_with_given_sums_matches_twin(cpu: C.CpuKernels, opt: str) -> None:
    rng = np.random.default_rng(13)
    o = make_sparse_optimizer(SparseOptimizerConfig(name=opt, **CFG))
    w0 = torch.from_numpy(rng.normal(size=(100, 24)).astype(np.float32))
    st0 = torch.zeros(100, o.state_width(24))
    urows = torch.from_numpy(rng.choice(100, 40, replace=False))
    g = torch.from_numpy(rng.normal(size=(40, 24)).astype(np.float32))
    w_t, st_t, w_c, st_c = w0.clone(), st0.clone(), w0.clone(), st0.clone()
    TWINS.update(o, w_t, st_t, urows, g)
    cpu.update(o, w_c, st_c, urows, g)
    torch.testing.assert_close(w_c, w_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st_c, st_t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda w, st: (w.to(torch.bfloat16), st),  # 16-bit rows
        lambda w, st: (torch.zeros(w.shape[0], 600), torch.zeros(w.shape[0], 1)),  # dim > 512
        lambda w, st: (w.t().contiguous().t(), st),  # column-major rows
    ],
    ids=["bf16", "dim600", "strided"],
)
def test_rows_the_c_kernel_does_not_take_go_to_the_twin(cpu: C.CpuKernels, make) -> None:
    o = make_sparse_optimizer(SparseOptimizerConfig(name="rowwise_adagrad", **CFG))
    w0, st0 = make(torch.randn(30, 8), torch.zeros(30, 1))
    urows = torch.tensor([3, 17, 5])
    g = torch.randn(3, w0.shape[1])
    w_t, st_t, w_c, st_c = w0.clone(), st0.clone(), w0.clone(), st0.clone()
    TWINS.update(o, w_t, st_t, urows, g)
    cpu.update(o, w_c, st_c, urows, g)
    assert torch.equal(w_c, w_t) and torch.equal(st_c, st_t)  # bit for bit: it is the twin


@pytest.mark.parametrize("width", [0, 1, 16, 513])
def test_row_moves_equal_the_twins_bit_for_bit(cpu: C.CpuKernels, width: int) -> None:
    """gather, scatter and copy of rows (widths of SGD's empty state, row-wise state, rows, wide rows), with many
    threads and enough rows for them to split."""
    rng = np.random.default_rng(14)
    src = torch.from_numpy(rng.normal(size=(60_000, width)).astype(np.float32))
    src_idx = torch.from_numpy(rng.permutation(60_000)[:40_000])
    dst_idx = torch.from_numpy(rng.permutation(50_000)[:40_000])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert torch.equal(cpu.gather_rows(src, src_idx), TWINS.gather_rows(src, src_idx))
        rows = TWINS.gather_rows(src, src_idx)
        d_c, d_t = torch.zeros(50_000, width), torch.zeros(50_000, width)
        cpu.scatter_rows(d_c, dst_idx, rows)
        TWINS.scatter_rows(d_t, dst_idx, rows)
        assert torch.equal(d_c, d_t)
        d_c, d_t = torch.zeros(50_000, width), torch.zeros(50_000, width)
        cpu.copy_rows(d_c, dst_idx, src, src_idx)
        TWINS.copy_rows(d_t, dst_idx, src, src_idx)
        assert torch.equal(d_c, d_t) and (width == 0 or d_c.abs().sum() > 0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("lo", "hi"), [(0, 16), (16, 17), (3, 20)])
def test_row_moves_of_column_slices_of_packed_rows_equal_the_twins(
    cpu: C.CpuKernels, lo: int, hi: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows `width` floats wide that start `stride` floats apart (the embedding or state columns of packed rows, as
    the stager hands them over), as the source and as the destination, split over several threads."""
    rng = np.random.default_rng(15)
    packed = torch.from_numpy(rng.normal(size=(60_000, 21)).astype(np.float32))
    src = packed[:, lo:hi]
    assert src.stride(0) == 21 and not src.is_contiguous()
    src_idx = torch.from_numpy(rng.permutation(60_000)[:40_000])
    dst_idx = torch.from_numpy(rng.permutation(50_000)[:40_000])
    moves, move = [], cpu._move
    monkeypatch.setattr(cpu, "_move", lambda *a: moves.append(a[-2]) or move(*a))  # the C kernel's calls
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert torch.equal(cpu.gather_rows(src, src_idx), src[src_idx])
        d_c, d_t = torch.zeros(50_000, hi - lo), torch.zeros(50_000, hi - lo)
        cpu.scatter_rows(d_c, dst_idx, src[:40_000])
        TWINS.scatter_rows(d_t, dst_idx, src[:40_000])
        assert torch.equal(d_c, d_t) and d_c.abs().sum() > 0
        # a strided destination, its other columns kept
        wide_c, wide_t = torch.zeros(50_000, 21), torch.zeros(50_000, 21)
        cpu.copy_rows(wide_c[:, lo:hi], dst_idx, src, src_idx)
        TWINS.copy_rows(wide_t[:, lo:hi], dst_idx, src, src_idx)
        assert torch.equal(wide_c, wide_t) and wide_c[:, lo:hi].abs().sum() > 0
        assert moves == [hi - lo] * 3  # the strided rows went through the C kernel, not the twins
    finally:
        torch.set_num_threads(before)


def test_row_moves_of_rows_the_c_kernel_does_not_take_still_equal_the_twins(cpu: C.CpuKernels) -> None:
    src16 = torch.randn(20, 4).to(torch.bfloat16)
    idx = torch.tensor([3, 0, 7])
    assert torch.equal(cpu.gather_rows(src16, idx), TWINS.gather_rows(src16, idx))  # float32 of 16-bit rows
    d_c, d_t = torch.zeros(10, 4, dtype=torch.bfloat16), torch.zeros(10, 4, dtype=torch.bfloat16)
    rows = torch.randn(3, 4)
    cpu.scatter_rows(d_c, idx, rows)
    TWINS.scatter_rows(d_t, idx, rows)
    assert torch.equal(d_c, d_t)
    strided = torch.randn(4, 20).t()  # rows not contiguous
    d_c, d_t = torch.zeros(10, 4), torch.zeros(10, 4)
    cpu.copy_rows(d_c, idx, strided, idx)
    TWINS.copy_rows(d_t, idx, strided, idx)
    assert torch.equal(d_c, d_t)


def _fresh_loader(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(K, "_CHOSEN", {})
    monkeypatch.setattr(C, "_LIB", None)
    monkeypatch.setenv("HIER_PS_CACHE", str(tmp_path))


def test_loader_builds_once_into_the_cache_and_picks_the_c_kernel(
    cpu: C.CpuKernels, monkeypatch: pytest.MonkeyPatch, tmp_path, caplog
) -> None:
    _fresh_loader(monkeypatch, tmp_path)
    with caplog.at_level(logging.INFO, logger="hier_ps.hbm.kernels"):
        assert isinstance(K.kernels_for("cpu"), C.CpuKernels)
    assert "kernels: cpu" in caplog.text
    built = list(tmp_path.glob("cpu_kernels-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("*.tmp"))
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(C, "_LIB", None)
    C.load()  # a second process: reads the cache, builds nothing
    assert built[0].stat().st_mtime_ns == stamp and len(list(tmp_path.glob("cpu_kernels-*.so"))) == 1


def test_a_compiler_that_fails_means_the_twins_and_one_line_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog
) -> None:
    _fresh_loader(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", "false")  # exists, exits 1
    with caplog.at_level(logging.INFO, logger="hier_ps.hbm.kernels"):
        impl = K.kernels_for("cpu")
    assert type(impl) is K.TorchTwins
    assert "kernels: torch twins (RuntimeError: false could not build embedding.c + plan.c" in caplog.text
    assert not list(tmp_path.iterdir())  # no half-built library left behind


def test_no_compiler_means_the_twins(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _fresh_loader(monkeypatch, tmp_path)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang on it
    with pytest.raises(RuntimeError, match="no C compiler"):
        C.load()
    assert type(K.kernels_for("cpu")) is K.TorchTwins


def test_an_unwritable_cache_means_the_twins(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _fresh_loader(monkeypatch, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HIER_PS_CACHE", str(blocker / "cache"))  # under a file: cannot be made
    with pytest.raises(RuntimeError, match="cannot write the kernel cache"):
        C.load()
    assert type(K.kernels_for("cpu")) is K.TorchTwins


def test_hier_ps_kernels_torch_forces_the_twins(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _fresh_loader(monkeypatch, tmp_path)
    monkeypatch.setenv("HIER_PS_KERNELS", "torch")
    assert type(K.kernels_for("cpu")) is K.TorchTwins
    assert not list(tmp_path.iterdir())  # nothing was built
