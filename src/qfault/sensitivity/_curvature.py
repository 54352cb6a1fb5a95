"""Loss derivatives with respect to the quantized weights: gradients, Hessian-vector products,
top eigenpairs of the Hessian (Lanczos, converged to a tolerance) and Hutchinson traces.

The loss is the mean cross-entropy over every image of the given batches; each batch is
differentiated on its own and the results are summed with weights ``len(batch) / total``, so
memory stays that of one batch. The model is evaluated in eval mode (BatchNorm uses its running
statistics): the Hessian is that of the deployed network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ._views import LeafForward


class Curvature:
    """Derivatives of the loss of ``forward`` over ``batches`` at the views' quantized values."""

    def __init__(self, forward: LeafForward, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        self.forward = forward
        self.batches = list(batches)
        self.total = sum(len(y) for _, y in self.batches)
        self.leaves = forward.leaves()
        self.hvp_calls = 0

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.forward(x, self.leaves), y, reduction="sum") / self.total

    def gradient(self) -> list[torch.Tensor]:
        """``dL/dw`` per view (shapes of the views)."""
        total = [torch.zeros_like(leaf) for leaf in self.leaves]
        for x, y in self.batches:
            grads = torch.autograd.grad(self._loss(x, y), self.leaves)
            for acc, g in zip(total, grads):
                acc += g
        return total

    def hvp(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """``H v`` per view for ``v`` given per view."""
        self.hvp_calls += 1
        total = [torch.zeros_like(leaf) for leaf in self.leaves]
        for x, y in self.batches:
            grads = torch.autograd.grad(self._loss(x, y), self.leaves, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vectors))
            products = torch.autograd.grad(dot, self.leaves, allow_unused=True)
            for acc, hv in zip(total, products):
                if hv is not None:
                    acc += hv.detach()
        return total

    # -- flat helpers -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return sum(leaf.numel() for leaf in self.leaves)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for leaf in self.leaves:
            out.append(flat[start:start + leaf.numel()].view_as(leaf).to(leaf.dtype))
            start += leaf.numel()
        return out

    @staticmethod
    def join(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in parts])

    def eigenpairs(self, k: int, tol: float = 1e-6, seed: int = 0, max_iter: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` eigenpairs of the Hessian largest in ``|λ|`` (implicitly restarted Lanczos,
        ``scipy.sparse.linalg.eigsh``, relative tolerance ``tol``): ``(eigenvalues [k] sorted by
        decreasing |λ|, eigenvectors [n, k] of unit norm)``."""
        from scipy.sparse.linalg import LinearOperator, eigsh

        n = self.size
        k = min(k, n - 1) if n > 1 else 1

        def matvec(v: np.ndarray) -> np.ndarray:
            parts = self.split(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).float())
            return self.join(self.hvp(parts)).double().numpy()

        if n == 1:  # eigsh needs k < n
            value = matvec(np.ones(1))
            return value.copy(), np.ones((1, 1))
        start = np.random.default_rng(seed).standard_normal(n)
        values, vectors = eigsh(LinearOperator((n, n), matvec=matvec, dtype=np.float64), k=k, which="LM",
                                tol=tol, v0=start, maxiter=max_iter)
        order = np.argsort(-np.abs(values), kind="stable")
        return values[order], vectors[:, order]

    def hutchinson(self, samples: int, seed: int = 0) -> list[float]:
        """Hutchinson estimates of the Hessian trace of each view's block: the mean of ``zᵀHz``
        over ``samples`` Rademacher vectors ``z`` (restricted to the block)."""
        gen = torch.Generator().manual_seed(seed)
        sums = [0.0] * len(self.leaves)
        for _ in range(samples):
            z = [torch.randint(0, 2, leaf.shape, generator=gen).to(leaf.dtype) * 2 - 1 for leaf in self.leaves]
            for i, (zi, hz) in enumerate(zip(z, self.hvp(z))):
                sums[i] += float((zi * hz).sum())
        return [s / max(samples, 1) for s in sums]
