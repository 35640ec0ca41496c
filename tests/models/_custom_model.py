"""A custom model imported by path in the tests ('tests.models._custom_model:Tiny')."""

import torch


class Tiny(torch.nn.Module):
    def __init__(self, *, dense_dim: int, slot_dims: dict, num_tasks: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        self.slots, self.scale = list(slot_dims), scale
        self.out = torch.nn.Linear(dense_dim + sum(slot_dims.values()), num_tasks)

    def forward(self, dense, sparse):
        return self.scale * self.out(torch.cat([dense, *[sparse[s] for s in self.slots]], 1)).squeeze(-1)
