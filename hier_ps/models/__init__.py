"""Models: built-in CTR models by name, and custom ones by ``package.module:Class``.

A model is an ``nn.Module`` whose ``forward(dense [B, D], sparse {slot: [B, dim]})`` returns logits ``[B]`` (one task)
or ``[B, T]``. :func:`build_model` constructs one as ``Class(dense_dim=D, slot_dims={slot: dim}, num_tasks=T, **args)``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect

from torch import nn

from hier_ps.errors import ConfigError
from hier_ps.models.builtin import DLRM, FM, LR, DCNv2, DeepFM, WideDeep

__all__ = ["BUILTIN_MODELS", "build_model"]

BUILTIN_MODELS: dict[str, type[nn.Module]] = {
    "lr": LR,
    "fm": FM,
    "wide_deep": WideDeep,
    "deepfm": DeepFM,
    "dlrm": DLRM,
    "dcn_v2": DCNv2,
}


def _resolve(name: str) -> type:
    if ":" not in name:
        if name in BUILTIN_MODELS:
            return BUILTIN_MODELS[name]
        close = difflib.get_close_matches(name, list(BUILTIN_MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"model.name: unknown model {name!r}{hint} built-ins are: {', '.join(BUILTIN_MODELS)}; "
            "or give 'package.module:Class'"
        )
    mod_name, _, attr = name.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"model.name: cannot import {mod_name!r} ({e})") from None
    cls = getattr(mod, attr, None)
    if cls is None:
        raise ConfigError(f"model.name: module {mod_name!r} has no attribute {attr!r}")
    return cls


def build_model(
    name: str, *, dense_dim: int, slot_dims: dict[str, int], num_tasks: int = 1, args: dict | None = None
) -> nn.Module:
    """Builds a model by built-in name or ``package.module:Class``.

    Args:
        name: ``lr``, ``fm``, ``wide_deep``, ``deepfm``, ``dlrm``, ``dcn_v2``, or ``"pkg.mod:Class"``.
        dense_dim: number of dense features D.
        slot_dims: slot -> pooled embedding width, in the order the model reads them.
        num_tasks: number of logits per example.
        args: the model's own keyword arguments (``model.args``).

    Raises:
        ConfigError: unknown name, failed import, or bad ``model.args``.
    """
    cls = _resolve(name)
    args = dict(args or {})
    if cls in BUILTIN_MODELS.values():
        params = inspect.signature(cls.__init__).parameters
        allowed = [p for p in params if p not in ("self", "dense_dim", "slot_dims", "num_tasks")]
        for key in args:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"model.args.{key}: not an argument of model {name!r}{hint} "
                    f"(arguments: {', '.join(allowed) or 'none'})"
                )
    try:
        model = cls(dense_dim=dense_dim, slot_dims=dict(slot_dims), num_tasks=num_tasks, **args)
    except TypeError as e:
        raise ConfigError(f"model.args: cannot construct {name!r}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name!r} did not build a torch.nn.Module")
    return model
