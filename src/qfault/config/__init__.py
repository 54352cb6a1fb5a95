"""One configuration path for every command: YAML + ``key=value`` overrides -> validated dataclasses.

Loading (:func:`load_config`) goes through OmegaConf: the file is read with its YAML loader
(``1e-3`` is a number), overrides are set into the OmegaConf tree (``faults.0.fault.ber=1e-3``
indexes a list; under a ``dotted_keys`` key such as a campaign's ``sweep`` the rest of the key
is one dotted path) and ``${...}`` interpolations are resolved; the result is a plain dict (a
:class:`LoadedConfig`) that keeps a :class:`SourceMap`: the file line of every value (from
PyYAML's node marks) and the override that set a value, so that each error of a loaded
configuration says where its value came from: ``faults[0].fault.ber='abc' is invalid: allowed
a number in [0.0, 1.0] (spec.yaml line 9)``, ``... (from override seed=abc)``. Fields annotated
``int`` or ``float`` take numbers written as strings (``"1e-3"``, ``"+5"``; PyYAML reads an
unquoted ``1e-3`` as a string), see :func:`as_number`.
OmegaConf's own dotlist merge is not used for the overrides because it turns ``0`` into a
mapping key instead of a list index and cannot express keys that contain dots.

Validation reports every bad field at once as a :class:`ConfigErrors` (a
:class:`~qfault.QFaultConfigError`, so existing handlers and the CLI's exit code 2 keep
working). Our config dataclasses validate in ``__post_init__`` and stop at their first error;
:func:`check_dataclass` finds the others without duplicating any check: it checks unknown keys
(with a "did you mean"), checks nested dataclasses on their own under a dotted prefix, then
builds the dataclass and, after each error, sets the field it names back to its default and
builds again, so every reported error is real given the other values (see its docstring).
The other way, checking each field alone against defaults, reports spurious errors where a
field is valid only with another one (``source: checkpoint`` with its ``factory``), so it is
not used.

Example:
    >>> from qfault.campaign import CampaignSpec
    >>> spec = CampaignSpec.from_yaml("spec.yaml", ["batch_size=64"])  # doctest: +SKIP
"""

from ._check import FieldCheck, check_dataclass, check_keys, check_registered
from ._coerce import as_number, coerce_fields
from ._errors import ConfigErrors, did_you_mean, join, located, prefixed, suggest
from ._load import (
    LoadedConfig, apply_overrides, load_config, load_yaml, parse_value, source_map_of, split_key, to_plain,
)
from ._origins import SourceMap

__all__ = [
    # loading
    "load_config", "load_yaml", "apply_overrides", "parse_value", "split_key", "to_plain",
    "LoadedConfig",
    # where values came from
    "SourceMap", "source_map_of", "located",
    # numbers written as strings
    "as_number", "coerce_fields",
    # validation
    "ConfigErrors", "check_dataclass", "check_keys", "check_registered", "FieldCheck",
    "suggest", "did_you_mean", "join", "prefixed",
]
