"""Table-batched lookup and update: all slots of a batch in one pooled call and one fused backward + update.

Tables of one pass that agree on (dim, row dtype, optimizer, device) form a :class:`TableGroup`: their rows live in
one storage tensor, each table a contiguous block of it (``WorkingSetTable.emb`` / ``state`` become views of that
block, so everything that works on one table keeps working). A :class:`BatchLookup` then turns one batch's slots into,
per group, one CSR over group rows: one pooled lookup for all its slots forward, and backward one segment reduction
of the gradients of all occurrences of each unique row (sorted by row, stable: deterministic) fused with the
optimizer update — instead of a lookup, a gradient sum and an update per slot and per table.

Example:
    >>> import numpy as np, torch
    >>> from hier_ps.config import InitConfig, SparseOptimizerConfig
    >>> from hier_ps.hbm.working_set import TableSpec, WorkingSet
    >>> from hier_ps.plan import BatchPlan
    >>> spec = {t: TableSpec(t, 2, InitConfig(name="constant", value=1.0), SparseOptimizerConfig(name="sgd", lr=1.0))
    ...         for t in ("a", "b")}
    >>> keys = {t: np.array([3, 8], np.uint64) for t in spec}
    >>> ws = WorkingSet.load(spec, keys, {t: spec[t].layout.new_rows(0, t, keys[t], spec[t].init) for t in spec}, "cpu")
    >>> b = BatchPlan(np.zeros((1, 1), np.float32), np.zeros((1, 0), np.float32),
    ...               {"a": (np.array([0, 2]), np.array([0, 1])), "b": (np.array([0, 1]), np.array([1]))},
    ...               {"a": (np.array([0, 1]), np.array([0, 1])), "b": (np.array([1]), np.array([0]))},
    ...               {"a": ["a"], "b": ["b"]})
    >>> lk = BatchLookup(ws, b, {"a": "a", "b": "b"}, {"a": "sum", "b": "sum"})
    >>> {s: p.tolist() for s, p in lk.forward().items()}
    {'a': [[2.0, 2.0]], 'b': [[1.0, 1.0]]}
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from hier_ps.hbm.kernels import CudaKernels, kernels_for

if TYPE_CHECKING:
    from hier_ps.hbm.cpu_kernels import BatchAssembler
    from hier_ps.hbm.working_set import TableSpec, WorkingSet, WorkingSetTable
    from hier_ps.plan import BatchPlan, PassPlan

__all__ = ["BatchLookup", "PassLookups", "TableGroup", "allocate_grouped", "group_tables"]


class TableGroup:
    """Tables sharing one storage: emb T[N, dim], state float32[N, S]; table t owns rows [base[t], base[t] + n_t).

    Args:
        tables: the group's tables (same dim, dtype, optimizer and device), in this order in the storage.
    """

    def __init__(self, tables: dict[str, WorkingSetTable]) -> None:
        first = next(iter(tables.values()))
        self.opt = first.spec.opt
        self.base: dict[str, int] = {}
        n, nulls = 0, []
        for name, t in tables.items():
            self.base[name] = n
            if t.null is not None:
                nulls.append(n + t.null)
            n += len(t.emb)
        if len(tables) == 1:
            self.emb, self.state = first.emb, first.state
        elif (shared := _shared_storage(tables, n)) is not None:  # assembled in place (see allocate_grouped)
            self.emb, self.state = shared
        else:  # one copy per pass; afterwards the tables are views of the shared storage
            dev, dim, width = first.emb.device, first.emb.shape[1], first.state.shape[1]
            self.emb = torch.empty(n, dim, dtype=first.emb.dtype, device=dev)
            self.state = torch.empty(n, width, dtype=torch.float32, device=dev)
            for name, t in tables.items():  # table by table: the peak is the group plus one table, not twice it
                lo, hi = self.base[name], self.base[name] + len(t.emb)
                self.emb[lo:hi], self.state[lo:hi] = t.emb, t.state
                t.emb, t.state = self.emb[lo:hi], self.state[lo:hi]
        self.nulls = torch.tensor(nulls, dtype=torch.int64, device=self.emb.device) if nulls else None
        self.kernels = kernels_for(self.emb.device)
        #: the CUDA kernels divide mean bags on the fly; the twins divide just the mean slots' bags, in place
        self.fuses_div = isinstance(self.kernels, CudaKernels)

    def zero_nulls(self) -> None:
        """Null rows read as zeros and take no update: reset them after an update (cheaper than masking)."""
        if self.nulls is not None:
            self.emb[self.nulls] = 0.0
            self.state[self.nulls] = 0.0


def _group_key(spec: TableSpec, dtype: torch.dtype, device: torch.device | str) -> tuple:
    return (spec.dim, dtype, dataclasses.astuple(spec.optimizer), str(torch.device(device)))


def group_tables(tables: dict[str, WorkingSetTable]) -> list[TableGroup]:
    """Groups the tables by (dim, dtype, optimizer config, device), each group in table order."""
    by_key: dict[tuple, dict[str, WorkingSetTable]] = {}
    for name, t in tables.items():
        by_key.setdefault(_group_key(t.spec, t.emb.dtype, t.emb.device), {})[name] = t
    return [TableGroup(ts) for ts in by_key.values()]


def allocate_grouped(
    sizes: dict[str, tuple[TableSpec, int]], device: torch.device | str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Uninitialized (emb, state) of `n` rows per table (table -> (spec, n)), laid out as :func:`group_tables` will
    group them: each table a block of its group's one storage, in table order, so the group takes the storage as it
    is instead of copying the tables into one (a copy of the whole working set per pass)."""
    by_key: dict[tuple, list[str]] = {}
    for name, (spec, _) in sizes.items():
        by_key.setdefault(_group_key(spec, spec.torch_dtype, device), []).append(name)
    out = {}
    for names in by_key.values():
        spec0 = sizes[names[0]][0]
        total = sum(sizes[n][1] for n in names)
        emb = torch.empty(total, spec0.dim, dtype=spec0.torch_dtype, device=device)
        state = torch.empty(total, spec0.layout.state, dtype=torch.float32, device=device)
        lo = 0
        for n in names:
            hi = lo + sizes[n][1]
            out[n] = (emb[lo:hi], state[lo:hi])
            lo = hi
    return out


