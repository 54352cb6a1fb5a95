"""Where faults go in a model: sites, selection, and the reversible ``inject`` verb."""

from ._api import InjectionHandle, inject, select_modules
from ._grad import replace_at
from ._spec import InjectSpec, Mode, Site
from ._stats import SiteStats, Statistics

__all__ = ["inject", "InjectSpec", "InjectionHandle", "Site", "Mode", "Statistics", "SiteStats",
           "select_modules", "replace_at"]


class _CallableModule(__import__("types").ModuleType):
    """``qfault.inject`` names both this subpackage and the verb; calling it runs the verb."""

    def __call__(self, model, spec):
        return inject(model, spec)


__import__("sys").modules[__name__].__class__ = _CallableModule
