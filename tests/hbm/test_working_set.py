from __future__ import annotations

import numpy as np
import torch

from hier_ps.config import InitConfig, SparseOptimizerConfig
from hier_ps.hbm.working_set import TableSpec, WorkingSet, WorkingSetTable, segment_sum


def test_segment_sum_matches_loop() -> None:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 7, 100)
    src = rng.normal(size=(100, 3)).astype(np.float32)
    out = segment_sum(torch.from_numpy(src), torch.from_numpy(idx), 7).numpy()
    expect = np.zeros((7, 3), np.float32)
    for i, j in enumerate(idx):
        expect[j] += src[i]
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)


def test_pooled_sum_mean_and_empty_bags() -> None:
    spec = TableSpec("t", dim=2, init=InitConfig(name="zeros"), optimizer=SparseOptimizerConfig(name="sgd"))
    keys = np.array([10, 20, 30], np.uint64)
    rows = spec.layout.new_rows(0, "t", keys, spec.init)
    rows[:, :2] = [[1, 2], [3, 4], [5, 6]]
    t = WorkingSetTable.from_rows(spec, keys, rows, "cpu")
    idx, off = torch.tensor([0, 2, 1, 1]), torch.tensor([0, 2, 2, 4])
    assert t.pooled(idx, off, "sum").tolist() == [[6, 8], [0, 0], [6, 8]]
    assert t.pooled(idx, off, "mean").tolist() == [[3, 4], [0, 0], [3, 4]]


class DictTier:
    """A RowTier over a dict, for the pull/push round trip."""

    def __init__(self) -> None:
        self.d: dict[tuple[str, int], np.ndarray] = {}

    def read(self, table, keys):
        width = 2 + 1 + 4
        rows = np.zeros((len(keys), width), np.float32)
        found = np.zeros(len(keys), bool)
        for i, k in enumerate(keys.tolist()):
            if (table, k) in self.d:
                rows[i], found[i] = self.d[(table, k)], True
        return rows, found

    def write(self, table, keys, rows):
        for k, r in zip(keys.tolist(), rows, strict=True):
            self.d[(table, k)] = r.copy()


def test_fetch_initializes_missing_then_push_updates_meta() -> None:
    spec = TableSpec("t", dim=2, init=InitConfig(), optimizer=SparseOptimizerConfig(name="rowwise_adagrad"))
    tier = DictTier()
    keys = {"t": np.array([1, 5], np.uint64)}
    fetched = WorkingSet.fetch(tier, {"t": spec}, keys, seed=3)
    rows, n_new = fetched["t"]
    assert n_new == 2
    np.testing.assert_array_equal(rows, spec.layout.new_rows(3, "t", keys["t"], spec.init))
    ws = WorkingSet.load({"t": spec}, keys, {"t": rows}, "cpu")
    ws.tables["t"].apply(torch.tensor([1]), torch.ones(1, 2))
    ws.push(tier, {"t": np.array([2, 3])}, pass_index=7)
    rows2, n_new2 = WorkingSet.fetch(tier, {"t": spec}, keys, seed=3)["t"]
    assert n_new2 == 0
    _, state, meta = spec.layout.unpack(rows2)
    assert meta.tolist() == [[2, 7], [3, 7]]
    assert state[0, 0] == 0 and state[1, 0] == 1.0  # only row 1 was updated
