"""Seeded O(#faults) sampling checked statistically (fixed seeds, so the tests are deterministic)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from qfault.faults import bernoulli_positions, binomial, derive_seed, distinct, make_generator
from qfault.faults._sampling import ceil_count

ALPHA = 1e-4  # p-value threshold; the seeds are fixed, so a pass is reproducible


def chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson chi-square p-value, merging bins with small expectation into one."""
    observed = np.asarray(observed, dtype=float)
    expected = np.asarray(expected, dtype=float)
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
        if expected[-1] == 0:
            observed, expected = observed[:-1], expected[:-1]
    stat = float(((observed - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(stat, len(expected) - 1))


# --------------------------------------------------------------------------------------------
# binomial
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, p", [(1000, 0.01), (100, 0.3), (40, 0.9), (10**9, 2e-6), (7, 0.5),
                                  (100_000, 0.2)])
def test_binomial_distribution(n, p):
    gen = make_generator("test-binomial", n, p)
    draws = np.array([binomial(n, p, gen) for _ in range(3000)])
    assert draws.min() >= 0 and draws.max() <= n
    mean, var = n * p, n * p * (1 - p)
    # mean within 5 standard errors, variance within 15 %
    assert abs(draws.mean() - mean) < 5 * math.sqrt(var / draws.size)
    assert abs(draws.var() - var) < 0.15 * var
    # goodness of fit against Binomial(n, p) over the central support
    lo, hi = int(stats.binom.ppf(1e-6, n, p)), int(stats.binom.ppf(1 - 1e-6, n, p))
    support = np.arange(lo, hi + 1)
    observed = np.array([(draws == k).sum() for k in support])
    expected = stats.binom.pmf(support, n, p) * draws.size
    assert chi2_pvalue(observed, expected) > ALPHA


def test_binomial_edge_cases():
    gen = make_generator(0)
    assert binomial(0, 0.5, gen) == 0
    assert binomial(-3, 0.5, gen) == 0
    assert binomial(10, 0.0, gen) == 0
    assert binomial(10, 1.0, gen) == 10
    assert binomial(2**40, 1.0, gen) == 2**40
    assert isinstance(binomial(100, 0.5, gen), int)


# --------------------------------------------------------------------------------------------
# distinct
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, k", [(1, 1), (10, 0), (10, 1), (10, 2), (10, 3), (10, 10), (100, 25),
                                  (100, 26), (1000, 250), (1000, 999), (10**12, 50), (2**40, 1000)])
def test_distinct_sorted_unique_in_range(n, k):
    gen = make_generator("distinct", n, k)
    for _ in range(5):
        out = distinct(n, k, gen)
        assert out.dtype == torch.int64 and out.device.type == "cpu"
        values = out.tolist()
        assert len(values) == k
        assert values == sorted(set(values))
        assert all(0 <= v < n for v in values)
    if k == n:
        assert distinct(n, k, gen).tolist() == list(range(n))


def _distinct_by_resorting(n: int, k: int, gen: torch.Generator) -> list[int]:
    """The rejection path written the plain way: redraw the shortfall, re-sort everything."""
    have = sorted(set(torch.randint(n, (k,), generator=gen, dtype=torch.int64).tolist()))
    while len(have) < k:
        have = sorted(set(have) | set(torch.randint(n, (k - len(have),), generator=gen, dtype=torch.int64).tolist()))
    return have


@pytest.mark.parametrize("n, k", [(40, 10), (400, 100), (10**4, 300), (10**6, 2000), (64, 16), (10**5, 12_000),
                                  (10**5, 13_000)])
def test_distinct_merge_of_redraws_equals_resorting(n, k):
    # dense enough that redraws happen, through the sorted merge (below n / 8) and the mask
    for seed in range(30):
        fast = distinct(n, k, make_generator("merge", n, k, seed)).tolist()
        assert fast == _distinct_by_resorting(n, k, make_generator("merge", n, k, seed))


def test_distinct_rejects_bad_k():
    gen = make_generator(1)
    with pytest.raises(ValueError):
        distinct(5, 6, gen)
    with pytest.raises(ValueError):
        distinct(5, -1, gen)


@pytest.mark.parametrize("n, k, path", [(40, 5, "rejection"), (40, 10, "rejection"),
                                        (40, 11, "permutation"), (40, 30, "permutation")])
def test_distinct_positions_uniform(n, k, path):
    # k <= n / 4 takes the rejection path, larger k the permutation path
    assert (k <= n / 4) == (path == "rejection")
    gen = make_generator("uniform-positions", n, k)
    draws = 3000
    counts = np.zeros(n)
    for _ in range(draws):
        counts[distinct(n, k, gen).numpy()] += 1
    assert counts.sum() == draws * k
    assert chi2_pvalue(counts, np.full(n, draws * k / n)) > ALPHA


@pytest.mark.parametrize("n, k", [(8, 2), (12, 3), (6, 4)])
def test_distinct_subsets_uniform(n, k):
    """Every k-subset equally likely (both paths: k <= n/4 for the first two)."""
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(n), k))}
    gen = make_generator("subsets", n, k)
    draws = 60 * len(subsets)
    counts = np.zeros(len(subsets))
    for _ in range(draws):
        counts[subsets[tuple(distinct(n, k, gen).tolist())]] += 1
    assert chi2_pvalue(counts, np.full(len(subsets), draws / len(subsets))) > ALPHA


