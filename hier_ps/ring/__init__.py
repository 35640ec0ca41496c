"""Distribution over many ranks: the process group, key ownership and the collectives of data-parallel training.

torchrun starts one process per GPU; :class:`Ring` joins its process group (NCCL on CUDA, gloo on CPU). Each rank owns
the keys with ``owner(key) == rank`` in all tiers (its own store directory and host cache). With the ``replicated``
working set every rank holds the pass's whole working set: each pulls the rows it owns and an all-reduce gives every
rank all of them (:mod:`hier_ps.ring.replicated`; for the rows a pass does not share with the last one, in the trainer's
stager, over a group of its own); per global batch the row gradients are summed across ranks and every replica applies
the same update; dense gradients go through DDP with :func:`sum_hook`. A checkpoint written by N ranks resumes on M
(:mod:`hier_ps.ring.reshard` re-owns its keys). With ``row_wise`` sharding each rank holds only the rows it owns, and
rows and their gradients travel by all-to-all (:mod:`hier_ps.ring.rowwise`). Each rank plans only its slice of every
global batch; the keys go to their owners by all-to-all (:mod:`hier_ps.ring.shard_plan`).
"""

from hier_ps.ring.group import Ring, owner, sum_hook
from hier_ps.ring.replicated import pull_replicated
from hier_ps.ring.reshard import remove_other_worlds, reshard_into, store_dir_for
from hier_ps.ring.rowwise import all_to_all_rows, fetch_rows, return_grads
from hier_ps.ring.shard_plan import RankPlan, RowExchange, plan_rank_pass, rank_examples

__all__ = [
    "RankPlan",
    "Ring",
    "RowExchange",
    "all_to_all_rows",
    "fetch_rows",
    "owner",
    "plan_rank_pass",
    "pull_replicated",
    "rank_examples",
    "remove_other_worlds",
    "reshard_into",
    "return_grads",
    "store_dir_for",
    "sum_hook",
]
