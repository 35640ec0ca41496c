"""The HBM tier: a pass's working set on the training device, pooled lookup and the fused sparse update.

A :class:`WorkingSet` holds, for every table, the rows of the pass's working set as device tensors (embeddings and
optimizer state; metadata stays on the host). It is *pulled* from the tier below (rows not found there are
initialized), trains the whole pass, and is *pushed* back with updated metadata.

Example:
    >>> import numpy as np, torch
    >>> from hier_ps.config import SparseOptimizerConfig, InitConfig
    >>> spec = TableSpec("t", dim=2, init=InitConfig(name="constant", value=1.0),
    ...                  optimizer=SparseOptimizerConfig(name="sgd", lr=1.0))
    >>> t = WorkingSetTable.from_rows(spec, np.array([3, 8], np.uint64),
    ...                               spec.layout.new_rows(0, "t", np.array([3, 8], np.uint64), spec.init), "cpu")
    >>> t.pooled(torch.tensor([0, 1, 1]), torch.tensor([0, 2, 3]), "sum").tolist()
    [[2.0, 2.0], [1.0, 1.0]]
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from hier_ps.config import Config, InitConfig, RowDtype, SparseOptimizerConfig
from hier_ps.hbm.batched import TableGroup, group_tables
from hier_ps.hbm.kernels import kernels_for
from hier_ps.hbm.optimizers import SparseOptimizer, make_sparse_optimizer
from hier_ps.hbm.rows import RowLayout
from hier_ps.tier import RowTier

__all__ = ["TableSpec", "WorkingSet", "WorkingSetTable", "segment_sum", "table_specs"]


@dataclass
class TableSpec:
    """What the HBM tier needs to know of one table."""

    name: str
    dim: int
    init: InitConfig
    optimizer: SparseOptimizerConfig
    zero_unseen: bool = False  #: outside training, keys without a row read as zeros (tables with admission)
    dtype: RowDtype = RowDtype.FP32  #: embedding storage on the device (lower tiers: float32 of the same values)
    opt: SparseOptimizer = field(init=False)
    layout: RowLayout = field(init=False)

    def __post_init__(self) -> None:
        self.opt = make_sparse_optimizer(self.optimizer)
        self.layout = RowLayout(self.dim, self.opt.state_width(self.dim))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the device embedding storage."""
        return _TORCH_DTYPES[RowDtype(self.dtype)]

    @property
    def device_row_bytes(self) -> int:
        """Device bytes of one row: the embedding in its dtype plus float32 optimizer state."""
        return self.dim * self.torch_dtype.itemsize + self.layout.state * 4


_TORCH_DTYPES = {RowDtype.FP32: torch.float32, RowDtype.FP16: torch.float16, RowDtype.BF16: torch.bfloat16}


def table_specs(cfg: Config) -> dict[str, TableSpec]:
    """The TableSpec of every table of an experiment config, by name."""
    return {
        t.name: TableSpec(
            t.name, t.dim, t.init, cfg.optimizer_of(t.name), zero_unseen=t.admission is not None, dtype=t.dtype
        )
        for t in cfg.tables
    }


