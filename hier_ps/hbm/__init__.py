"""HBM tier: a pass's working set on the training device, pooled lookup, and the sparse optimizers.

:class:`WorkingSet` pulls a pass's rows from the tier below (initializing unseen keys with the pure function in
:mod:`hier_ps.hbm.rows`), serves pooled lookups, applies one optimizer update per unique row and batch, and pushes
rows back. :mod:`hier_ps.hbm.batched` batches all slots of a batch into one lookup and one fused backward + update
per group of like tables (:class:`PassLookups`: every batch's lookup of a pass, assembled in C from its plan);
:mod:`hier_ps.hbm.kernels` runs the hot paths as CUDA kernels on CUDA devices and as their pure-torch twins (the
CPU path and the kernels' test oracle) elsewhere.
"""

from hier_ps.hbm.batched import BatchLookup, PassLookups, TableGroup, group_tables
from hier_ps.hbm.kernels import kernels_for
from hier_ps.hbm.optimizers import SparseOptimizer, make_sparse_optimizer
from hier_ps.hbm.rows import RowLayout, init_embeddings
from hier_ps.hbm.working_set import TableSpec, WorkingSet, WorkingSetTable, segment_sum

__all__ = [
    "BatchLookup",
    "PassLookups",
    "RowLayout",
    "SparseOptimizer",
    "TableGroup",
    "TableSpec",
    "WorkingSet",
    "WorkingSetTable",
    "group_tables",
    "init_embeddings",
    "kernels_for",
    "make_sparse_optimizer",
    "segment_sum",
]
