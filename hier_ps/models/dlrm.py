"""DLRM (Naumov et al., 2019): bottom MLP, pairwise dot-product interaction, top MLP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hier_ps.errors import ConfigError
from hier_ps.models.layers import MLP, CTRModel, SlotProjector, check_sizes, dot_interaction, most_common_dim

__all__ = ["DLRM"]


class DLRM(CTRModel):
    """DLRM with dot interaction.

    The bottom MLP (ReLU after every layer) maps dense ``[B, D]`` to ``x [B, d]``, ``d = bottom[-1]``. Slot vectors
    are brought to width ``d`` (bias-free ``Linear`` where their dim differs). The vectors ``[x, v_1, ..., v_S]`` (in
    ``slot_dims`` order) give all pairwise dot products ``(i, j)``, ``i < j``; ``[x, dots]`` feeds the top MLP and a
    ``Linear`` to T logits. Without dense features there is no bottom MLP and no ``x``, and ``d`` is the most common
    slot dim.

    Example:
        >>> m = DLRM(dense_dim=13, slot_dims={"a": 16, "b": 16, "c": 8}, num_tasks=2, bottom=[32, 16], top=[32])
        >>> m(torch.zeros(5, 13), {s: torch.zeros(5, d) for s, d in m.slot_dims.items()}).shape  # 4 vectors, 6 dots
        torch.Size([5, 2])

    Args:
        dense_dim: D.
        slot_dims: slot -> dim.
        num_tasks: T.
        bottom: bottom MLP sizes (non-empty); the last is the interaction width d. Unused when ``dense_dim == 0``.
        top: top MLP sizes (ReLU after each), followed by a ``Linear`` to T; ``[]`` leaves only that ``Linear``.

    Raises:
        ConfigError: bad sizes, or fewer than two vectors to interact (one slot and no dense features).
    """

    model_name = "dlrm"

    def __init__(
        self,
        *,
        dense_dim: int,
        slot_dims: Mapping[str, int],
        num_tasks: int = 1,
        bottom: Sequence[int] = (64, 32),
        top: Sequence[int] = (128, 64),
    ) -> None:
        super().__init__(dense_dim=dense_dim, slot_dims=slot_dims, num_tasks=num_tasks)
        bottom = check_sizes(bottom, "bottom", allow_empty=False)
        top = check_sizes(top, "top")
        num_vectors = len(self.slots) + (1 if dense_dim > 0 else 0)
        if num_vectors < 2:
            raise ConfigError(
                "model dlrm needs at least 2 vectors to interact; got 1 slot and no dense features "
                "(add a slot or dense features, or use another model)"
            )
        self.bottom = MLP(dense_dim, bottom) if dense_dim > 0 else None
        self.d = bottom[-1] if dense_dim > 0 else most_common_dim(self.slot_dims)
        self.project = SlotProjector(self.slot_dims, self.d)
        # Pair order is part of the model (the top MLP's input layout), so it is fixed once here.
        self.register_buffer("iu", torch.triu_indices(num_vectors, num_vectors, offset=1), persistent=False)
        top_in = self.iu.shape[1] + (self.d if dense_dim > 0 else 0)
        self.top = MLP(top_in, top)
        self.head = nn.Linear(self.top.out_dim, num_tasks)

    def forward(self, dense: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, D]``, ``{s: [B, dim_s]}`` -> ``[B]`` or ``[B, T]``."""
        vecs = self.project.vectors(sparse)  # S x [B, d]
        if self.bottom is None:
            z = dot_interaction(vecs, self.iu, keep_first=False)
        else:
            z = dot_interaction([self.bottom(dense), *vecs], self.iu, keep_first=True)  # [x, dots]
        return self.logits(self.head(self.top(z)))
