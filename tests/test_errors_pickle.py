"""Configuration errors cross process boundaries intact (a Ray worker raises, the driver reports)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from qfault import QFaultConfigError
from qfault.campaign import StoreMismatch
from qfault.compat.flauers.exceptions import CastingError, InjectionError
from qfault.config import ConfigErrors
from qfault.systolic import SystolicCastingError


@pytest.mark.parametrize("error", [
    QFaultConfigError("faults[0].fault.ber", 2.0, "a number in [0, 1]", hint="percent?"),
    ConfigErrors([QFaultConfigError("seed", "x", "an integer"), QFaultConfigError("limit", 0, "an integer >= 1")]),
    StoreMismatch(Path("runs/c.qfault.db"), ["seed: 3 -> 9"]),
    SystolicCastingError("A", 300, "values int8 holds exactly"),
    InjectionError("the fault's PE is outside the array"),
    CastingError("A", 1.5, "an int8 value"),
], ids=lambda e: type(e).__name__)
def test_every_config_error_pickles_with_its_message_and_fields(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert (again.field, again.value, again.allowed, again.hint) == (error.field, error.value, error.allowed,
                                                                     error.hint)
