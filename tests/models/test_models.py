from __future__ import annotations

import pytest
import torch

from hier_ps.errors import ConfigError
from hier_ps.models import BUILTIN_MODELS, build_model

MIXED = {"a": 4, "b": 4, "c": 8}


def inputs(dense_dim: int, dims: dict[str, int], b: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(b, dense_dim, generator=g)
    sparse = {s: torch.randn(b, d, generator=g, requires_grad=True) for s, d in dims.items()}
    return dense, sparse


@pytest.mark.parametrize("name", [n for n in BUILTIN_MODELS if n != "lr"])
@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("dense_dim", [0, 3])
def test_shapes_grads_and_order_independence(name: str, tasks: int, dense_dim: int) -> None:
    torch.manual_seed(0)
    m = build_model(name, dense_dim=dense_dim, slot_dims=MIXED, num_tasks=tasks)
    dense, sparse = inputs(dense_dim, MIXED)
    out = m(dense, sparse)
    assert out.shape == ((5,) if tasks == 1 else (5, tasks))
    out.sum().backward()
    assert all(torch.isfinite(sparse[s].grad).all() and sparse[s].grad.abs().sum() > 0 for s in MIXED)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    reversed_dict = dict(reversed(list(sparse.items())))
    assert torch.equal(m(dense, reversed_dict), m(dense, sparse))


@pytest.mark.parametrize("name", list(BUILTIN_MODELS))
def test_same_seed_same_parameters(name: str) -> None:
    dims = {"a": 1, "b": 1} if name == "lr" else MIXED
    states = []
    for _ in range(2):
        torch.manual_seed(42)
        states.append(build_model(name, dense_dim=2, slot_dims=dims).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_lr_formula_and_zero_bias() -> None:
    m = build_model("lr", dense_dim=2, slot_dims={"a": 1, "b": 1}, num_tasks=1)
    assert float(m.bias.detach()[0]) == 0.0
    with torch.no_grad():
        m.bias.fill_(0.5)
        m.linear.weight.copy_(torch.tensor([[2.0, -1.0]]))
    dense = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    out = m(dense, {"b": torch.tensor([[0.25], [1.0]]), "a": torch.tensor([[1.0], [-2.0]])})
    assert out.tolist() == [0.5 + 1.0 + 0.25 + 2.0 - 3.0, 0.5 - 2.0 + 1.0]
    m3 = build_model("lr", dense_dim=0, slot_dims={"a": 1}, num_tasks=3)
    assert m3(torch.zeros(2, 0), {"a": torch.ones(2, 1)}).tolist() == [[1.0] * 3] * 2


def test_errors() -> None:
    with pytest.raises(ConfigError, match="slot 'b' has dim 4"):
        build_model("lr", dense_dim=0, slot_dims={"a": 1, "b": 4})
    with pytest.raises(ConfigError, match="unknown model 'dlmr'; did you mean 'dlrm'"):
        build_model("dlmr", dense_dim=0, slot_dims=MIXED)
    with pytest.raises(ConfigError, match="model.args.hiden: not an argument of model 'wide_deep'; did you mean"):
        build_model("wide_deep", dense_dim=0, slot_dims=MIXED, args={"hiden": [4]})
    with pytest.raises(ConfigError, match="model.args.top: expected a list of positive integers"):
        build_model("dlrm", dense_dim=1, slot_dims=MIXED, args={"top": [0]})
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.mod'"):
        build_model("no_such_pkg.mod:X", dense_dim=0, slot_dims=MIXED)
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        build_model("tests.models._custom_model:Nope", dense_dim=0, slot_dims=MIXED)


def test_custom_model_by_path() -> None:
    m = build_model("tests.models._custom_model:Tiny", dense_dim=2, slot_dims=MIXED, args={"scale": 2.0})
    dense, sparse = inputs(2, MIXED)
    assert m(dense, sparse).shape == (5,) and m.scale == 2.0
