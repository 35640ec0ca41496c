"""Factorization machine (Rendle, ICDM 2010) over pooled slot vectors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hier_ps.models.layers import CTRModel, SlotProjector, check_positive_int, fm_interaction, most_common_dim

__all__ = ["FM"]


class FM(CTRModel):
    """``logit_t = b_t + w_t · [dense, pooled] + Σ_{i<j} <v_i, v_j>``.

    The first-order term is one ``Linear`` (with the bias) over ``[dense, concatenated pooled]``. The second-order term
    runs over the slot vectors ``v_i`` brought to width ``k`` (a bias-free ``Linear`` per slot whose dim is not ``k``)
    and is shared by all tasks.

    Example:
        >>> m = FM(dense_dim=0, slot_dims={"a": 4, "b": 4, "c": 8})  # k = 4; only 'c' is projected
        >>> m(torch.zeros(5, 0), {s: torch.zeros(5, d) for s, d in m.slot_dims.items()}).shape
        torch.Size([5])

    Args:
        dense_dim: D.
        slot_dims: slot -> dim.
        num_tasks: T.
        k: interaction width (default: the most common slot dim).
    """

    model_name = "fm"

    def __init__(
        self, *, dense_dim: int, slot_dims: Mapping[str, int], num_tasks: int = 1, k: int | None = None
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        self.k = check_positive_int(k, "k") if k is not None else most_common_dim(self.slot_dims)
        self.linear = nn.Linear(self.flat_dim, num_tasks)
        self.project = SlotProjector(self.slot_dims, self.k)

    def fm_logits(self, x: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """First plus second order: ``x = flat(dense, sparse)`` ``[B, flat_dim]``, ``{s: [B, dim_s]}`` -> ``[B, T]``."""
        return self.linear(x) + fm_interaction(self.project(sparse)).unsqueeze(1)

    def forward(self, dense: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]``, ``{s: [B, dim_s]}`` -> ``[B]`` or ``[B, T]``."""
        return self.logits(self.fm_logits(self.flat(dense, sparse), sparse))
