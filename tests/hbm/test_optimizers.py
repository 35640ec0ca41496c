"""Each sparse optimizer against DESIGN.md's formula, written independently in float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.config import SparseOptimizerConfig
from hier_ps.hbm.optimizers import make_sparse_optimizer

CFG = dict(lr=0.07, eps=1e-6, beta1=0.8, beta2=0.95, alpha=0.3, beta=0.5, l1=0.01, l2=0.02)


def reference(name: str, w: np.ndarray, g_steps: list[np.ndarray]) -> np.ndarray:
    """Applies len(g_steps) updates to rows w (float64) by the formulas of DESIGN.md contract 3."""
    c = CFG
    w = w.astype(np.float64).copy()
    h = np.zeros_like(w)
    hr = np.zeros((len(w), 1))
    m, v = np.zeros_like(w), np.zeros_like(w)
    z, n = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(g_steps, start=1):
        g = g.astype(np.float64)
        if name == "sgd":
            w -= c["lr"] * g
        elif name == "adagrad":
            h += g * g
            w -= c["lr"] * g / (np.sqrt(h) + c["eps"])
        elif name == "rowwise_adagrad":
            hr += (g * g).mean(axis=1, keepdims=True)
            w -= c["lr"] * g / (np.sqrt(hr) + c["eps"])
        elif name == "adam":
            m = c["beta1"] * m + (1 - c["beta1"]) * g
            v = c["beta2"] * v + (1 - c["beta2"]) * g * g
            w -= c["lr"] * (m / (1 - c["beta1"] ** t)) / (np.sqrt(v / (1 - c["beta2"] ** t)) + c["eps"])
        elif name == "ftrl":
            sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / c["alpha"]
            z += g - sigma * w
            n += g * g
            w = np.where(
                np.abs(z) <= c["l1"],
                0.0,
                -(z - np.sign(z) * c["l1"]) / ((c["beta"] + np.sqrt(n)) / c["alpha"] + c["l2"]),
            )
    return w


NAMES = ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), dim=st.integers(1, 9), steps=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_matches_formula(name: str, n: int, dim: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(n, dim)).astype(np.float32)
    gs = [rng.normal(size=(n, dim)).astype(np.float32) for _ in range(steps)]
    opt = make_sparse_optimizer(SparseOptimizerConfig(name=name, **CFG))
    w = torch.from_numpy(w0.copy())
    state = torch.zeros(n, opt.state_width(dim))
    for g in gs:
        opt.update(w, state, torch.from_numpy(g))
    np.testing.assert_allclose(w.numpy(), reference(name, w0, gs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_bits(name: str) -> None:
    rng = np.random.default_rng(1)
    w0, g = rng.normal(size=(50, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    outs = []
    for _ in range(2):
        opt = make_sparse_optimizer(SparseOptimizerConfig(name=name, **CFG))
        w, s = torch.from_numpy(w0.copy()), torch.zeros(50, opt.state_width(16))
        opt.update(w, s, torch.from_numpy(g))
        opt.update(w, s, torch.from_numpy(g))
        outs.append((w.numpy().tobytes(), s.numpy().tobytes()))
    assert outs[0] == outs[1]


def test_ftrl_alpha_defaults_to_lr() -> None:
    a = make_sparse_optimizer(SparseOptimizerConfig(name="ftrl", lr=0.3))
    b = make_sparse_optimizer(SparseOptimizerConfig(name="ftrl", lr=0.9, alpha=0.3))
    g = torch.ones(1, 2)
    wa, wb = torch.zeros(1, 2), torch.zeros(1, 2)
    a.update(wa, torch.zeros(1, 4), g)
    b.update(wb, torch.zeros(1, 4), g)
    assert torch.equal(wa, wb)
