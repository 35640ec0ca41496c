"""Built-in models: shapes, gradients, slot order, determinism, and each model's formula checked by hand."""

from __future__ import annotations

import pytest
import torch

from hier_ps.errors import ConfigError
from hier_ps.models import BUILTIN_MODELS, DLRM, FM, LR, DCNv2, DeepFM, WideDeep, build_model

MIXED = {"a": 4, "b": 4, "c": 8}
UNIT = {"a": 1, "b": 1, "c": 1}
B = 5


def dims_for(name: str) -> dict[str, int]:
    return UNIT if name == "lr" else MIXED


def inputs(dense_dim: int, dims: dict[str, int], b: int = B, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(b, dense_dim, generator=g, requires_grad=True)
    sparse = {s: torch.randn(b, d, generator=g, requires_grad=True) for s, d in dims.items()}
    return dense, sparse


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("dense_dim", [0, 3])
def test_shapes_grads_and_slot_order(name: str, tasks: int, dense_dim: int) -> None:
    torch.manual_seed(0)
    dims = dims_for(name)
    m = build_model(name, dense_dim=dense_dim, slot_dims=dims, num_tasks=tasks)
    dense, sparse = inputs(dense_dim, dims)
    out = m(dense, sparse)
    assert out.shape == ((B,) if tasks == 1 else (B, tasks))
    assert torch.isfinite(out).all()

    out.sum().backward()
    for s in dims:
        assert torch.isfinite(sparse[s].grad).all() and sparse[s].grad.abs().sum() > 0, s
    if dense_dim:
        assert torch.isfinite(dense.grad).all() and dense.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname

    with torch.no_grad():
        reversed_dict = dict(reversed(list(sparse.items())))
        assert list(reversed_dict) != list(sparse)
        assert torch.equal(m(dense, reversed_dict), m(dense, sparse))


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_same_seed_same_parameters_other_seed_other_parameters(name: str) -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, dense_dim=2, slot_dims=dims_for(name), num_tasks=2).state_dict()

    a, b, c = state(42), state(42), state(7)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_any_slot_name_works(name: str) -> None:
    dims = {"user.id": 1, "": 1, "item id/2": 1} if name == "lr" else {"user.id": 4, "": 8, "item id/2": 4}
    m = build_model(name, dense_dim=1, slot_dims=dims)
    dense, sparse = inputs(1, dims)
    assert m(dense, sparse).shape == (B,)


def test_missing_slot_is_named() -> None:
    m = build_model("fm", dense_dim=0, slot_dims=MIXED)
    _, sparse = inputs(0, MIXED)
    del sparse["b"]
    with pytest.raises(KeyError, match="no slot 'b'"):
        m(torch.zeros(B, 0), sparse)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dense_dim": -1}, "model dlrm: dense_dim must be a non-negative integer, got -1"),
        ({"num_tasks": 0}, "model dlrm: num_tasks must be a positive integer, got 0"),
        ({"slot_dims": {}}, "model dlrm: needs at least one sparse slot"),
        ({"slot_dims": {"a": 4, "b": 0}}, "model dlrm: slot 'b' must have a positive integer dim, got 0"),
    ],
)
def test_shared_inputs_are_validated(kwargs: dict, match: str) -> None:
    full = {"dense_dim": 2, "slot_dims": MIXED, "num_tasks": 1} | kwargs
    with pytest.raises(ConfigError, match=match):
        build_model("dlrm", **full)


# --- lr ------------------------------------------------------------------------------------------------------------


def test_lr_formula_and_zero_bias() -> None:
    torch.manual_seed(0)
    m = build_model("lr", dense_dim=2, slot_dims={"a": 1, "b": 1})
    assert isinstance(m, LR) and m.bias.tolist() == [0.0]
    assert m.linear.bias is None
    with torch.no_grad():
        m.bias.fill_(0.5)
        m.linear.weight.copy_(torch.tensor([[2.0, -1.0]]))
    dense = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    out = m(dense, {"b": torch.tensor([[0.25], [1.0]]), "a": torch.tensor([[1.0], [-2.0]])})
    assert out.tolist() == [0.5 + 1.0 + 0.25 + 2.0 - 3.0, 0.5 - 2.0 + 1.0]


