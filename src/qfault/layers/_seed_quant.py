"""The seed-000 (WEBCRAFT) quantized ``nn.Linear``, as a drop-in module and the layer swap
``"seed_quant_linear"`` (:class:`SeedQuantConfig`).

Numerics (REFERENCE_NOTES 4.1), all scale arithmetic in float32:

* ``Round(x) = floor(x + 0.5)`` (half-up).
* Weights, per output row ``r`` (min/max over the input dim):
  ``s_r = (max_r - min_r + 1e-15) / (2**b - 2)``,
  ``q_w = clamp(Round(w * (1 / s_r)), -(2**(b-1) - 1), 2**(b-1) - 1)`` (multiplication by the
  float32 reciprocal, as the seed does; a symmetric clamp, so rows with ``|min| >> max`` clip).
* Activations, per sample (dim 0; one scale over all other dims, i.e. all tokens and channels):
  ``s = (max - min + 1e-15) / (2**b - 1)``, ``q_x = clamp(Round(x / s), -2**(b-1), 2**b - 1)``.
* Output: ``(q_x @ q_w.T) * s_x * s_w[None, :] + bias`` with the integer product accumulated
  **exactly** (float64 matmul of integers: exact while every partial sum is below 2**53; with
  ``|q_x| <= 2**16``, ``|q_w| <= 2**15`` and ``in_features <= 2**20`` it is below 2**51), then
  cast to float32 and scaled in float32.

Differences from the seed:

* The seed computes ``q_x @ q_w.T`` in float32 and applies ``Round`` to it. Float32 is exact only
  while partial sums stay below 2**24, so on long rows with large codes (e.g. 8-bit,
  ``in_features = 4096``) the seed's product is rounded; ours is exact and ``Round`` is the
  identity. Both are then cast to float32 (the cast of an exact sum above 2**24 rounds once, to
  nearest, where the seed may have rounded at many steps).
* The seed's ``to_inference()`` stores dequantized float weights; :meth:`SeedQuantLinear.freeze`
  stores the integer codes (``weight_codes``, int32) and ``weight_scale`` (float32 ``[out]``,
  the seed uses ``(out, 1)``) so that faulty or mitigated codes (e.g. from
  :func:`qfault.mitigation.remap`, which can read back ``+2**(b-1)``) can be put in their place.
* No straight-through estimator: the module is meant for inference (rounding has zero gradient).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .._config import to_dict
from .._errors import QFaultConfigError, check_bool, check_range
from ._swap import register_layer_swap, swap_modules

MAX_BITS = 16
MAX_IN_FEATURES = 1 << 20  # keeps the exact float64 accumulation below 2**53 (see module doc)
_EPS = 1e-15


def _round(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


def _check_bits(field: str, bits) -> None:
    check_range(field, bits, 2, MAX_BITS, integer=True)


def seed_quantize_weight(weight: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed-000 per-row weight quantization of a 2-D ``[out, in]`` weight.

    Returns ``(codes, scale)``: int32 codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` of
    ``weight``'s shape and float32 row scales of shape ``[out]``.
    """
    _check_bits("weight_bits", bits)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        what = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise QFaultConfigError("weight", what, "a 2-D floating-point [out_features, in_features] tensor")
    w = weight.detach().to(torch.float32)
    if w.shape[1] == 0:
        return torch.zeros(w.shape, dtype=torch.int32, device=w.device), torch.ones(
            w.shape[0], dtype=torch.float32, device=w.device)
    scale = (w.amax(dim=1, keepdim=True) - w.amin(dim=1, keepdim=True) + _EPS) / float((1 << bits) - 2)
    lim = (1 << (bits - 1)) - 1
    codes = torch.clamp(_round(w * (1.0 / scale)), -lim, lim).to(torch.int32)
    return codes, scale.view(-1)


