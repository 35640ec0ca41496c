"""DeepFM (Guo et al., IJCAI 2017): an FM and an MLP over the same embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hier_ps.models.fm import FM
from hier_ps.models.layers import MLP, check_sizes

__all__ = ["DeepFM"]


class DeepFM(FM):
    """``logit = FM(x) + head(MLP([dense, concatenated pooled]))``; see :class:`FM` for the FM part.

    Example:
        >>> m = DeepFM(dense_dim=0, slot_dims={"a": 4, "b": 8}, hidden=[16])
        >>> m(torch.zeros(5, 0), {"a": torch.zeros(5, 4), "b": torch.zeros(5, 8)}).shape
        torch.Size([5])

    Args:
        dense_dim: D.
        slot_dims: slot -> dim.
        num_tasks: T.
        k: FM interaction width (default: the most common slot dim).
        hidden: deep MLP layer sizes (ReLU after each); ``[]`` leaves only the head.
    """

    model_name = "deepfm"

    def __init__(
        self,
        *,
        dense_dim: int,
        slot_dims: Mapping[str, int],
        num_tasks: int = 1,
        k: int | None = None,
        hidden: Sequence[int] = (256, 128),
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks, k=k)
        self.deep = MLP(self.flat_dim, check_sizes(hidden, "hidden"))
        self.head = nn.Linear(self.deep.out_dim, num_tasks)

    def forward(self, dense: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]``, ``{s: [B, dim_s]}`` -> ``[B]`` or ``[B, T]``."""
        x = self.flat(dense, sparse)
        return self.logits(self.fm_logits(x, sparse) + self.head(self.deep(x)))
