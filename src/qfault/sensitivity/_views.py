"""The weights a ranking scores, each seen as the integer codes faults would hit.

A :class:`WeightView` is one parameter tensor of a selected layer: its float value (θ), the
quantized value the layer computes with, and that value's format, scale, zero point and codes,
exactly as :func:`qfault.inject` sees them: a quantized layer's weight quantizer output in its
own format (Brevitas, LSQ), or a float parameter viewed in the given format (int formats
calibrated per output channel, as injection does). :class:`LeafForward` runs the model with
each view's quantized value replaced by a leaf tensor, so gradients and Hessian-vector products
are taken at the quantized weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._errors import QFaultConfigError
from ..formats import NumberFormat, calibrate, gather_param
from ..injection import InjectSpec, quantizer_of, quantizer_output_format, select_modules


@dataclass
class WeightView:
    """One scored parameter tensor.

    Attributes:
        name: ``"<module>.<weight|bias>"``.
        shape: the tensor's shape.
        theta: float values (the latent weights), float32 ``[numel]``.
        value: the quantized values the layer computes with, float32 ``[numel]``.
        fmt, scale, zero_point, axis: the codes' format and parameters (per channel along axis).
        codes: ``fmt`` codes of ``value`` (int64 ``[numel]``).
    """

    name: str
    module_name: str
    role: str
    shape: tuple[int, ...]
    theta: torch.Tensor
    value: torch.Tensor
    fmt: NumberFormat
    scale: Any
    zero_point: Any
    axis: int | None
    codes: torch.Tensor
    #: ``(adapter, quantizer attribute)`` where the value comes from a quantizer, else None
    quantizer: tuple | None = field(default=None, repr=False)

    @property
    def numel(self) -> int:
        return int(self.value.numel())

    @property
    def bits(self) -> int:
        return self.fmt.bits

    def flip_deltas(self) -> torch.Tensor:
        """``[numel, bits]`` (float64): the exact change of each value when bit ``b`` (0 = LSB)
        of its code flips alone."""
        numel, bits = self.numel, self.bits
        codes = self.codes.view(-1, 1).expand(numel, bits)
        flipped = self.fmt.xor(codes, torch.bitwise_left_shift(torch.ones(1, dtype=torch.int64),
                                                              torch.arange(bits)).expand(numel, bits))
        shape = (numel, bits)
        scale = _per_element(self.scale, self.shape, self.axis)
        zero = _per_element(self.zero_point, self.shape, self.axis)
        decoded = self.fmt.decode(flipped.reshape(-1), scale=None if scale is None else scale.repeat_interleave(bits),
                                  zero_point=None if zero is None else zero.repeat_interleave(bits)).reshape(shape)
        return decoded.to(torch.float64) - self.value.to(torch.float64).view(-1, 1)


def _per_element(param, shape: tuple[int, ...], axis: int | None):
    """A scale or zero point as one value per element (flat tensor), or None."""
    if param is None:
        return None
    numel = int(torch.Size(shape).numel())
    value = gather_param(param, shape, torch.arange(numel), axis)
    return torch.as_tensor(value).reshape(-1).expand(numel) if torch.as_tensor(value).numel() == 1 \
        else torch.as_tensor(value).reshape(-1)


def _float_view(name: str, module_name: str, role: str, param: torch.Tensor, fmt: NumberFormat) -> WeightView:
    x = param.detach().float()
    scale = zero = axis = None
    if fmt.needs_qparams:
        axis = 0 if x.dim() > 1 else None
        scale, zero = calibrate(fmt, x, axis)
        zero = None if getattr(fmt, "signed", True) else zero
    codes = fmt.encode(x, scale, zero, axis)
    value = fmt.decode(codes, scale, zero, axis).to(torch.float32)
    return WeightView(name, module_name, role, tuple(x.shape), x.reshape(-1).clone(), value.reshape(-1),
                      fmt, scale, zero, axis, codes.reshape(-1).to(torch.int64))


def weight_views(model: nn.Module, example: torch.Tensor, *, types=None, names=None, indices=None,
                 fmt: NumberFormat | None = None, include_bias: bool = False) -> list[WeightView]:
    """The scored tensors of ``model``: the weights (and with ``include_bias`` the biases, which
    need ``fmt``) of the layers a weight :class:`~qfault.injection.InjectSpec` with the same
    ``types``/``names``/``indices`` selects. ``example`` (one input batch) runs the model once to
    read what its weight quantizers return.

    Raises:
        QFaultConfigError: nothing selected, or a float parameter without ``fmt``.
    """
    spec = InjectSpec(fault={"type": "bit_flip", "ber": 0.0}, site="weight", types=types, names=names,
                      indices=indices, format=fmt)
    selected = select_modules(model, spec)
    views: list[WeightView] = []
    captured: dict[str, tuple] = {}
    hooks = []
    for module_name, module in selected:
        found = quantizer_of(module, "weight") if fmt is None else None
        if found is None:
            continue
        adapter, attr = found

        def capture(m, args, kwargs, out, module_name=module_name, adapter=adapter, attr=attr):
            qparams = quantizer_output_format(adapter, m, args, kwargs, out, module_name)
            if qparams is None:
                return None
            f, scale, zero, axis = qparams
            captured[module_name] = (adapter.value(out).detach().float(), f, scale, zero, axis, (adapter, attr))
            return None

        hooks.append(getattr(module, attr).register_forward_hook(capture, with_kwargs=True))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for module_name, module in selected:
        roles = ("weight", "bias") if include_bias else ("weight",)
        for role in roles:
            param = module._parameters.get(role)
            if param is None:
                continue
            name = f"{module_name}.{role}" if module_name else role
            if role == "weight" and module_name in captured:
                value, f, scale, zero, axis, quantizer = captured[module_name]
                codes = f.encode(value, scale, zero, axis).reshape(-1).to(torch.int64)
                views.append(WeightView(name, module_name, role, tuple(value.shape),
                                        param.detach().float().reshape(-1).clone(), value.reshape(-1), f, scale,
                                        zero, axis, codes, quantizer))
            elif fmt is not None:
                views.append(_float_view(name, module_name, role, param, fmt))
            else:
                raise QFaultConfigError("format", None, f"a number format for the float {role} of '{module_name}' "
                                        f"({type(module).__name__})", hint="only quantized layers carry their own")
    return views


class LeafForward:
    """Runs ``model`` with each view's quantized value replaced by a tensor of ``leaves``
    (quantizer outputs through forward hooks, float parameters through
    ``torch.func.functional_call``), so autograd differentiates with respect to them."""

    def __init__(self, model: nn.Module, views: list[WeightView]):
        self.model, self.views = model, views

    def leaves(self) -> list[torch.Tensor]:
        """Fresh leaf tensors holding the quantized values (``requires_grad``), in view shapes."""
        return [view.value.reshape(view.shape).clone().requires_grad_(True) for view in self.views]

    def __call__(self, x: torch.Tensor, leaves: list[torch.Tensor], affine_norms: bool = False) -> torch.Tensor:
        """The model's output (a plain tensor) on ``x`` with ``leaves`` for the views' values;
        ``affine_norms`` computes every eval-mode BatchNorm as the affine map it is, ``x * s + t``
        (the same function, whose second derivatives cost a fraction of batch_norm's)."""
        substitutes: dict[str, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            if affine_norms:
                for module in self.model.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training \
                            and module.running_var is not None:
                        stack.callback(module.register_forward_hook(_affine_batch_norm).remove)
            for view, leaf in zip(self.views, leaves):
                if view.quantizer is None:
                    substitutes[view.name] = leaf
                    continue
                adapter, attr = view.quantizer
                quantizer = self.model.get_submodule(view.module_name).get_submodule(attr)
                hook = quantizer.register_forward_hook(
                    lambda m, a, kw, out, adapter=adapter, leaf=leaf: adapter.with_value(out, leaf), with_kwargs=True)
                stack.callback(hook.remove)
            out = torch.func.functional_call(self.model, substitutes, (x,), strict=False) if substitutes \
                else self.model(x)
        return getattr(out, "value", out)


def _affine_batch_norm(module: nn.Module, args: tuple, out: Any) -> torch.Tensor | None:
    """A forward hook: an eval-mode BatchNorm's output as ``x * s + t`` with ``s = w / sqrt(var +
    eps)``, ``t = b - mean * s`` (None, keeping batch_norm's output, for a non-tensor input)."""
    (x,) = args
    if not isinstance(x, torch.Tensor):
        return None
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.view(shape) + shift.view(shape)
