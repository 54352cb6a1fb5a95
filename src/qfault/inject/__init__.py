"""Where faults go in a model: sites, selection, and the reversible ``inject`` verb."""

from ._api import InjectionHandle, inject, select_modules
from ._grad import replace_at
from ._spec import InjectSpec, Mode, Site
from ._stats import SiteStats, Statistics

__all__ = ["inject", "InjectSpec", "InjectionHandle", "Site", "Mode", "Statistics", "SiteStats",
           "select_modules", "replace_at"]