def test_lr_multitask_shares_pooled_sum_and_has_per_task_bias_and_weights() -> None:
    m = build_model("lr", dense_dim=1, slot_dims={"a": 1, "b": 1}, num_tasks=3)
    assert m.bias.tolist() == [0.0, 0.0, 0.0]
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        m.linear.weight.copy_(torch.tensor([[1.0], [0.0], [2.0]]))
    out = m(torch.tensor([[4.0]]), {"a": torch.tensor([[0.5]]), "b": torch.tensor([[0.25]])})
    assert out.tolist() == [[0.75 + 4.0, 1.75, -1.0 + 0.75 + 8.0]]


def test_lr_without_dense_has_no_linear() -> None:
    m = build_model("lr", dense_dim=0, slot_dims={"a": 1}, num_tasks=3)
    assert m.linear is None and [n for n, _ in m.named_parameters()] == ["bias"]
    assert m(torch.zeros(2, 0), {"a": torch.ones(2, 1)}).tolist() == [[1.0] * 3] * 2


def test_lr_needs_dim_1() -> None:
    with pytest.raises(ConfigError, match=r"^model lr needs dim 1 for every slot; slot 'C3' has dim 16$"):
        build_model("lr", dense_dim=0, slot_dims={"C1": 1, "C3": 16})


# --- fm / deepfm ---------------------------------------------------------------------------------------------------


