"""HBM tier: a pass's working set on the training device, pooled lookup, and the sparse optimizers.

:class:`WorkingSet` pulls a pass's rows from the tier below (initializing unseen keys with the pure function in
:mod:`hier_ps.hbm.rows`), serves pooled lookups, applies one optimizer update per unique row and batch, and pushes
rows back. The code here is pure torch: the CPU path, and the oracle that CUDA kernels are tested against.
"""

from hier_ps.hbm.optimizers import SparseOptimizer, make_sparse_optimizer
from hier_ps.hbm.rows import RowLayout, init_embeddings
from hier_ps.hbm.working_set import TableSpec, WorkingSet, WorkingSetTable, segment_sum

__all__ = [
    "RowLayout",
    "SparseOptimizer",
    "TableSpec",
    "WorkingSet",
    "WorkingSetTable",
    "init_embeddings",
    "make_sparse_optimizer",
    "segment_sum",
]
