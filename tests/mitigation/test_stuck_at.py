"""Stuck-at weight cells with write-side mitigation through ``qfault.inject(model, StuckAtSpec)``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import qfault
from qfault import Handle, QFaultConfigError
from qfault.faults import derive_seed
from qfault.injection import CONFIG_HANDLERS, inject
from qfault.layers import SeedQuantConfig, swap_modules
from qfault.mitigation import StuckAtHandle, StuckAtSpec, apply_stuck_at, draw_stuck_map, remap, stuck_layers
from qfault.testing import tiny_digits_mlp, tiny_digits_seed_quant

METHODS = ("raw", "cvm", "sign_flip", "bit_flip")


def reference(model: nn.Module, spec: StuckAtSpec):
    """What apply_stuck_at computed before it became a shim: per layer, the map from
    derive_seed(seed, name), then the read-back codes (raw: stuck bits override the pattern,
    computed here with plain bit operations), with the stuck-cell and changed-weight counts."""
    codes, stuck, changed = [], 0, 0
    for name, layer in stuck_layers(model):
        bits = layer.weight_bits
        clean = layer.weight_codes if layer.frozen else layer.freeze().weight_codes
        mask, value = draw_stuck_map(tuple(clean.shape), spec.rate, bits=bits, generator=derive_seed(spec.seed, name) >> 1)
        if spec.method == "raw":
            full, half = (1 << bits) - 1, 1 << (bits - 1)
            pattern = ((clean.long() & full) & ~mask.long()) | (value.long() & mask.long())
            read = ((pattern ^ half) - half).to(torch.int32)  # sign-extend the stored pattern
        else:
            read = remap(clean, mask, value, bits=bits, method=spec.method, tile=spec.tile)
        codes.append(read)
        stuck += sum(bin(int(m)).count("1") for m in mask.reshape(-1).tolist())
        changed += int((read != clean).sum())
    return codes, stuck, changed


@pytest.mark.parametrize("weight_bits", [8, 4])
@pytest.mark.parametrize("method", METHODS)
def test_inject_equals_the_old_apply_stuck_at(method, weight_bits):
    model = tiny_digits_seed_quant(weight_bits=weight_bits)
    clean = [layer.weight_codes.clone() for _, layer in stuck_layers(model)]
    for rate, tile in ((1.0, 64), (8.0, 16), (30.0, 5)):
        spec = StuckAtSpec(rate=rate, method=method, tile=tile, seed=5)
        want, stuck, changed = reference(model, spec)
        with inject(model, spec) as handle:
            assert isinstance(handle, StuckAtHandle)
            got = [layer.weight_codes for _, layer in stuck_layers(model)]
            assert all(torch.equal(g, w) for g, w in zip(got, want))
            assert (handle.stuck_cells, handle.changed_weights) == (stuck, changed)
            assert stuck > 0 and (changed > 0 or rate == 1.0)
            assert handle.layers == [name for name, _ in stuck_layers(model)]
        assert all(torch.equal(c, layer.weight_codes) for c, (_, layer) in zip(clean, stuck_layers(model)))
        # the deprecated verb gives the same faults
        with pytest.warns(FutureWarning, match="qfault.inject"):
            old = apply_stuck_at(model, spec)
        with old:
            assert all(torch.equal(layer.weight_codes, w) for (_, layer), w in zip(stuck_layers(model), want))
            assert (old.stuck_cells, old.changed_weights) == (stuck, changed)


def test_the_verb_is_reached_as_qfault_inject_and_registered_once():
    assert StuckAtSpec in CONFIG_HANDLERS
    model = tiny_digits_seed_quant()
    with qfault.inject(model, StuckAtSpec(rate=5.0, method="bit_flip", seed=1)) as handle:
        assert isinstance(handle, Handle) and handle.changed_weights > 0
    with pytest.raises(QFaultConfigError, match="selections"):
        inject(model, StuckAtSpec(rate=1.0), selections=[[]])


def test_handle_enable_disable_remove():
    model = tiny_digits_seed_quant()
    x = torch.randn(5, 1, 8, 8)
    clean_codes = [layer.weight_codes.clone() for _, layer in stuck_layers(model)]
    y_clean = model(x)
    handle = inject(model, StuckAtSpec(rate=10.0, method="raw", seed=2))
    faulty = [layer.weight_codes.clone() for _, layer in stuck_layers(model)]
    assert handle.enabled and any(not torch.equal(f, c) for f, c in zip(faulty, clean_codes))
    y_faulty = model(x)
    assert not torch.equal(y_faulty, y_clean)
    assert handle.disable() is handle and not handle.enabled
    assert all(torch.equal(layer.weight_codes, c) for (_, layer), c in zip(stuck_layers(model), clean_codes))
    assert torch.equal(model(x), y_clean)
    assert handle.enable() is handle and handle.enabled
    assert all(torch.equal(layer.weight_codes, f) for (_, layer), f in zip(stuck_layers(model), faulty))
    assert torch.equal(model(x), y_faulty)
    handle.remove()
    assert handle.removed and not handle.enabled
    assert torch.equal(model(x), y_clean)
    handle.enable()  # after remove: nothing to put back
    handle.remove()  # idempotent
    assert all(torch.equal(layer.weight_codes, c) for (_, layer), c in zip(stuck_layers(model), clean_codes))


def test_layers_frozen_for_the_faults_are_unfrozen_by_remove():
    model = tiny_digits_mlp()
    with swap_modules(model, SeedQuantConfig(skip=())) as swap:  # not frozen
        layers = [layer for _, layer in stuck_layers(model)]
        assert len(layers) == 2 and not any(layer.frozen for layer in layers)
        x = torch.randn(3, 1, 8, 8)
        y = model(x)
        with inject(model, StuckAtSpec(rate=20.0, method="cvm", seed=0)) as handle:
            assert all(layer.frozen for layer in layers) and handle.changed_weights > 0
            handle.disable()
            assert torch.equal(model(x), y)  # the clean codes are the on-the-fly quantization
        assert not any(layer.frozen for layer in layers)
        assert torch.equal(model(x), y)
    assert swap.removed and all(type(m) is nn.Linear for m in (model[1], model[3]))


def test_unseeded_maps_are_drawn_and_removed():
    model = tiny_digits_seed_quant()
    clean = [layer.weight_codes.clone() for _, layer in stuck_layers(model)]
    with inject(model, StuckAtSpec(rate=50.0, method="raw")) as handle:
        assert handle.stuck_cells > 0
    assert all(torch.equal(c, layer.weight_codes) for c, (_, layer) in zip(clean, stuck_layers(model)))


def test_a_model_without_seed_quant_layers_is_refused():
    with pytest.raises(QFaultConfigError, match="SeedQuantLinear") as e:
        inject(tiny_digits_mlp(), StuckAtSpec(rate=1.0))
    assert e.value.field == "model" and "swap_modules" in str(e.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"rate": 100.5}, "rate"), ({"rate": -1.0}, "rate"), ({"method": "none-such"}, "method"),
    ({"tile": 0}, "tile"), ({"seed": -1}, "seed"),
])
def test_stuck_at_spec_validation(kwargs, field):
    with pytest.raises(QFaultConfigError) as e:
        StuckAtSpec(**kwargs)
    assert e.value.field == field
    assert StuckAtSpec(method="flip-bitwise").method == "bit_flip"  # the seed's names are aliases


MOVED = ("SeedQuantLinear", "float_mode", "seed_quant_vit", "seed_quantize_activation", "seed_quantize_weight",
         "swap_linear")


@pytest.mark.parametrize("name", MOVED)
def test_moved_names_still_resolve_with_a_future_warning(name):
    import qfault.layers
    import qfault.mitigation

    with pytest.warns(FutureWarning, match=f"qfault.layers.{name}"):
        assert getattr(qfault.mitigation, name) is getattr(qfault.layers, name)
    assert name in dir(qfault.mitigation) and name not in qfault.mitigation.__all__


def test_mitigation_star_import_is_silent_and_unknown_names_raise():
    import qfault.mitigation

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        namespace: dict = {}
        exec("from qfault.mitigation import *", namespace)
    assert "remap" in namespace and "SeedQuantLinear" not in namespace
    with pytest.raises(AttributeError, match="no_such_name"):
        qfault.mitigation.no_such_name  # noqa: B018
