"""DLRM's dot interaction: the C kernels (cpu_kernels/interaction.c) against float64 bmm, thread counts, fallbacks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.hbm import cpu_kernels
from hier_ps.models import build_model
from hier_ps.models.layers import _CDotInteraction, dot_interaction, pairwise_dots

pytestmark = pytest.mark.skipif(cpu_kernels.optional() is None, reason="no C compiler: the kernels are not built")


def _reference(vecs: list[torch.Tensor], keep_first: bool) -> torch.Tensor:
    """The bmm path in float64."""
    f = len(vecs)
    z = pairwise_dots(torch.stack([v.double() for v in vecs], dim=1), torch.triu_indices(f, f, offset=1))
    return torch.cat([vecs[0].double(), z], dim=1) if keep_first else z


def _vectors(b: int, f: int, d: int, seed: int, pad: int) -> list[torch.Tensor]:
    """F vectors [B, d] read where a caller would have them: column blocks of one [B, F * (d + pad)] tensor (a row
    stride wider than d), or with pad 0 row blocks of one [F * B, d] tensor (the trainer's pooled output)."""
    g = torch.Generator().manual_seed(seed)
    if pad:
        whole = torch.randn(b, f * (d + pad), generator=g)
        return [whole[:, i * (d + pad) : i * (d + pad) + d] for i in range(f)]
    whole = torch.randn(f * b, d, generator=g)
    return list(torch.split(whole, b)) if b else [whole[:0]] * f


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(0, 70),
    f=st.integers(2, 30),
    d=st.integers(1, 21),
    pad=st.sampled_from([0, 3]),
    keep_first=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_forward_and_backward_match_float64_bmm(b: int, f: int, d: int, pad: int, keep_first: bool, seed: int) -> None:
    vecs = [
        v.requires_grad_(True) for v in (v.detach().clone() if pad == 0 else v for v in _vectors(b, f, d, seed, pad))
    ]
    z = dot_interaction(vecs, torch.triu_indices(f, f, offset=1), keep_first=keep_first)
    assert z.grad_fn is not None and type(z.grad_fn).__name__ == "_CDotInteractionBackward"
    ref_vecs = [v.detach().double().requires_grad_(True) for v in vecs]
    want = _reference(ref_vecs, keep_first)
    torch.testing.assert_close(z.double(), want, rtol=1e-5, atol=1e-5 * d)
    w = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed + 1))
    got = torch.autograd.grad((z * w).sum(), vecs)
    ref = torch.autograd.grad((want * w.double()).sum(), ref_vecs)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5 * d * f)


def test_same_bits_with_any_thread_count_and_twice() -> None:
    vecs = _vectors(1000, 27, 16, 5, 0)  # ragged blocks: 1000 is no multiple of the kernel's 16 lanes
    gz = torch.randn(1000, 16 + 351, generator=torch.Generator().manual_seed(6))
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 3, 4, 1):
            torch.set_num_threads(n)
            outs.append((cpu_kernels.dot_interaction(vecs, True), cpu_kernels.dot_interaction_backward(vecs, gz, True)))
    finally:
        torch.set_num_threads(before)
    for z, gv in outs[1:]:
        assert torch.equal(z, outs[0][0]) and torch.equal(gv, outs[0][1])


@pytest.mark.parametrize("d", [16, 35])
def test_same_bits_whichever_lane_an_example_takes(d: int) -> None:
    # The kernel takes examples a register's lanes at a time, whole blocks through register-tile transposes and the
    # last ragged block value by value: an example computed in another lane, or in the other kind of block, must
    # come out the same. Shifting the batch by 5 moves every example to another lane and some across that border.
    vecs = _vectors(45, 27, d, 7, 3)
    gz = torch.randn(45, d + 351, generator=torch.Generator().manual_seed(8))
    z, gv = cpu_kernels.dot_interaction(vecs, True), cpu_kernels.dot_interaction_backward(vecs, gz, True)
    shifted = [v[5:] for v in vecs]
    z5, gv5 = cpu_kernels.dot_interaction(shifted, True), cpu_kernels.dot_interaction_backward(shifted, gz[5:], True)
    assert torch.equal(z5, z[5:]) and torch.equal(gv5, gv[:, 5:])


def test_only_the_vectors_that_need_a_gradient_get_one() -> None:
    vecs = _vectors(33, 4, 5, 7, 0)
    vecs = [v.clone().requires_grad_(i % 2 == 1) for i, v in enumerate(vecs)]
    z = _CDotInteraction.apply(True, *vecs)
    z.sum().backward()
    assert [v.grad is not None for v in vecs] == [False, True, False, True]
    ref = [v.detach().double().requires_grad_(True) for v in vecs]
    _reference(ref, True).sum().backward()
    torch.testing.assert_close(vecs[1].grad.double(), ref[1].grad, rtol=1e-5, atol=1e-5)


def test_other_inputs_take_the_bmm_path_with_its_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    iu = torch.triu_indices(3, 3, offset=1)
    v64 = [torch.randn(8, 4, dtype=torch.float64) for _ in range(3)]
    want = torch.cat([v64[0], pairwise_dots(torch.stack(v64, 1), iu)], 1)
    assert torch.equal(dot_interaction(v64, iu, keep_first=True), want)  # float64: not the kernel's
    v32 = [v.float() for v in v64]
    want32 = pairwise_dots(torch.stack(v32, 1), iu)
    monkeypatch.setattr(cpu_kernels, "_OPTIONAL", None)  # as with HIER_PS_KERNELS=torch or no compiler
    assert torch.equal(dot_interaction(v32, iu, keep_first=False), want32)


def test_dlrm_with_the_kernel_agrees_with_the_bmm_path(monkeypatch: pytest.MonkeyPatch) -> None:
    dims = {f"s{i}": 8 for i in range(5)}
    torch.manual_seed(0)
    model = build_model("dlrm", dense_dim=3, slot_dims=dims, args={"bottom": [6, 8], "top": [7]})
    dense = torch.randn(50, 3)
    sparse = {s: torch.randn(50, 8, requires_grad=True) for s in dims}
    calls = []
    kernel = cpu_kernels.dot_interaction
    monkeypatch.setattr(cpu_kernels, "dot_interaction", lambda *a: calls.append(1) or kernel(*a))
    got = model(dense, sparse)
    assert calls == [1]
    (g_got,) = torch.autograd.grad(got.sum(), [sparse["s2"]])
    monkeypatch.setattr(cpu_kernels, "_OPTIONAL", None)
    want = model(dense, sparse)
    (g_want,) = torch.autograd.grad(want.sum(), [sparse["s2"]])
    assert calls == [1]  # the second forward took the bmm path
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)


def test_another_pair_order_or_a_second_derivative_is_not_the_kernels() -> None:
    vecs = _vectors(6, 3, 2, 8, 0)
    iu = torch.triu_indices(3, 3, offset=1)[:, [2, 0, 1]]  # the pairs in another order: the bmm path follows it
    want = pairwise_dots(torch.stack(vecs, 1), iu)
    assert torch.equal(dot_interaction(vecs, iu, keep_first=False), want)
    v = [x.clone().requires_grad_(True) for x in vecs]
    z = dot_interaction(v, torch.triu_indices(3, 3, offset=1), keep_first=False)
    w = torch.ones_like(z, requires_grad=True)  # a gradient that itself needs one: a second derivative
    (g,) = torch.autograd.grad((z * w).sum(), v[0], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
