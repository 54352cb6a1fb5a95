"""Campaign statistics checked against published numbers, scipy and brute-force references."""

from __future__ import annotations

import functools
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize
from scipy import stats as sps

from qfault import QFaultConfigError
from qfault.campaign._stats import (
    leveugle_margin,
    leveugle_sample_size,
    mean_ci,
    normal_quantile,
    population_std,
    wilson_interval,
)

FAST = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------
# independent references


@functools.lru_cache(maxsize=None)
def ref_quantile(confidence: float) -> float:
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def ref_margin(population: float, n: int, confidence: float, p: float) -> float:
    t = ref_quantile(confidence)
    if n == population:  # everything injected: no sampling error (also covers N = 1)
        return 0.0
    fpc = 1.0 if math.isinf(population) else (population - n) / (population - 1.0)
    return t * math.sqrt(p * (1.0 - p) / n * fpc)


def ref_wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson interval = the set of p the score test does not reject: roots of
    (k/n - p)^2 = z^2 p (1 - p) / n, found numerically."""
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    phat = k / n

    def score(p: float) -> float:
        return (phat - p) ** 2 - z * z * p * (1.0 - p) / n

    # score(phat) < 0 and score(0), score(1) >= 0; keep the brackets off the root p = phat
    low = 0.0 if k == 0 else optimize.brentq(score, 0.0, min(phat, 1 - 1e-12), xtol=1e-15)
    high = 1.0 if k == n else optimize.brentq(score, max(phat, 1e-12), 1.0, xtol=1e-15)
    return low, high


# --------------------------------------------------------------------------------------------
# normal quantile


def test_normal_quantile_matches_scipy():
    for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        assert normal_quantile(c) == pytest.approx(float(sps.norm.ppf(0.5 + c / 2)), rel=1e-12)
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.99) == pytest.approx(2.575829, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Leveugle sample size


def test_leveugle_reference_numbers_infinite_population():
    # 95 %, e = 1 %: 9604 with the rounded t = 1.96 and with the exact quantile (9603.65 -> 9604)
    assert leveugle_sample_size(math.inf, 0.01, 0.95) == 9604
    assert leveugle_sample_size(math.inf, 0.01, 0.95, t=1.96) == 9604  # 9603.99999... in floats
    # 99 %, e = 1 %: the published 16587 uses t = 2.5758; the exact quantile 2.5758293 gives
    # 16587.24 -> 16588. The default is the exact quantile.
    exact = leveugle_sample_size(math.inf, 0.01, 0.99)
    assert abs(exact - 16587) <= 1
    assert exact == 16588
    assert leveugle_sample_size(math.inf, 0.01, 0.99, t=2.5758) == 16587
    # 95 %, e = 5 %: 385 (384.15 -> 385)
    assert leveugle_sample_size(math.inf, 0.05, 0.95) == 385
    assert leveugle_sample_size(math.inf, 0.05, 0.95, t=1.96) == 385


def test_leveugle_reference_number_finite_population():
    n = leveugle_sample_size(1_000_000, 0.01, 0.99)
    assert abs(n - 16317) <= 1
    assert n == 16317  # 16316.61 with the exact quantile
    assert leveugle_sample_size(1_000_000, 0.01, 0.99, t=2.5758) == 16317  # 16316.25
    assert leveugle_sample_size(1e6, 0.01, 0.99) == 16317  # an integral float is accepted


def test_leveugle_small_population_bounds():
    assert leveugle_sample_size(1, 0.01) == 1
    assert leveugle_sample_size(10, 0.01) == 10  # nearly everything must be injected
    for big_n in (1, 2, 7, 100, 10_000):
        assert 1 <= leveugle_sample_size(big_n, 0.3) <= big_n
    # finite population never needs more than the infinite one
    assert leveugle_sample_size(50_000, 0.01) < leveugle_sample_size(math.inf, 0.01)


def test_leveugle_sample_size_is_brute_force_minimum_for_small_populations():
    # exhaustive: the smallest n whose (reference) margin is <= e
    for big_n in (1, 2, 3, 10, 57, 400, 1500):
        for e in (0.01, 0.03, 0.05, 0.1, 0.25):
            for conf in (0.9, 0.95, 0.99):
                got = leveugle_sample_size(big_n, e, conf)
                want = next(n for n in range(1, big_n + 1)
                            if ref_margin(big_n, n, conf, 0.5) <= e * (1 + 1e-12))
                assert got == want, (big_n, e, conf)


@FAST
@given(
    big_n=st.one_of(st.integers(1, 10**9), st.just(math.inf)),
    e=st.floats(0.001, 0.5),
    conf=st.floats(0.5, 0.999),
    p=st.floats(0.01, 0.99),
)
def test_leveugle_sample_size_is_minimal_property(big_n, e, conf, p):
    n = leveugle_sample_size(big_n, e, conf, p)
    assert 1 <= n <= big_n
    assert ref_margin(big_n, n, conf, p) <= e * (1 + 1e-6)
    if n > 1:
        assert ref_margin(big_n, n - 1, conf, p) > e * (1 - 1e-6)


@FAST
@given(big_n=st.one_of(st.integers(2, 10**7), st.just(math.inf)), e=st.floats(0.002, 0.2))
def test_leveugle_margin_inverts_sample_size(big_n, e):
    n = leveugle_sample_size(big_n, e)
    assert leveugle_margin(big_n, n) <= e * (1 + 1e-9)
    assert leveugle_margin(big_n, n) == pytest.approx(ref_margin(big_n, n, 0.95, 0.5), rel=1e-12)


def test_leveugle_margin_values():
    assert leveugle_margin(math.inf, 9604) == pytest.approx(1.959964 * math.sqrt(0.25 / 9604), rel=1e-6)
    assert leveugle_margin(math.inf, 9604, t=1.96) == pytest.approx(0.01, rel=1e-12)
    assert leveugle_margin(100, 100) == 0.0
    assert leveugle_margin(1, 1) == 0.0
    assert leveugle_margin(1000, 10, 0.99, 0.2) == pytest.approx(ref_margin(1000, 10, 0.99, 0.2))
    # more injections, smaller margin
    assert leveugle_margin(10_000, 200) < leveugle_margin(10_000, 100)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(population=0, margin=0.01), "population"),
        (dict(population=-5, margin=0.01), "population"),
        (dict(population=10.5, margin=0.01), "population"),
        (dict(population=math.nan, margin=0.01), "population"),
        (dict(population=True, margin=0.01), "population"),
        (dict(population="100", margin=0.01), "population"),
        (dict(population=100, margin=0.0), "margin"),
        (dict(population=100, margin=1.0), "margin"),
        (dict(population=100, margin=math.nan), "margin"),
        (dict(population=100, margin=0.01, confidence=1.0), "confidence"),
        (dict(population=100, margin=0.01, confidence=0.0), "confidence"),
        (dict(population=100, margin=0.01, confidence=95), "confidence"),
        (dict(population=100, margin=0.01, p=0.0), "p"),
        (dict(population=100, margin=0.01, p=1.0), "p"),
        (dict(population=100, margin=0.01, t=-1.0), "t"),
        (dict(population=100, margin=0.01, t=math.inf), "t"),
    ],
)
def test_leveugle_sample_size_validation_names_field(kwargs, field):
    with pytest.raises(QFaultConfigError) as info:
        leveugle_sample_size(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    "args, kwargs, field",
    [
        ((100, 0), {}, "n"),
        ((100, 101), {}, "n"),
        ((100, 2.0), {}, "n"),
        ((0, 1), {}, "population"),
        ((100, 10), {"confidence": 1.5}, "confidence"),
        ((100, 10), {"p": -0.1}, "p"),
    ],
)
def test_leveugle_margin_validation_names_field(args, kwargs, field):
    with pytest.raises(QFaultConfigError) as info:
        leveugle_margin(*args, **kwargs)
    assert info.value.field == field


# --------------------------------------------------------------------------------------------
# Wilson interval


def test_wilson_matches_score_test_roots():
    for n in (1, 2, 5, 10, 37, 263, 10_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for conf in (0.9, 0.95, 0.99):
                low, high = wilson_interval(k, n, conf)
                rl, rh = ref_wilson(k, n, conf)
                assert low == pytest.approx(rl, abs=1e-10), (k, n, conf)
                assert high == pytest.approx(rh, abs=1e-10), (k, n, conf)


def test_wilson_known_values_and_edges():
    z2 = normal_quantile(0.95) ** 2
    # 0 successes: the upper bound has the closed form z^2 / (n + z^2) (0.2775 for n = 10)
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(z2 / (10 + z2), rel=1e-12)
    assert high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10) == (pytest.approx(1 - z2 / (10 + z2), rel=1e-12), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # symmetry: k successes <-> n - k failures
    lo, hi = wilson_interval(3, 17)
    lo2, hi2 = wilson_interval(14, 17)
    assert lo == pytest.approx(1 - hi2, abs=1e-14) and hi == pytest.approx(1 - lo2, abs=1e-14)


@FAST
@given(n=st.integers(1, 10**6), frac=st.floats(0, 1), conf=st.floats(0.5, 0.999))
def test_wilson_contains_estimate_and_stays_in_unit_interval(n, frac, conf):
    k = min(n, int(round(frac * n)))
    low, high = wilson_interval(k, n, conf)
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert low < high


@FAST
@given(n=st.integers(1, 10**5), frac=st.floats(0, 1), m=st.integers(2, 50))
def test_wilson_shrinks_with_n_and_grows_with_confidence(n, frac, m):
    k = min(n, int(round(frac * n)))
    low, high = wilson_interval(k, n)
    low_m, high_m = wilson_interval(k * m, n * m)  # same proportion, m times the trials
    assert high_m - low_m < high - low
    low99, high99 = wilson_interval(k, n, 0.99)
    assert high99 - low99 > high - low


@pytest.mark.parametrize(
    "args, field",
    [((-1, 10), "successes"), ((11, 10), "successes"), ((1.0, 10), "successes"),
     ((0, -1), "n"), ((0, 2.5), "n"), ((1, 10, 1.0), "confidence")],
)
def test_wilson_validation_names_field(args, field):
    with pytest.raises(QFaultConfigError) as info:
        wilson_interval(*args)
    assert info.value.field == field


# --------------------------------------------------------------------------------------------
# mean and its Student-t interval; population standard deviation


def test_mean_ci_matches_scipy_t_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 30, 200):
        xs = rng.normal(3.0, 2.0, size=n).tolist()
        for conf in (0.9, 0.95, 0.99):
            mean, half = mean_ci(xs, conf)
            lo, hi = sps.t.interval(conf, n - 1, loc=np.mean(xs), scale=sps.sem(xs))
            assert mean == pytest.approx(np.mean(xs), rel=1e-12)
            assert half == pytest.approx((hi - lo) / 2, rel=1e-10)


def test_mean_ci_hand_computed_and_edges():
    # values 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.302653 -> half = 4.302653 / sqrt(3)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    assert mean_ci([5.0]) == (5.0, math.inf)  # one value: spread unknown
    assert mean_ci([4.0, 4.0, 4.0]) == (4.0, 0.0)
    assert mean_ci(np.array([1.0, 3.0]))[0] == 2.0  # any numeric sequence
    with pytest.raises(QFaultConfigError) as info:
        mean_ci([])
    assert info.value.field == "values"
    with pytest.raises(QFaultConfigError) as info:
        mean_ci(["a", "b"])
    assert info.value.field == "values"
    with pytest.raises(QFaultConfigError) as info:
        mean_ci([1.0, 2.0], confidence=0.0)
    assert info.value.field == "confidence"


@FAST
@given(xs=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=40), conf=st.floats(0.5, 0.99))
def test_mean_ci_property_contains_mean_and_widens_with_confidence(xs, conf):
    mean, half = mean_ci(xs, conf)
    assert mean == pytest.approx(statistics.fmean(xs), rel=1e-9, abs=1e-6)
    assert half >= 0.0
    assert mean_ci(xs, min(0.999, conf + 0.005))[1] >= half


def test_population_std_reference():
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 100):
        xs = rng.normal(size=n).tolist()
        assert population_std(xs) == pytest.approx(np.std(xs), rel=1e-12, abs=1e-15)
        assert population_std(xs) == pytest.approx(statistics.pstdev(xs), rel=1e-12, abs=1e-15)
    assert population_std([7.0]) == 0.0
    assert population_std([1.0, 3.0]) == 1.0  # divisor N, not N - 1
    with pytest.raises(QFaultConfigError) as info:
        population_std([])
    assert info.value.field == "values"


@FAST
@given(xs=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
def test_population_std_property(xs):
    assert population_std(xs) == pytest.approx(statistics.pstdev(xs), rel=1e-9, abs=1e-6)


def test_stats_module_imports_without_scipy():
    import subprocess
    import sys

    # only what _stats itself loads counts (the campaign package may import more on its own)
    code = (
        "import sys\n"
        "import qfault.campaign\n"
        "before = 'scipy' in sys.modules\n"
        "import qfault.campaign._stats as s\n"
        "s.leveugle_sample_size(1e6, 0.01); s.wilson_interval(3, 10); s.population_std([1, 2])\n"
        "assert before or 'scipy' not in sys.modules, 'scipy imported by _stats'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
