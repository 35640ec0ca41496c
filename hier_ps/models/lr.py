"""Logistic regression over dim-1 embeddings (the classic sparse LR of ads systems)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hier_ps.errors import ConfigError
from hier_ps.models.layers import CTRModel

__all__ = ["LR"]


class LR(CTRModel):
    """``logit_t = bias_t + Σ_slots pooled_s[:, 0] + (dense @ W^T)_t``.

    Every slot must have dim 1: its pooled embedding is the slot's weight sum. The sparse sum is shared by all tasks;
    each task has its own bias (initialized to 0) and its own dense weights (a bias-free ``Linear``, only when
    ``dense_dim > 0``).

    Example:
        >>> m = LR(dense_dim=2, slot_dims={"a": 1, "b": 1}, num_tasks=3)
        >>> m(torch.zeros(5, 2), {"a": torch.zeros(5, 1), "b": torch.zeros(5, 1)}).shape
        torch.Size([5, 3])

    Args:
        dense_dim: D.
        slot_dims: slot -> dim; every dim must be 1.
        num_tasks: T.

    Raises:
        ConfigError: a slot with dim != 1.
    """

    model_name = "lr"

    def __init__(self, *, dense_dim: int, slot_dims: Mapping[str, int], num_tasks: int = 1) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        for slot, dim in self.slot_dims.items():
            if dim != 1:
                raise ConfigError(f"model lr needs dim 1 for every slot; slot {slot!r} has dim {dim}")
        self.bias = nn.Parameter(torch.zeros(num_tasks))
        self.linear = nn.Linear(dense_dim, num_tasks, bias=False) if dense_dim > 0 else None

    def forward(self, dense: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]``, ``{s: [B, 1]}`` -> ``[B]`` or ``[B, T]``."""
        out = self.bias + torch.cat(self.pooled(sparse), dim=1).sum(1, keepdim=True)
        if self.linear is not None:
            out = out + self.linear(dense)
        return self.logits(out)
