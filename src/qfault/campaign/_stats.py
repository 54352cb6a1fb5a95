"""Statistics for fault-injection campaigns.

* How many faults to inject: the statistical fault-injection sample size of Leveugle et al.
  (DATE 2009), :func:`leveugle_sample_size`, and its inverse, :func:`leveugle_margin`.
* How sure a measured rate is: the Wilson score interval of a proportion,
  :func:`wilson_interval`.
* How sure a mean over repeated campaigns is: a Student-t interval, :func:`mean_ci`, and the
  population standard deviation, :func:`population_std`.

Normal quantiles come from :class:`statistics.NormalDist`, so importing this module needs
neither numpy nor scipy; only :func:`mean_ci` imports scipy (for the Student-t quantile), and only
when it is called.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

from .._errors import QFaultConfigError

__all__ = [
    "leveugle_sample_size",
    "leveugle_margin",
    "wilson_interval",
    "mean_ci",
    "population_std",
    "normal_quantile",
]

# Relative slack allowed before rounding a sample size up, so that float noise in a result that
# is mathematically an integer (e.g. 9603.999999999998 for t = 1.96, e = 0.01) is not rounded up
# to the next integer.
_CEIL_RTOL = 1e-9


# --------------------------------------------------------------------------------------------
# validation helpers


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_open_unit(field: str, value: object) -> float:
    """``value`` as a float, or :class:`QFaultConfigError` unless it lies in the open (0, 1)."""
    if not _is_real(value) or not (0.0 < value < 1.0):  # type: ignore[operator]  # NaN fails too
        raise QFaultConfigError(field, value, "a number in the open interval (0, 1)")
    return float(value)  # type: ignore[arg-type]


def _check_population(population: object) -> float:
    """The population size as a float (``math.inf`` allowed); integers >= 1 only otherwise."""
    allowed = "an integer >= 1 or math.inf"
    if not _is_real(population) or math.isnan(population):  # type: ignore[arg-type]
        raise QFaultConfigError("population", population, allowed)
    if population == math.inf:
        return math.inf
    if not float(population).is_integer() or population < 1:  # type: ignore[arg-type,operator]
        raise QFaultConfigError("population", population, allowed)
    return float(population)  # type: ignore[arg-type]


def _quantile(confidence: float, t: float | None) -> float:
    """Two-sided normal quantile for ``confidence``, or the caller's override ``t``."""
    if t is None:
        return normal_quantile(confidence)
    if not _is_real(t) or not (0.0 < t < math.inf):
        raise QFaultConfigError("t", t, "a finite number > 0, or None for the exact quantile")
    return float(t)


def _as_floats(values: Sequence[float]) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise QFaultConfigError("values", values, "a sequence of real numbers") from exc
    if not out:
        raise QFaultConfigError("values", values, "a non-empty sequence of real numbers")
    return out


# --------------------------------------------------------------------------------------------
# normal quantile


def normal_quantile(confidence: float = 0.95) -> float:
    """Two-sided standard normal quantile ``t`` with ``P(|Z| <= t) = confidence``.

    Args:
        confidence: Confidence level, a fraction in (0, 1) (0.95 means 95 %).

    Returns:
        ``Phi^-1(1 - (1 - confidence) / 2)``, e.g. 1.959964 for 0.95 and 2.575829 for 0.99
        (dimensionless, in standard deviations).

    Raises:
        QFaultConfigError: ``confidence`` is not in (0, 1).
    """
    confidence = _check_open_unit("confidence", confidence)
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


# --------------------------------------------------------------------------------------------
# Leveugle et al. sample size


def leveugle_sample_size(
    population: int | float,
    margin: float,
    confidence: float = 0.95,
    p: float = 0.5,
    *,
    t: float | None = None,
) -> int:
    """Number of fault injections needed for a given error margin (Leveugle et al., DATE 2009).

    ``n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))``, and for an infinite population
    ``n = t^2 p (1 - p) / e^2``, rounded up to an integer (a result that is an integer up to a
    relative float error of 1e-9 is not rounded up further). ``n`` never exceeds ``N``.

    ``t`` is by default the exact two-sided normal quantile (1.959964 at 95 %, 2.575829 at 99 %).
    Published tables often use the rounded 1.96 and 2.5758 (or 2.58); pass ``t=`` to reproduce
    them. The two can differ by one: for ``N = inf, e = 0.01`` at 99 % the exact quantile gives
    16588 and ``t=2.5758`` gives the published 16587 (at 95 % both give 9604).

    Args:
        population: Size ``N`` of the fault population (number of possible faults), an integer
            >= 1, or ``math.inf`` for an unbounded population.
        margin: Error margin ``e``, a fraction in (0, 1) (0.01 means +/- 1 percentage point).
        confidence: Confidence level, a fraction in (0, 1).
        p: Assumed proportion of faults that lead to the outcome of interest, in (0, 1); 0.5 is
            the worst case (largest ``n``).
        t: Optional override of the normal quantile (e.g. 2.58); must be finite and > 0.

    Returns:
        The sample size ``n`` (number of injections), ``1 <= n <= N``.

    Raises:
        QFaultConfigError: An argument is out of range; the message names the field.
    """
    big_n = _check_population(population)
    e = _check_open_unit("margin", margin)
    _check_open_unit("confidence", confidence)
    p = _check_open_unit("p", p)
    tq = _quantile(confidence, t)
    var = tq * tq * p * (1.0 - p)
    if big_n == math.inf:
        n = var / (e * e)
    else:
        n = big_n / (1.0 + e * e * (big_n - 1.0) / var)
    size = max(1, math.ceil(n - _CEIL_RTOL * max(1.0, n)))
    if big_n != math.inf:
        size = min(size, int(big_n))
    return size


