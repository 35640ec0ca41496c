"""The interface every tier below HBM implements: batched row access by key."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["RowTier"]


@runtime_checkable
class RowTier(Protocol):
    """Batched row access by key for one tier. Shapes: keys uint64[n], rows float32[n, width(table)].

    Rows are opaque fixed-width float32 records (the trainer packs embedding, optimizer state and metadata into
    them; tiers never interpret them); each table has its own key space and width. Keys are collision-free.
    ``isinstance(x, RowTier)`` checks that the methods exist (not their signatures).
    """

    def widths(self) -> dict[str, int]:
        """table -> row width in float32 units."""
        ...

    def read(self, table: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows float32[n, width], found bool[n]); rows of keys not found are zero. Keys are unique. The rows
        are a new C-contiguous array, the caller's to keep and change."""
        ...

    def write(self, table: str, keys: np.ndarray, rows: np.ndarray) -> None:
        """Inserts or overwrites rows (keys unique within one call)."""
        ...

    def delete(self, table: str, keys: np.ndarray) -> None:
        """Removes keys (absent keys are ignored)."""
        ...