def segment_sum(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sums rows of `src` that share an index, deterministically.

    Args:
        src: float[m, dim] one gradient per occurrence.
        index: int64[m] target row in [0, n) of each occurrence.
        n: number of target rows.

    Returns:
        float[n, dim]. On CPU, ``index_add_`` adds in occurrence order; on CUDA (where ``index_add_`` uses float
        atomics) the occurrences are sorted stably by target and reduced per segment, so the bits never vary.
    """
    if src.device.type == "cpu":
        return torch.zeros(n, src.shape[1], dtype=src.dtype).index_add_(0, index, src)
    order = torch.sort(index, stable=True).indices
    lengths = torch.bincount(index, minlength=n)
    return torch.segment_reduce(src[order], "sum", lengths=lengths, axis=0)


class WorkingSetTable:
    """One table's working set on the device: emb T[n, dim] (T: the table's dtype), state float32[n, S], meta
    int64[n, 2] (host).

    With `null_row`, emb and state hold one more row after the keys' rows (local index n): it reads as zeros and
    takes no update; occurrences of keys that admission turned away point at it.

    An `emb` given in another dtype is converted (rounded to nearest even) to the table's dtype. Rows handed to the
    tiers below are the float32 values of the stored ones, which convert back to the same bits: so a row that goes
    down and comes back is unchanged, and tiering stays lossless for 16-bit rows too.
    """

    def __init__(self, spec: TableSpec, keys: np.ndarray, emb: torch.Tensor, state: torch.Tensor, meta: np.ndarray):
        if emb.dtype != spec.torch_dtype:
            emb = emb.to(spec.torch_dtype)
        self.spec, self.keys, self.emb, self.state, self.meta = spec, keys, emb, state, meta
        self.null = len(keys) if len(emb) > len(keys) else None

    @classmethod
    def from_rows(
        cls,
        spec: TableSpec,
        keys: np.ndarray,
        rows: np.ndarray,
        device: str | torch.device,
        null_row: bool = False,
    ) -> WorkingSetTable:
        """Loads packed rows float32[n, width] onto `device` (plus a zero null row when asked)."""
        emb, state, meta = spec.layout.unpack(rows)
        if null_row:
            emb = np.concatenate([emb, np.zeros((1, emb.shape[1]), np.float32)])
            state = np.concatenate([state, np.zeros((1, state.shape[1]), np.float32)])
        return cls(spec, keys, torch.from_numpy(emb).to(device), torch.from_numpy(state).to(device), meta)

    @property
    def nbytes(self) -> int:
        """Device bytes held."""
        return self.emb.numel() * self.emb.element_size() + self.state.numel() * 4

    def pooled(self, idx: torch.Tensor, offsets: torch.Tensor, pooling: str) -> torch.Tensor:
        """Pooled lookup of one slot: idx int64[nnz] local rows, offsets int64[B+1] -> float32[B, dim]."""
        if self.emb.dtype == torch.float32:
            return F.embedding_bag(idx, self.emb, offsets, mode=pooling, include_last_offset=True)
        div = (offsets[1:] - offsets[:-1]).clamp(min=1).float() if pooling == "mean" else None
        return kernels_for(self.emb.device).pooled(self.emb, idx, offsets, div)

    def apply(self, urows: torch.Tensor, grad: torch.Tensor) -> None:
        """One optimizer update of the unique rows `urows` int64[u] with summed gradients float32[u, dim]."""
        kernels_for(self.emb.device).update(self.spec.opt, self.emb, self.state, urows, grad)
        if self.null is not None:  # cheaper than masking it out of every batch: the null row stays zero
            self.emb[self.null] = 0.0
            self.state[self.null] = 0.0

    def rows(self) -> np.ndarray:
        """Packed rows float32[n, width] of the keys on the host (the null row is not one of them)."""
        n = len(self.keys)
        return self.spec.layout.pack(self.emb[:n].float().cpu().numpy(), self.state[:n].cpu().numpy(), self.meta)


class WorkingSet:
    """All tables' working sets of one pass."""

    def __init__(self, tables: dict[str, WorkingSetTable]) -> None:
        self.tables = tables
        self._groups: list[TableGroup] | None = None

    def groups(self) -> list[TableGroup]:
        """The tables grouped for table-batched lookups and updates (see :mod:`hier_ps.hbm.batched`); built on first
        use, after which the tables' emb and state are views of their group's storage."""
        if self._groups is None:
            self._groups = group_tables(self.tables)
        return self._groups

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tables.values())

    @staticmethod
    def fetch(
        tier: RowTier,
        specs: dict[str, TableSpec],
        keys: dict[str, np.ndarray],
        seed: int,
        *,
        for_training: bool = True,
        pool: Executor | None = None,
    ) -> dict:
        """Pull stage: packed rows of every working-set key from `tier`; keys it lacks get their initial rows
        (outside training, in tables with ``zero_unseen``: zero rows, as admission would have them read).

        Args:
            pool: computes the initial rows of the tables side by side on these threads (the tier is read in the
                caller's thread, table after table); the rows are the same.

        Returns:
            table -> (rows float32[n, width], number of keys the tier lacked).
        """
        out, todo = {}, []
        for name, k in keys.items():
            spec = specs[name]
            rows, found = tier.read(name, k)
            missing = np.flatnonzero(~found)
            if len(missing) and (for_training or not spec.zero_unseen):
                todo.append((name, rows, missing))
            out[name] = (rows, len(missing))

        def init(job: tuple[str, np.ndarray, np.ndarray]) -> None:
            name, rows, missing = job
            spec = specs[name]
            rows[missing] = spec.layout.new_rows(seed, name, keys[name][missing], spec.init)

        if pool is not None and len(todo) > 1:
            list(pool.map(init, todo))
        else:
            for job in todo:
                init(job)
        return out

    @classmethod
    def load(
        cls,
        specs: dict[str, TableSpec],
        keys: dict[str, np.ndarray],
        rows: dict[str, np.ndarray],
        device: str | torch.device,
        null_rows: frozenset[str] | set[str] = frozenset(),
    ) -> WorkingSet:
        """Load stage: packed host rows onto the device; tables in `null_rows` get a null row (see PassPlan)."""
        return cls({n: WorkingSetTable.from_rows(specs[n], keys[n], rows[n], device, n in null_rows) for n in keys})

    def push(
        self,
        tier: RowTier,
        counts: dict[str, np.ndarray],
        pass_index: int,
        owned: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Push stage: writes rows back to `tier` with count += occurrences and last_pass = pass_index.

        Args:
            owned: table -> bool[n]: write only these rows (the ones this rank owns); default all.

        Returns:
            Bytes written.
        """
        nbytes = 0
        for name, t in self.tables.items():
            t.meta[:, 0] += counts[name]
            t.meta[:, 1] = pass_index
            rows, keys = t.rows(), t.keys
            if owned is not None:
                rows, keys = rows[owned[name]], keys[owned[name]]
            tier.write(name, keys, rows)
            nbytes += rows.nbytes
        return nbytes
