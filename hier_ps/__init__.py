"""hier_ps: a GPU-first hierarchical embedding trainer for ads and recommendation models.

The full model lives in a three-tier store (SSD -> host RAM -> GPU HBM). Before each pass (a chunk of training data)
the pass's working set of keys is found, its rows are loaded once into HBM, and the whole pass trains there; updated
rows flow back down. Entry points: :func:`load_config`, :class:`Trainer`, :func:`build_model`, :func:`export_run`,
:class:`Predictor`, the ``hier-ps`` CLI.

Importing this package does no work: no device, disk or network is touched until a Trainer is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
