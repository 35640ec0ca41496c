"""Sparse row optimizers, exactly as DESIGN.md contract 3 writes them.

Each optimizer updates a set of *unique* rows once per batch with the summed gradient ``g`` of all occurrences of each
row. They are pure element-wise torch code (this is the CPU path and the oracle of the fused CUDA kernels), so the
same input gives the same bits.

Example:
    >>> import torch
    >>> from hier_ps.config import SparseOptimizerConfig
    >>> opt = make_sparse_optimizer(SparseOptimizerConfig(name="sgd", lr=0.5))
    >>> w = torch.ones(2, 3); st = torch.zeros(2, opt.state_width(3))
    >>> opt.update(w, st, torch.ones(2, 3)); w[0, 0].item()
    0.5
"""

from __future__ import annotations

import torch

from hier_ps.config import SparseOptimizerConfig, SparseOptimizerName

__all__ = ["SparseOptimizer", "make_sparse_optimizer"]


class SparseOptimizer:
    """Base class. ``update(w f32[n, dim], state f32[n, S], g f32[n, dim])`` updates w and state in place."""

    name: str = ""

    def __init__(self, cfg: SparseOptimizerConfig) -> None:
        self.cfg = cfg

    def state_width(self, dim: int) -> int:
        """Optimizer state floats per row for an embedding of width `dim`."""
        raise NotImplementedError

    def update(self, w: torch.Tensor, state: torch.Tensor, g: torch.Tensor) -> None:
        """Applies one update to unique rows (in place)."""
        raise NotImplementedError


class SGD(SparseOptimizer):
    """``w -= lr*g``."""

    name = "sgd"

    def state_width(self, dim: int) -> int:
        return 0

    def update(self, w: torch.Tensor, state: torch.Tensor, g: torch.Tensor) -> None:
        w.sub_(self.cfg.lr * g)


class Adagrad(SparseOptimizer):
    """``h += g*g; w -= lr*g/(sqrt(h)+eps)`` per element. State: h[dim]."""

    name = "adagrad"

    def state_width(self, dim: int) -> int:
        return dim

    def update(self, w: torch.Tensor, state: torch.Tensor, g: torch.Tensor) -> None:
        state.add_(g * g)
        # addcdiv_ computes w + (-lr*g)/denom: the bits of w - lr*g/denom, without two [n, dim] temporaries
        w.addcdiv_(g, state.sqrt().add_(self.cfg.eps), value=-self.cfg.lr)


class RowwiseAdagrad(SparseOptimizer):
    """``h += mean(g*g); w -= lr*g/(sqrt(h)+eps)`` with one h per row. State: h[1]."""

    name = "rowwise_adagrad"

    def state_width(self, dim: int) -> int:
        return 1

    def update(self, w: torch.Tensor, state: torch.Tensor, g: torch.Tensor) -> None:
        state.add_(g.square().mean(dim=1, keepdim=True))
        w.addcdiv_(g, state.sqrt().add_(self.cfg.eps), value=-self.cfg.lr)  # denom is [n, 1]: broadcast


class Adam(SparseOptimizer):
    """Lazy Adam with a per-row step count t, bias-corrected. State: m[dim], v[dim], t[1].

    ``t += 1; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; w -= lr*(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)``.
    """

    name = "adam"

    def state_width(self, dim: int) -> int:
        return 2 * dim + 1

    def update(self, w: torch.Tensor, state: torch.Tensor, g: torch.Tensor) -> None:
        dim = w.shape[1]
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        m, v, t = state[:, :dim], state[:, dim : 2 * dim], state[:, 2 * dim :]
        t.add_(1.0)
        m.mul_(b1).add_((1.0 - b1) * g)
        v.mul_(b2).add_((1.0 - b2) * g * g)
        m_hat = m / (1.0 - torch.pow(b1, t))
        v_hat = v / (1.0 - torch.pow(b2, t))
        w.sub_(self.cfg.lr * m_hat / (v_hat.sqrt() + self.cfg.eps))


class FTRL(SparseOptimizer):
    """FTRL-Proximal (McMahan et al., KDD 2013), per element. State: z[dim], n[dim].

    ``sigma = (sqrt(n + g*g) - sqrt(n)) / alpha; z += g - sigma*w; n += g*g;
    w = 0 if |z| <= l1 else -(z - sign(z)*l1) / ((beta + sqrt(n))/alpha + l2)``.
    """

    name = "ftrl"

    def state_width(self, dim: int) -> int:
        return 2 * dim

    def update(self, w: torch.Tensor, state: torch.Tensor, g: torch.Tensor) -> None:
        dim = w.shape[1]
        c = self.cfg
        alpha = c.alpha if c.alpha is not None else c.lr
        z, n = state[:, :dim], state[:, dim:]
        n_new = n + g * g
        sigma = (n_new.sqrt() - n.sqrt()) / alpha
        z.add_(g - sigma * w)
        n.copy_(n_new)
        w_new = -(z - torch.sign(z) * c.l1) / ((c.beta + n.sqrt()) / alpha + c.l2)
        w.copy_(torch.where(z.abs() <= c.l1, torch.zeros_like(w_new), w_new))


_OPTIMIZERS: dict[SparseOptimizerName, type[SparseOptimizer]] = {
    SparseOptimizerName.SGD: SGD,
    SparseOptimizerName.ADAGRAD: Adagrad,
    SparseOptimizerName.ROWWISE_ADAGRAD: RowwiseAdagrad,
    SparseOptimizerName.ADAM: Adam,
    SparseOptimizerName.FTRL: FTRL,
}


def make_sparse_optimizer(cfg: SparseOptimizerConfig) -> SparseOptimizer:
    """The sparse optimizer named by `cfg`."""
    return _OPTIMIZERS[SparseOptimizerName(cfg.name)](cfg)