def _shared_storage(tables: dict[str, WorkingSetTable], n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(emb, state) of the whole group when the tables are already its consecutive blocks (see allocate_grouped)."""
    first = next(iter(tables.values()))
    emb, state = first.emb._base, first.state._base
    if emb is None or state is None or len(emb) != n or len(state) != n:
        return None
    lo = 0
    for t in tables.values():
        if t.emb._base is not emb or t.state._base is not state:
            return None
        if t.emb.storage_offset() != lo * emb.stride(0) or t.state.storage_offset() != lo * state.stride(0):
            return None
        lo += len(t.emb)
    return emb, state


@dataclasses.dataclass
class _Part:
    """One group's share of a batch (host-built CSR, moved to the device once)."""

    group: TableGroup
    slots: list[str]
    rows: torch.Tensor  # int64[nnz] group rows of the occurrences, slots concatenated in slot order
    offsets: torch.Tensor  # int64[k*B+1] bag offsets, bag j*B+i = example i of the part's j-th slot
    div: torch.Tensor | None  # float32[k*B] bag sizes (>= 1) for mean slots, 1 for sum slots; None without mean slots
    urows: torch.Tensor  # int64[U] group rows to update, the tables' unique rows concatenated
    inv: np.ndarray | None  # int64[nnz] position in urows of each occurrence's row (None: presorted, or eval)
    presorted: tuple[np.ndarray, np.ndarray] | None  # (bags, seg) from the plan's sort (see _segments), or None
    lengths: np.ndarray  # int64[k*B] bag sizes
    means: list[tuple[int, int, torch.Tensor]]  # (first bag, end bag, float32[hi-lo, 1] view of div) of each mean slot
    leaf: torch.Tensor | None = None  # float32[k*B, dim] pooled output of the last forward
    views: tuple[torch.Tensor, ...] = ()  # its slots' blocks [B, dim], the leaves whose gradients _grad reads


def _as_one(views: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The slots' gradients as one [k*B, dim] tensor without a copy, when they are already consecutive blocks of
    one storage (the DLRM's C interaction writes them so), else None."""
    grads = [v.grad for v in views]
    first = grads[0] if grads else None
    if first is None or not first.is_contiguous():
        return None
    n, step = first.shape[0], first.numel() * first.element_size()
    for i, g in enumerate(grads):
        if (
            g is None
            or g.shape != first.shape
            or g.dtype != first.dtype
            or not g.is_contiguous()
            or g.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or g.data_ptr() != first.data_ptr() + i * step
        ):
            return None
    return first.as_strided((n * len(grads), first.shape[1]), (first.shape[1], 1))


class BatchLookup:
    """All lookups of one batch, table-batched by group.

    Args:
        ws: the pass's working set.
        b: the batch.
        slot_tables: slot -> table, in slot order.
        pooling: slot -> "sum" | "mean".
    """

    def __init__(self, ws: WorkingSet, b: BatchPlan, slot_tables: dict[str, str], pooling: dict[str, str]) -> None:
        self.parts: list[_Part] = []
        self.batch = len(b)
        for g in ws.groups():
            slots = [s for s, t in slot_tables.items() if t in g.base]
            if slots:
                self.parts.append(self._part(g, b, slots, slot_tables, pooling))

    @classmethod
    def _of(cls, parts: list[_Part], batch: int) -> BatchLookup:
        """A lookup of ready parts (see :class:`PassLookups`)."""
        lk = cls.__new__(cls)
        lk.parts, lk.batch = parts, batch
        return lk

    @staticmethod
    def _made(g: TableGroup, slots: list[str], arrays: dict[str, np.ndarray | None], mean_bags: list) -> _Part:
        """A part from its host arrays (rows, offsets, div, urows, optionally lengths and inv, and presorted, bags
        and seg), moved to the device; `mean_bags` the (first bag, end bag) of each mean slot."""
        dev = g.emb.device

        def to(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(dev, non_blocking=True)

        div = arrays["div"]
        div_t = None if div is None else to(div)
        offsets = arrays["offsets"]
        assert offsets is not None
        presorted = None if arrays.get("bags") is None else (arrays["bags"], arrays["seg"])
        return _Part(
            g,
            slots,
            to(arrays["rows"]),
            to(offsets),
            div_t,
            to(arrays["urows"]),
            arrays.get("inv"),
            presorted,
            arrays["lengths"] if arrays.get("lengths") is not None else np.diff(offsets),
            [(lo, hi, div_t[lo:hi, None]) for lo, hi in mean_bags] if div_t is not None else [],
        )

    @staticmethod
    def _part(
        g: TableGroup, b: BatchPlan, slots: list[str], slot_tables: dict[str, str], pooling: dict[str, str]
    ) -> _Part:
        n_b = len(b)
        # Each slot's rows and offsets are written straight into the part's arrays (no per-slot temporaries).
        rows = np.empty(sum(len(b.slots[s][1]) for s in slots), np.int64)
        offsets = np.empty(len(slots) * n_b + 1, np.int64)
        offsets[0], at = 0, 0
        for j, s in enumerate(slots):
            off, idx = b.slots[s]
            np.add(idx, g.base[slot_tables[s]], out=rows[at : at + len(idx)])
            np.add(off[1:], at - int(off[0]), out=offsets[1 + j * n_b : 1 + (j + 1) * n_b])
            at += len(idx)
        lengths = np.diff(offsets)
        mean_bags = [(j * n_b, (j + 1) * n_b) for j, s in enumerate(slots) if pooling[s] == "mean"]
        div = None
        if mean_bags:  # the bag sizes, once: the kernels' divisor, and the mean slots' in-place division
            div = np.ones(len(lengths), np.float32)
            for lo, hi in mean_bags:
                np.maximum(lengths[lo:hi], 1, out=div[lo:hi], casting="unsafe")
        tables = [t for t in g.base if t in b.tables]  # tables with training inverses (eval plans have none)
        urows = np.empty(sum(len(b.tables[t][0]) for t in tables), np.int64)
        at = 0
        for t in tables:
            u = b.tables[t][0]
            np.add(u, g.base[t], out=urows[at : at + len(u)])
            at += len(u)
        inv_all, presorted = None, None
        if all(slot_tables[s] in b.tables for s in slots):  # else: planned for eval, nothing to update
            if all(t in b.order for t in tables):
                # The plan sorted each table's occurrences by row already: the occurrences' bags in that order,
                # table after table (the order of urows), are the segments; no sort, and no inverses needed.
                part_slot = {s: j for j, s in enumerate(slots)}
                bags = np.empty(sum(len(b.order[t][1]) for t in tables), np.int64)
                seg = np.empty(len(urows) + 1, np.int64)
                seg[0], at, ut = 0, 0, 0
                for t in tables:
                    slot, example, cnt = b.order[t]
                    out = bags[at : at + len(example)]
                    if len(b.table_slots[t]) == 1:  # the common case: one slot per table, one first bag
                        np.add(example, part_slot[b.table_slots[t][0]] * n_b, out=out)
                    else:
                        first = np.array([part_slot[s] for s in b.table_slots[t]], np.int64) * n_b
                        np.add(first[slot], example, out=out)
                    seg[1 + ut : 1 + ut + len(cnt)] = cnt
                    at, ut = at + len(example), ut + len(cnt)
                np.cumsum(seg, out=seg)
                presorted = (bags, seg)
            else:
                # Occurrences of a table's slots are concatenated in slot order in its inverse; cut it back per
                # slot, offset by the rows of the tables before it in urows.
                inv_of: dict[str, np.ndarray] = {}
                ubase = 0
                for t in tables:
                    u, inv = b.tables[t]
                    at = 0
                    for s in b.table_slots[t]:
                        n = int(b.slots[s][0][-1])
                        inv_of[s] = inv[at : at + n] + ubase
                        at += n
                    ubase += len(u)
                inv_all = np.concatenate([inv_of[s] for s in slots]).astype(np.int64, copy=False)

        arrays = {"rows": rows, "offsets": offsets, "lengths": lengths, "div": div, "urows": urows, "inv": inv_all}
        if presorted is not None:
            arrays["bags"], arrays["seg"] = presorted
        return BatchLookup._made(g, slots, arrays, mean_bags)

    def forward(self, requires_grad: bool = False) -> dict[str, torch.Tensor]:
        """Pooled lookups: slot -> float32[B, dim] (views of one output per group; with `requires_grad`, that
        output is a leaf whose gradient :meth:`grads` reads after ``backward``)."""
        out: dict[str, torch.Tensor] = {}
        for p in self.parts:
            if p.group.fuses_div:  # the kernel divides mean bags as it writes them
                pooled = p.group.kernels.pooled(p.group.emb, p.rows, p.offsets, p.div)
            else:  # divide only the mean slots' bags, in place (a pass over all bags costs more than the sum)
                pooled = p.group.kernels.pooled(p.group.emb, p.rows, p.offsets, None)
                for lo, hi, size in p.means:
                    pooled[lo:hi].div_(size)
            views = torch.split(pooled, self.batch)
            if requires_grad:  # each slot's block a leaf of its own: no split backward to concatenate them
                for v in views:
                    v.requires_grad_(True)
                p.leaf, p.views = pooled, views
            out.update(zip(p.slots, views, strict=True))
        return out

    def _segments(self, p: _Part) -> tuple[torch.Tensor, torch.Tensor]:
        """(bags int64[nnz] of the occurrences sorted by unique row, stable; seg int64[U+1] CSR over them)."""
        dev = p.rows.device
        if p.presorted is not None:
            bags, seg = p.presorted
            return torch.from_numpy(bags).to(dev, non_blocking=True), torch.from_numpy(seg).to(dev, non_blocking=True)
        if p.inv is None:
            raise ValueError("BatchLookup: the batch was planned without inverses (for_training=False)")
        n_u = len(p.urows)
        if dev.type == "cpu":  # numpy's stable argsort and bincount beat torch's on CPU by far (measured, 2 cores)
            bag = np.repeat(np.arange(len(p.lengths), dtype=np.int64), p.lengths)
            seg = np.zeros(n_u + 1, np.int64)
            np.cumsum(np.bincount(p.inv, minlength=n_u), out=seg[1:])
            return torch.from_numpy(bag[np.argsort(p.inv, kind="stable")]), torch.from_numpy(seg)
        inv = torch.from_numpy(p.inv).to(dev, non_blocking=True)
        bag = torch.repeat_interleave(
            torch.arange(len(p.lengths), device=dev), torch.from_numpy(p.lengths).to(dev, non_blocking=True)
        )
        order = torch.sort(inv, stable=True).indices
        seg = torch.zeros(n_u + 1, dtype=torch.int64, device=dev)
        torch.cumsum(torch.bincount(inv, minlength=n_u), 0, out=seg[1:])
        return bag[order], seg

    def _grad(self, p: _Part) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled gradient, bag sizes for the kernel to divide by | None: already divided)."""
        if p.leaf is None:
            raise RuntimeError("BatchLookup: call forward(requires_grad=True) and backward first")
        g = _as_one(p.views)
        if p.group.fuses_div:
            return (g if g is not None else self._cat(p)), p.div
        if g is not None:  # the model's tensor, not ours to change: the kernel divides the mean bags
            return g, p.div
        g = self._cat(p)
        for lo, hi, size in p.means:  # the concatenation is ours alone: divide in place
            g[lo:hi].div_(size)
        return g, None

    @staticmethod
    def _cat(p: _Part) -> torch.Tensor:
        return torch.cat([v.grad if v.grad is not None else torch.zeros_like(v) for v in p.views])

    def grads(self) -> list[torch.Tensor]:
        """Per group, the summed gradient float32[U, dim] of each unique row (for an all-reduce before
        :meth:`apply`)."""
        out = []
        for p in self.parts:
            bags, seg = self._segments(p)
            grad, div = self._grad(p)
            out.append(p.group.kernels.segment_grads(grad, bags, seg, div))
        return out

    def apply(self, grads: list[torch.Tensor]) -> None:
        """One optimizer update per unique row with the given sums (from :meth:`grads`, maybe all-reduced)."""
        for p, g in zip(self.parts, grads, strict=True):
            p.group.kernels.update(p.group.opt, p.group.emb, p.group.state, p.urows, g)
            p.group.zero_nulls()

    def backward_update(self) -> None:
        """:meth:`grads` and :meth:`apply` in one fused step per group (one process: nothing to all-reduce)."""
        for p in self.parts:
            bags, seg = self._segments(p)
            g = p.group
            grad, div = self._grad(p)
            g.kernels.backward_update(g.opt, g.emb, g.state, p.urows, seg, bags, grad, div)
            g.zero_nulls()


class PassLookups:
    """Every batch's :class:`BatchLookup` of one pass, assembled in C straight from the pass plan's arrays
    (:class:`hier_ps.hbm.cpu_kernels.BatchAssembler`): the same lookups as ``BatchLookup(ws, plan.batch(i), ...)``,
    without the per-slot views of ``PassPlan.batch`` and the per-slot and per-table numpy calls of ``BatchLookup``.
    In e2e_bench's fits (26 slots, batches of 4096) that took the trainer's thread 1.4-1.6 ms a batch, this 0.9-1.0
    ms: most of what is left is moving the arrays' bytes (benchmarks/RESULTS.md, session 13).

    Build with :meth:`build`, which says None where it does not apply.
    """

    def __init__(self, groups: list[tuple[TableGroup, list[str], BatchAssembler, list[int]]]) -> None:
        self._groups = groups

    @classmethod
    def build(
        cls, ws: WorkingSet, plan: PassPlan, slot_tables: dict[str, str], pooling: dict[str, str]
    ) -> PassLookups | None:
        """The pass's lookups, or None: no C library (``HIER_PS_KERNELS=torch``, no compiler), or a plan without
        per-batch training arrays (planned for eval)."""
        from hier_ps.hbm import cpu_kernels

        if cpu_kernels.optional() is None:
            return None
        by_table: dict[str, list[str]] = {}
        for s, t in slot_tables.items():
            by_table.setdefault(t, []).append(s)
        n_ex, bs = plan.num_examples, plan.batch_size
        groups = []
        for g in ws.groups():
            slots = [s for s, t in slot_tables.items() if t in g.base]
            if not slots:
                continue
            tables = [t for t in g.base if t in by_table]
            if any(t not in plan.urows or t not in plan.occ_offsets for t in tables):
                return None
            part_slot = {s: j for j, s in enumerate(slots)}
            assembler = cpu_kernels.BatchAssembler(
                [(plan.chunk.sparse[s][0], plan.local[s], g.base[slot_tables[s]], pooling[s] == "mean") for s in slots],
                [
                    (
                        plan.urow_offsets[t],
                        plan.urows[t],
                        plan.urow_counts[t],
                        plan.occ_offsets[t],
                        plan.sorted_slot[t],
                        plan.sorted_example[t],
                        g.base[t],
                        [part_slot[s] for s in by_table[t]],
                    )
                    for t in tables
                ],
                bs,
                n_ex,
            )
            mean_slots = [j for j, s in enumerate(slots) if pooling[s] == "mean"]
            groups.append((g, slots, assembler, mean_slots))
        return cls(groups)

    def lookup(self, i: int, batch: int) -> BatchLookup:
        """Batch i's lookup (`batch` its examples)."""
        parts = []
        for g, slots, assembler, mean_slots in self._groups:
            bags = [(j * batch, (j + 1) * batch) for j in mean_slots]
            parts.append(BatchLookup._made(g, slots, assembler(i), bags))
        return BatchLookup._of(parts, batch)
