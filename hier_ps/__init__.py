"""hier_ps: a GPU-first hierarchical embedding trainer for ads and recommendation models.

The full model lives in a three-tier store (SSD -> host RAM -> GPU HBM). Before each pass (a chunk of training data)
the pass's working set of keys is found, its rows are loaded once into HBM, and the whole pass trains there; updated
rows flow back down. Entry points: :func:`load_config`, :class:`Trainer`, :func:`build_model`, :func:`export_run`,
:class:`Predictor`, the ``hier-ps`` CLI.

Importing this package does no work: no device, disk or network is touched until a Trainer is made. Imported before
torch, it sets a shorter OpenMP spin (``GOMP_SPINCOUNT``, see below) unless the environment sets one.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

# torch's CPU thread pool is GNU OpenMP, whose idle workers spin for 300,000 rounds after each parallel region before
# they sleep. On a CPU device the pipeline's threads (read, plan, pull, push) and the C kernels' threads need those
# cores between the train step's ops; a shorter spin gave the whole e2e_bench run 4-7% on 2 cores and did not slow
# the PyTorch baseline (benchmarks/RESULTS.md, session 8). libgomp reads it once, when torch loads: so only before
# that, and only where the user chose no wait policy of their own.
if "torch" not in sys.modules and "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "20000"

from hier_ps.config import Config, load_config
from hier_ps.errors import ConfigError, DataError, ExportError, HierPSError, StoreError, StoreLockedError

if TYPE_CHECKING:
    from hier_ps.export import export_run
    from hier_ps.models import build_model
    from hier_ps.predictor import Predictor
    from hier_ps.trainer import Trainer

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "ExportError",
    "HierPSError",
    "Predictor",
    "StoreError",
    "StoreLockedError",
    "Trainer",
    "build_model",
    "export_run",
    "load_config",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # torch-heavy parts load on first use, so `hier-ps gen-data` and config checks start fast.
    if name == "Trainer":
        from hier_ps.trainer import Trainer

        return Trainer
    if name == "build_model":
        from hier_ps.models import build_model

        return build_model
    if name == "Predictor":
        from hier_ps.predictor import Predictor

        return Predictor
    if name == "export_run":
        from hier_ps.export import export_run

        return export_run
    raise AttributeError(f"module 'hier_ps' has no attribute {name!r}")
