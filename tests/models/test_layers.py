"""Shared layers: the FM identity and pairwise dots against brute force, MLP and projector structure."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.models.layers import MLP, SlotProjector, fm_interaction, most_common_dim, pairwise_dots


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), f=st.integers(1, 6), k=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_fm_interaction_is_sum_of_pairwise_dots(b: int, f: int, k: int, seed: int) -> None:
    v = torch.randn(b, f, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = torch.zeros(b, dtype=torch.float64)
    for i in range(f):
        for j in range(i + 1, f):
            want += (v[:, i] * v[:, j]).sum(-1)
    torch.testing.assert_close(fm_interaction(v), want)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), f=st.integers(2, 6), d=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_pairwise_dots_order(b: int, f: int, d: int, seed: int) -> None:
    v = torch.randn(b, f, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = torch.stack([(v[:, i] * v[:, j]).sum(-1) for i in range(f) for j in range(i + 1, f)], dim=1)
    torch.testing.assert_close(pairwise_dots(v, torch.triu_indices(f, f, offset=1)), want)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 4), f=st.integers(2, 6), d=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_pairwise_dots_gradient(b: int, f: int, d: int, seed: int) -> None:
    iu = torch.triu_indices(f, f, offset=1)
    v = torch.randn(b, f, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pairwise_dots(x, iu), (v,))
    w = torch.randn(b, iu.shape[1], generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    (got,) = torch.autograd.grad((pairwise_dots(v, iu) * w).sum(), v)
    plain = torch.bmm(v, v.transpose(1, 2))[:, iu[0], iu[1]]  # autograd's own backward of the same products
    (want,) = torch.autograd.grad((plain * w).sum(), v)
    torch.testing.assert_close(got, want)


def test_mlp() -> None:
    m = MLP(10, [8, 3])
    assert m.out_dim == 3 and [type(x).__name__ for x in m] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert (m(torch.randn(4, 10)) >= 0).all()
    empty = MLP(10, [])
    x = torch.randn(4, 10)
    assert empty.out_dim == 10 and torch.equal(empty(x), x)


def test_most_common_dim_ties_go_to_first_seen() -> None:
    assert most_common_dim({"a": 8, "b": 16, "c": 16}) == 16
    assert most_common_dim({"a": 8, "b": 16}) == 8
    assert most_common_dim({"b": 16, "a": 8}) == 16


def test_slot_projector_reads_slots_in_construction_order() -> None:
    p = SlotProjector({"x": 2, "y": 3}, k=2)
    assert isinstance(p.proj[0], torch.nn.Identity) and p.proj[1].weight.shape == (2, 3)
    x, y = torch.randn(4, 2), torch.randn(4, 3)
    out = p({"y": y, "x": x})
    assert torch.equal(out[:, 0], x) and torch.equal(out[:, 1], p.proj[1](y))
