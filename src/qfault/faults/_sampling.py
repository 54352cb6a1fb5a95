"""Seeded fault sampling in O(number of faults).

A Bernoulli(p) draw over ``n`` sites is sampled as a binomial count ``k`` followed by ``k``
distinct uniform positions, never as ``n`` coin flips. All draws use a CPU ``torch.Generator``
seeded from ``(seed, site, draw)``; the indices are then moved to the target device, so the same
seed gives the same faults on CPU and CUDA.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import torch

_DENSE_FRACTION = 0.25  # above this fraction of n, a permutation is cheaper than rejection
#: from this many positions per ``n`` on, a mark in an ``n``-entry mask deduplicates them faster
#: than sorting them, still O(k): numpy sorts the int32 positions at ~2.5 ns each, the mask's
#: nonzero scan costs ~1 ns per entry of ``n`` (measured on 3.7M entries: at 5 % sorting takes
#: 2.0 ms, the mask 4.1 ms; at 20 % the mask 6 ms, sorting 27 ms)
_MASK_FRACTION = 1 / 8


def derive_seed(*keys: object) -> int:
    """A 63-bit seed from any keys (stable across processes and platforms)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def uniform_index(count: int, *keys: object) -> int:
    """An exactly uniform integer in ``range(count)`` determined by ``keys`` (no generator)."""
    limit = ((1 << 63) // count) * count
    salt = 0
    while True:
        value = derive_seed(*keys, salt)
        if value < limit:
            return value % count
        salt += 1


def make_generator(*keys: object) -> torch.Generator:
    """A CPU generator seeded from :func:`derive_seed` of ``keys``; ``(None,)`` seeds randomly."""
    gen = torch.Generator()
    if len(keys) == 1 and keys[0] is None:
        gen.seed()
    else:
        gen.manual_seed(derive_seed(*keys))
    return gen


def binomial(n: int, p: float, generator: torch.Generator) -> int:
    """A Binomial(n, p) count (exact in float64 for any n below 2**53)."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    count, prob = _binomial_operands(n, p)
    return int(torch.binomial(count, prob, generator=generator))


@functools.lru_cache(maxsize=256)
def _binomial_operands(n: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-element count and probability tensors of ``torch.binomial`` (read only)."""
    return torch.full((1,), float(n), dtype=torch.float64), torch.full((1,), p, dtype=torch.float64)


def distinct(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct positions drawn uniformly from ``range(n)``, sorted, as int64 (CPU).

    Costs O(k log k) for ``k <= n / 4``: draw the shortfall with replacement, deduplicate,
    repeat until ``k`` distinct positions are held. The process is invariant under any
    permutation of ``range(n)``, so the resulting ``k``-subset is uniform. Above ``n / 4`` a
    permutation (O(n)) is used.
    """
    return torch.from_numpy(distinct_array(n, k, generator))


def distinct_array(n: int, k: int, generator: torch.Generator) -> np.ndarray:
    """:func:`distinct` as a numpy int64 array."""
    if k < 0 or k > n:
        raise ValueError(f"cannot draw {k} distinct positions out of {n}")
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k > n * _DENSE_FRACTION:
        return torch.randperm(n, generator=generator)[:k].sort().values.numpy()
    if k >= n * _MASK_FRACTION:  # the same draws, deduplicated by marking them in a mask
        return _distinct_by_mask(n, k, generator)
    # sorted arrays: numpy's sort is several times cheaper than torch.unique on the CPU, and
    # int32 sorts faster than int64 (torch draws the same numbers in either dtype)
    dtype = torch.int32 if n <= 1 << 31 else torch.int64
    have = _sorted_unique(torch.randint(n, (k,), generator=generator, dtype=dtype).numpy(), n)
    while have.size < k:
        more = _sorted_unique(torch.randint(n, (k - have.size,), generator=generator, dtype=dtype).numpy(), n)
        at = have.searchsorted(more)
        new = have[np.minimum(at, have.size - 1)] != more  # not held yet
        have = np.insert(have, at[new], more[new])  # a merge of sorted arrays: O(k)
    return have.astype(np.int64, copy=False)


def _distinct_by_mask(n: int, k: int, generator: torch.Generator) -> np.ndarray:
    """:func:`distinct_array` for ``k >= n * _MASK_FRACTION``: the same draws (the shortfall
    redrawn until ``k`` are distinct), marked in an ``n``-entry mask instead of sorted."""
    mask = np.zeros(n, dtype=np.bool_)
    mask[torch.randint(n, (k,), generator=generator, dtype=torch.int64).numpy()] = True
    have = int(np.count_nonzero(mask))
    while have < k:
        more = _sorted_unique(torch.randint(n, (k - have,), generator=generator, dtype=torch.int64).numpy(), n)
        fresh = more[~mask[more]]
        mask[fresh] = True
        have += fresh.size
    return np.flatnonzero(mask).astype(np.int64, copy=False)


def _sorted_unique(values: np.ndarray, n: int) -> np.ndarray:
    """The distinct ``values`` (positions in ``range(n)``), sorted."""
    if values.size >= n * _MASK_FRACTION:
        mask = np.zeros(n, dtype=np.bool_)
        mask[values] = True
        return np.flatnonzero(mask).astype(np.int64, copy=False)
    values = np.sort(values)
    if values.size > 1:
        repeated = values[1:] == values[:-1]
        if repeated.any():
            values = values[np.concatenate(([True], ~repeated))]
    return values


def bernoulli_positions(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Positions in ``range(n)`` where independent Bernoulli(p) trials succeed (O(#successes))."""
    return distinct(n, binomial(n, p, generator), generator)


def bernoulli_array(n: int, p: float, generator: torch.Generator) -> np.ndarray:
    """:func:`bernoulli_positions` as a numpy int64 array."""
    return distinct_array(n, binomial(n, p, generator), generator)


#: arrivals drawn in blocks of this many, doubling: the blocks, and so the arrivals, do not depend
#: on the BER, only how many of them are read
_NESTED_FIRST_BLOCK = 64
#: the Poisson phase of a nested draw covers BERs up to this; above it a dense top-up adds bits
_NESTED_SPARSE_MAX = 0.5


def nested_bernoulli_array(n: int, p: float, generator: torch.Generator) -> np.ndarray:
    """Sorted distinct positions in ``range(n)`` where independent Bernoulli(p) trials succeed,
    *nested in p*: for one generator state the positions at ``p1 <= p2`` are a subset of those
    at ``p2``. Costs O(#successes) for ``p <= 1/2`` (O(n) above, where the successes are Θ(n)).

    Every position gets a Poisson process of arrivals of rate 1 in time (all ``n`` together:
    exponential gaps of rate ``n``, each arrival at a uniform position, with replacement). A
    position succeeds at ``p`` when its first arrival comes before ``t(p) = -log(1 - p)``: the
    arrivals before ``t`` are independent per position and happen with probability
    ``1 - exp(-t) = p``, and a larger ``p`` only reads further along the same arrivals. Above
    ``p = 1/2`` every position not yet hit at 1/2 joins when its own uniform (one dense stream
    drawn after the arrivals) is below ``(p - 1/2) / (1/2)``.
    """
    if n <= 0 or p <= 0.0:
        return np.empty(0, dtype=np.int64)
    # one seed word for the arrivals and one for the dense top-up, consumed for every p
    words = torch.randint(1 << 62, (2,), generator=generator, dtype=torch.int64).tolist()
    arrivals = torch.Generator().manual_seed(words[0])
    horizon = n * -math.log1p(-min(p, _NESTED_SPARSE_MAX))  # in units of one gap of rate 1
    found, clock, size = [], 0.0, _NESTED_FIRST_BLOCK
    while True:
        gaps = -torch.rand(size, generator=arrivals, dtype=torch.float64).neg_().log1p_()
        positions = torch.randint(n, (size,), generator=arrivals, dtype=torch.int64).numpy()
        times = np.cumsum(gaps.numpy())
        times += clock
        before = int(np.searchsorted(times, horizon, side="left"))
        found.append(positions[:before])
        if before < size:
            break
        clock, size = float(times[-1]), size * 2
    hit = _sorted_unique(np.concatenate(found), n)
    if p > _NESTED_SPARSE_MAX:
        share = (p - _NESTED_SPARSE_MAX) / (1.0 - _NESTED_SPARSE_MAX)
        uniforms = torch.rand(n, generator=torch.Generator().manual_seed(words[1]), dtype=torch.float64)
        joins = (uniforms < share).numpy() if p < 1.0 else np.ones(n, dtype=bool)
        joins[hit] = True
        hit = np.flatnonzero(joins)
    return hit


def ceil_count(total: int, percent: float) -> int:
    """``ceil(total * percent / 100)`` without float noise for exact products."""
    return min(total, math.ceil(round(total * percent / 100.0, 9)))
