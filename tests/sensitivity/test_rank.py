"""Bit-sensitivity ranking against brute-force references: dense Hessians and their
eigendecomposition, explicit gradients, exact bit-flip deltas, FKeras' MSB-first regrouping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import qfault
from qfault import QFaultConfigError
from qfault.formats import IntFormat
from qfault.sensitivity import (
    METHODS, Curvature, LeafForward, SensitivityConfig, lanczos_eigenpairs, msb_first_order, rank_bits, weight_views,
)


class _Net(nn.Module):
    """Conv without bias, BatchNorm, ReLU, Linear: what FKeras' analysis crashes on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _data(n=16):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 4, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _dense(model, views, x, y):
    """Brute force: the loss as a function of the concatenated quantized weights, its gradient
    and full Hessian (torch.autograd.functional), on copies of the weights in float64."""
    sizes = [v.numel for v in views]
    names = [v.name for v in views]
    shapes = [v.shape for v in views]
    model = model.double()

    def loss(flat):
        params, start = {}, 0
        for name, size, shape in zip(names, sizes, shapes):
            params[name] = flat[start:start + size].view(shape)
            start += size
        out = torch.func.functional_call(model, params, (x.double(),), strict=False)
        return F.cross_entropy(out, y)

    flat = torch.cat([v.value.double() for v in views])
    grad = torch.autograd.functional.jacobian(loss, flat)
    hessian = torch.autograd.functional.hessian(loss, flat)
    model.float()
    return grad.numpy(), hessian.numpy()


@pytest.mark.parametrize("tol, score_share", [(1e-10, 1e-5), (None, 1e-3)])
def test_hessian_eigenpairs_and_scores_match_the_dense_hessian(tol, score_share):
    """Eigenvalues to float32 precision, also at the default residual tolerance (sqrt of
    float32's epsilon: their error is at most ||r||^2 / gap); the scores, which use the vectors
    (error about ||r|| / gap), within ``score_share`` of the largest."""
    model, (x, y) = _Net().eval(), _data()
    fmt = IntFormat(4)
    ranking = rank_bits(model, (x, y), method="hessian", eigenpairs=4, format=fmt,
                        **({} if tol is None else {"tol": tol}))
    views = weight_views(model, x, fmt=fmt)
    _, hessian = _dense(model, views, x, y)
    values, vectors = np.linalg.eigh(hessian)
    order = np.argsort(-np.abs(values), kind="stable")[:4]
    assert np.allclose(ranking.eigenvalues, values[order], rtol=1e-6, atol=0)
    theta = np.concatenate([v.theta.double().numpy() for v in views])
    expected = sum(values[j] ** 2 * abs(vectors[:, j] @ theta) * np.abs(vectors[:, j]) for j in order)
    assert np.abs(np.concatenate(ranking.param_scores) - expected).max() <= score_share * expected.max()