def test_bernoulli_positions_count_distribution():
    n, p = 500, 0.02
    gen = make_generator("bernoulli", n, p)
    counts = []
    hits = np.zeros(n)
    for _ in range(2000):
        pos = bernoulli_positions(n, p, gen)
        values = pos.tolist()
        assert values == sorted(set(values)) and all(0 <= v < n for v in values)
        counts.append(len(values))
        hits[pos.numpy()] += 1
    counts = np.array(counts)
    support = np.arange(0, 30)
    observed = np.array([(counts == c).sum() for c in support])
    expected = stats.binom.pmf(support, n, p) * counts.size
    assert chi2_pvalue(observed, expected) > ALPHA
    assert chi2_pvalue(hits, np.full(n, hits.sum() / n)) > ALPHA
    assert bernoulli_positions(n, 0.0, gen).numel() == 0
    assert bernoulli_positions(n, 1.0, gen).tolist() == list(range(n))


# --------------------------------------------------------------------------------------------
# determinism and seeds
# --------------------------------------------------------------------------------------------
def _sample(gen):
    return (binomial(10**6, 0.01, gen), distinct(1000, 7, gen).tolist(), distinct(50, 40, gen).tolist(),
            bernoulli_positions(10**5, 1e-3, gen).tolist())


def test_same_seed_same_output():
    assert _sample(make_generator("a", 1)) == _sample(make_generator("a", 1))
    assert _sample(make_generator(5)) == _sample(make_generator(5))


def test_different_seed_different_output():
    assert _sample(make_generator("a", 1)) != _sample(make_generator("a", 2))
    assert _sample(make_generator(5)) != _sample(make_generator(6))


def test_unseeded_generators_differ():
    assert _sample(make_generator(None)) != _sample(make_generator(None))


def test_derive_seed_stable_and_distinct():
    keys = [(), (0,), (1,), ("a",), ("a", 1), ("a", 2), (("corrupt", 0),), (None,), (1, "a"), ("1",)]
    seeds = [derive_seed(*k) for k in keys]
    assert seeds == [derive_seed(*k) for k in keys]
    assert len(set(seeds)) == len(seeds)
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)


def test_ceil_count_reference():
    from fractions import Fraction

    for total in (1, 3, 7, 10, 16, 100, 1000, 1024, 4096, 10000):
        # 16.1, 32.7 (x1000) and 0.07 (x10000) are exact products that float arithmetic overshoots
        for percent in (0, 0.07, 0.1, 0.3, 1, 5, 10, 12.5, 16.1, 32.7, 33.3, 50, 64.9, 70, 99.9, 100):
            expected = min(total, math.ceil(Fraction(total) * Fraction(str(percent)) / 100))
            assert ceil_count(total, percent) == expected, (total, percent)


# --------------------------------------------------------------------------------------------
# nested Bernoulli positions (BitFlip(ber=..., nested=True))
# --------------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qfault.faults import nested_bernoulli_array  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32),
       bers=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=5))
def test_nested_positions_grow_with_the_ber(n, seed, bers):
    previous = None
    for ber in sorted(bers):
        hit = nested_bernoulli_array(n, ber, make_generator("nested", seed))
        assert hit.dtype == np.int64 and np.all(np.diff(hit) > 0)  # sorted and distinct
        assert hit.size == 0 or (hit[0] >= 0 and hit[-1] < n)
        if previous is not None:
            assert np.isin(previous, hit).all(), f"faults at a lower BER missing at {ber}"
        previous = hit
    assert nested_bernoulli_array(n, 1.0, make_generator(seed)).size == n
    assert nested_bernoulli_array(n, 0.0, make_generator(seed)).size == 0


@pytest.mark.parametrize("n, p", [(10**6, 1e-4), (10**5, 0.01), (2000, 0.3), (500, 0.5), (300, 0.8)])
def test_nested_counts_are_binomial(n, p):
    gen = make_generator("nested-count", n, p)
    draws = np.array([nested_bernoulli_array(n, p, gen).size for _ in range(2000)])
    lo, hi = int(stats.binom.ppf(1e-6, n, p)), int(stats.binom.ppf(1 - 1e-6, n, p))
    support = np.arange(lo, hi + 1)
    observed = np.array([(draws == k).sum() for k in support])
    assert observed.sum() >= draws.size - 2
    assert chi2_pvalue(observed, stats.binom.pmf(support, n, p) * draws.size) > ALPHA


@pytest.mark.parametrize("p", [0.05, 0.7])
def test_nested_positions_are_independent_and_uniform(p):
    """Each position is hit with probability p, and pairs of positions independently (p**2)."""
    n, trials = 40, 6000
    gen = make_generator("nested-uniform", p)
    hits = np.zeros((trials, n), dtype=bool)
    for t in range(trials):
        hits[t, nested_bernoulli_array(n, p, gen)] = True
    per_position = hits.sum(0)
    assert chi2_pvalue(np.append(per_position, trials * n - per_position.sum()),
                       np.append(np.full(n, trials * p), trials * n * (1 - p))) > ALPHA
    both = (hits[:, 0::2] & hits[:, 1::2]).sum()
    pairs = trials * (n // 2)
    assert abs(both - pairs * p * p) < 5 * math.sqrt(pairs * p * p * (1 - p * p))
