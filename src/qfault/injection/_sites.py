"""Site kinds: which tensor of a selected module is faulted, and how a site attaches to it.

A site kind says which modules it selects by default and how it hooks a (spec, module) pair:
``weight`` and ``bias`` fault a module parameter for the duration of each forward (a quantized
layer's weight quantizer output instead, where an adapter finds one), ``output`` faults what a
module returns (or its output quantizer's result), ``input`` what it receives. Kinds are
registered by the names of :class:`~qfault.injection.Site`; a new site registers one class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .._registry import Registry
from ._adapters import default_activation_types, quantizer_of

if TYPE_CHECKING:  # pragma: no cover
    from ._api import InjectionHandle
    from ._runtime import SiteRuntime
    from ._spec import InjectSpec

SITES: Registry = Registry("site")

_WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


class SiteKind:
    """Base of the registered site kinds."""

    name = ""
    #: whether the site is a module parameter (faulted once per model forward)
    parameter = False

    def selectable(self, module: nn.Module, spec: "InjectSpec") -> bool:
        """Whether ``module`` is a candidate before the spec's ``types``/``names`` filters."""
        raise NotImplementedError  # pragma: no cover

    def default_description(self) -> str:
        raise NotImplementedError  # pragma: no cover

    def attach(self, handle: "InjectionHandle", site: "SiteRuntime") -> None:
        """Set ``site.attach`` (a function registering the site's hooks, returning their
        handles), or register the site as a parameter site of ``handle``."""
        raise NotImplementedError  # pragma: no cover


def _attach_to_quantizer(site: "SiteRuntime", role: str, batched: bool) -> bool:
    """Fault the integer codes of what ``site.module``'s ``role`` quantizer returns, where an
    adapter finds one and the spec names no format; False otherwise (nothing attached)."""
    from ._runtime import quant_output_hook

    found = quantizer_of(site.module, role) if site.spec.format is None else None
    if found is None:
        return False
    adapter, attr = found
    proxy = getattr(site.module, attr)
    site.attach = lambda: [proxy.register_forward_hook(quant_output_hook(site, adapter, batched=batched),
                                                       with_kwargs=True)]
    return True


class _ParameterSite(SiteKind):
    parameter = True

    def selectable(self, module: nn.Module, spec: "InjectSpec") -> bool:
        if module._parameters.get(self.name) is None:
            return False
        return spec.types is not None or isinstance(module, _WEIGHT_TYPES)

    def default_description(self) -> str:
        return "Conv/Linear layers"

    def attach(self, handle, site) -> None:
        from ._runtime import format_error

        if site.spec.format is None:
            raise format_error(site)
        handle._param_sites.append(site)
        site.attach = None


class WeightSite(_ParameterSite):
    """A module's ``weight``: its quantizer's integer codes where an adapter finds a weight
    quantizer and the spec names no format, else the float weights viewed in the spec's format."""

    name = "weight"

    def attach(self, handle, site) -> None:
        if not _attach_to_quantizer(site, "weight", batched=False):
            super().attach(handle, site)


class BiasSite(_ParameterSite):
    """A module's float ``bias`` viewed in the spec's format."""

    name = "bias"


class _ActivationSite(SiteKind):
    def selectable(self, module: nn.Module, spec: "InjectSpec") -> bool:
        if spec.types is not None or spec.names is not None:
            return True
        from ._select import matches_type

        return matches_type(module, default_activation_types())

    def default_description(self) -> str:
        return "quantized activation layers " + "/".join(default_activation_types())


class OutputSite(_ActivationSite):
    """What a module returns (its output quantizer's integer codes where an adapter finds one)."""

    name = "output"

    def attach(self, handle, site) -> None:
        from ._runtime import fault_any, require_format_or_quant

        if _attach_to_quantizer(site, "output", batched=True):
            return
        module = site.module
        require_format_or_quant(site)
        site.attach = lambda: [module.register_forward_hook(lambda m, args, out: fault_any(site, m, out))]


class InputSite(_ActivationSite):
    """The first positional input of a module (its input quantizer's integer codes where an
    adapter finds one, e.g. an LSQ layer's ``quan_a_fn``)."""

    name = "input"

    def attach(self, handle, site) -> None:
        from ._runtime import fault_any, require_format_or_quant

        if _attach_to_quantizer(site, "input", batched=True):
            return
        module = site.module
        require_format_or_quant(site)

        def pre_hook(m, args):
            if not args:
                return None
            return (fault_any(site, m, args[0]),) + tuple(args[1:])

        site.attach = lambda: [module.register_forward_pre_hook(pre_hook)]


for _kind in (WeightSite(), BiasSite(), OutputSite(), InputSite()):
    SITES.register(_kind.name, _kind)
