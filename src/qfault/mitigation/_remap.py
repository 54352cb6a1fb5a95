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
_CHUNK_ENTRIES = 1 << 21  # bit_flip: (element or component) x inversion entries evaluated at once


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
          method: str = "cvm", tile: int = 64, max_entries: int = _CHUNK_ENTRIES) -> torch.Tensor:
    """The codes read back after the writer's best choice for stuck-at cells.

    Args:
        codes: integer tensor, the ``bits``-bit two's-complement codes the writer wants to store,
            in ``[-2**(bits-1), 2**(bits-1) - 1]``. For ``sign_flip``/``bit_flip`` it must be
            2-D, laid out like an ``nn.Linear`` weight ``[out_features, in_features]``.
        stuck_mask: integer tensor of ``codes``' shape: bit patterns, a set bit is a stuck cell.
            Values in ``[-2**(bits-1), 2**bits - 1]`` (signed or unsigned view of the pattern).
        stuck_value: integer tensor of ``codes``' shape: the stuck bit values (only bits under
            ``stuck_mask`` matter; the value is taken modulo ``2**bits``).
        bits: code width, 2 to 16 (every method, ``bit_flip`` included, is exact at every width).
        method: ``"cvm"``, ``"sign_flip"`` or ``"bit_flip"`` (seed names ``"none"``, ``"flip"``,
            ``"flip-bitwise"`` are accepted as aliases).
        tile: group width for ``sign_flip``/``bit_flip``: one output row x ``tile`` consecutive
            input columns (the seed's 64-row crossbar block of ``W^T`` x one output column).
        max_entries: memory bound of ``bit_flip``: at most this many (element or component) x
            inversion entries are evaluated at once (the result does not depend on it).

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
    return _bit_flip(w, mask, value, bits, tile, max_entries)


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


def _bit_flip(w, mask, value, bits, tile, max_entries=_CHUNK_ENTRIES):
    # only faulty elements depend on the inversion mask (a fault-free element reads back exactly)
    group, _ = _groups(tuple(w.shape), tile, w.device)
    flat_mask = mask.reshape(-1)
    hit = torch.nonzero(flat_mask).view(-1)
    out = w.clone().reshape(-1)
    if hit.numel() == 0:
        return out.view(w.shape)
    wk, mk, vk = w.reshape(-1)[hit], flat_mask[hit], value.reshape(-1)[hit]
    used, slot = torch.unique(group[hit], return_inverse=True)
    best = _best_inversion_masks(wk, mk, vk, slot, used.numel(), bits, max_entries)
    out[hit] = cvm_codes(wk, mk, (vk ^ best[slot]) & mk, bits)
    return out.view(w.shape)


def _popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every value of an int32 tensor with values below 2**16."""
    x = x - ((x >> 1) & 0x5555)
    x = (x & 0x3333) + ((x >> 2) & 0x3333)
    x = (x + (x >> 4)) & 0x0F0F
    return (x + (x >> 8)) & 0x1F


def _bit_index(x: torch.Tensor) -> torch.Tensor:
    """Position of the lowest set bit of every (non-zero) value, as int64 for indexing."""
    return _popcount((x & -x) - 1).long()


def _subset_errors(w: torch.Tensor, mk: torch.Tensor, vk: torch.Tensor, n_stuck: int, bits: int,
                   max_entries: int = _CHUNK_ENTRIES) -> torch.Tensor:
    """``|read - w|`` of elements with ``n_stuck`` stuck bits for every inversion of those bits.

    Shape ``[n, 2**n_stuck]`` int64: column ``s`` inverts the stuck bits selected by the bits of
    ``s`` (bit ``i`` of ``s`` = the ``i``-th lowest stuck bit of the element).
    """
    out = torch.empty(w.numel(), 1 << n_stuck, dtype=torch.int64, device=w.device)
    step = max(1, max_entries >> n_stuck)
    for start in range(0, w.numel(), step):  # a loop over chunks of elements, not over elements
        ww, mm, vv = w[start:start + step, None], mk[start:start + step, None], vk[start:start + step, None]
        inverted = torch.zeros_like(mm)  # the inversion mask restricted to the stuck bits, per s
        rest = mm
        for _ in range(n_stuck):  # deposit the bits of s into the stuck positions by doubling
            low = rest & -rest
            rest = rest ^ low
            inverted = torch.cat([inverted, inverted | low], dim=1)
        read = cvm_codes(ww, mm, (vv ^ inverted) & mm, bits)
        out[start:start + step] = (read - ww).abs()
    return out