def leveugle_margin(
    population: int | float,
    n: int,
    confidence: float = 0.95,
    p: float = 0.5,
    *,
    t: float | None = None,
) -> float:
    """Error margin reached with ``n`` injections out of a population of ``N`` faults.

    The inverse of :func:`leveugle_sample_size`:
    ``e = t sqrt(p (1 - p) / n * (N - n) / (N - 1))`` (finite-population correction), and
    ``e = t sqrt(p (1 - p) / n)`` for ``N = inf``. With ``n == N`` (every fault injected) the
    margin is 0, also for ``N = 1``.

    Args:
        population: Size ``N`` of the fault population, an integer >= 1 or ``math.inf``.
        n: Number of injections, an integer in [1, N].
        confidence: Confidence level, a fraction in (0, 1).
        p: Assumed proportion, in (0, 1).
        t: Optional override of the normal quantile; see :func:`leveugle_sample_size`.

    Returns:
        The margin ``e`` as a fraction (0.01 means +/- 1 percentage point).

    Raises:
        QFaultConfigError: An argument is out of range; the message names the field.
    """
    big_n = _check_population(population)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > big_n:
        raise QFaultConfigError("n", n, f"an integer in [1, population={population!r}]")
    _check_open_unit("confidence", confidence)
    p = _check_open_unit("p", p)
    tq = _quantile(confidence, t)
    base = p * (1.0 - p) / n
    if big_n == math.inf:
        return tq * math.sqrt(base)
    if n == big_n:
        return 0.0
    return tq * math.sqrt(base * (big_n - n) / (big_n - 1.0))


# --------------------------------------------------------------------------------------------
# intervals


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    ``(p + z^2/(2n) -/+ z sqrt(p (1 - p)/n + z^2/(4 n^2))) / (1 + z^2/n)`` with ``p = successes/n``
    and ``z`` the two-sided normal quantile. Unlike the normal (Wald) interval it stays inside
    [0, 1] and is not degenerate at 0 or ``n`` successes: the bound is exactly 0.0 for 0 successes
    and exactly 1.0 for ``n`` successes. It always contains ``successes / n``.

    Args:
        successes: Number of events (e.g. SDC-1 images), an integer in [0, n].
        n: Number of trials (e.g. images times injections), an integer >= 0.
        confidence: Confidence level, a fraction in (0, 1).

    Returns:
        ``(low, high)`` as fractions in [0, 1]. For ``n == 0`` nothing is known: ``(0.0, 1.0)``.

    Raises:
        QFaultConfigError: An argument is out of range; the message names the field.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise QFaultConfigError("n", n, "an integer >= 0")
    if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= n:
        raise QFaultConfigError("successes", successes, f"an integer in [0, n={n}]")
    z = normal_quantile(confidence)
    if n == 0:
        return 0.0, 1.0
    phat = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (phat + z2 / (2.0 * n)) / denom
    half = z / denom * math.sqrt(phat * (1.0 - phat) / n + z2 / (4.0 * n * n))
    low = 0.0 if successes == 0 else min(max(center - half, 0.0), phat)
    high = 1.0 if successes == n else max(min(center + half, 1.0), phat)
    return low, high


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval.

    ``half_width = t_{(1 + confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (divisor ``n - 1``). Use it for a quantity measured once per campaign repetition
    (e.g. the SDC-1 rate of each seed); the interval is ``mean -/+ half_width``.

    Args:
        values: The measurements (any real-valued sequence, same unit as the result), at least
            one.
        confidence: Confidence level, a fraction in (0, 1).

    Returns:
        ``(mean, half_width)`` in the unit of ``values``. With a single value the spread is
        unknown and ``half_width`` is ``math.inf``; with identical values it is 0.0.

    Raises:
        QFaultConfigError: ``values`` is empty or not numeric, or ``confidence`` is out of range.
        ImportError: scipy (needed for the Student-t quantile) is not installed.
    """
    confidence = _check_open_unit("confidence", confidence)
    xs = _as_floats(values)
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.inf
    from scipy.stats import t as student_t  # heavy; only when asked for

    s = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    tq = float(student_t.ppf(1.0 - (1.0 - confidence) / 2.0, n - 1))
    return mean, tq * s / math.sqrt(n)


def population_std(values: Sequence[float]) -> float:
    """Population standard deviation ``sqrt(sum (x - mean)^2 / N)`` (divisor ``N``, not ``N-1``).

    Args:
        values: The measurements, at least one.

    Returns:
        The standard deviation in the unit of ``values``; 0.0 for a single value.

    Raises:
        QFaultConfigError: ``values`` is empty or not numeric.
    """
    xs = _as_floats(values)
    mean = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
