"""Contract tests of ``qfault.layers.swap_modules``, parametrized over every registered layer swap."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from qfault import Handle, QFaultConfigError
from qfault._config import to_dict
from qfault.layers import (
    LAYERS,
    SeedQuantConfig,
    SeedQuantLinear,
    SwapHandle,
    get_layer_swap,
    layer_config,
    list_layer_swaps,
    register_layer_swap,
    swap_modules,
)

SWAPS = list_layer_swaps()


class _Toy(nn.Module):
    """Common layer types, nested containers and one module reached through two attributes.
    (A new layer swap that matches none of these extends this model.)"""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.Sequential(nn.Sequential(nn.Linear(64, 16), nn.ReLU()), nn.Linear(16, 16))
        self.shared = nn.Linear(16, 16)
        self.alias = self.shared
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv(x).mean(1).flatten(1)
        return self.fc(self.norm(self.alias(self.shared(self.blocks(x)))))


def _slots(model):
    return [(name, id(m)) for name, m in model.named_modules(remove_duplicate=False)]


def _config(name):
    """The registered config with its defaults, nothing skipped where it has a skip list."""
    config = layer_config(name)
    if any(f.name == "skip" for f in dataclasses.fields(config)):
        config = dataclasses.replace(config, skip=())
    return config


def test_registry_lists_seed_quant_linear():
    assert "seed_quant_linear" in SWAPS
    entry = get_layer_swap("seed_quant_linear")
    assert entry.config_type is SeedQuantConfig and entry.name == "seed_quant_linear"
    assert get_layer_swap("seed_quant") is entry  # alias
    assert list_layer_swaps("seed_*") == ["seed_quant_linear"]


@pytest.mark.parametrize("name", SWAPS)
def test_swap_and_remove_bit_exactly(name):
    model = _Toy().eval()
    x = torch.randn(2, 1, 8, 8)
    before_slots, before_state = _slots(model), copy.deepcopy(model.state_dict())
    before_modules = dict(model.named_modules(remove_duplicate=False))
    y_before = model(x)
    handle = swap_modules(model, _config(name))
    assert isinstance(handle, SwapHandle) and isinstance(handle, Handle)
    assert handle.swapped, f"{name} swapped nothing in the toy model: extend _Toy"
    assert list(handle.modules) == handle.swapped
    for swapped in handle.swapped:
        assert model.get_submodule(swapped) is handle.modules[swapped]
        assert handle.modules[swapped] is not before_modules[swapped]
    # the swapped names in named_modules order, first name of each module
    order = [n for n, _ in model.named_modules()]
    assert handle.swapped == sorted(handle.swapped, key=order.index)
    assert model(x).shape == y_before.shape  # drop-in
    handle.remove()
    assert handle.removed
    assert _slots(model) == before_slots  # the very same module objects, in every attribute
    state = model.state_dict()
    assert list(state) == list(before_state) and all(torch.equal(state[k], v) for k, v in before_state.items())
    assert torch.equal(model(x), y_before)
    handle.remove()  # idempotent
    assert _slots(model) == before_slots


@pytest.mark.parametrize("name", SWAPS)
def test_handle_is_a_context_manager_and_accepts_names_and_dicts(name):
    model = _Toy()
    before = _slots(model)
    config = _config(name)
    prepare = LAYERS.get(name).prepare
    with swap_modules(model, to_dict(config)) as handle:
        # the handle keeps the config with its model-dependent defaults filled in
        assert handle.config == (prepare(_Toy(), config) if prepare is not None else config)
        assert _slots(model) != before
    assert handle.removed and _slots(model) == before
    assert layer_config(name) == LAYERS.get(name).config_type()
    assert layer_config(to_dict(config)) == config  # dict round trip


@pytest.mark.parametrize("name", SWAPS)
def test_two_swaps_removed_last_in_first_out(name):
    model = _Toy()
    before = _slots(model)
    outer = swap_modules(model, _config(name))
    middle = _slots(model)
    inner = swap_modules(model, _config(name))  # finds nothing new to replace, or wraps further
    inner.remove()
    assert _slots(model) == middle
    outer.remove()
    assert _slots(model) == before


def test_unknown_names_and_types_list_the_valid_ones():
    model = _Toy()
    for bad in ("no_such_layer", {"type": "no_such_layer"}):
        with pytest.raises(QFaultConfigError) as e:
            swap_modules(model, bad)
        assert e.value.field == "layer" and all(name in str(e.value) for name in SWAPS)

    @dataclasses.dataclass(frozen=True)
    class Unregistered:
        bits: int = 8

    for bad in (Unregistered(), 8, None):
        with pytest.raises(QFaultConfigError) as e:
            swap_modules(model, bad)
        assert e.value.field == "config" and all(name in str(e.value) for name in SWAPS)
    with pytest.raises(QFaultConfigError) as e:
        swap_modules(model, {"type": "seed_quant_linear", "bits": 8})
    assert e.value.field == "seed_quant_linear.bits"
    with pytest.raises(QFaultConfigError) as e:
        swap_modules("not a model", SeedQuantConfig())
    assert e.value.field == "model"
    assert not any(isinstance(m, SeedQuantLinear) for m in model.modules())


def test_register_layer_swap_validation():
    @dataclasses.dataclass
    class Mutable:
        bits: int = 8

    with pytest.raises(QFaultConfigError) as e:
        register_layer_swap("mutable", Mutable, matches=lambda *_: False)
    assert e.value.field == "config_type"
    with pytest.raises(ValueError, match="already registered"):
        register_layer_swap("seed_quant_linear_again", SeedQuantConfig, matches=lambda *_: False)
    assert list_layer_swaps() == SWAPS  # nothing was registered


def test_root_module_and_failing_build_leave_the_model_unchanged():
    with pytest.raises(QFaultConfigError) as e:
        swap_modules(nn.Linear(3, 3), SeedQuantConfig())
    assert e.value.field == "model"
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(2 ** 20 + 1, 1, bias=False))  # too wide for the seed layer
    before = _slots(model)
    with pytest.raises(QFaultConfigError) as e:
        swap_modules(model, SeedQuantConfig(skip=()))
    assert e.value.field == "in_features"
    assert _slots(model) == before


def test_shared_module_gets_one_replacement_and_skip_rules_apply_per_name():
    model = _Toy()
    handle = swap_modules(model, SeedQuantConfig(skip=("alias", "blocks.1")))
    # "shared" is swapped; the same module under the skipped name "alias" stays the original
    assert handle.swapped == ["blocks.0.0", "shared", "fc"]
    assert isinstance(model.shared, SeedQuantLinear) and type(model.alias) is nn.Linear
    assert type(model.blocks[1]) is nn.Linear
    handle.remove()
    assert model.alias is model.shared and type(model.shared) is nn.Linear
    handle = swap_modules(model, SeedQuantConfig(skip=()))
    assert model.alias is model.shared and "alias" not in handle.swapped  # one replacement, shared