def _best_inversion_masks(wk, mk, vk, slot, n_slots: int, bits: int, max_entries: int = _CHUNK_ENTRIES) -> torch.Tensor:
    """The smallest error-minimising inversion mask of every group, int32 ``[n_slots]``.

    ``wk``, ``mk``, ``vk``: codes, stuck masks (non-zero) and stuck values of the faulty elements;
    ``slot``: their group index in ``[0, n_slots)``. The group cost is a sum of per-element terms
    ``f_e(m & mk_e)``; bits no element has stuck stay 0, and the bit positions split into connected
    components (bits linked when one element has both stuck) that are minimised independently by
    enumerating the ``2**|C|`` inversions of their own bits. See docs/mitigation.md.
    """
    device = wk.device
    bit_pos = torch.arange(bits, device=device, dtype=torch.int32)
    weights = 1 << bit_pos
    n_stuck = _popcount(mk)
    # single-bit elements: separable per-bit terms unary[slot, bit, bit inverted?]
    unary = torch.zeros(n_slots * bits * 2, dtype=torch.int64, device=device)
    # multi-bit elements ("factors"): error tables[p][row, s] over the 2**p inversions of own bits
    tables: dict[int, torch.Tensor] = {}
    f_mask, f_slot, f_row = [], [], []
    for p in range(1, bits + 1):
        sel = torch.nonzero(n_stuck == p).view(-1)
        if sel.numel() == 0:
            continue
        err = _subset_errors(wk[sel], mk[sel], vk[sel], p, bits, max_entries)
        if p == 1:
            row = (slot[sel] * bits + _bit_index(mk[sel])) * 2
            unary.index_add_(0, row, err[:, 0])
            unary.index_add_(0, row + 1, err[:, 1])
            continue
        tables[p] = err
        f_mask.append(mk[sel])
        f_slot.append(slot[sel])
        f_row.append(torch.arange(sel.numel(), device=device))
    unary = unary.view(n_slots, bits, 2)
    # reach[s, j]: bits of group s linked to bit j (bit j itself when some element has it stuck)
    union = torch.zeros(n_slots, bits, dtype=torch.int32, device=device)
    union.index_add_(0, slot, (mk.unsqueeze(1) >> bit_pos) & 1)
    reach = torch.where(union > 0, weights, 0).to(torch.int32)
    if tables:
        f_mask, f_slot, f_row = torch.cat(f_mask), torch.cat(f_slot), torch.cat(f_row)
        f_bits = (f_mask.unsqueeze(1) >> bit_pos) & 1
        for j in range(bits):  # OR of the masks of the factors with bit j stuck
            linked = torch.zeros(n_slots, bits, dtype=torch.int32, device=device)
            linked.index_add_(0, f_slot, f_bits * f_bits[:, j:j + 1])
            reach[:, j] |= torch.where(linked > 0, weights, 0).sum(1).to(torch.int32)
        while True:  # transitive closure: each pass doubles the path length covered
            closed = reach.clone()
            for k in range(bits):
                closed |= torch.where(((reach >> k) & 1) == 1, reach[:, k:k + 1], 0)
            if torch.equal(closed, reach):
                break
            reach = closed
    # components: one per (group, lowest bit of its reach set)
    present = reach != 0
    root = torch.where(present, _bit_index(reach), -1)
    comp_slot, comp_bit = torch.nonzero(present & (root == bit_pos.long()), as_tuple=True)
    comp_mask = reach[comp_slot, comp_bit]
    comp_size = _popcount(comp_mask)
    best = torch.zeros(n_slots, dtype=torch.int32, device=device)
    if tables:
        comp_of_root = torch.full((n_slots, bits), -1, dtype=torch.int64, device=device)
        comp_of_root[comp_slot, comp_bit] = torch.arange(comp_slot.numel(), device=device)
        f_comp = comp_of_root[f_slot, root[f_slot, _bit_index(f_mask)]]
        f_size = comp_size[f_comp]
    patterns: dict[tuple[int, int], torch.Tensor] = {}
    for k in range(1, bits + 1):  # components of k bits: enumerate their 2**k inversions at once
        comps = torch.nonzero(comp_size == k).view(-1)
        if comps.numel() == 0:
            continue
        if tables and k > 1:
            fs = torch.nonzero(f_size == k).view(-1)
            fs = fs[torch.argsort(f_comp[fs])]
            f_local = torch.searchsorted(comps, f_comp[fs])  # factor -> index into comps
        step = max(1, max_entries >> k)
        for start in range(0, comps.numel(), step):
            chunk = comps[start:start + step]
            c_mask, c_slot = comp_mask[chunk], comp_slot[chunk]
            # local bit b = the b-th lowest bit of the component: local order = integer order of m
            lows = []
            rest = c_mask
            for _ in range(k):
                lows.append(rest & -rest)
                rest = rest ^ lows[-1]
            cost = torch.zeros(chunk.numel(), 1, dtype=torch.int64, device=device)
            for low in lows:  # doubling: column a of cost <-> local inversion a
                u = unary[c_slot, _bit_index(low)]
                cost = torch.cat([cost + u[:, :1], cost + u[:, 1:]], dim=1)
            if tables and k > 1:
                bounds = torch.tensor([start, start + chunk.numel()], device=device)
                lo, hi = torch.searchsorted(f_local, bounds).tolist()
                _add_factor_costs(cost, fs[lo:hi], f_local[lo:hi] - start, lows, f_mask, f_row, tables,
                                  patterns, k)
            choice = _first_argmin(cost).to(torch.int32)
            mask_bits = torch.zeros_like(c_mask)
            for b, low in enumerate(lows):  # deposit the chosen local bits into their positions
                mask_bits |= torch.where(((choice >> b) & 1) == 1, low, 0)
            best.index_add_(0, c_slot, mask_bits)  # components of a group have disjoint bits
    return best