def seed_quantize_activation(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed-000 per-sample activation quantization.

    One scale per element of dim 0 over all other dims (a 0-/1-D input is one sample). Returns
    ``(codes, scale)``: int32 codes in ``[-2**(bits-1), 2**bits - 1]`` of ``x``'s shape and float32
    scales of shape ``[x.shape[0]]`` (``[1]`` for a 0-/1-D input).
    """
    _check_bits("act_bits", bits)
    xf = x.detach().to(torch.float32)
    n = 1 if xf.dim() <= 1 else xf.shape[0]
    if xf.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.int32, device=x.device), torch.ones(
            n, dtype=torch.float32, device=x.device)
    flat = xf.reshape(n, -1)
    scale = (flat.amax(dim=1) - flat.amin(dim=1) + _EPS) / float((1 << bits) - 1)
    codes = torch.clamp(_round(flat / scale[:, None]), -(1 << (bits - 1)), (1 << bits) - 1)
    return codes.to(torch.int32).view(x.shape), scale


class SeedQuantLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` with the seed-000 (WEBCRAFT) fake quantization.

    Args:
        in_features, out_features, bias: as ``nn.Linear`` (``in_features`` at most 2**20).
        weight_bits: weight code width, 2 to 16 (codes are ``weight_bits``-bit two's complement).
        act_bits: activation code width, 2 to 16.

    The input is ``[..., in_features]``; the activation scale is per element of dim 0 (for ViT
    tokens ``[B, T, C]``: one scale per image over all its tokens and channels). Until
    :meth:`freeze`, weights are quantized from ``weight`` on every call; after it, the stored
    ``weight_codes``/``weight_scale`` buffers are used (replace ``weight_codes`` by faulty or
    mitigated codes, e.g. with :meth:`set_weight_codes`). Output dtype is the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, weight_bits: int = 8,
                 act_bits: int = 8, device=None):
        super().__init__()
        check_range("in_features", in_features, 1, MAX_IN_FEATURES, integer=True)
        check_range("out_features", out_features, 1, float("inf"), integer=True)
        if not isinstance(bias, bool):
            raise QFaultConfigError("bias", bias, "True or False")
        _check_bits("weight_bits", weight_bits)
        _check_bits("act_bits", act_bits)
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits, self.act_bits = weight_bits, act_bits
        ref = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=torch.float32)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        self.register_buffer("weight_codes", None)
        self.register_buffer("weight_scale", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_bits: int = 8, act_bits: int = 8) -> SeedQuantLinear:
        """A new module with ``linear``'s weight and bias copied (as float32, same device)."""
        if not isinstance(linear, nn.Linear):
            raise QFaultConfigError("linear", type(linear).__name__, "an nn.Linear")
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                weight_bits=weight_bits, act_bits=act_bits, device=linear.weight.device)
        with torch.no_grad():
            m.weight.copy_(linear.weight.detach())
            if linear.bias is not None:
                m.bias.copy_(linear.bias.detach())
        return m

    @property
    def frozen(self) -> bool:
        return self.weight_codes is not None

    @torch.no_grad()
    def freeze(self) -> SeedQuantLinear:
        """Quantize the weight once (the seed's ``to_inference``) and store codes and scales."""
        codes, scale = seed_quantize_weight(self.weight, self.weight_bits)
        self.weight_codes, self.weight_scale = codes, scale
        return self

    def unfreeze(self) -> SeedQuantLinear:
        """Drop the stored codes; forward quantizes ``weight`` again."""
        self.weight_codes, self.weight_scale = None, None
        return self

    @torch.no_grad()
    def set_weight_codes(self, codes: torch.Tensor) -> None:
        """Store (faulty/mitigated) codes, checked: integer, ``[out, in]``, values in
        ``[-2**(b-1), 2**(b-1)]`` (``+2**(b-1)`` is what sign-flip can read back). Freezes first
        if needed (so ``weight_scale`` comes from the current weight)."""
        if not isinstance(codes, torch.Tensor) or codes.dtype == torch.bool or codes.is_floating_point() \
                or codes.is_complex():
            raise QFaultConfigError("weight_codes", type(codes).__name__ if not isinstance(codes, torch.Tensor)
                                    else f"tensor of {codes.dtype}", "an integer torch.Tensor")
        shape = (self.out_features, self.in_features)
        if tuple(codes.shape) != shape:
            raise QFaultConfigError("weight_codes", tuple(codes.shape), f"shape {shape}")
        half = 1 << (self.weight_bits - 1)
        if codes.numel() and (int(codes.min()) < -half or int(codes.max()) > half):
            raise QFaultConfigError("weight_codes", f"values in [{int(codes.min())}, {int(codes.max())}]",
                                    f"integers in [{-half}, {half}]")
        if not self.frozen:
            self.freeze()
        self.weight_codes = codes.to(device=self.weight.device, dtype=torch.int32).clone()

    def _weight_q(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen:
            codes, scale = self.weight_codes, self.weight_scale
            if tuple(codes.shape) != (self.out_features, self.in_features) or codes.is_floating_point():
                raise QFaultConfigError("weight_codes", f"{tuple(codes.shape)} {codes.dtype}",
                                        f"an integer tensor of shape ({self.out_features}, {self.in_features})")
            return codes, scale.to(torch.float32)
        return seed_quantize_weight(self.weight, self.weight_bits)

    #: when False the layer computes in float (the clean, unquantized baseline); see float_mode()
    quantized: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise QFaultConfigError("input", tuple(x.shape), f"a tensor of shape [..., {self.in_features}]")
        if not self.quantized:
            return nn.functional.linear(x, self.weight.to(x.dtype),
                                        None if self.bias is None else self.bias.to(x.dtype))
        out_dtype = x.dtype if x.is_floating_point() else torch.float32
        q_w, s_w = self._weight_q()
        q_x, s_x = seed_quantize_activation(x, self.act_bits)
        # exact integer accumulation: float64 holds every partial sum (< 2**51, see module doc)
        acc = torch.matmul(q_x.to(torch.float64), q_w.to(torch.float64).t()).to(torch.float32)
        s_x = s_x.view((-1,) + (1,) * (acc.dim() - 1)) if x.dim() > 1 else s_x.view(())
        y = acc * s_x * s_w.to(device=acc.device)
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(out_dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, frozen={self.frozen}")


def _skip_names(skip) -> tuple[str, ...]:
    if isinstance(skip, str):
        return (skip,)
    try:
        names = tuple(skip)
    except TypeError:
        raise QFaultConfigError("skip", skip, "a module name or a list of names") from None
    for name in names:
        if not isinstance(name, str):
            raise QFaultConfigError("skip", name, "module names (qualified, or the last component)")
    return names


@dataclass(frozen=True)
class SeedQuantConfig:
    """Swap every ``nn.Linear`` for :class:`SeedQuantLinear` (layer swap ``"seed_quant_linear"``).

    Args:
        weight_bits: weight code width, 2 to 16.
        act_bits: activation code width, 2 to 16.
        skip: names left as ``nn.Linear``: a layer is skipped when its qualified name, or the
            last component of it, is listed (the seed skips ``head``). A str is one name.
        freeze: freeze the codes of the new layers (:meth:`SeedQuantLinear.freeze`) right away.
    """

    type_name: ClassVar[str] = "seed_quant_linear"

    weight_bits: int = 8
    act_bits: int = 8
    skip: tuple[str, ...] = ("head",)
    freeze: bool = False

    def __post_init__(self) -> None:
        _check_bits("weight_bits", self.weight_bits)
        _check_bits("act_bits", self.act_bits)
        object.__setattr__(self, "skip", _skip_names(self.skip))
        check_bool("freeze", self.freeze)

    def to_dict(self) -> dict:
        return to_dict(self)


def _matches(name: str, module: nn.Module, config: SeedQuantConfig) -> bool:
    # isinstance, as the seed's swap: subclasses of nn.Linear are swapped too
    return isinstance(module, nn.Linear) and not (name in config.skip or name.rsplit(".", 1)[-1] in config.skip)


@register_layer_swap("seed_quant_linear", SeedQuantConfig, matches=_matches, aliases=("seed_quant",))
def _build(module: nn.Linear, config: SeedQuantConfig, name: str) -> SeedQuantLinear:
    layer = SeedQuantLinear.from_linear(module, weight_bits=config.weight_bits, act_bits=config.act_bits)
    return layer.freeze() if config.freeze else layer


def swap_linear(model: nn.Module, skip: Iterable[str] | str = ("head",), weight_bits: int = 8,
                act_bits: int = 8) -> list[str]:
    """``swap_modules(model, SeedQuantConfig(weight_bits, act_bits, skip)).swapped``: replace,
    in place, every ``nn.Linear`` of ``model`` by :meth:`SeedQuantLinear.from_linear`.

    A layer is skipped when its qualified name, or the last component of it, is in ``skip`` (the
    seed skips ``head``). Other module types (e.g. the ViT ``patch_embed`` Conv2d) are untouched.
    A Linear shared by several parents gets one replacement, shared the same way. Returns the
    qualified names replaced (first name of each replaced module, in ``named_modules`` order);
    the swap is permanent (use :func:`swap_modules` for a handle that undoes it).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> swap_linear(model, skip="2")
        ['0']
    """
    config = SeedQuantConfig(weight_bits=weight_bits, act_bits=act_bits, skip=skip)
    return swap_modules(model, config).swapped


@contextmanager
def float_mode(model: nn.Module) -> Iterator[None]:
    """Within the context every ``SeedQuantLinear`` of ``model`` computes in float (its float
    ``weight``): the clean, unquantized baseline of seed 000.

    Example:
        >>> layer = nn.Linear(8, 3)
        >>> model = nn.Sequential(layer)
        >>> swap = swap_modules(model, SeedQuantConfig(skip=(), freeze=True))
        >>> x = torch.randn(2, 8)
        >>> with float_mode(model):
        ...     torch.equal(model(x), layer(x))
        True
    """
    layers = [m for m in model.modules() if isinstance(m, SeedQuantLinear)]
    for layer in layers:
        layer.quantized = False
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("quantized", None)


def seed_quant_vit(name: str = "vit_base_patch16_224", checkpoint: str | None = None, weight_bits: int = 8,
                   act_bits: int = 8, skip: Iterable[str] | str = ("head",), **timm_kwargs) -> nn.Module:
    """A timm ViT with seed 000's quantized Linear layers, frozen, in eval mode.

    Builds ``timm.create_model(name, pretrained=False)`` (never downloads), loads ``checkpoint``
    (a local state dict file) when given, swaps every Linear but ``skip`` and freezes the codes.
    Usable as a campaign model factory: ``{source: factory, factory: "qfault.layers:seed_quant_vit",
    kwargs: {name: vit_base_patch16_224, checkpoint: /models/vit_b16.pth}}``.
    """
    import timm

    config = SeedQuantConfig(weight_bits=weight_bits, act_bits=act_bits, skip=skip, freeze=True)
    model = timm.create_model(name, pretrained=False, **timm_kwargs)
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise QFaultConfigError("checkpoint", str(checkpoint), "a readable state dict file",
                                    hint=f"{type(exc).__name__}: {exc}") from None
        state = state.get("model_state_dict", state.get("state_dict", state)) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except Exception as exc:
            raise QFaultConfigError("checkpoint", str(checkpoint), f"a state dict for {name}",
                                    hint=str(exc).splitlines()[0]) from None
    swap_modules(model, config)  # permanent: the handle is dropped
    return model.eval()
