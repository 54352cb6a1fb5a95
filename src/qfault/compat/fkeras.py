"""FKeras' fixed-point bit-flip functions (``fkeras.utils``), on PyTorch tensors and qfault's core.

Scripts written for ``fkeras.utils`` and QKeras' ``quantized_bits`` run with their imports
changed (``from qfault.compat.fkeras import quantized_bits, quantize_and_bitflip, ...``) and
PyTorch tensors in place of TensorFlow ones. Values are quantized by
:class:`qfault.formats.FixedPoint` (QKeras ``quantized_bits`` semantics) and faulted by XOR on
the ``bits``-bit code, two's complement when ``keep_negative``; the faults come from the core's
fault models :class:`~qfault.faults.BitFlip` (``exact=True``), :class:`~qfault.faults.PlaneBitFlip`
and :class:`~qfault.faults.RegionBitFlip`.

What the document describes holds, and what the original code does differently does not (see
docs/differences.md): ``keep_negative`` is always honoured, so flips never land on half-LSB bits
and the sign bit is reachable; regions honour their ``end_lbi`` and ``ber``; every variant
sign-extends. Element order is the tensor's own row-major order, as FKeras flattens the tensor it
is given (a Keras kernel); pass ``layout="keras"`` to number a PyTorch weight's elements in
Keras kernel order instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._errors import QFaultConfigError, check_range
from ..faults import BitFlip, PlaneBitFlip, RegionBitFlip, corrupt, draw_faults, make_generator
from ..formats import FixedPoint, qkeras_alpha_scale

__all__ = ["quantized_bits", "LayerBitRegion", "FaultyLayerBitRegion", "lb_index_to_wb_index",
           "wb_index_to_lb_index", "gen_lbi_region_at_layer_level", "gen_mask_tensor_random",
           "gen_mask_tensor_deterministic", "gen_mask_tensor_deterministic_v2", "gen_mask_tensor_deterministic_v3",
           "quantize_and_bitflip", "quantize_and_bitflip_deterministic", "quantize_and_bitflip_deterministic_v2",
           "quantize_and_bitflip_deterministic_v3", "FModelAlt"]


class quantized_bits:  # noqa: N801 - QKeras' name
    """QKeras ``quantized_bits(bits, integer, symmetric, keep_negative, alpha)`` as a callable.

    ``E = bits - integer - keep_negative`` fraction bits, round half to even, saturate; the
    ideal quantized value is returned. ``alpha="auto"`` / ``"auto_po2"`` (with ``symmetric=1``)
    quantize with per-output-channel scales as QKeras does
    (:func:`qfault.formats.qkeras_alpha_scale`; dim 0 of a PyTorch weight): flips then act on
    the narrow-range signed codes ``z`` of ``z * scale``.

    Raises:
        QFaultConfigError: ``integer`` above ``bits - keep_negative`` (more integer bits than the
            code has), ``bits`` outside the format's range, an unknown ``alpha``, ``auto``
            without ``symmetric``.
    """

    def __init__(self, bits: int = 8, integer: int = 0, symmetric: int = 0, keep_negative: int = 1,
                 alpha=None, use_stochastic_rounding: bool = False, **_: object) -> None:
        if alpha not in (None, 1, 1.0, "auto", "auto_po2"):
            raise QFaultConfigError("alpha", alpha, "None, 1, 'auto' or 'auto_po2'")
        if alpha in ("auto", "auto_po2") and not symmetric:
            raise QFaultConfigError("symmetric", symmetric, "1 with alpha='auto'/'auto_po2' (QKeras implements "
                                    "only symmetric auto scales)")
        if use_stochastic_rounding:
            raise QFaultConfigError("use_stochastic_rounding", True, "False")
        self.format = FixedPoint(bits=bits, integer=integer, keep_negative=bool(keep_negative),
                                 symmetric=bool(symmetric))
        if integer > bits - int(bool(keep_negative)):
            raise QFaultConfigError("integer", integer, f"at most bits - keep_negative = {bits - int(bool(keep_negative))} "
                                    "(integer bits beyond the code's width)")
        self.bits, self.integer = bits, integer
        self.symmetric, self.keep_negative, self.alpha = int(bool(symmetric)), int(bool(keep_negative)), alpha

    @property
    def auto(self) -> bool:
        return self.alpha in ("auto", "auto_po2")

    def codes_format(self, x: torch.Tensor) -> tuple:
        """``(format, scale, axis)`` the codes of ``x`` have: the fixed-point format, or with an
        auto ``alpha`` the narrow int format and ``x``'s per-channel scales."""
        if not self.auto:
            return self.format, None, None
        fmt, scale = qkeras_alpha_scale(x, self.bits, self.alpha, self.integer)
        return fmt, scale, (0 if scale.dim() else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        x = x if x.is_floating_point() else x.to(torch.float32)
        fmt, scale, axis = self.codes_format(x)
        return fmt.decode(fmt.encode(x, scale, None, axis), scale, None, axis).to(x.dtype)

    def get_config(self) -> dict:
        return {"bits": self.bits, "integer": self.integer, "symmetric": self.symmetric,
                "keep_negative": self.keep_negative, "alpha": self.alpha}

    def __repr__(self) -> str:
        return f"quantized_bits({self.bits},{self.integer},{self.symmetric},{self.keep_negative})"


class LayerBitRegion:
    """Layer bit indices ``[start_lbi, end_lbi]``, both included."""

    def __init__(self, i_start_lbi: int, end_lbi: int) -> None:
        self.start_lbi, self.end_lbi = i_start_lbi, end_lbi


class FaultyLayerBitRegion(LayerBitRegion):
    """A region in which ``int(length * ber)`` distinct bits flip (``ber = 1``: all of them)."""

    def __init__(self, i_start_lbi: int, end_lbi: int, ber: float) -> None:
        super().__init__(i_start_lbi, end_lbi)
        self.ber = ber

    def __repr__(self) -> str:
        return f"FaultyLayerBitRegion({self.start_lbi}, {self.end_lbi}, {self.ber})"


def lb_index_to_wb_index(i_lbi: int, i_bit_width: int, little_endian: bool = True) -> tuple[int, int]:
    """Layer bit index -> ``(weight index, bit)``; little endian: bit ``bits - 1 - lbi % bits``
    (bit 0 = LSB), so LBI 0 is the most significant bit of weight 0."""
    if little_endian:
        return i_lbi // i_bit_width, (i_bit_width - 1) - i_lbi % i_bit_width
    return i_lbi // i_bit_width, i_lbi % i_bit_width


def wb_index_to_lb_index(i_wbi: tuple[int, int], i_bit_width: int, little_endian: bool = True) -> int:
    """The inverse of :func:`lb_index_to_wb_index`."""
    if little_endian:
        return i_wbi[0] * i_bit_width + (i_bit_width - i_wbi[1] - 1)
    return i_wbi[0] * i_bit_width + i_wbi[1]


def gen_lbi_region_at_layer_level(i_tensor: torch.Tensor, i_bit_width: int, ber: float) -> list[FaultyLayerBitRegion]:
    """One region over every bit of the tensor: ``[0, numel * bits - 1]`` at ``ber``."""
    return [FaultyLayerBitRegion(0, int(torch.as_tensor(i_tensor).numel()) * i_bit_width - 1, ber)]


# -- masks -------------------------------------------------------------------------------------

def _quantizer_format(quantizer) -> FixedPoint:
    if isinstance(quantizer, FixedPoint):
        return quantizer
    if isinstance(quantizer, quantized_bits):
        return quantizer.format
    config = quantizer.get_config() if hasattr(quantizer, "get_config") else None
    if not isinstance(config, dict) or "bits" not in config:
        raise QFaultConfigError("quantizer", type(quantizer).__name__,
                                "a quantized_bits quantizer, a FixedPoint format or an object with get_config()")
    return quantized_bits(config["bits"], config.get("integer", 0), config.get("symmetric", 0),
                          config.get("keep_negative", 1), config.get("alpha")).format


def _regions(regions: Sequence, bers: Sequence) -> tuple:
    out = []
    for i, region in enumerate(regions):
        ber = getattr(region, "ber", None)
        if ber is None:
            ber = bers[i] if i < len(bers) else 1.0
        out.append((getattr(region, "start_lbi", None), getattr(region, "end_lbi", None), ber))
    return tuple(out)


def _mask(shape: tuple, fault, bits: int, seed: int | None) -> np.ndarray:
    """The flip pattern of each element (unsigned ``bits``-bit masks) as an int64 array."""
    fmt = FixedPoint(bits=bits, integer=0, keep_negative=False)
    draw = draw_faults(fault, shape, fmt, make_generator(("fkeras", seed)))
    mask = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    mask[draw.index.numpy()] = draw.mask.numpy()
    return mask.reshape(shape)


def _sign_extend(mask: np.ndarray, bits: int, keep_negative: int) -> np.ndarray:
    sign = 1 << (bits - keep_negative)
    return (mask & (sign - 1)) - (mask & sign)


def gen_mask_tensor_random(i_tensor: torch.Tensor, i_ber: float, i_qbits: int, seed: int | None = None) -> torch.Tensor:
    """Exactly ``int(numel * bits * ber)`` distinct bits, drawn uniformly (seeded by ``seed``)."""
    check_range("ber", i_ber, 0.0, 1.0)
    shape = tuple(torch.as_tensor(i_tensor).shape)
    return torch.from_numpy(_mask(shape, BitFlip(ber=float(i_ber), exact=True), i_qbits, seed))


def gen_mask_tensor_deterministic(i_tensor: torch.Tensor, i_ber: float, i_qbits: int,
                                  layout: str = "torch") -> torch.Tensor:
    """The first ``int(numel * bits * ber)`` bits in bit-plane-major order (fault ``f``: bit
    ``f // numel`` of element ``f % numel``)."""
    shape = tuple(torch.as_tensor(i_tensor).shape)
    return torch.from_numpy(_mask(shape, PlaneBitFlip(ber=float(i_ber), layout=layout), i_qbits, 0))


def gen_mask_tensor_deterministic_v2(i_tensor: torch.Tensor, i_ber: float, i_qbits: int, i_keep_negative: int = 0,
                                     layout: str = "torch") -> torch.Tensor:
    """:func:`gen_mask_tensor_deterministic`, sign-extended: a set sign bit counts
    ``-2**(bits - 1)`` (with ``i_keep_negative``), so the XOR wraps in two's complement."""
    mask = gen_mask_tensor_deterministic(i_tensor, i_ber, i_qbits, layout).numpy()
    return torch.from_numpy(_sign_extend(mask, i_qbits, int(bool(i_keep_negative))))


def gen_mask_tensor_deterministic_v3(i_tensor: torch.Tensor, i_flbirs: Sequence, i_qbits: int,
                                     i_keep_negative: int = 0, seed: int | None = 0,
                                     layout: str = "torch") -> torch.Tensor:
    """The bits of faulty layer bit regions (each ``[start_lbi, end_lbi]`` at its ``ber``),
    sign-extended."""
    shape = tuple(torch.as_tensor(i_tensor).shape)
    if not i_flbirs:
        return torch.zeros(shape, dtype=torch.int64)
    mask = _mask(shape, RegionBitFlip(regions=_regions(i_flbirs, ()), layout=layout), i_qbits, seed)
    return torch.from_numpy(_sign_extend(mask, i_qbits, int(bool(i_keep_negative))))


# -- quantize and flip ---------------------------------------------------------------------------

def _quantize_and_flip(values, quantizer, fault, seed: int | None) -> torch.Tensor:
    x = torch.as_tensor(values)
    x = x if x.is_floating_point() else x.to(torch.float32)
    if isinstance(quantizer, quantized_bits) and quantizer.auto:
        fmt, scale, axis = quantizer.codes_format(x)
    else:
        fmt, scale, axis = _quantizer_format(quantizer), None, None
    quantized = fmt.decode(fmt.encode(x, scale, None, axis), scale, None, axis).to(x.dtype)
    if fault is None:
        return quantized
    faulty, _ = corrupt(quantized, fmt, fault, seed=seed, scale=scale, axis=axis)
    return faulty


def quantize_and_bitflip(i_values, i_quantizer, regions: Sequence = (), bers: Sequence = (), *,
                         seed: int | None = None, layout: str = "torch") -> torch.Tensor:
    """Quantize, then flip bits at random: with ``regions``, in each region at its ``ber``;
    otherwise exactly ``int(numel * bits * bers[0])`` distinct bits of the whole tensor."""
    if regions:
        fault = RegionBitFlip(regions=_regions(regions, bers), layout=layout)
    elif bers:
        fault = BitFlip(ber=float(bers[0]), exact=True)
    else:
        fault = None
    return _quantize_and_flip(i_values, i_quantizer, fault, seed)


def quantize_and_bitflip_deterministic(i_values, i_quantizer, regions: Sequence = (), bers: Sequence = (),
                                       i_keep_negative: int | None = None, *, layout: str = "torch") -> torch.Tensor:
    """Quantize, then flip the first ``int(numel * bits * bers[0])`` bits in bit-plane-major
    order. The quantizer's ``keep_negative`` decides signedness (``i_keep_negative`` is
    accepted and ignored: FKeras' default 0 is what made its flips land on half-LSB bits)."""
    fault = PlaneBitFlip(ber=float(bers[0]), layout=layout) if bers else None
    return _quantize_and_flip(i_values, i_quantizer, fault, 0)


def quantize_and_bitflip_deterministic_v2(i_values, i_quantizer, regions: Sequence = (), bers: Sequence = (),
                                          i_keep_negative: int | None = None, *, layout: str = "torch") -> torch.Tensor:
    """The same as :func:`quantize_and_bitflip_deterministic` (every variant wraps in two's
    complement here)."""
    return quantize_and_bitflip_deterministic(i_values, i_quantizer, regions, bers, i_keep_negative, layout=layout)


def quantize_and_bitflip_deterministic_v3(i_values, i_quantizer, regions: Sequence = (), bers: Sequence = (), *,
                                          seed: int | None = 0, layout: str = "torch") -> torch.Tensor:
    """Quantize, then flip the bits of the faulty layer bit regions (each honours its
    ``end_lbi`` and ``ber``; a region's bits are drawn with ``seed`` where ``ber < 1``)."""
    fault = RegionBitFlip(regions=_regions(regions, bers), layout=layout) if regions else None
    return _quantize_and_flip(i_values, i_quantizer, fault, seed)


# -- whole-model bit numbering ---------------------------------------------------------------------

class FModelAlt:
    """FKeras' ``FModelAlt``: one bit numbering for the whole model (layers in module order,
    ``[weight bits | bias bits]`` per layer, LBIs in Keras kernel order by default) and explicit
    flips of global bits that stay until reset.

    Flips go through :func:`qfault.inject` (hooks; the stored weights never change), so
    ``explicitly_reset_bits`` restores the model exactly.
    """

    def __init__(self, model, verbose: int = 0, incl_biases: bool = False, *, format=None, layout: str = "keras",
                 types=None, names=None) -> None:
        from collections import OrderedDict

        from ..injection import ModelBits

        self.model, self.verbose, self.incl_biases = model, verbose, incl_biases
        self.bits = ModelBits(model, format=format, include_bias=incl_biases, types=types, names=names,
                              layout=layout)
        self.num_model_param_bits = self.bits.total
        self.layer_bit_ranges = OrderedDict()
        for tensor in self.bits.tensors:
            key = next((r for r, name in self.layer_bit_ranges.items() if name == tensor.module), None)
            if key is None:
                self.layer_bit_ranges[(tensor.start, tensor.start + tensor.size)] = tensor.module
            else:  # the bias range extends its layer's
                del self.layer_bit_ranges[key]
                self.layer_bit_ranges[(key[0], tensor.start + tensor.size)] = tensor.module
        self.flipped: set[int] = set()
        self.handle = None

    def _apply(self) -> None:
        from ..injection import InjectSpec, inject

        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        if self.flipped:
            specs = [InjectSpec.from_dict(s) for s in self.bits.fault_specs(sorted(self.flipped))]
            self.handle = inject(self.model, specs)

    def explicitly_flip_bits(self, bits_to_flip) -> None:
        """Flip these global bits (already flipped ones stay flipped, not toggled)."""
        self.bits.locate(list(bits_to_flip))  # out-of-range indices are an error before anything changes
        self.flipped |= {int(b) for b in bits_to_flip}
        self._apply()

    def explicitly_reset_bits(self, bits_to_reset) -> None:
        """Flip these global bits back."""
        self.flipped -= {int(b) for b in bits_to_reset}
        self._apply()