def brute_force_pairs(vectors: list[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(vectors[0].shape[0], dtype=torch.float64)
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            total += (vectors[i].double() * vectors[j].double()).sum(-1)
    return total


def test_fm_formula_equal_dims() -> None:
    torch.manual_seed(0)
    dims = {"a": 4, "b": 4, "c": 4}
    m = build_model("fm", dense_dim=2, slot_dims=dims, num_tasks=2)
    assert m.k == 4 and sum(p.numel() for p in m.project.parameters()) == 0
    dense, sparse = inputs(2, dims)
    x = torch.cat([dense, sparse["a"], sparse["b"], sparse["c"]], 1)
    want = m.linear(x).double() + brute_force_pairs([sparse[s] for s in dims]).unsqueeze(1)
    torch.testing.assert_close(m(dense, sparse).double(), want, rtol=1e-5, atol=1e-5)


def test_fm_projects_only_slots_of_another_dim() -> None:
    m = build_model("fm", dense_dim=0, slot_dims={"a": 8, "b": 4, "c": 4})
    assert m.k == 4
    shapes = [tuple(p.weight.shape) if isinstance(p, torch.nn.Linear) else None for p in m.project.proj]
    assert shapes == [(4, 8), None, None]
    m16 = build_model("fm", dense_dim=0, slot_dims={"a": 8, "b": 4}, args={"k": 16})
    assert [tuple(p.weight.shape) for p in m16.project.proj] == [(16, 8), (16, 4)]
    _, sparse = inputs(0, {"a": 8, "b": 4})
    v = [m16.project.proj[0](sparse["a"]), m16.project.proj[1](sparse["b"])]
    want = m16.linear(torch.cat([sparse["a"], sparse["b"]], 1)).squeeze(1).double() + brute_force_pairs(v)
    torch.testing.assert_close(m16(torch.zeros(B, 0), sparse).double(), want, rtol=1e-5, atol=1e-5)


def test_deepfm_is_fm_plus_deep() -> None:
    torch.manual_seed(0)
    m = build_model("deepfm", dense_dim=3, slot_dims=MIXED, num_tasks=2, args={"hidden": [8]})
    assert isinstance(m, DeepFM) and isinstance(m, FM)
    dense, sparse = inputs(3, MIXED)
    x = torch.cat([dense, *[sparse[s] for s in MIXED]], 1)
    fm = m.linear(x) + brute_force_pairs(list(m.project(sparse).unbind(1))).float().unsqueeze(1)
    deep = m.head(torch.relu(m.deep[0](x)))
    torch.testing.assert_close(m(dense, sparse), fm + deep, rtol=1e-5, atol=1e-5)


# --- wide_deep / dcn_v2 ----------------------------------------------------------------------------------------------


def test_wide_deep_formula() -> None:
    torch.manual_seed(0)
    m = build_model("wide_deep", dense_dim=2, slot_dims=MIXED, args={"hidden": [6, 5]})
    assert isinstance(m, WideDeep)
    dense, sparse = inputs(2, MIXED)
    x = torch.cat([dense, *[sparse[s] for s in MIXED]], 1)
    h = torch.relu(m.deep[2](torch.relu(m.deep[0](x))))
    torch.testing.assert_close(m(dense, sparse), (m.wide(x) + m.head(h)).squeeze(1))


def test_dcn_v2_cross_formula() -> None:
    torch.manual_seed(0)
    m = build_model("dcn_v2", dense_dim=2, slot_dims=MIXED, num_tasks=2, args={"cross_layers": 2, "hidden": []})
    assert isinstance(m, DCNv2) and len(m.cross) == 2 and m.cross[0].weight.shape == (18, 18)
    dense, sparse = inputs(2, MIXED)
    x0 = torch.cat([dense, *[sparse[s] for s in MIXED]], 1)
    x1 = x0 * (x0 @ m.cross[0].weight.T + m.cross[0].bias) + x0
    x2 = x0 * (x1 @ m.cross[1].weight.T + m.cross[1].bias) + x1
    torch.testing.assert_close(m(dense, sparse), x2 @ m.head.weight.T + m.head.bias)


def test_dcn_v2_default_depth() -> None:
    m = build_model("dcn_v2", dense_dim=0, slot_dims=MIXED)
    assert len(m.cross) == 3
    assert [layer.out_features for layer in m.deep if isinstance(layer, torch.nn.Linear)] == [256, 128]


# --- dlrm ----------------------------------------------------------------------------------------------------------


def test_dlrm_interaction_with_dense() -> None:
    torch.manual_seed(0)
    dims = {"a": 4, "b": 8, "c": 4}
    m = build_model("dlrm", dense_dim=3, slot_dims=dims, args={"bottom": [5, 4], "top": [7]})
    assert isinstance(m, DLRM) and m.d == 4
    # Only 'b' (dim 8 != d) is projected.
    assert [type(p).__name__ for p in m.project.proj] == ["Identity", "Linear", "Identity"]
    dense, sparse = inputs(3, dims)
    x = m.bottom(dense)
    vectors = [x, sparse["a"], m.project.proj[1](sparse["b"]), sparse["c"]]
    dots = [(vectors[i] * vectors[j]).sum(-1) for i in range(4) for j in range(i + 1, 4)]
    z = torch.cat([x, torch.stack(dots, 1)], 1)
    assert m.top[0].in_features == 4 + 6
    torch.testing.assert_close(m(dense, sparse), m.head(m.top(z)).squeeze(1))


def test_dlrm_without_dense() -> None:
    torch.manual_seed(0)
    dims = {"a": 8, "b": 4, "c": 4}
    m = build_model("dlrm", dense_dim=0, slot_dims=dims, num_tasks=2)
    assert m.bottom is None and m.d == 4 and m.top[0].in_features == 3
    _, sparse = inputs(0, dims)
    v = [m.project.proj[0](sparse["a"]), sparse["b"], sparse["c"]]
    z = torch.stack([(v[i] * v[j]).sum(-1) for i in range(3) for j in range(i + 1, 3)], 1)
    torch.testing.assert_close(m(torch.zeros(B, 0), sparse), m.head(m.top(z)))


def test_dlrm_defaults() -> None:
    m = build_model("dlrm", dense_dim=13, slot_dims={"a": 16, "b": 16})
    sizes = [layer.out_features for layer in m.bottom if isinstance(layer, torch.nn.Linear)]
    assert sizes == [64, 32] and m.d == 32
    assert [layer.out_features for layer in m.top if isinstance(layer, torch.nn.Linear)] == [128, 64]


def test_dlrm_needs_two_vectors() -> None:
    with pytest.raises(ConfigError, match="model dlrm needs at least 2 vectors"):
        build_model("dlrm", dense_dim=0, slot_dims={"a": 8})
    one_slot_and_dense = build_model("dlrm", dense_dim=1, slot_dims={"a": 8})
    assert one_slot_and_dense(torch.zeros(2, 1), {"a": torch.zeros(2, 8)}).shape == (2,)


# --- device --------------------------------------------------------------------------------------------------------


@pytest.mark.requires_cuda
@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_cuda_matches_cpu(name: str) -> None:
    torch.manual_seed(0)
    dims = dims_for(name)
    m = build_model(name, dense_dim=3, slot_dims=dims, num_tasks=2)
    dense, sparse = inputs(3, dims)
    with torch.no_grad():
        want = m(dense, sparse)
        m.cuda()
        got = m(dense.cuda(), {s: t.cuda() for s, t in sparse.items()})
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
