"""Models: the dense part of a CTR model, built by name from ``model.name`` and ``model.args``.

A model is a ``torch.nn.Module`` whose ``forward(dense [B, D], sparse {slot: [B, dim_slot]})`` returns logits ``[B]``
for one task or ``[B, T]`` for T tasks; ``sparse`` holds each slot's pooled embedding and is read in the order of the
``slot_dims`` the model was built with, never in the dict's order. :func:`build_model` makes one from a built-in name
(:data:`BUILTIN_MODELS`: ``lr``, ``fm``, ``wide_deep``, ``deepfm``, ``dlrm``, ``dcn_v2``) or from a
``"package.module:ClassName"`` path, as ``Class(dense_dim=D, slot_dims={slot: dim}, num_tasks=T, **args)``; shared
pieces (:class:`CTRModel`, :class:`MLP`, interactions) live in :mod:`hier_ps.models.layers`.
"""

from __future__ import annotations

from hier_ps.models.dcn_v2 import DCNv2
from hier_ps.models.deepfm import DeepFM
from hier_ps.models.dlrm import DLRM
from hier_ps.models.fm import FM
from hier_ps.models.layers import MLP, CTRModel
from hier_ps.models.lr import LR
from hier_ps.models.registry import BUILTIN_MODELS, build_model, build_model_for
from hier_ps.models.wide_deep import WideDeep

__all__ = [
    "BUILTIN_MODELS",
    "DLRM",
    "FM",
    "LR",
    "MLP",
    "CTRModel",
    "DCNv2",
    "DeepFM",
    "WideDeep",
    "build_model",
    "build_model_for",
]
