"""Model lookup: built-in names and ``package.module:Class`` paths, with argument checks that name the field."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from hier_ps.config import Config
from hier_ps.errors import ConfigError
from hier_ps.models.dcn_v2 import DCNv2
from hier_ps.models.deepfm import DeepFM
from hier_ps.models.dlrm import DLRM
from hier_ps.models.fm import FM
from hier_ps.models.lr import LR
from hier_ps.models.wide_deep import WideDeep

__all__ = ["BUILTIN_MODELS", "build_model", "build_model_for"]

#: Built-in model name -> class. Each class takes ``(*, dense_dim, slot_dims, num_tasks=1, **its own args)``.
BUILTIN_MODELS: dict[str, type[nn.Module]] = {
    "lr": LR,
    "fm": FM,
    "wide_deep": WideDeep,
    "deepfm": DeepFM,
    "dlrm": DLRM,
    "dcn_v2": DCNv2,
}

# Filled in by build_model from the data config, never from model.args.
_SHARED = ("dense_dim", "slot_dims", "num_tasks")


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _resolve(name: str) -> Callable[..., Any]:
    """Returns the class (or factory) that ``name`` refers to."""
    if ":" not in name:
        if name in BUILTIN_MODELS:
            return BUILTIN_MODELS[name]
        raise ConfigError(
            f"model.name: unknown model {name!r}{_hint(name, list(BUILTIN_MODELS)) or ';'} "
            f"built-ins are: {', '.join(BUILTIN_MODELS)}; or give 'package.module:ClassName'"
        )
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"model.name: {name!r} is not of the form 'package.module:ClassName'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        hint = ""
        if isinstance(e, ModuleNotFoundError) and e.name and module_name.startswith(e.name):
            hint = " (is its directory on PYTHONPATH?)"
        raise ConfigError(f"model.name: cannot import {name!r}: {_one_line(e)}{hint}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model.name: cannot import {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.name: {name!r} is not a class (it is of type {type(obj).__name__})")
    return obj


def _check_args(name: str, factory: Callable[..., Any], args: Mapping[str, Any], shared: dict[str, Any]) -> None:
    """Checks ``args`` against the constructor's signature; ConfigError names the first bad ``model.args`` key."""
    for key in args:
        if not isinstance(key, str):
            raise ConfigError(f"model.args: argument names must be strings, got {key!r}")
        if key in _SHARED:
            raise ConfigError(f"model.args.{key}: set from the data config, not a model argument")
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some callables have no introspectable signature; let the call decide
        return
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [
        p.name
        for p in params.values()
        if p.name not in _SHARED and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not takes_any:
        for key in args:
            if key not in allowed:
                raise ConfigError(
                    f"model.args.{key}: not an argument of model {name!r}{_hint(key, allowed)} "
                    f"(arguments: {', '.join(allowed) or 'none'})"
                )
    try:
        sig.bind(**shared, **args)
    except TypeError as e:
        raise ConfigError(f"model.args: model {name!r} cannot take these arguments: {e}") from None


def build_model(
    name: str,
    *,
    dense_dim: int,
    slot_dims: Mapping[str, int],
    num_tasks: int = 1,
    args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Builds a model by built-in name or ``"package.module:ClassName"``.

    The class is called as ``Class(dense_dim=D, slot_dims={slot: dim}, num_tasks=T, **args)``. Weights come from
    torch's global RNG, so seeding torch first makes them reproducible.

    Example:
        >>> m = build_model("dlrm", dense_dim=13, slot_dims={"C1": 16, "C2": 16}, args={"top": [64]})
        >>> m(torch.zeros(4, 13), {"C1": torch.zeros(4, 16), "C2": torch.zeros(4, 16)}).shape
        torch.Size([4])

    Args:
        name: ``lr``, ``fm``, ``wide_deep``, ``deepfm``, ``dlrm``, ``dcn_v2``, or ``"pkg.mod:Class"``.
        dense_dim: D, the number of dense features (may be 0).
        slot_dims: slot -> pooled embedding width, in the order the model reads the slots.
        num_tasks: T, logits per example: output ``[B]`` when 1, ``[B, T]`` otherwise.
        args: the model's own keyword arguments (``model.args``).

    Returns:
        The model, an ``nn.Module`` with ``forward(dense [B, D], sparse {slot: [B, dim]})``.

    Raises:
        ConfigError: unknown name, failed import, unknown or bad ``model.args``, or bad shared inputs.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model.name: expected a built-in name or 'package.module:ClassName', got {name!r}")
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"model.args: expected a mapping of argument name to value, got {args!r}")
    factory = _resolve(name)
    shared = {"dense_dim": dense_dim, "slot_dims": dict(slot_dims), "num_tasks": num_tasks}
    _check_args(name, factory, args, shared)
    model = factory(**shared, **args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name: {name!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model_for(cfg: Config) -> nn.Module:
    """The model an experiment config names, sized by its data section (dense features, slots, label columns)."""
    return build_model(
        cfg.model.name,
        dense_dim=len(cfg.data.dense),
        slot_dims={s.name: cfg.table(s.table).dim for s in cfg.data.sparse},
        num_tasks=len(cfg.data.labels),
        args=cfg.model.args,
    )
