"""DCN-v2 (Wang et al., WWW 2021), stacked structure with full-rank cross layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hier_ps.models.layers import MLP, CTRModel, check_positive_int, check_sizes

__all__ = ["DCNv2"]


class DCNv2(CTRModel):
    """Cross network then deep network: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``, then MLP and a ``Linear`` head.

    ``x_0 = [dense, concatenated pooled]`` of width ``F = D + Σ dims``; each cross layer has a full ``F x F`` matrix.

    Example:
        >>> m = DCNv2(dense_dim=3, slot_dims={"a": 4, "b": 8}, cross_layers=2, hidden=[16])
        >>> m(torch.zeros(5, 3), {"a": torch.zeros(5, 4), "b": torch.zeros(5, 8)}).shape
        torch.Size([5])

    Args:
        dense_dim: D.
        slot_dims: slot -> dim.
        num_tasks: T.
        cross_layers: number of cross layers (>= 1).
        hidden: deep MLP sizes (ReLU after each) on top of the cross output; ``[]`` leaves only the head.
    """

    model_name = "dcn_v2"

    def __init__(
        self,
        *,
        dense_dim: int,
        slot_dims: Mapping[str, int],
        num_tasks: int = 1,
        cross_layers: int = 3,
        hidden: Sequence[int] = (256, 128),
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        n_cross = check_positive_int(cross_layers, "cross_layers")
        self.cross = nn.ModuleList(nn.Linear(self.flat_dim, self.flat_dim) for _ in range(n_cross))
        self.deep = MLP(self.flat_dim, check_sizes(hidden, "hidden"))
        self.head = nn.Linear(self.deep.out_dim, num_tasks)

    def forward(self, dense: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]``, ``{s: [B, dim_s]}`` -> ``[B]`` or ``[B, T]``."""
        x0 = x = self.flat(dense, sparse)
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.logits(self.head(self.deep(x)))
