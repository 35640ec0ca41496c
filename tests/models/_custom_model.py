"""Custom models imported by path in the tests, e.g. ``tests.models._custom_model:Tiny``."""

from __future__ import annotations

import torch


class Tiny(torch.nn.Module):
    """One Linear over ``[dense, pooled]``, times ``scale``."""

    def __init__(self, *, dense_dim: int, slot_dims: dict[str, int], num_tasks: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        self.slots, self.scale = list(slot_dims), scale
        self.out = torch.nn.Linear(dense_dim + sum(slot_dims.values()), num_tasks)

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scale * self.out(torch.cat([dense, *[sparse[s] for s in self.slots]], 1)).squeeze(-1)


class NeedsWidth(torch.nn.Module):
    """Has a required argument of its own."""

    def __init__(self, *, dense_dim: int, slot_dims: dict[str, int], num_tasks: int = 1, width: int) -> None:
        super().__init__()
        self.width = width


def not_a_module(**kwargs: object) -> dict:
    """A factory that returns something other than an nn.Module."""
    return dict(kwargs)


NOT_CALLABLE = 3
