"""Building blocks shared by the built-in models: the base class, MLPs, slot projection, interactions, arg checks.

Every built-in model derives from :class:`CTRModel`, which validates the inputs every model shares
(``dense_dim``, ``slot_dims``, ``num_tasks``) and fixes the slot order to the order of ``slot_dims``.
Custom models may derive from it too, but need not: the trainer only needs the ``forward`` contract.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from hier_ps.errors import ConfigError

__all__ = [
    "MLP",
    "CTRModel",
    "SlotProjector",
    "bmm_interaction",
    "check_positive_int",
    "check_sizes",
    "dot_interaction",
    "fm_interaction",
    "most_common_dim",
    "pairwise_dots",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(value: object, key: str) -> int:
    """Returns ``value`` if it is an int > 0, else raises ConfigError naming ``model.args.<key>``."""
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"model.args.{key}: expected a positive integer, got {value!r}")
    return value


def check_sizes(value: object, key: str, *, allow_empty: bool = True) -> list[int]:
    """Returns ``value`` as a list of layer sizes, or raises ConfigError naming ``model.args.<key>``.

    Args:
        value: a list or tuple of positive ints, e.g. ``[256, 128]``.
        key: the argument name, for the message.
        allow_empty: whether ``[]`` (no hidden layer) is accepted.
    """
    if (
        not isinstance(value, list | tuple)
        or not all(_is_int(v) and v > 0 for v in value)
        or (not value and not allow_empty)
    ):
        what = "a list of positive integers" if allow_empty else "a non-empty list of positive integers"
        raise ConfigError(f"model.args.{key}: expected {what}, got {value!r}")
    return list(value)


def most_common_dim(slot_dims: Mapping[str, int]) -> int:
    """The most frequent slot dim; ties go to the dim seen first in ``slot_dims`` order (deterministic).

    Example:
        >>> most_common_dim({"a": 8, "b": 16, "c": 16})
        16
    """
    return Counter(slot_dims.values()).most_common(1)[0][0]


class MLP(nn.Sequential):
    """``Linear`` + ``ReLU`` for each size in ``sizes``; no layers (identity) when ``sizes`` is empty.

    Example:
        >>> m = MLP(10, [32, 16])
        >>> m(torch.zeros(4, 10)).shape, m.out_dim
        (torch.Size([4, 16]), 16)
    """

    def __init__(self, in_dim: int, sizes: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        for size in sizes:
            layers += [nn.Linear(in_dim, size), nn.ReLU()]
            in_dim = size
        super().__init__(*layers)
        self.out_dim = in_dim


class SlotProjector(nn.Module):
    """Brings every slot vector to width ``k`` and stacks them, in ``slot_dims`` order.

    A slot whose dim differs from ``k`` goes through its own bias-free ``Linear(dim, k)``; a slot of dim ``k`` is used
    as is. Projections live in a ``ModuleList`` by slot position, so any slot name (dots included) works.

    Example:
        >>> p = SlotProjector({"a": 4, "b": 8}, k=4)  # only 'b' gets a projection
        >>> p({"b": torch.zeros(3, 8), "a": torch.zeros(3, 4)}).shape
        torch.Size([3, 2, 4])
    """

    def __init__(self, slot_dims: Mapping[str, int], k: int) -> None:
        super().__init__()
        self.slots = tuple(slot_dims)
        self.k = k
        self.proj = nn.ModuleList(nn.Identity() if d == k else nn.Linear(d, k, bias=False) for d in slot_dims.values())

    def vectors(self, sparse: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The projected slot vectors ``[B, k]``, in ``slot_dims`` order (for a caller that stacks them with others
        in one copy)."""
        return [p(sparse[s]) for s, p in zip(self.slots, self.proj, strict=True)]

    def forward(self, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Returns ``[B, num_slots, k]``."""
        return torch.stack(self.vectors(sparse), dim=1)


def fm_interaction(v: torch.Tensor) -> torch.Tensor:
    """FM second-order term ``Σ_{i<j} <v_i, v_j>`` computed as ``0.5 * ((Σ_i v_i)^2 - Σ_i v_i^2).sum(-1)``.

    Example:
        >>> fm_interaction(torch.ones(2, 3, 4))  # 3 pairs of dot products 4 each
        tensor([12., 12.])

    Args:
        v: ``[B, F, k]`` field vectors.

    Returns:
        ``[B]``.
    """
    return 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1)


def pairwise_dots(v: torch.Tensor, iu: torch.Tensor) -> torch.Tensor:
    """Dot products of all vector pairs ``(i, j)``, ``i < j``, in ``torch.triu_indices(F, F, 1)`` order.

    Example:
        >>> v = torch.ones(2, 3, 4)
        >>> pairwise_dots(v, torch.triu_indices(3, 3, offset=1))
        tensor([[4., 4., 4.],
                [4., 4., 4.]])

    Args:
        v: ``[B, F, d]`` vectors.
        iu: ``[2, F*(F-1)/2]`` strict upper-triangle indices of an ``F x F`` matrix.

    Returns:
        ``[B, F*(F-1)/2]``, pair ``(0, 1)`` first, then ``(0, 2)`` ... ``(F-2, F-1)``.
    """
    f, n_pairs = v.shape[1], iu.shape[1]
    upper = iu[0] * f + iu[1]
    # Where each of the F x F products' gradient comes from: its pair's, at (i, j) and at (j, i); the diagonal from
    # column n_pairs, a zero the backward appends.
    sym = torch.full((f * f,), n_pairs, dtype=torch.int64, device=iu.device)
    pairs = torch.arange(n_pairs, device=iu.device)
    sym[upper] = pairs
    sym[iu[1] * f + iu[0]] = pairs
    return _PairwiseDots.apply(v, upper, sym)


class _PairwiseDots(torch.autograd.Function):
    """``bmm(v, vᵀ)`` flattened, at the pairs' flat positions ``upper`` (``i * F + j``), with a backward of one bmm.

    The forward is one bmm and one flat ``index_select``. The gradient of ``v vᵀ`` with respect to ``v`` is
    ``(G + Gᵀ) v``, G the gradient of the ``F x F`` products: G + Gᵀ is built directly by one gather, each position
    taking its pair's gradient (``sym``: at ``(i, j)`` and at ``(j, i)``; the diagonal takes a zero column appended
    to the pairs), then one bmm, where autograd's own backward runs two bmms and adds them. Every value is copied,
    never summed, so the result is exact and does not depend on any order (deterministic on CUDA too).
    """

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, upper: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v, sym)
        return torch.bmm(v, v.transpose(1, 2)).flatten(1).index_select(1, upper)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        v, sym = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        b, f, _ = v.shape
        padded = torch.cat([g, g.new_zeros(b, 1)], dim=1)  # column n_pairs: the diagonal's zero
        return torch.bmm(padded.index_select(1, sym).view(b, f, f), v), None, None


def dot_interaction(vecs: Sequence[torch.Tensor], iu: torch.Tensor, *, keep_first: bool) -> torch.Tensor:
    """DLRM's interaction of F vectors ``[B, d]``: ``[v_0, pairwise_dots]`` (``keep_first``) or the dots alone.

    The same as ``pairwise_dots(torch.stack(vecs, 1), iu)`` after ``vecs[0]`` (``torch.cat``), which is what runs on
    CUDA, in float64, or with ``HIER_PS_KERNELS=torch``. Float32 vectors on the CPU take one C kernel each way
    (``cpu_kernels/interaction.c``): no stacking copy, bmm, gathers or concatenation, the vectors read where they
    are. It agrees with the bmm path to rounding and gives the same bits with any number of threads.

    Example:
        >>> x, v = torch.ones(2, 3), torch.full((2, 3), 2.0)
        >>> dot_interaction([x, v], torch.triu_indices(2, 2, offset=1), keep_first=True)
        tensor([[1., 1., 1., 6.],
                [1., 1., 1., 6.]])

    Args:
        vecs: F >= 2 vectors ``[B, d]``.
        iu: ``torch.triu_indices(F, F, offset=1)`` (the C kernel computes the pairs in that order).
        keep_first: put ``vecs[0]`` before the dots.

    Returns:
        ``[B, d + F*(F-1)/2]`` with ``keep_first``, else ``[B, F*(F-1)/2]``.
    """
    vecs = list(vecs)
    from hier_ps.hbm import cpu_kernels  # the models import no tier at module load

    if _C_INTERACTION and cpu_kernels.interaction_fits(vecs) and _is_triu(iu, len(vecs)) and cpu_kernels.optional():
        return _CDotInteraction.apply(keep_first, *vecs)
    z = pairwise_dots(torch.stack(vecs, dim=1), iu)  # one stacking copy
    return torch.cat([vecs[0], z], dim=1) if keep_first else z


_TRIU: dict[int, torch.Tensor] = {}
_C_INTERACTION = True  # False inside bmm_interaction()


@contextlib.contextmanager
def bmm_interaction() -> Iterator[None]:
    """Within it, :func:`dot_interaction` takes the bmm path on the CPU too (for comparisons: e2e_bench runs its
    PyTorch baselines both ways and keeps the faster)."""
    global _C_INTERACTION
    before, _C_INTERACTION = _C_INTERACTION, False
    try:
        yield
    finally:
        _C_INTERACTION = before


def _is_triu(iu: torch.Tensor, f: int) -> bool:
    """Whether ``iu`` is ``torch.triu_indices(f, f, offset=1)``, the pair order of the C kernel."""
    if f not in _TRIU:
        _TRIU[f] = torch.triu_indices(f, f, offset=1)
    want = _TRIU[f]
    return iu.device.type == "cpu" and iu.shape == want.shape and torch.equal(iu, want)


class _CDotInteraction(torch.autograd.Function):
    """:func:`dot_interaction` by the C kernels: the forward writes ``[v_0, dots]`` in one pass, the backward every
    vector's gradient (views of one ``[F, B, d]`` tensor)."""

    @staticmethod
    def forward(ctx: Any, keep_first: bool, *vecs: torch.Tensor) -> torch.Tensor:
        from hier_ps.hbm import cpu_kernels

        ctx.keep_first = keep_first
        ctx.save_for_backward(*vecs)
        return cpu_kernels.dot_interaction(list(vecs), keep_first)

    @staticmethod
    @once_differentiable  # the C backward is not differentiable itself: a second derivative raises
    def backward(ctx: Any, gz: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        from hier_ps.hbm import cpu_kernels

        vecs = ctx.saved_tensors
        need = ctx.needs_input_grad[1:]
        if not any(need):
            return (None,) * (1 + len(vecs))
        gv = cpu_kernels.dot_interaction_backward(list(vecs), gz, ctx.keep_first)
        return (None, *(gv[f] if need[f] else None for f in range(len(vecs))))


class CTRModel(nn.Module):
    """Base of the built-in models: validates the shared inputs and reads slots in ``slot_dims`` order.

    Subclasses set ``model_name`` (used in error messages) and implement ``forward``.

    Attributes:
        dense_dim: D, the number of dense features (0 allowed).
        slot_dims: slot -> pooled embedding width, in model order.
        slots: the slot names in model order.
        num_tasks: T, the number of logits per example.
        flat_dim: ``D + Σ dims``, the width of :meth:`flat`'s output.
    """

    model_name = "model"

    def __init__(self, *, dense_dim: int, slot_dims: Mapping[str, int], num_tasks: int = 1) -> None:
        super().__init__()
        who = f"model {self.model_name}"
        if not _is_int(dense_dim) or dense_dim < 0:
            raise ConfigError(f"{who}: dense_dim must be a non-negative integer, got {dense_dim!r}")
        if not _is_int(num_tasks) or num_tasks < 1:
            raise ConfigError(f"{who}: num_tasks must be a positive integer, got {num_tasks!r}")
        if not isinstance(slot_dims, Mapping) or not slot_dims:
            raise ConfigError(f"{who}: needs at least one sparse slot, got slot_dims={slot_dims!r}")
        for slot, dim in slot_dims.items():
            if not isinstance(slot, str) or not _is_int(dim) or dim <= 0:
                raise ConfigError(f"{who}: slot {slot!r} must have a positive integer dim, got {dim!r}")
        self.dense_dim = dense_dim
        self.slot_dims = dict(slot_dims)
        self.slots = tuple(slot_dims)
        self.num_tasks = num_tasks
        self.flat_dim = dense_dim + sum(self.slot_dims.values())

    def pooled(self, sparse: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The pooled slot tensors ``[B, dim_s]`` in model order; a KeyError names a missing slot."""
        try:
            return [sparse[s] for s in self.slots]
        except KeyError as e:
            raise KeyError(f"sparse input has no slot {e.args[0]!r}; model expects slots {list(self.slots)}") from None

    def flat(self, dense: torch.Tensor, sparse: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[dense, pooled_1, ..., pooled_S]`` concatenated: ``[B, D]`` + ``{s: [B, dim_s]}`` -> ``[B, flat_dim]``."""
        return torch.cat([dense, *self.pooled(sparse)], dim=1)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` -> ``[B]`` when ``num_tasks == 1``, else unchanged."""
        return out.squeeze(-1) if self.num_tasks == 1 else out
