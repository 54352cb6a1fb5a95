"""Write-side mitigation of permanent stuck-at faults in stored weight codes (seed 000, WEBCRAFT).

The writer knows which memory cells are stuck (``stuck_mask``) and at what (``stuck_value``) and
chooses what to write so that the codes read back are as close as possible to the wanted codes:

* ``"cvm"`` (closest value mapping, the seed's ``none``): per weight, the nearest consistent code.
* ``"sign_flip"`` (the seed's ``flip``): per group, optionally store ``-w`` and negate on read.
* ``"bit_flip"`` (the seed's ``flip-bitwise``): per group, an inversion mask XORed on write and read.

All arithmetic is exact integer arithmetic, vectorized over elements (no Python loop per weight,
column or group). See docs/mitigation.md for the algorithms, tie rules and limits.
"""

from __future__ import annotations

import torch

from .._errors import QFaultConfigError, check_choice, check_range
from ..faults import StuckAt, draw_faults, make_generator
from ..formats import IntFormat

METHODS = ("cvm", "sign_flip", "bit_flip")
SEED_ALIASES = {"none": "cvm", "flip": "sign_flip", "flip-bitwise": "bit_flip"}
BIT_FLIP_MAX_BITS = 10  # bit_flip enumerates all 2**bits inversion masks per group
_CHUNK_ELEMENTS = 1 << 22  # elements x masks evaluated at once by bit_flip
LUT_MAX_BITS = 8  # bit_flip looks errors up in a 2**(3*bits) table up to this width ...
LUT_MIN_WORK = 1 << 24  # ... when it has at least this many (element, mask) pairs to evaluate
_ERROR_LUTS: dict = {}


def _smear_down(x: torch.Tensor) -> torch.Tensor:
    """Every bit at or below the highest set bit of ``x`` (values below 2**16)."""
    x = x | (x >> 1)
    x = x | (x >> 2)
    x = x | (x >> 4)
    return x | (x >> 8)


def cvm_codes(target: torch.Tensor, stuck_mask: torch.Tensor, stuck_value: torch.Tensor,
              bits: int) -> torch.Tensor:
    """Closest value mapping: the consistent ``bits``-bit two's-complement code nearest ``target``.

    A code ``c`` is consistent when its pattern agrees with ``stuck_value`` on every bit of
    ``stuck_mask``. Ties go to the smaller unsigned pattern (non-negatives before negatives).
    ``target`` may lie outside the code range: the answer is then the extreme consistent code on
    that side, which is exactly what clamping the target into the range gives (no tie possible).

    All inputs are integer tensors of one shape (broadcastable), patterns with bits above
    ``bits`` cleared; the result is int32. Exact for every width up to 16 bits: no enumeration.
    """
    full = (1 << bits) - 1
    half = 1 << (bits - 1)
    # offset binary: u = pattern ^ half orders patterns like their two's-complement values
    t = torch.clamp(target.to(torch.int32), -half, half - 1) + half
    mask = stuck_mask.to(torch.int32)
    fixed = (stuck_value.to(torch.int32) ^ half) & mask  # stuck bits in offset binary
    bad = (t ^ fixed) & mask  # stuck bits the target itself violates
    # a consistent u != t first differs from t at a bit i at or above the top bad bit
    above = ~(_smear_down(bad) >> 1) & full
    up_cand = ~t & (~mask | fixed) & above  # t_i = 0 and bit i may be 1
    dn_cand = t & ~fixed & above & full  # t_i = 1 and bit i may be 0
    up_bit = up_cand & -up_cand  # the lowest such i gives the nearest value
    dn_bit = dn_cand & -dn_cand
    up = (t & ~(2 * up_bit - 1)) | up_bit | (fixed & (up_bit - 1))  # then the smallest tail
    dn = (t & ~(2 * dn_bit - 1)) | ((fixed | (~mask & full)) & (dn_bit - 1))  # the largest tail
    has_up, has_dn = up_cand != 0, dn_cand != 0
    d_up, d_dn = up - t, t - dn
    p_up, p_dn = up ^ half, dn ^ half  # two's-complement patterns for the tie rule
    take_up = has_up & (~has_dn | (d_up < d_dn) | ((d_up == d_dn) & (p_up < p_dn)))
    u = torch.where(bad == 0, t, torch.where(take_up, up, dn))
    return u - half