def _add_factor_costs(cost, factors, comp, lows, f_mask, f_row, tables, patterns: dict, k: int) -> None:
    """Add the error tables of ``factors`` (of components ``comp``: rows of ``cost``) to ``cost``.

    ``cost``: ``[n, 2**k]``, column ``a`` = local inversion ``a``; ``lows[b]``: bit ``b`` of each
    component (by row). A factor whose stuck bits are the local bits ``local`` of its component
    adds ``table[pext(a, local)]`` to column ``a``: factors with the same ``local`` share one
    gather pattern (cached in ``patterns``), so each is one ``index_select`` of its table row.
    """
    fm = f_mask[factors]
    c_lows = torch.stack([low[comp] for low in lows], dim=1)  # [n_factors, k]
    local = (((fm.unsqueeze(1) & c_lows) != 0).to(torch.int32) << torch.arange(k, device=fm.device)).sum(1)
    order = torch.argsort(local)
    keys, counts = torch.unique_consecutive(local[order], return_counts=True)
    start = 0
    for key, count in zip(keys.tolist(), counts.tolist()):  # a loop over bit subsets, not factors
        idx = order[start:start + count]
        start += count
        pattern = patterns.get((k, key))
        if pattern is None:  # pattern[a] = pext(a, key), built by doubling over the local bits
            pattern = torch.zeros(1, dtype=torch.int64, device=fm.device)
            for b in range(k):
                step = 1 << (key & ((1 << b) - 1)).bit_count() if key >> b & 1 else 0
                pattern = torch.cat([pattern, pattern + step])
            patterns[(k, key)] = pattern
        rows = tables[key.bit_count()].index_select(0, f_row[factors[idx]])  # [count, 2**p]
        # index_put_(accumulate=True): faster than index_add_ for int64 rows on CPU (measured)
        cost.index_put_((comp[idx],), rows.index_select(1, pattern), accumulate=True)


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
