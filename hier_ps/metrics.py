"""Evaluation metrics for binary labels: AUC and logloss, vectorized."""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "logloss"]


def _flat(labels: np.ndarray, values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(y) != len(v):
        raise ValueError(f"labels and {name} differ in size: {len(y)} vs {len(v)}")
    return y, v


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, as the normalized Mann-Whitney rank statistic (tied scores get their mean rank).

    Equals the probability that a random positive scores above a random negative, ties counting one half.
    O(n log n): one sort, no Python loop.

    Args:
        labels: float[n] (or [n, 1]); a value > 0.5 is a positive.
        scores: float[n] (or [n, 1]); any monotone transform (logits or probabilities) gives the same AUC.

    Returns:
        AUC in [0, 1]; NaN when only one class is present.

    Raises:
        ValueError: labels and scores differ in size.

    Example:
        >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    y, s = _flat(labels, scores, "scores")
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    # a group of tied scores at sorted positions [start, end) gets the mean 1-based rank (start + end + 1) / 2
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities against labels.

    Args:
        labels: float[n] in [0, 1].
        probs: float[n], clipped to ``[eps, 1 - eps]`` so a confident mistake costs a finite loss.
        eps: clipping margin.

    Returns:
        ``-mean(y * log(p) + (1 - y) * log(1 - p))``; NaN for empty inputs.

    Raises:
        ValueError: labels and probs differ in size.

    Example:
        >>> round(logloss(np.array([1, 0]), np.array([0.5, 0.5])), 6)
        0.693147
    """
    y, p = _flat(labels, probs, "probs")
    if len(y) == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
