"""Loss derivatives with respect to the quantized weights: gradients, Hessian-vector products,
top eigenpairs of the Hessian (Lanczos, converged to a tolerance) and Hutchinson traces.

The loss is the mean cross-entropy over every image of the given batches; each batch is
differentiated on its own and the results are summed with weights ``len(batch) / total``. The
gradient graphs of the first ``kept_graphs`` batches are kept between Hessian-vector products, so a
product costs one backward pass through them instead of a forward and two backward passes; the
other batches are recomputed for every product (the memory of one batch). The model is evaluated
in eval mode (BatchNorm uses its running statistics): the Hessian is that of the deployed network.
Its graphs compute each BatchNorm as the affine map it then is (a cheaper double backward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ._views import LeafForward

# The eigen-solver's default residual tolerance: the square root of float32's epsilon (the
# Hessian-vector products are float32). A Ritz value's error is at most ||r||^2 / gap, so at
# ||r|| = tol |λ| the eigenvalues are as exact as float32 holds them; the vectors' error is
# about tol |λ| / gap.
EIGEN_TOL = float(np.finfo(np.float32).eps) ** 0.5


class Curvature:
    """Derivatives of the loss of ``forward`` over ``batches`` at the views' quantized values."""

    def __init__(self, forward: LeafForward, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 kept_graphs: int = 0):
        self.forward = forward
        self.batches = list(batches)
        self.total = sum(len(y) for _, y in self.batches)
        self.leaves = forward.leaves()
        self.hvp_calls = 0
        self.kept_graphs = kept_graphs
        self._graphs: list[tuple[torch.Tensor, ...]] = []  # gradients with their graphs, per kept batch

    def _loss(self, x: torch.Tensor, y: torch.Tensor, affine_norms: bool = False,
              leaves: list[torch.Tensor] | None = None) -> torch.Tensor:
        out = self.forward(x, self.leaves if leaves is None else leaves, affine_norms=affine_norms)
        return F.cross_entropy(out, y, reduction="sum") / self.total

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
        for i, (x, y) in enumerate(self.batches):
            keep = i < self.kept_graphs
            if keep and i < len(self._graphs):
                grads = self._graphs[i]
            else:
                # BatchNorm as its affine map: the same Hessian, a cheaper double backward
                grads = torch.autograd.grad(self._loss(x, y, affine_norms=True), self.leaves, create_graph=True)
                if keep:
                    self._graphs.append(grads)
            # a gradient without a graph is constant in the weights: its block of H is zero
            pairs = [(g, v) for g, v in zip(grads, vectors) if g.requires_grad]
            if not pairs:
                continue
            products = torch.autograd.grad([g for g, _ in pairs], self.leaves, grad_outputs=[v for _, v in pairs],
                                           retain_graph=keep, allow_unused=True)
            for acc, hv in zip(total, products):
                if hv is not None:
                    acc += hv
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

    def eigenpairs(self, k: int, tol: float = EIGEN_TOL, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` eigenpairs of the Hessian largest in ``|λ|``, each with a residual
        ``||H v - λ v|| <= tol |λ|`` (:func:`lanczos_eigenpairs`): ``(eigenvalues [k] sorted by
        decreasing |λ|, eigenvectors [n, k] of unit norm)``."""
        n = self.size
        k = min(k, n)

        def matvec(v: np.ndarray) -> np.ndarray:
            parts = self.split(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).float())
            return self.join(self.hvp(parts)).double().numpy()

        start = np.random.default_rng(seed).standard_normal(n)
        return lanczos_eigenpairs(matvec, n, k, tol, start)

    @torch.no_grad()
    def loss(self, leaves: list[torch.Tensor] | None = None) -> float:
        """The loss over every batch with ``leaves`` (default: the quantized values) in the views."""
        return sum(float(self._loss(x, y, leaves=leaves)) for x, y in self.batches)

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


def lanczos_eigenpairs(matvec: Callable[[np.ndarray], np.ndarray], n: int, k: int, tol: float, start: np.ndarray,
                       basis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` eigenpairs largest in ``|λ|`` of the symmetric ``n x n`` operator ``matvec``.

    Lanczos with full reorthogonalisation from ``start``, one product per step, stopped at the
    first step (from ``2 k + 1`` on) where every wanted Ritz pair has the residual
    ``||A v - θ v|| = β |s_last| <= tol |θ|``. A Krylov space that turns invariant holds one copy
    of each eigenvalue it reaches (its Ritz pairs are exact); Lanczos then goes on from a random
    vector orthogonal to it, until the ``k`` largest found are at least the largest an exhausted
    space had (what is left holds no larger one), or until the new space's extreme Ritz pairs
    have converged too (they bound what is left). The space holds at most ``basis`` vectors of
    ``n`` floats (default ``max(4 k, 40)``; memory is taken as they are needed); where that is
    not enough, ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``, the same
    ``tol``) continues from the best Ritz vectors (operators of at most ``k + 1`` dimensions are
    built densely). Like any single-vector Krylov method, it can miss further copies of an
    eigenvalue whose space converges before it is exhausted.
    Returns ``(eigenvalues [k] by decreasing |λ|, unit eigenvectors [n, k])``.
    """
    from scipy.linalg import eigh_tridiagonal

    k = min(k, n)
    limit = min(n, basis if basis is not None else max(4 * k, 40))
    least = min(limit, 2 * k + 1)  # a converged space holds this many vectors (ARPACK's least ncv)
    vectors = np.empty((min(limit, 2 * k + 8), n))  # grown by doubling: memory for what is used
    alphas, betas = np.empty(limit), np.empty(limit)  # T; a zero beta separates two Krylov spaces
    rng = np.random.default_rng(0)
    q, first = start / np.linalg.norm(start), 0  # ``first``: where the current Krylov space starts
    for step in range(limit):
        if step == len(vectors):
            vectors = np.concatenate([vectors, np.empty((min(step, limit - step), n))])
        vectors[step] = q
        w = matvec(q)
        alphas[step] = q @ w
        known = vectors[:step + 1]
        for _ in range(2):  # against every earlier vector, twice ("twice is enough")
            w -= known.T @ (known @ w)
        beta = float(np.linalg.norm(w))
        theta, ritz = eigh_tridiagonal(alphas[:step + 1], betas[:step])
        top = np.argsort(-np.abs(theta), kind="stable")[:k]
        if step + 1 == n:  # the whole of R^n
            return theta[top], known.T @ ritz[:, top]
        scale = max(float(np.abs(theta).max()), 1e-300)
        if beta > 1e-12 * scale:
            if step + 1 >= least and np.all(beta * np.abs(ritz[-1, top]) <= tol * np.abs(theta[top])) \
                    and (first == 0 or _ends_converged(alphas, betas, first, step, beta, tol * scale)):
                return theta[top], known.T @ ritz[:, top]
            betas[step], q = beta, w / beta
            continue
        # invariant: what is left of the spectrum lies among this space's own eigenvalues
        exhausted = float(np.abs(eigh_tridiagonal(alphas[first:step + 1], betas[first:step],
                                                  eigvals_only=True)).max())
        if step + 1 >= k and np.abs(theta[top]).min() >= exhausted * (1 - 1e-9):
            return theta[top], known.T @ ritz[:, top]
        w = rng.standard_normal(n)
        for _ in range(2):
            w -= known.T @ (known @ w)
        betas[step], q, first = 0.0, w / np.linalg.norm(w), step + 1
    if k + 1 >= n:  # too small for ARPACK: built densely
        dense = np.stack([matvec(column) for column in np.eye(n)], axis=1)
        values, found = np.linalg.eigh((dense + dense.T) / 2)
    else:
        from scipy.sparse.linalg import LinearOperator, eigsh

        warm = (vectors.T @ ritz[:, top]).sum(axis=1)  # the best Ritz vectors so far start ARPACK
        values, found = eigsh(LinearOperator((n, n), matvec=matvec, dtype=np.float64), k=k, which="LM", tol=tol,
                              v0=warm, ncv=min(n, max(2 * k + 1, 20)))
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    return values[order], found[:, order]


def _ends_converged(alphas: np.ndarray, betas: np.ndarray, first: int, step: int, beta: float, atol: float) -> bool:
    """Whether the smallest and largest Ritz pairs of the Krylov space that starts at ``first``
    have residuals ``<= atol`` (then its eigenvalues, and what is left, lie between them)."""
    from scipy.linalg import eigh_tridiagonal

    _, ritz = eigh_tridiagonal(alphas[first:step + 1], betas[first:step])
    return bool(beta * max(abs(ritz[-1, 0]), abs(ritz[-1, -1])) <= atol)
