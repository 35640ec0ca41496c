"""Wide & Deep (Cheng et al., DLRS 2016)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hier_ps.models.layers import MLP, CTRModel, check_sizes

__all__ = ["WideDeep"]


class WideDeep(CTRModel):
    """``logit = wide(x) + head(MLP(x))`` with ``x = [dense, concatenated pooled]``.

    Example:
        >>> m = WideDeep(dense_dim=3, slot_dims={"a": 4, "b": 8}, num_tasks=2, hidden=[16])
        >>> m(torch.zeros(5, 3), {"a": torch.zeros(5, 4), "b": torch.zeros(5, 8)}).shape
        torch.Size([5, 2])

    Args:
        dense_dim: D.
        slot_dims: slot -> dim.
        num_tasks: T.
        hidden: deep MLP layer sizes (ReLU after each); ``[]`` leaves only the head.
    """

    model_name = "wide_deep"

    def __init__(
        self,
        *,
        dense_dim: int,
        slot_dims: Mapping[str, int],
        num_tasks: int = 1,
        hidden: Sequence[int] = (256, 128),
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        self.wide = nn.Linear(self.flat_dim, num_tasks)
        self.deep = MLP(self.flat_dim, check_sizes(hidden, "hidden"))
        self.head = nn.Linear(self.deep.out_dim, num_tasks)

    def forward(self, dense: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]``, ``{s: [B, dim_s]}`` -> ``[B]`` or ``[B, T]``."""
        x = self.flat(dense, sparse)
        return self.logits(self.wide(x) + self.head(self.deep(x)))
