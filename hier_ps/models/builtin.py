"""Built-in CTR models.

Every model takes ``forward(dense [B, D], sparse {slot: [B, dim_slot]})`` and returns logits ``[B]`` for one task or
``[B, T]`` for T tasks. Slots are always read in the order of ``slot_dims`` given at construction, so the order of the
``sparse`` dict never matters. Constructors: ``(*, dense_dim, slot_dims, num_tasks=1, **model args)``.

Example:
    >>> m = DLRM(dense_dim=2, slot_dims={"a": 4, "b": 4})
    >>> m(torch.zeros(3, 2), {"a": torch.zeros(3, 4), "b": torch.zeros(3, 4)}).shape
    torch.Size([3])
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from hier_ps.errors import ConfigError

__all__ = ["DLRM", "FM", "LR", "DCNv2", "DeepFM", "WideDeep", "mlp"]


def mlp(sizes: list[int], in_dim: int) -> nn.Sequential:
    """Linear+ReLU layers of the given sizes (ReLU after every layer)."""
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU()]
        in_dim = size
    return nn.Sequential(*layers)


def _sizes(value: object, name: str) -> list[int]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ConfigError(f"model.args.{name}: expected a list of positive integers, got {value!r}")
    return list(value)


def _positive(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"model.args.{name}: expected a positive integer, got {value!r}")
    return value


def _common_dim(slot_dims: dict[str, int]) -> int:
    return Counter(slot_dims.values()).most_common(1)[0][0]


class _Base(nn.Module):
    def __init__(self, *, dense_dim: int, slot_dims: dict[str, int], num_tasks: int = 1) -> None:
        super().__init__()
        if not slot_dims:
            raise ConfigError("model: at least one sparse slot is required")
        self.dense_dim, self.slots, self.num_tasks = dense_dim, list(slot_dims), num_tasks
        self.slot_dims = dict(slot_dims)
        self.flat_dim = dense_dim + sum(slot_dims.values())

    def _flat(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([dense, *[sparse[s] for s in self.slots]], dim=1)

    def _out(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1) if self.num_tasks == 1 else logits


class _Projector(nn.Module):
    """Brings every slot vector to width k (bias-free Linear where a slot's dim differs)."""

    def __init__(self, slot_dims: dict[str, int], k: int) -> None:
        super().__init__()
        self.slots = list(slot_dims)
        self.proj = nn.ModuleDict({s: nn.Linear(d, k, bias=False) for s, d in slot_dims.items() if d != k})

    def forward(self, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> [B, num_slots, k]."""
        return torch.stack([self.proj[s](sparse[s]) if s in self.proj else sparse[s] for s in self.slots], dim=1)


def _fm_interaction(v: torch.Tensor) -> torch.Tensor:
    """FM second order: v [B, F, k] -> [B]."""
    return 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1)


class LR(_Base):
    """Logistic regression: ``logit = bias + Σ_slots pooled_s[:, 0] + Linear(dense)`` over dim-1 embeddings."""

    def __init__(self, *, dense_dim: int, slot_dims: dict[str, int], num_tasks: int = 1) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        for s, d in slot_dims.items():
            if d != 1:
                raise ConfigError(f"model lr needs dim 1 for every slot; slot {s!r} has dim {d}")
        self.bias = nn.Parameter(torch.zeros(num_tasks))
        self.linear = nn.Linear(dense_dim, num_tasks, bias=False) if dense_dim else None

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.bias + torch.stack([sparse[s][:, 0] for s in self.slots], dim=1).sum(1, keepdim=True)
        if self.linear is not None:
            out = out + self.linear(dense)
        return self._out(out)


class FM(_Base):
    """Factorization machine: bias + linear on [dense, pooled] + pairwise interactions of slot vectors."""

    def __init__(self, *, dense_dim: int, slot_dims: dict[str, int], num_tasks: int = 1, k: int | None = None) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        k = _positive(k, "k") if k is not None else _common_dim(slot_dims)
        self.project = _Projector(slot_dims, k)
        self.linear = nn.Linear(self.flat_dim, num_tasks)

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        second = _fm_interaction(self.project(sparse)).unsqueeze(1)
        return self._out(self.linear(self._flat(dense, sparse)) + second)


class WideDeep(_Base):
    """Wide & Deep: a linear (wide) part and an MLP (deep) part over [dense, pooled], summed."""

    def __init__(
        self, *, dense_dim: int, slot_dims: dict[str, int], num_tasks: int = 1, hidden: list[int] | None = None
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        hidden = _sizes(hidden if hidden is not None else [256, 128], "hidden")
        self.wide = nn.Linear(self.flat_dim, num_tasks)
        self.deep = mlp(hidden, self.flat_dim)
        self.head = nn.Linear(hidden[-1], num_tasks)

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self._flat(dense, sparse)
        return self._out(self.wide(x) + self.head(self.deep(x)))


class DeepFM(FM):
    """DeepFM: the FM part plus an MLP over [dense, pooled] (shared embeddings), summed."""

    def __init__(
        self,
        *,
        dense_dim: int,
        slot_dims: dict[str, int],
        num_tasks: int = 1,
        k: int | None = None,
        hidden: list[int] | None = None,
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks, k=k)
        hidden = _sizes(hidden if hidden is not None else [256, 128], "hidden")
        self.deep = mlp(hidden, self.flat_dim)
        self.head = nn.Linear(hidden[-1], num_tasks)

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        fm = super().forward(dense, sparse)
        deep = self._out(self.head(self.deep(self._flat(dense, sparse))))
        return fm + deep


class DLRM(_Base):
    """DLRM: bottom MLP on dense, pairwise dot products of all vectors, top MLP.

    Args:
        bottom: bottom MLP sizes; the last is the interaction width d (slots of another dim are projected to d).
        top: top MLP sizes (then a Linear to num_tasks).
    """

    def __init__(
        self,
        *,
        dense_dim: int,
        slot_dims: dict[str, int],
        num_tasks: int = 1,
        bottom: list[int] | None = None,
        top: list[int] | None = None,
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        bottom = _sizes(bottom if bottom is not None else [64, 32], "bottom")
        top = _sizes(top if top is not None else [128, 64], "top")
        self.bottom = mlp(bottom, dense_dim) if dense_dim else None
        d = bottom[-1] if dense_dim else _common_dim(slot_dims)
        self.project = _Projector(slot_dims, d)
        n_vec = len(slot_dims) + (1 if dense_dim else 0)
        iu = torch.triu_indices(n_vec, n_vec, offset=1)
        self.register_buffer("iu", iu, persistent=False)
        in_top = iu.shape[1] + (d if dense_dim else 0)
        self.top = mlp(top, in_top)
        self.head = nn.Linear(top[-1], num_tasks)

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        v = self.project(sparse)
        parts = []
        if self.bottom is not None:
            x = self.bottom(dense)
            v = torch.cat([x.unsqueeze(1), v], dim=1)
            parts.append(x)
        z = torch.bmm(v, v.transpose(1, 2))[:, self.iu[0], self.iu[1]]
        return self._out(self.head(self.top(torch.cat([*parts, z], dim=1))))


class DCNv2(_Base):
    """DCN-v2: full-rank cross layers ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` stacked with an MLP."""

    def __init__(
        self,
        *,
        dense_dim: int,
        slot_dims: dict[str, int],
        num_tasks: int = 1,
        cross_layers: int = 3,
        hidden: list[int] | None = None,
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        _positive(cross_layers, "cross_layers")
        hidden = _sizes(hidden if hidden is not None else [256, 128], "hidden")
        self.cross = nn.ModuleList(nn.Linear(self.flat_dim, self.flat_dim) for _ in range(cross_layers))
        self.deep = mlp(hidden, self.flat_dim)
        self.head = nn.Linear(hidden[-1], num_tasks)

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = x = self._flat(dense, sparse)
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self._out(self.head(self.deep(x)))
