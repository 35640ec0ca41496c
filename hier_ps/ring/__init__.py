"""Distribution over many ranks: process groups, collectives, sharding of keys and working sets.

Not built yet: this package is where multi-rank data-parallel training (torchrun, NCCL/gloo, replicated and row-wise
working sets) will live. Today hier_ps trains in one process; ``hier-ps train`` under torchrun works with
``--nproc_per_node=1`` and refuses a larger world with a clear error.
"""

__all__: list[str] = []
