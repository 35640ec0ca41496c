"""hier_ps.metrics: rank AUC against brute-force pair counting, logloss against its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.metrics import auc, logloss


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y > 0.5], s[y <= 0.5]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 4)), min_size=2, max_size=60),
    scale=st.sampled_from([1.0, 0.1, -3.0]),
)
def test_auc_matches_pair_counting_with_ties(pairs: list[tuple[int, int]], scale: float) -> None:
    y = np.array([p[0] for p in pairs], np.float32)
    s = np.array([p[1] for p in pairs], np.float64) * scale  # few distinct scores: many ties
    if y.min() == y.max():
        assert math.isnan(auc(y, s))
    else:
        assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_on_random_scores_and_shapes() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(np.float32)
    s = rng.normal(size=500) + y
    assert auc(y, s) == pytest.approx(brute_auc(y, s))
    assert auc(y[:, None], s[:, None]) == auc(y, s) == auc(y, 1 / (1 + np.exp(-s)))  # monotone-invariant
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    with pytest.raises(ValueError, match="differ in size"):
        auc(y, s[:10])


def test_logloss() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.5, 0.0])
    expected = -(np.log(0.9) + np.log(0.8) + np.log(0.5) + np.log(1 - 1e-7)) / 4
    assert logloss(y, p) == pytest.approx(expected)
    assert logloss(np.array([1]), np.array([0.0]), eps=1e-3) == pytest.approx(-np.log(1e-3))
    assert math.isnan(logloss(np.zeros(0), np.zeros(0)))
    with pytest.raises(ValueError, match="differ in size"):
        logloss(y, p[:2])