def _symmetric(seed: int, n: int, spectrum: str) -> np.ndarray:
    """A symmetric matrix with a random eigenbasis: a spread spectrum of both signs, one with
    repeated eigenvalues, or a low-rank one (most eigenvalues exactly 0)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if spectrum == "spread":
        values = rng.standard_normal(n) * np.logspace(0, -3, n)
    elif spectrum == "repeated":
        values = rng.choice([-2.0, 0.5, 3.0], n)
    else:
        values = np.zeros(n)
        values[:3] = [4.0, -1.5, 0.7][:n]
    return (basis * values) @ basis.T


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 60), k=st.integers(1, 8),
       spectrum=st.sampled_from(["spread", "repeated", "low_rank"]), basis=st.sampled_from([None, 6]))
def test_lanczos_finds_the_largest_eigenpairs_of_a_dense_matrix(seed, n, k, spectrum, basis):
    """Against numpy's eigh: the eigenvalues largest in |λ| and unit eigenvectors with
    ``||A v - λ v|| <= tol |λ|``, repeated eigenvalues included; a basis of 6 vectors makes
    ARPACK finish most cases."""
    # ARPACK (the 6-vector basis hands it most cases) may miss copies of a repeated eigenvalue
    assume(basis is None or spectrum != "repeated")
    matrix = _symmetric(seed, n, spectrum)
    k = min(k, n)
    calls = []
    start = np.random.default_rng(seed + 1).standard_normal(n)
    values, vectors = lanczos_eigenpairs(lambda v: calls.append(1) or matrix @ v, n, k, 1e-8, start, basis=basis)
    expected = np.linalg.eigvalsh(matrix)
    expected = expected[np.argsort(-np.abs(expected), kind="stable")][:k]
    scale = max(np.abs(expected).max(), 1e-12)
    assert values.shape == (k,) and vectors.shape == (n, k)
    assert np.allclose(np.abs(values), np.abs(expected), atol=1e-6 * scale)
    assert np.allclose(np.linalg.norm(vectors, axis=0), 1.0, atol=1e-6)
    residual = np.linalg.norm(matrix @ vectors - vectors * values, axis=0)
    assert np.all(residual <= 1e-6 * scale)
    if basis is None and spectrum == "spread":  # distinct eigenvalues: Lanczos alone, a product per step
        assert len(calls) <= n


def test_lanczos_stops_at_the_tolerance_and_goes_on_past_invariant_spaces():
    rng = np.random.default_rng(0)
    matrix = _symmetric(3, 200, "spread")
    calls = []
    lanczos_eigenpairs(lambda v: calls.append(1) or matrix @ v, 200, 3, 1e-2, rng.standard_normal(200))
    loose = len(calls)
    calls.clear()
    lanczos_eigenpairs(lambda v: calls.append(1) or matrix @ v, 200, 3, 1e-9, rng.standard_normal(200))
    assert loose < len(calls)
    # a start in a 2-dimensional invariant subspace: the third eigenpair is outside it
    diagonal = np.diag([5.0, 4.0, 3.0, 0.1, 0.01])
    values, vectors = lanczos_eigenpairs(lambda v: diagonal @ v, 5, 3, 1e-10, np.array([1.0, 1.0, 0, 0, 0]))
    assert np.allclose(values, [5.0, 4.0, 3.0]) and np.allclose(np.abs(vectors), np.eye(5)[:, :3], atol=1e-8)
    # eight copies of the largest eigenvalue: every Krylov space holds one of them
    matrix = _symmetric(1, 30, "repeated")
    copies = int((np.linalg.eigvalsh(matrix) > 2.9).sum())
    values, vectors = lanczos_eigenpairs(lambda v: matrix @ v, 30, copies, 1e-10, rng.standard_normal(30))
    assert copies > 3 and np.allclose(values, 3.0)
    assert np.allclose(vectors.T @ vectors, np.eye(copies), atol=1e-8)
    assert np.allclose(matrix @ vectors, 3.0 * vectors, atol=1e-8)


def test_kept_gradient_graphs_give_the_recomputed_hessian_vector_products():
    model, (x, y) = _Net().eval(), _data(24)
    views = weight_views(model, x, fmt=IntFormat(6))
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]
    curvatures = [Curvature(LeafForward(model, views), batches, kept_graphs=r) for r in (0, 2, 3)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the kept graphs serve every later product
        vectors = [torch.randn(leaf.shape, generator=gen) for leaf in curvatures[0].leaves]
        products = [torch.cat([p.reshape(-1) for p in c.hvp(vectors)]) for c in curvatures]
        for other in products[1:]:
            assert torch.allclose(other, products[0], rtol=1e-5, atol=1e-7)
    assert [len(c._graphs) for c in curvatures] == [0, 2, 3]
    kept = rank_bits(model, (x, y), method="hessian", eigenpairs=3, format=IntFormat(6), kept_graphs=4)
    recomputed = rank_bits(model, (x, y), method="hessian", eigenpairs=3, format=IntFormat(6), kept_graphs=0)
    assert np.allclose(kept.eigenvalues, recomputed.eigenvalues, rtol=1e-5)


@pytest.mark.parametrize("method", ["gradient", "taylor", "delta"])
def test_first_order_scores_match_explicit_gradients(method):
    model, (x, y) = _Net().eval(), _data()
    fmt = IntFormat(6)
    ranking = rank_bits(model, [(x[:10], y[:10]), (x[10:], y[10:])], method=method, format=fmt)  # two batches
    views = weight_views(model, x, fmt=fmt)
    grad, _ = _dense(model, views, x, y)
    theta = np.concatenate([v.theta.double().numpy() for v in views])
    if method == "gradient":
        assert np.allclose(np.concatenate(ranking.param_scores), np.abs(grad), rtol=1e-4, atol=1e-7)
    elif method == "taylor":
        assert np.allclose(np.concatenate(ranking.param_scores), (grad * theta) ** 2, rtol=1e-4, atol=1e-10)
    else:
        # every bit: |g_i * (value after flipping bit b alone - value)|, the flip decoded by brute force
        start, expected = 0, {}
        for t, view in enumerate(views):
            for e in range(view.numel):
                for b in range(view.bits):
                    code = int(view.codes[e]) & 63
                    flipped = code ^ (1 << b)
                    flipped = flipped - 64 if flipped >= 32 else flipped
                    scale = float(view.scale.reshape(-1)[e // (view.numel // view.shape[0])])
                    delta = flipped * scale - float(view.value[e])
                    expected[(t, e, b)] = abs(grad[start + e] * delta)
            start += view.numel
        got = {(t, e, b): s for t, e, b, s in zip(ranking.tensor.tolist(), ranking.element.tolist(),
                                                   ranking.bit.tolist(), ranking.score.tolist())}
        assert got.keys() == expected.keys()
        assert np.allclose([got[k] for k in expected], list(expected.values()), rtol=1e-4, atol=1e-8)
        assert np.all(np.diff(ranking.score) <= 0)  # most sensitive first


def test_msb_first_regrouping_is_fkeras_order():
    scores = [np.array([0.1, 0.9, 0.5]), np.array([0.7, 0.2])]
    widths = [3, 2]
    tensor, element, bit, _ = msb_first_order(scores, widths)
    # FKeras: params by decreasing score, then plane by plane from the MSB (mixed widths)
    params = sorted([(s, t, e) for t, ss in enumerate(scores) for e, s in enumerate(ss)], key=lambda p: -p[0])
    expected = []
    for plane in range(3):
        expected += [(t, e, widths[t] - 1 - plane) for _, t, e in params if widths[t] > plane]
    assert list(zip(tensor.tolist(), element.tolist(), bit.tolist())) == expected


def test_hutchinson_trace_estimates_the_block_traces():
    model, (x, y) = _Net().eval(), _data()
    fmt = IntFormat(8)
    ranking = rank_bits(model, (x, y), method="gradient", format=fmt, trace_samples=400, seed=3)
    views = weight_views(model, x, fmt=fmt)
    _, hessian = _dense(model, views, x, y)
    start = 0
    for view, estimate in zip(views, ranking.traces):
        block = hessian[start:start + view.numel, start:start + view.numel]
        off = hessian[start:start + view.numel].copy()
        off[:, start:start + view.numel] = 0
        # the estimate's standard error: sqrt(2 * sum of squared off-diagonal entries / samples)
        spread = np.sqrt(2 * ((block - np.diag(np.diag(block))) ** 2).sum() + 2 * (off ** 2).sum()) / 20
        assert abs(estimate - np.trace(block)) < 5 * spread + 1e-6
        start += view.numel


def test_quantized_layers_use_their_own_codes_and_top_bits_become_fault_specs():
    from qfault.data import build_model

    model = build_model("digits_lsq").eval()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model(x)
    ranking = rank_bits(model, (x, y), method="delta", names=("3", "6"))
    assert [(name, bits) for name, _, bits in ranking.tensors] == [("3.weight", 6), ("6.weight", 4)]
    assert len(ranking) == 16 * 32 * 9 * 6 + 32 * 32 * 9 * 4
    ranks = ranking.rank_of()
    for t, (_, shape, bits) in enumerate(ranking.tensors):
        mine = ranking.tensor == t
        assert ranks[t].shape == (int(np.prod(shape)), bits)
        assert np.array_equal(ranks[t][ranking.element[mine], ranking.bit[mine]], np.flatnonzero(mine))
    assert sorted(np.concatenate([r.reshape(-1) for r in ranks]).tolist()) == list(range(len(ranking)))
    specs = ranking.fault_specs(5)
    flipped = set()
    with qfault.inject(model, [qfault.InjectSpec.from_dict(s) for s in specs]) as handle:
        handle.add_listener(lambda name, draw, old, new: flipped.update(
            (name.split(":")[0] + ".weight", e, b) for e, b in draw.bit_sites.tolist()))
        with torch.no_grad():
            model(x)
    assert flipped == set(ranking.top(5))
    table = ranking.layer_table()
    assert sum(row["top_share"] for row in table) == pytest.approx(1.0)
    assert sum(row["top_share"] for row in ranking.bit_position_table()) == pytest.approx(1.0)


def test_errors_name_the_field():
    with pytest.raises(QFaultConfigError, match=r"method='hess' is invalid: allowed one of delta, gradient, hessian"):
        SensitivityConfig(method="hess")
    model, data = _Net(), _data()
    with pytest.raises(QFaultConfigError, match="kept_graphs"):
        SensitivityConfig(method="hessian", kept_graphs=-1)
    with pytest.raises(QFaultConfigError, match="refine"):
        SensitivityConfig(refine=-1)
    with pytest.raises(QFaultConfigError, match="format"):
        rank_bits(model, data, method="gradient")
    with pytest.raises(QFaultConfigError, match="types/names"):
        rank_bits(model, data, method="gradient", format="int8", names=("nope",))
    assert set(METHODS.list()) == {"delta", "gradient", "hessian", "taylor"}
    assert model.training  # the training flag is restored


def _flip_losses(model, batches, bits, fmt) -> np.ndarray:
    """Brute force: the mean cross-entropy over ``batches`` with each ``(tensor name, element,
    bit)`` of ``bits`` flipped alone by ``qfault.inject``, minus the clean one."""

    def loss() -> float:
        with torch.no_grad():
            total = sum(float(F.cross_entropy(getattr(out := model(x), "value", out), y, reduction="sum"))
                        for x, y in batches)
        return total / sum(len(y) for _, y in batches)

    clean, changes = loss(), []
    for name, element, bit in bits:
        module, _, role = name.rpartition(".")
        spec = qfault.InjectSpec(fault=qfault.faults.BitFlip(sites=((element, bit),)), site=role, names=(module,),
                                 persistence="permanent", format=fmt)
        with qfault.inject(model, spec):
            changes.append(loss() - clean)
    return np.array(changes)


@pytest.mark.parametrize("method", METHODS.list())
@pytest.mark.parametrize("quantized", [False, True])
def test_refine_orders_the_first_bits_by_their_measured_loss_change(method, quantized):
    """The first ``refine`` bits are those of the plain ranking, re-ordered by the loss change
    that injecting each flip alone measures (their scores), the rest of the order unchanged."""
    if quantized:
        from qfault.data import build_model

        model, fmt, names = build_model("digits_lsq").eval(), None, ("3",)
        gen = torch.Generator().manual_seed(2)
        batches = [(torch.randn(24, 1, 8, 8, generator=gen), torch.randint(0, 10, (24,), generator=gen))
                   for _ in range(2)]
        model(batches[0][0])
    else:
        model, fmt, names = _Net().eval(), IntFormat(4), None
        x, y = _data(24)
        batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    kwargs = {"method": method, "format": fmt, "names": names, "eigenpairs": 2}
    plain = rank_bits(model, batches, **kwargs)
    count = 30
    refined = rank_bits(model, batches, refine=count, **kwargs)
    assert refined.refined == count and plain.refined == 0
    columns = lambda r, part: np.stack([r.tensor[part], r.element[part], r.bit[part]])  # noqa: E731
    assert np.array_equal(columns(refined, slice(count, None)), columns(plain, slice(count, None)))
    assert np.array_equal(refined.score[count:], plain.score[count:])
    first = {tuple(c) for c in columns(plain, slice(0, count)).T.tolist()}
    assert {tuple(c) for c in columns(refined, slice(0, count)).T.tolist()} == first
    top = refined.top(count)
    expected = _flip_losses(model, batches, top, fmt)
    assert np.allclose(refined.score[:count], expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(expected) <= 1e-6)  # the largest increase of the loss first
    assert len(set(np.round(expected, 6))) > count // 2  # the flips really differ
    if not quantized:  # a refine count beyond the bits measures every bit
        assert rank_bits(model, batches, refine=10**6, **kwargs).refined == len(plain)