def _check_int_tensor(field: str, x, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        kind = type(x).__name__ if not isinstance(x, torch.Tensor) else f"tensor of {x.dtype}"
        raise QFaultConfigError(field, kind, "an integer torch.Tensor")
    if shape is not None and tuple(x.shape) != shape:
        raise QFaultConfigError(field, tuple(x.shape), f"shape {shape} (the shape of codes)")
    return x


def _check_values(field: str, x: torch.Tensor, low: int, high: int, what: str) -> None:
    if x.numel() == 0:
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < low or hi > high:
        raise QFaultConfigError(field, f"values in [{lo}, {hi}]", f"{what} in [{low}, {high}]")


def _groups(shape: tuple[int, ...], tile: int, device) -> tuple[torch.Tensor, int]:
    """Group id of every element of an ``[out, in]`` matrix: row x tile of ``tile`` columns."""
    rows, cols = shape
    tiles = -(-cols // tile)
    col_tile = torch.arange(cols, device=device) // tile
    ids = torch.arange(rows, device=device).unsqueeze(1) * tiles + col_tile.unsqueeze(0)
    return ids.reshape(-1), rows * tiles


@torch.no_grad()
def remap(codes: torch.Tensor, stuck_mask: torch.Tensor, stuck_value: torch.Tensor, *, bits: int = 8,
          method: str = "cvm", tile: int = 64) -> torch.Tensor:
    """The codes read back after the writer's best choice for stuck-at cells.

    Args:
        codes: integer tensor, the ``bits``-bit two's-complement codes the writer wants to store,
            in ``[-2**(bits-1), 2**(bits-1) - 1]``. For ``sign_flip``/``bit_flip`` it must be
            2-D, laid out like an ``nn.Linear`` weight ``[out_features, in_features]``.
        stuck_mask: integer tensor of ``codes``' shape: bit patterns, a set bit is a stuck cell.
            Values in ``[-2**(bits-1), 2**bits - 1]`` (signed or unsigned view of the pattern).
        stuck_value: integer tensor of ``codes``' shape: the stuck bit values (only bits under
            ``stuck_mask`` matter; the value is taken modulo ``2**bits``).
        bits: code width, 2 to 16 (``bit_flip``: at most 10).
        method: ``"cvm"``, ``"sign_flip"`` or ``"bit_flip"`` (seed names ``"none"``, ``"flip"``,
            ``"flip-bitwise"`` are accepted as aliases).
        tile: group width for ``sign_flip``/``bit_flip``: one output row x ``tile`` consecutive
            input columns (the seed's 64-row crossbar block of ``W^T`` x one output column).

    Returns:
        int32 tensor of ``codes``' shape and device: the values read back. ``sign_flip`` can
        read back ``+2**(bits-1)``, one above the code range.

    Raises:
        QFaultConfigError: unknown method, bits or tile out of range, wrong dtypes or shapes,
            codes outside the ``bits``-bit range.

    Example:
        >>> w = torch.tensor([[5, -3]])
        >>> remap(w, torch.tensor([[1, 0]]), torch.tensor([[0, 0]]), bits=8).tolist()
        [[4, -3]]
    """
    method = SEED_ALIASES.get(method, method) if isinstance(method, str) else method
    check_choice("method", method, METHODS + tuple(SEED_ALIASES))
    check_range("bits", bits, 2, 16, integer=True)
    check_range("tile", tile, 1, float("inf"), integer=True)
    if method == "bit_flip" and bits > BIT_FLIP_MAX_BITS:
        raise QFaultConfigError("bits", bits, f"an integer in [2, {BIT_FLIP_MAX_BITS}] for method='bit_flip'",
                                hint="it enumerates all 2**bits inversion masks per group")
    codes = _check_int_tensor("codes", codes)
    shape = tuple(codes.shape)
    stuck_mask = _check_int_tensor("stuck_mask", stuck_mask, shape)
    stuck_value = _check_int_tensor("stuck_value", stuck_value, shape)
    if method != "cvm" and codes.dim() != 2:
        raise QFaultConfigError("codes", shape, f"a 2-D [out_features, in_features] tensor for method={method!r}")
    full, half = (1 << bits) - 1, 1 << (bits - 1)
    _check_values("codes", codes, -half, half - 1, f"{bits}-bit two's-complement codes")
    _check_values("stuck_mask", stuck_mask, -half, full, f"{bits}-bit patterns")
    device = codes.device
    w = codes.to(torch.int32)
    mask = stuck_mask.to(device=device, dtype=torch.int32) & full
    value = stuck_value.to(device=device, dtype=torch.int64).remainder(1 << bits).to(torch.int32) & mask
    if codes.numel() == 0:
        return w.clone()
    if method == "cvm":
        return cvm_codes(w, mask, value, bits)
    if method == "sign_flip":
        return _sign_flip(w, mask, value, bits, tile)
    return _bit_flip(w, mask, value, bits, tile)


def _sign_flip(w, mask, value, bits, tile):
    plus = cvm_codes(w, mask, value, bits)
    minus = -cvm_codes(-w, mask, value, bits)  # -w = 2**(bits-1) is clamped (exact: see cvm_codes)
    group, n_groups = _groups(tuple(w.shape), tile, w.device)
    e_plus = torch.zeros(n_groups, dtype=torch.int64, device=w.device)
    e_minus = torch.zeros_like(e_plus)
    e_plus.index_add_(0, group, (plus - w).abs().reshape(-1).to(torch.int64))
    e_minus.index_add_(0, group, (minus - w).abs().reshape(-1).to(torch.int64))
    flip = (e_minus < e_plus)[group].view(w.shape)  # tie: keep "+"
    return torch.where(flip, minus, plus)


def _bit_flip(w, mask, value, bits, tile):
    # only faulty elements depend on the inversion mask (a fault-free element reads back exactly)
    group, _ = _groups(tuple(w.shape), tile, w.device)
    flat_mask = mask.reshape(-1)
    hit = torch.nonzero(flat_mask).view(-1)
    out = w.clone().reshape(-1)
    if hit.numel() == 0:
        return out.view(w.shape)
    wk, mk, vk = w.reshape(-1)[hit], flat_mask[hit], value.reshape(-1)[hit]
    used, slot = torch.unique(group[hit], return_inverse=True)
    n_masks = 1 << bits
    costs = torch.empty(used.numel(), n_masks, dtype=torch.int64, device=w.device)
    lut = _error_lut(bits, w.device) if bits <= LUT_MAX_BITS and hit.numel() * n_masks >= LUT_MIN_WORK else None
    if lut is not None:
        base = (((wk + (1 << (bits - 1))) << (2 * bits)) | (mk << bits)).unsqueeze(1)
    step = max(1, _CHUNK_ELEMENTS // hit.numel())
    for start in range(0, n_masks, step):  # a loop over chunks of masks, not over elements
        m = torch.arange(start, min(start + step, n_masks), dtype=torch.int32, device=w.device)
        stuck = (vk.unsqueeze(1) ^ m) & mk.unsqueeze(1)
        if lut is not None:
            err = lut[(base | stuck).to(torch.int64)].to(torch.int64)
        else:
            err = (cvm_codes(wk.unsqueeze(1), mk.unsqueeze(1), stuck, bits) - wk.unsqueeze(1)).abs().to(torch.int64)
        chunk = torch.zeros(used.numel(), m.numel(), dtype=torch.int64, device=w.device)
        chunk.index_add_(0, slot, err)
        costs[:, start:start + m.numel()] = chunk
    best = _first_argmin(costs)[slot].to(torch.int32)
    out[hit] = cvm_codes(wk, mk, (vk ^ best) & mk, bits)
    return out.view(w.shape)


def _error_lut(bits: int, device) -> torch.Tensor:
    """``|CVM(w; mask, value) - w|`` for every ``(w, mask, value under mask)``, flat int16, cached.

    Index ``((w + 2**(bits-1)) << 2*bits) | (mask << bits) | value``; built once per width and
    device from :func:`cvm_codes` itself (entries with value bits outside the mask are unused).
    """
    key = (bits, str(device))
    if key not in _ERROR_LUTS:
        n = 1 << bits
        idx = torch.arange(n ** 3, dtype=torch.int32, device=device)
        w, mask, value = (idx >> (2 * bits)) - (n >> 1), (idx >> bits) & (n - 1), idx & (n - 1)
        _ERROR_LUTS[key] = (cvm_codes(w, mask, value & mask, bits) - w).abs().to(torch.int16)
    return _ERROR_LUTS[key]


def _first_argmin(costs: torch.Tensor) -> torch.Tensor:
    """Index of the first minimum of each row (explicit, not relying on argmin's tie order)."""
    low = costs.min(dim=1, keepdim=True).values
    idx = torch.arange(costs.shape[1], device=costs.device).expand_as(costs)
    return torch.where(costs == low, idx, costs.shape[1]).min(dim=1).values


@torch.no_grad()
def draw_stuck_map(shape, rate_percent: float, bits: int = 8,
                   generator: torch.Generator | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 000's fault map: every bit of every code is stuck with probability ``rate_percent/100``,
    at 1 or 0 with probability 1/2 each, sampled in O(#faults).

    Args:
        shape: the weight's shape (e.g. ``[out_features, in_features]``).
        rate_percent: percentage in [0, 100].
        bits: code width, 2 to 16.
        generator: a ``torch.Generator``, an integer seed, or None (random).

    Returns:
        ``(stuck_mask, stuck_value)``: int32 tensors of ``shape`` (bit patterns; the value
        has bits only under the mask).
    """
    check_range("bits", bits, 2, 16, integer=True)
    fault = StuckAt(rate=rate_percent, p_one=0.5)  # validates rate
    if generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
        generator = make_generator(None) if generator is None else make_generator("draw_stuck_map", generator)
    elif not isinstance(generator, torch.Generator):
        raise QFaultConfigError("generator", type(generator).__name__, "a torch.Generator, an int seed or None")
    shape = tuple(int(s) for s in shape)
    draw = draw_faults(fault, shape, IntFormat(bits), generator)
    stuck_mask = torch.zeros(shape, dtype=torch.int32)
    stuck_value = torch.zeros(shape, dtype=torch.int32)
    stuck_mask.view(-1)[draw.index] = draw.mask.to(torch.int32)
    stuck_value.view(-1)[draw.index] = draw.value.to(torch.int32)
    return stuck_mask, stuck_value
