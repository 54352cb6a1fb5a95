"""Tests of ``qfault.inject`` on plain float models, checked against brute-force references.

Every expectation is recomputed independently of the library: per-channel symmetric int8
quantization (``scale = max|w| / 127``), the bit pattern of a two's-complement code, and the
faulty forward of a copy of the model whose weights were replaced by hand.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict

import pytest
import torch
from torch import nn

from qfault import BitFlip, InjectSpec, QFaultConfigError, StuckAt, inject
from qfault.faults import LSBFlip, MSBFlip, RandomValue
from qfault.formats import FixedPoint, FloatFormat, IntFormat
from qfault.testing import FaultRecorder

# --------------------------------------------------------------------------------------------
# independent helpers


def to_pattern(code: int, bits: int) -> int:
    """Two's-complement bit pattern of ``code`` in ``bits`` bits."""
    return code & ((1 << bits) - 1)


def from_pattern(pattern: int, bits: int, signed: bool = True) -> int:
    pattern &= (1 << bits) - 1
    if signed and pattern >= 1 << (bits - 1):
        return pattern - (1 << bits)
    return pattern


def masks_from_bit_sites(bit_sites: torch.Tensor) -> dict[int, int]:
    """``{element: xor mask}`` rebuilt from the (element, bit) pairs of a draw."""
    masks: dict[int, int] = {}
    for element, bit in bit_sites.tolist():
        masks[element] = masks.get(element, 0) ^ (1 << bit)
    return masks


Recorder = FaultRecorder


def float_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def inputs(shape=(2, 3, 6, 6), seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def state_copy(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, state: dict) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key


def assert_clean_module(model: nn.Module) -> None:
    """No qfault wrapper or hook is left on any module."""
    for _, module in model.named_modules():
        assert "forward" not in module.__dict__
        assert not module._forward_hooks
        assert not module._forward_pre_hooks
        for name, param in module.named_parameters(recurse=False):
            assert isinstance(param, nn.Parameter), name


def brute_force_weights(clean: nn.Module, calls: list[tuple], bits: int = 8) -> nn.Module:
    """A copy of ``clean`` with the recorded weight faults applied by hand.

    Per output channel symmetric ``int<bits>``: ``scale = max|w| / code_max``, ``code =
    clamp(round(w / scale))``; flip the recorded bits; write ``code * scale`` back only there.
    Also checks that the listener's old/new codes agree with this computation.
    """
    ref = copy.deepcopy(clean)
    modules = dict(ref.named_modules())
    code_max = (1 << (bits - 1)) - 1
    for name, draw, old, new in calls:
        module_name, site = name.rsplit(":", 1)
        assert site == "weight"
        w = modules[module_name].weight.data
        channels = w.shape[0]
        per_channel = w[0].numel()
        rows = w.reshape(channels, -1)
        scale = rows.abs().amax(dim=1) / code_max
        codes = torch.clamp(torch.round(rows / scale[:, None]), -code_max - 1, code_max).to(torch.int64).reshape(-1)
        masks = masks_from_bit_sites(draw.bit_sites)
        positions = sorted(masks)
        assert draw.index.tolist() == positions
        assert old.tolist() == codes[positions].tolist()
        expected_new = [from_pattern(to_pattern(int(codes[i]), bits) ^ masks[i], bits) for i in positions]
        assert new.tolist() == expected_new
        flat = w.view(-1)
        for i, code in zip(positions, expected_new):
            flat[i] = torch.tensor(float(code), dtype=w.dtype) * scale[i // per_channel]
    return ref


# --------------------------------------------------------------------------------------------
# 1. weight faults on a float model


def test_weight_bitflip_matches_brute_force():
    model = float_model()
    clean_model = copy.deepcopy(model)
    x = inputs()
    with torch.no_grad():
        clean = model(x)
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", seed=11))
    rec = Recorder()
    handle.add_listener(rec)
    assert handle.num_sites == 2
    seen = set()
    for _ in range(3):
        rec.clear()
        with torch.no_grad():
            faulty = model(x)
        assert sorted(rec.names) == ["0:weight", "3:weight"]
        assert all(len(d) > 0 for _, d, _, _ in rec.calls)
        ref = brute_force_weights(clean_model, rec.calls)
        with torch.no_grad():
            expected = ref(x)
        assert torch.equal(faulty, expected)
        assert not torch.equal(faulty, clean)
        seen.add(tuple(rec.signature()))
    assert len(seen) == 3  # transient: a fresh draw every forward
    handle.remove()


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad_inplace", "grad_clone"])
def test_faulty_weight_values_exact(grad):
    """The weights a module computes with differ from the clean ones exactly at the drawn elements."""
    torch.manual_seed(0)
    model = nn.Sequential(RecordingLinear(6, 8), nn.ReLU(), RecordingLinear(8, 3)).eval()
    clean_model = copy.deepcopy(model)
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.03), site="weight", format="int8", seed=17))
    rec = Recorder()
    handle.add_listener(rec)
    with torch.set_grad_enabled(grad):
        model(inputs((2, 6)))
    ref = brute_force_weights(clean_model, rec.calls)
    draws = {name: draw for name, draw, _, _ in rec.calls}
    for i in (0, 2):
        seen = model[i].seen[-1]
        clean_w = clean_model[i].weight.detach()
        assert torch.equal(seen, ref[i].weight.detach())
        changed = torch.nonzero((seen != clean_w).reshape(-1)).view(-1)
        assert changed.tolist() == draws[f"{i}:weight"].index.tolist()
        assert torch.equal(model[i].weight.detach(), clean_w)
    handle.remove()


def test_disable_enable_remove_restore_state():
    model = float_model()
    state = state_copy(model)
    x = inputs()
    with torch.no_grad():
        clean = model(x)
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8",
                                      persistence="permanent", seed=3))
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        faulty = model(x)
        assert not torch.equal(faulty, clean)
        assert_state_equal(model, state)  # in-place faults are undone after every forward
        handle.disable()
        rec.clear()
        assert torch.equal(model(x), clean)
        assert rec.calls == []
        handle.enable()
        assert torch.equal(model(x), faulty)
        assert rec.calls
    handle.remove()
    handle.remove()  # idempotent
    assert_state_equal(model, state)
    assert_clean_module(model)
    with torch.no_grad():
        assert torch.equal(model(x), clean)


def test_context_manager_removes():
    model = float_model()
    state = state_copy(model)
    x = inputs()
    with torch.no_grad():
        clean = model(x)
        with inject(model, InjectSpec(fault=BitFlip(count=5), site="weight", format="int8", seed=0)) as handle:
            assert handle.num_sites == 2
            assert not torch.equal(model(x), clean)
        assert torch.equal(model(x), clean)
    assert_state_equal(model, state)
    assert_clean_module(model)


def _weights_seen(model: nn.Module) -> tuple[dict, list]:
    """Forward pre-hooks that copy each Conv/Linear weight as the forward sees it."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: seen.__setitem__(n, mod.weight.detach().clone()))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return seen, hooks


@pytest.mark.parametrize("fmt", [IntFormat(8), IntFormat(8, signed=False), IntFormat(4, range="narrow", rounding="half_up"),
                                 IntFormat(3, signed=False, rounding="half_up"), "fixed_scale"])
def test_cpu_weight_faults_equal_under_no_grad_and_autograd(fmt):
    """Under no_grad the CPU weights are faulted in place (the numpy codec); with autograd a
    faulty copy shadows each weight (the torch codec). Both fault the same weights to the same
    values and codes."""
    spec = dict(fault=BitFlip(ber=0.05), site="weight", persistence="permanent", seed=11)
    spec.update(format="int8", scale=0.01) if fmt == "fixed_scale" else spec.update(format=fmt)
    model = float_model()
    state = state_copy(model)
    x = inputs()
    seen, hooks = _weights_seen(model)
    with inject(model, InjectSpec(**spec)) as handle:
        rec = Recorder()
        handle.add_listener(rec)
        with torch.no_grad():
            y_fast = model(x)
        fast_weights, fast_calls = dict(seen), rec.signature()
        rec.clear()
        y_tensor = model(x)  # grad enabled: faulty copies built with tensor operations
        assert y_tensor.requires_grad
        assert rec.signature() == fast_calls
    for hook in hooks:
        hook.remove()
    assert torch.equal(y_fast, y_tensor.detach())
    for name, weight in fast_weights.items():
        assert torch.equal(weight, seen[name]), name
    assert any(not torch.equal(w, state[f"{n}.weight"]) for n, w in fast_weights.items())
    assert_state_equal(model, state)


def test_cpu_weight_fast_path_leaves_non_finite_weights_alone():
    model = float_model()
    with torch.no_grad():
        model[0].weight.view(-1)[::2] = float("nan")
        model[3].weight.view(-1)[0] = float("inf")
    state = state_copy(model)
    seen, hooks = _weights_seen(model)
    spec = InjectSpec(fault=BitFlip(ber=0.3), site="weight", format="int8", persistence="permanent", seed=2)
    with inject(model, spec):
        with torch.no_grad():
            model(inputs())
        fast = dict(seen)
        model(inputs())
    for hook in hooks:
        hook.remove()
    for name, weight in fast.items():
        assert torch.equal(weight.isnan(), seen[name].isnan()), name
        assert torch.equal(weight.nan_to_num(), seen[name].nan_to_num()), name
        clean = state[f"{name}.weight"]
        assert torch.equal(weight.isnan(), clean.isnan()) and torch.equal(weight.isinf(), clean.isinf())
    assert not torch.equal(fast["3"].nan_to_num(), state["3.weight"].nan_to_num())  # finite ones faulted
    assert torch.equal(model[0].weight.isnan(), state["0.weight"].isnan())


def test_transient_weight_faults_depend_on_the_forward_count_alone():
    """A forward's transient weight faults depend only on the seed and how many forwards the
    model ran: forwards in a row (whose draws the runtime may make ahead) fault exactly as the
    same forwards reached with disabled forwards in between, also across a reset and a new seed."""

    def records(enabled_every: int) -> list:
        model, x = float_model(), inputs()
        handle = inject(model, InjectSpec(fault=BitFlip(ber=0.01), site="weight", format="int8", seed=6))
        rec = Recorder()
        handle.add_listener(rec)
        kept = []
        with torch.no_grad():
            for step in range(40):
                if step == 13:
                    handle.reset()
                if step == 25:
                    handle.seeds[0] += 1
                if step % enabled_every:
                    handle.disable()
                else:
                    handle.enable()
                rec.clear()
                model(x)
                if step % 2 == 0:  # the forwards both runs have enabled
                    kept.append(rec.signature())
        handle.remove()
        return kept

    in_a_row, interleaved = records(1), records(2)
    assert len(in_a_row) == 20 and all(len(calls) == 2 for calls in in_a_row)  # two weight sites
    assert in_a_row == interleaved
    assert len({str(calls) for calls in in_a_row}) == 20  # every forward drew anew


def test_no_grad_inplace_and_grad_clone_paths_agree():
    model = float_model()
    clean_model = copy.deepcopy(model)
    state = state_copy(model)
    x = inputs()
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8",
                                      persistence="permanent", seed=5))
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        y_inplace = model(x)
    calls_inplace = rec.signature()
    rec.clear()
    y_clone = model(x)  # grad enabled and the parameters require grad: clone path
    assert y_clone.requires_grad
    assert rec.signature() == calls_inplace
    assert torch.equal(y_clone.detach(), y_inplace)

    ref = brute_force_weights(clean_model, rec.calls)
    y_ref = ref(x)
    assert torch.equal(y_ref.detach(), y_inplace)
    assert_state_equal(model, state)
    for name, param in model.named_parameters():
        assert isinstance(param, nn.Parameter), name

    # straight-through: weight gradients equal the gradients of the brute-force faulty weights
    g = inputs((2, 5), seed=7)
    (y_clone * g).sum().backward()
    (y_ref * g).sum().backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.allclose(p.grad, ref_params[name].grad, rtol=0, atol=1e-6), name
    handle.remove()
    assert_state_equal(model, state)


def test_grad_path_keeps_parameter_order():
    model = float_model()
    order = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    handle = inject(model, InjectSpec(fault=BitFlip(count=2), site="weight", format="int8", seed=0))
    model(inputs())  # grad enabled: clone path
    handle.remove()
    assert [n for n, _ in model.named_parameters()] == order
    assert list(model.state_dict()) == keys


# --------------------------------------------------------------------------------------------
# 2. transient / permanent, reset, seeds


def _record_forwards(model, spec, x, forwards=3, resets=()):
    handle = inject(model, spec)
    rec = Recorder()
    handle.add_listener(rec)
    out = []
    for i in range(forwards):
        if i in resets:
            handle.reset()
        rec.clear()
        with torch.no_grad():
            model(x)
        out.append(tuple(rec.signature()))
    handle.remove()
    return out


def test_transient_redraws_every_forward():
    spec = InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", seed=1)
    draws = _record_forwards(float_model(), spec, inputs(), forwards=4)
    assert all(draws)
    assert len(set(draws)) == 4


def test_permanent_fixed_until_reset():
    spec = InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", persistence="permanent", seed=1)
    draws = _record_forwards(float_model(), spec, inputs(), forwards=5, resets=(3,))
    assert draws[0] and draws[0] == draws[1] == draws[2]
    assert draws[3] != draws[0]
    assert draws[3] == draws[4]


def test_stuck_at_is_permanent_by_default():
    spec = InjectSpec(fault=StuckAt(rate=5.0), site="weight", format="int8", seed=2)
    assert spec.permanent
    draws = _record_forwards(float_model(), spec, inputs(), forwards=3)
    assert draws[0] and draws[0] == draws[1] == draws[2]


@pytest.mark.parametrize("persistence", ["transient", "permanent"])
def test_same_seed_same_faults_in_separate_models(persistence):
    spec = InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", persistence=persistence, seed=42)
    a = _record_forwards(float_model(0), spec, inputs(), forwards=3)
    b = _record_forwards(float_model(1), spec, inputs(), forwards=3)  # other weights, same shapes
    assert a == b
    other = InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", persistence=persistence, seed=43)
    c = _record_forwards(float_model(0), other, inputs(), forwards=3)
    assert c != a


def test_same_seed_same_faulty_output():
    x = inputs()
    outs = []
    for _ in range(2):
        model = float_model()
        with inject(model, InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", seed=9)):
            with torch.no_grad():
                outs.append(model(x))
    assert torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------------------------
# 4. selection


def _site_names(model, **kwargs):
    kwargs.setdefault("fault", BitFlip(count=1))
    kwargs.setdefault("format", "int8")
    handle = inject(model, InjectSpec(**kwargs))
    names = [s.name for s in handle.sites]
    handle.remove()
    assert_clean_module(model)
    return names


def test_selection_types_names_indices():
    model = mlp()
    assert _site_names(model, site="weight") == ["0", "2", "4"]
    assert _site_names(model, site="weight", types=("Linear",)) == ["0", "2", "4"]
    assert _site_names(model, site="weight", types=(nn.Linear,)) == ["0", "2", "4"]
    assert _site_names(model, site="weight", types="Module") == ["0", "2", "4"]  # MRO: every nn.Module
    assert _site_names(model, site="weight", names=("[02]",)) == ["0", "2"]
    assert _site_names(model, site="weight", names=("*",)) == ["0", "2", "4"]
    assert _site_names(model, site="weight", names=("re:[24]",)) == ["2", "4"]
    assert _site_names(model, site="weight", names=("re:2|4",)) == ["2", "4"]
    assert _site_names(model, site="weight", names=("re:4", "0")) == ["0", "4"]
    assert _site_names(model, site="weight", indices=(-1,)) == ["4"]
    assert _site_names(model, site="weight", indices=(0, -1)) == ["0", "4"]
    assert _site_names(model, site="weight", names=("re:[24]",), indices=(-2,)) == ["2"]
    assert _site_names(model, site="bias", types=("Linear",), indices=(1,)) == ["2"]
    # output/input sites: any module type named explicitly
    assert _site_names(model, site="output", types=("ReLU",)) == ["1", "3"]
    assert _site_names(model, site="input", names=("4",)) == ["4"]


def test_nonleaf_module_output_site_matches_brute_force():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        block=nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8)),
        head=nn.Linear(8, 3),
    )).eval()
    x = inputs((4, 6))
    handle = inject(model, InjectSpec(fault=BitFlip(count=3), site="output", names=("block",),
                                      format="int8", seed=4))
    assert [s.name for s in handle.sites] == ["block"]
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        faulty = model(x)
        (name, draw, old, new), = rec.calls
        assert name == "block:output"
        handle.disable()
        z = model.block(x)
        handle.enable()
        scale = z.abs().max() / 127  # per-tensor symmetric calibration of an activation
        codes = torch.clamp(torch.round(z / scale), -128, 127).to(torch.int64).reshape(-1)
        masks = masks_from_bit_sites(draw.bit_sites)
        assert sum(bin(m).count("1") for m in masks.values()) == 3
        assert draw.index.tolist() == sorted(masks)
        z_ref = z.clone().reshape(-1)
        for pos, i in enumerate(sorted(masks)):
            assert int(old[pos]) == int(codes[i])
            new_code = from_pattern(to_pattern(int(codes[i]), 8) ^ masks[i], 8)
            assert int(new[pos]) == new_code
            z_ref[i] = torch.tensor(float(new_code)) * scale
        expected = model.head(z_ref.view_as(z))
    assert torch.equal(faulty, expected)
    handle.remove()


def _chosen_layers_per_forward(model, handle, x, forwards):
    rec = Recorder()
    handle.add_listener(rec)
    chosen = []
    for _ in range(forwards):
        rec.clear()
        with torch.no_grad():
            model(x)
        chosen.append(rec.names)
    return chosen


def test_layer_mode_random_per_run():
    model = mlp()
    x = inputs((2, 6))
    handle = inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", format="int8",
                                      layer_mode="random_per_run", seed=0))
    assert handle.num_sites == 3
    runs = []
    for _ in range(12):
        chosen = _chosen_layers_per_forward(model, handle, x, 3)
        assert all(len(names) == 1 for names in chosen), chosen
        assert chosen[0] == chosen[1] == chosen[2]  # fixed until reset()
        runs.append(chosen[0][0])
        handle.reset()
    assert len(set(runs)) > 1
    assert set(runs) <= {"0:weight", "2:weight", "4:weight"}
    handle.remove()


def test_layer_mode_random_per_forward():
    model = mlp()
    x = inputs((2, 6))
    handle = inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", format="int8",
                                      layer_mode="random_per_forward", seed=0))
    chosen = _chosen_layers_per_forward(model, handle, x, 20)
    assert all(len(names) == 1 for names in chosen), chosen
    assert len({names[0] for names in chosen}) > 1
    handle.remove()


# --------------------------------------------------------------------------------------------
# 5. active_in


@pytest.mark.parametrize("active_in", ["train", "eval", "both"])
def test_active_in(active_in):
    model = float_model()
    x = inputs()
    with torch.no_grad():
        clean = model(x)
    handle = inject(model, InjectSpec(fault=BitFlip(count=4), site="weight", format="int8",
                                      active_in=active_in, seed=0))
    rec = Recorder()
    handle.add_listener(rec)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        rec.clear()
        with torch.no_grad():
            y = model(x)
        should = active_in in (mode, "both")
        assert bool(rec.calls) == should, mode
        assert torch.equal(y, clean) != should, mode
    handle.remove()


# --------------------------------------------------------------------------------------------
# 6. gradients across an activation fault


class Scaled(nn.Module):
    """``y = act(x) * w`` with ``act`` an identity whose output is faulted."""

    def __init__(self, width: int):
        super().__init__()
        self.act = nn.Identity()
        self.w = nn.Parameter(torch.linspace(-1.5, 2.0, width))

    def forward(self, x):
        return self.act(x) * self.w


@pytest.mark.parametrize("gradient", ["ste", "zero_faulty"])
def test_activation_gradient_modes(gradient):
    width = 16
    model = Scaled(width)
    x = inputs((3, width)).requires_grad_(True)
    g = inputs((3, width), seed=5)
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.05), site="output", names=("act",), format="int8",
                                      gradient=gradient, seed=8))
    rec = Recorder()
    handle.add_listener(rec)
    y = model(x)
    (y * g).sum().backward()
    (name, draw, old, new), = rec.calls
    assert name == "act:output" and len(draw) > 0

    # brute force: the faulty activation from the recorded codes (per-tensor int8 calibration)
    xd = x.detach()
    scale = xd.abs().max() / 127
    faulty = xd.clone().reshape(-1)
    for pos, i in enumerate(draw.index.tolist()):
        assert int(old[pos]) == int(torch.clamp(torch.round(xd.reshape(-1)[i] / scale), -128, 127))
        faulty[i] = torch.tensor(float(new[pos])) * scale
    faulty = faulty.view_as(xd)
    assert torch.equal(y.detach(), faulty * model.w.detach())

    # reference: the faulty activation as a constant (plus ``x - x`` to carry the identity gradient)
    x_ref = xd.clone().requires_grad_(True)
    w_ref = model.w.detach().clone().requires_grad_(True)
    y_ref = (faulty + (x_ref - x_ref.detach())) * w_ref
    assert torch.equal(y_ref.detach(), y.detach())
    (y_ref * g).sum().backward()
    expected_x_grad = x_ref.grad.clone()
    hit = torch.zeros(xd.numel(), dtype=torch.bool)
    hit[draw.index] = True
    hit = hit.view_as(xd)
    if gradient == "zero_faulty":
        expected_x_grad[hit] = 0
        assert torch.all(x.grad[hit] == 0)
    assert torch.equal(x.grad, expected_x_grad)
    assert torch.equal(x.grad[~hit], (g * model.w.detach())[~hit])
    assert torch.equal(model.w.grad, w_ref.grad)  # weight sees the faulty activation
    handle.remove()


# --------------------------------------------------------------------------------------------
# 7. per-image faults


def test_per_image_one_bitflip_per_image():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    x = inputs((5, 3, 6, 6))
    handle = inject(model, InjectSpec(fault=BitFlip(count=1), site="output", types=("Conv2d",), format="int8",
                                      per_image=True, seed=3))
    outs = []
    model[0].register_forward_hook(lambda m, a, o: outs.append(o))  # after inject: sees the faulty output
    rec = Recorder()
    handle.add_listener(rec)
    with torch.no_grad():
        handle.disable()
        model(x)
        handle.enable()
        for _ in range(3):
            model(x)
    clean = outs[0]
    scale = clean.abs().max() / 127
    per_image = clean[0].numel()
    for faulty, (_, draw, _, _) in zip(outs[1:], rec.calls):
        assert len(draw) == 5
        assert (draw.index // per_image).tolist() == list(range(5))
        for b in range(5):
            diff = torch.nonzero(clean[b] != faulty[b])
            assert diff.shape[0] == 1, b
            pos = tuple(diff[0].tolist())
            old_code = int(torch.clamp(torch.round(clean[b][pos] / scale), -128, 127))
            new_code = int(torch.round(faulty[b][pos] / scale))
            assert torch.equal(faulty[b][pos], torch.tensor(float(new_code)) * scale)
            flipped = to_pattern(old_code, 8) ^ to_pattern(new_code, 8)
            assert flipped != 0 and flipped & (flipped - 1) == 0, (old_code, new_code)
    assert len(rec.calls) == 3
    handle.remove()


@pytest.mark.parametrize("batch, channels_last", [(1, False), (2, False), (4, False), (5, False), (64, False),
                                                  (1, True), (5, True)])
@pytest.mark.parametrize("fmt", [IntFormat(8), IntFormat(4, rounding="half_up"), IntFormat(8, range="narrow")])
def test_per_image_flip_fast_paths_equal_the_tensor_path(batch, channels_last, fmt):
    """Outside autograd one flip per image runs in Python numbers (batch <= 4) or numpy; with
    autograd recording, in tensor operations. Same seed: the same faulty outputs and records,
    also for channels-last (non-contiguous) activations."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    x = inputs((batch, 3, 6, 6))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        assert not model[0](x).is_contiguous()
    spec = InjectSpec(fault=BitFlip(count=1), site="output", types=("Conv2d",), format=fmt, per_image=True, seed=8)
    runs = []
    for grad in (False, True):
        outs, rec = [], Recorder()
        with inject(model, spec) as handle:
            handle.add_listener(rec)
            # registered after inject: they see the faulty outputs
            hooks = [m.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
                     for m in model if isinstance(m, nn.Conv2d)]
            with torch.set_grad_enabled(grad):
                for _ in range(4):
                    assert model(x).requires_grad == grad
        for hook in hooks:
            hook.remove()
        runs.append((outs, rec.signature()))
    (fast_outs, fast_calls), (tensor_outs, tensor_calls) = runs
    assert fast_calls == tensor_calls
    assert all(torch.equal(a, b) for a, b in zip(fast_outs, tensor_outs))
    clean = model[0](x)
    assert sum(int((o != clean).any()) for o in fast_outs[::2]) > 0  # the faults changed values


# --------------------------------------------------------------------------------------------
# 8. statistics


def test_statistics_float_weight_site_brute_force():
    model = float_model()
    clean_model = copy.deepcopy(model)
    x = inputs()
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.03), site="weight", format="int8", seed=21))
    rec = Recorder()
    handle.add_listener(rec)
    forwards = 3
    with torch.no_grad():
        for _ in range(forwards):
            model(x)
    stats = handle.statistics().to_dict()
    assert set(stats) == {"summary", "layers"}
    for layer_id, module_name in enumerate(["0", "3"]):
        w = dict(clean_model.named_modules())[module_name].weight.detach()
        rows = w.reshape(w.shape[0], -1)
        scale = rows.abs().amax(1) / 127
        clean_codes = torch.round(rows / scale[:, None]).double().reshape(-1)
        calls = [c for c in rec.calls if c[0] == f"{module_name}:weight"]
        assert len(calls) == forwards
        rmses, cosines, changed_total = [], [], 0
        for _, draw, old, new in calls:
            changed = new != old
            changed_total += int(changed.sum())
            d = (new[changed] - old[changed]).double()
            rmses.append(float(torch.sqrt((d ** 2).mean())))
            faulty_codes = clean_codes.clone()
            faulty_codes[draw.index] = new.double()
            cosines.append(float(torch.dot(clean_codes, faulty_codes)
                                 / (clean_codes.norm() * faulty_codes.norm())))
        layer = stats["layers"][str(layer_id)]
        assert layer["name"] == f"{module_name}:weight"
        assert layer["total_activations"] == forwards * w.numel()
        assert layer["forwards"] == forwards
        assert layer["injected_count"] == changed_total
        assert layer["sample_count"] == forwards
        assert layer["avg_rmse"] == pytest.approx(sum(rmses) / forwards, rel=1e-9)
        assert layer["avg_cosine_similarity"] == pytest.approx(sum(cosines) / forwards, rel=1e-9)
    summary = stats["summary"]
    assert summary["num_layers"] == 2
    assert summary["total_activations"] == forwards * (108 + 320)
    assert summary["total_injected"] == sum(int((n != o).sum()) for _, _, o, n in rec.calls)
    text = str(handle.statistics())
    assert "TOTAL" in text
    handle.remove()


def test_statistics_count_forwards_without_faults():
    model = mlp()
    x = inputs((2, 6))
    handle = inject(model, InjectSpec(fault=BitFlip(ber=0.002), site="weight", format="int8",
                                      names=("0",), seed=0))
    rec = Recorder()
    handle.add_listener(rec)
    empty = hit = 0
    forwards = 0
    while forwards < 200 and not (empty and hit):
        before = len(rec.calls)
        with torch.no_grad():
            model(x)
        forwards += 1
        if len(rec.calls) == before:
            empty += 1
        else:
            hit += 1
    assert empty and hit
    layer = handle.statistics().to_dict()["layers"]["0"]
    assert layer["forwards"] == forwards
    assert layer["total_activations"] == forwards * 48
    assert layer["injected_count"] == sum(int((n != o).sum()) for _, _, o, n in rec.calls)
    assert layer["sample_count"] == hit
    handle.reset_statistics()
    assert handle.statistics().to_dict()["summary"]["total_activations"] == 0

    # zero faults by construction still count every value seen
    handle2 = inject(mlp(), InjectSpec(fault=BitFlip(count=0), site="output", types=("ReLU",), format="int8", seed=0))
    with torch.no_grad():
        handle2.model(x)
        handle2.model(inputs((3, 6)))
    summary = handle2.statistics().to_dict()["summary"]
    assert summary["total_injected"] == 0
    assert summary["total_activations"] == 2 * 8 * (2 + 3)
    handle.remove()
    handle2.remove()


# --------------------------------------------------------------------------------------------
# 9. configuration errors


def test_error_selection_matches_nothing():
    model = float_model()
    with pytest.raises(QFaultConfigError) as err:
        inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", format="int8", types=("GRU",)))
    msg = str(err.value)
    assert "types/names" in msg
    for type_name in ("Conv2d", "Linear", "ReLU", "Flatten", "Sequential"):
        assert type_name in msg
    with pytest.raises(QFaultConfigError, match="types/names"):
        inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", format="int8", names=("nope*",)))
    # output site default selection is Brevitas activations only
    with pytest.raises(QFaultConfigError, match="types/names"):
        inject(model, InjectSpec(fault=BitFlip(count=1), site="output", format="int8"))
    assert_clean_module(model)


def test_error_float_site_without_format_and_cleanup():
    model = float_model()
    with pytest.raises(QFaultConfigError) as err:
        inject(model, InjectSpec(fault=BitFlip(count=1), site="weight"))
    assert "format" in str(err.value)
    assert_clean_module(model)
    with pytest.raises(QFaultConfigError, match="format"):
        inject(model, InjectSpec(fault=BitFlip(count=1), site="output", types=("ReLU",)))
    # the second spec fails after the first attached: everything is undone
    with pytest.raises(QFaultConfigError, match="format"):
        inject(model, [InjectSpec(fault=BitFlip(count=1), site="weight", format="int8"),
                       InjectSpec(fault=BitFlip(count=1), site="bias")])
    assert_clean_module(model)


def test_error_indices_out_of_range():
    model = float_model()
    for bad in (2, -3):
        with pytest.raises(QFaultConfigError) as err:
            inject(model, InjectSpec(fault=BitFlip(count=1), site="weight", format="int8", indices=(bad,)))
        assert "indices" in str(err.value)
    assert_clean_module(model)


def test_error_spec_fields():
    with pytest.raises(QFaultConfigError) as err:
        InjectSpec(fault=BitFlip(count=1), site="foo")
    msg = str(err.value)
    assert "site" in msg and "foo" in msg
    for allowed in ("weight", "bias", "output", "input"):
        assert allowed in msg
    with pytest.raises(QFaultConfigError, match="gradient"):
        InjectSpec(fault=BitFlip(count=1), gradient="x")
    with pytest.raises(QFaultConfigError, match="layer_mode"):
        InjectSpec(fault=BitFlip(count=1), layer_mode="sometimes")
    with pytest.raises(QFaultConfigError, match="active_in"):
        InjectSpec(fault=BitFlip(count=1), active_in="never")
    with pytest.raises(QFaultConfigError, match="persistence"):
        InjectSpec(fault=BitFlip(count=1), persistence="forever")
    with pytest.raises(QFaultConfigError, match="seed"):
        InjectSpec(fault=BitFlip(count=1), seed=-1)
    with pytest.raises(QFaultConfigError, match="indices"):
        InjectSpec(fault=BitFlip(count=1), indices=(1.5,))
    with pytest.raises(QFaultConfigError) as err:
        InjectSpec.from_dict({"fault": {"type": "bit_flip", "count": 1}, "site": "weight", "colour": "red"})
    assert "colour" in str(err.value)
    with pytest.raises(QFaultConfigError):
        inject(float_model(), [])


# --------------------------------------------------------------------------------------------
# 10. round trip


ROUND_TRIP_SPECS = [
    InjectSpec(fault=BitFlip(ber=1e-3), site="weight", format="int8", seed=1),
    InjectSpec(fault=BitFlip(count=3, bits=("msb", 0, -2)), site="bias", format=IntFormat(6, signed=False),
               scale=0.25, indices=(0, -1), active_in="train"),
    InjectSpec(fault=BitFlip(sites=((1, 2), (3, 4))), site="output", format="float16",
               types=("Conv2d", "Linear"), names=("a*", "re:b.*"), layer_mode="random_per_run",
               persistence="permanent", active_in="eval", gradient="zero_faulty", seed=7,
               track_statistics=False),
    InjectSpec(fault=LSBFlip(probability=5.0), site="input", format="int4", per_image=True,
               layer_mode="random_per_forward"),
    InjectSpec(fault=StuckAt(rate=1.0, p_one=0.25, bits=("lsb",)), site="weight", format=FixedPoint(8, 3)),
    InjectSpec(fault=RandomValue(probability=2.0), site="output", format=FloatFormat("bfloat16")),
    InjectSpec(fault=MSBFlip(probability=1.0), site="output", persistence="transient"),
]


@pytest.mark.parametrize("spec", ROUND_TRIP_SPECS, ids=range(len(ROUND_TRIP_SPECS)))
def test_inject_spec_round_trip(spec):
    data = spec.to_dict()
    assert isinstance(data["fault"], dict)
    again = InjectSpec.from_dict(data)
    assert again == spec
    assert again.to_dict() == data


def test_inject_spec_accepts_dict_and_name_forms():
    spec = InjectSpec(fault={"type": "bit_flip", "ber": 0.01}, site="weight", format="int8")
    assert spec.fault == BitFlip(ber=0.01)
    assert spec.format == IntFormat(8)
    model = float_model()
    handle = inject(model, spec.to_dict())
    assert handle.num_sites == 2
    handle.remove()


# --------------------------------------------------------------------------------------------
# 11. CPU vs CUDA


class RecordingLinear(nn.Linear):
    """A Linear that keeps the weight it computes with (faulty while injected)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(self.weight.detach().cpu().clone())
        return super().forward(x)


def _faults_on(device: str, spec_weight: InjectSpec, spec_act: InjectSpec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(), RecordingLinear(12, 6)).eval().to(device)
    x = inputs((4, 12)).to(device)
    handle = inject(model, [spec_weight, spec_act])
    rec = Recorder()
    handle.add_listener(rec)
    acts = []
    model[0].register_forward_hook(lambda m, a, o: acts.append(o.detach().cpu()))
    with torch.no_grad():
        for _ in range(2):
            model(x)
    handle.remove()
    calls = [(n, d.index.cpu(), d.mask.cpu(), o.cpu(), nw.cpu()) for n, d, o, nw in rec.calls]
    return calls, acts, model[1].seen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_draw_identical_faults():
    spec_w = InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", seed=13)
    spec_a = InjectSpec(fault=BitFlip(ber=0.02), site="output", names=("0",), format="int8", seed=13)
    cpu_calls, cpu_acts, cpu_weights = _faults_on("cpu", spec_w, spec_a)
    gpu_calls, gpu_acts, gpu_weights = _faults_on("cuda", spec_w, spec_a)
    assert len(cpu_calls) == len(gpu_calls) == 4
    for c, g in zip(cpu_calls, gpu_calls):
        assert c[0] == g[0]
        for a, b in zip(c[1:], g[1:]):
            assert torch.equal(a, b)
    for a, b in zip(cpu_acts, gpu_acts):  # faulty ReLU outputs: the same values
        assert torch.equal(a, b)
    for a, b in zip(cpu_weights, gpu_weights):  # weights seen by the Linear (in-place faults)
        assert torch.equal(a, b)


def _fast_path_faults_on(device: str, batch: int):
    """Faults of the CPU fast paths' cases on ``device``: a weight group of two tensors over
    enough forwards for draws to be made ahead, one flip per image at ``batch``."""
    torch.manual_seed(0)
    model = nn.Sequential(RecordingLinear(12, 8), nn.ReLU(), RecordingLinear(8, 6)).eval().to(device)
    x = inputs((batch, 12)).to(device)
    specs = [InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", seed=3),
             InjectSpec(fault=BitFlip(count=1), site="output", types=("ReLU",), format="int8", per_image=True,
                        seed=4)]
    rec = Recorder()
    acts = []
    with inject(model, specs) as handle:
        handle.add_listener(rec)
        model[1].register_forward_hook(lambda m, a, o: acts.append(o.detach().cpu()))
        with torch.no_grad():
            for _ in range(8):
                model(x)
    calls = [(n, d.index.cpu(), d.mask.cpu(), o.cpu(), nw.cpu()) for n, d, o, nw in rec.calls]
    return calls, acts, model[0].seen + model[2].seen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 9])
def test_cpu_fast_paths_and_cuda_give_identical_faults(batch):
    cpu_calls, cpu_acts, cpu_weights = _fast_path_faults_on("cpu", batch)
    gpu_calls, gpu_acts, gpu_weights = _fast_path_faults_on("cuda", batch)
    assert len(cpu_calls) == len(gpu_calls) == 8 * 3  # 8 forwards: two weights, one activation
    for c, g in zip(cpu_calls, gpu_calls):
        assert c[0] == g[0] and all(torch.equal(a, b) for a, b in zip(c[1:], g[1:]))
    assert len(gpu_acts) == 8 and len(gpu_weights) == 16
    for a, b in zip(cpu_acts + cpu_weights, gpu_acts + gpu_weights):  # faulty activations, weights seen
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# regressions of defects found and fixed


def test_each_spec_seed_fixes_its_own_draws():
    def draws(seed_b):
        model = mlp()
        specs = [InjectSpec(fault=BitFlip(count=3), site="weight", format="int8", names=("0",), seed=1),
                 InjectSpec(fault=BitFlip(count=3), site="weight", format="int8", names=("2",), seed=seed_b)]
        return _record_forwards(model, specs, inputs((2, 6)), forwards=1)

    assert draws(2) != draws(3)


def test_deepcopy_of_injected_model_uses_its_own_weights():
    model = nn.Sequential(nn.Linear(4, 4))
    handle = inject(model, InjectSpec(fault=BitFlip(count=3), site="weight", format="int8", seed=0))
    twin = copy.deepcopy(model)
    handle.disable()
    with torch.no_grad():
        twin[0].weight.zero_()
        twin[0].bias.zero_()
        out = twin(torch.ones(1, 4))  # the twin has all-zero parameters
    handle.remove()
    assert torch.equal(out, torch.zeros(1, 4))


def test_empty_batch_passes_through_an_activation_site():
    model = nn.Sequential(nn.ReLU())
    spec = InjectSpec(fault=BitFlip(count=1), site="output", types=("ReLU",), format="int8", seed=0)
    with inject(model, spec):
        assert model(torch.zeros(0, 4)).shape == (0, 4)
        out = model(torch.ones(2, 4))
    assert int((out != 1).sum()) == 1


def test_bit_positions_outside_the_format_fail_when_the_spec_is_built():
    with pytest.raises(QFaultConfigError, match=r"bits=9 is invalid: allowed positions 0\.\.7"):
        InjectSpec(fault={"type": "bit_flip", "count": 1, "bits": [9]}, site="weight", format="int8")
    with pytest.raises(QFaultConfigError, match="bits=-5"):
        InjectSpec(fault={"type": "bit_flip", "count": 1, "bits": [-5]}, site="output", format="int4")
    assert InjectSpec(fault={"type": "bit_flip", "count": 1, "bits": ["msb", -1, 0]}, format="int4").format.bits == 4


# --------------------------------------------------------------------------------------------
# several specs on one model share one pass per forward


def _per_site_records(model, specs, x, forwards=4, grad=False):
    """``{site name: [(index, mask, old, new), ...]}`` over ``forwards`` forwards, plus the outputs
    and the statistics."""
    handle = inject(model, specs)
    rec = Recorder()
    handle.add_listener(rec)
    outs = []
    for _ in range(forwards):
        with torch.set_grad_enabled(grad):
            outs.append(model(x).detach())
    handle_stats = handle.statistics().to_dict()["layers"]
    handle.remove()
    by_site: dict[str, list] = {}
    for name, draw, old, new in rec.calls:
        by_site.setdefault(name, []).append((draw.index.tolist(), draw.mask.tolist(), old.tolist(), new.tolist()))
    stats = {layer["layer_id"]: layer for layer in handle_stats.values()}
    return by_site, outs, stats


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("persistence", ["transient", "permanent"])
def test_specs_together_fault_as_each_spec_alone(grad, persistence):
    """Specs of several formats, faults and sites in one injection (one pass per format and
    operation): every site gets exactly the faults, codes and statistics it gets when the other
    specs are dormant (``active_in="train"`` in an eval-mode model)."""
    model, x = mlp(), inputs((3, 6))
    specs = [
        InjectSpec(fault=BitFlip(ber=0.03), site="weight", format="int8", names=("0",), seed=1,
                   persistence=persistence),
        InjectSpec(fault=BitFlip(ber=0.02), site="weight", format="int8", names=("2", "4"), seed=2,
                   persistence=persistence),  # two layers drawn jointly
        InjectSpec(fault=BitFlip(ber=0.05), site="weight", format="int8", names=("4",), scale=0.01, seed=3,
                   persistence=persistence),  # a fixed scale, a layer another spec also faults
        InjectSpec(fault=BitFlip(count=3), site="bias", format="int4", seed=4, persistence=persistence),
        InjectSpec(fault=RandomValue(probability=20.0), site="weight", format="int8", names=("2",), seed=5,
                   persistence=persistence),
        InjectSpec(fault=BitFlip(ber=0.01), site="weight", format="float32", names=("0",), seed=6,
                   persistence=persistence),
    ]
    together, outs, stats_together = _per_site_records(copy.deepcopy(model), specs, x, grad=grad)
    expected: dict[str, list] = {}
    for i in range(len(specs)):
        alone_specs = [spec if j == i else dataclasses.replace(spec, active_in="train") for j, spec in enumerate(specs)]
        alone, _, stats_alone = _per_site_records(copy.deepcopy(model), alone_specs, x, grad=grad)
        assert alone, i
        for name, calls in alone.items():
            expected.setdefault(name, []).extend(calls)
        for layer_id, layer in stats_alone.items():
            if layer["forwards"]:  # the sites of spec i
                joint = stats_together[layer_id]
                assert joint["name"] == layer["name"] and joint["injected_count"] == layer["injected_count"]
                assert joint["avg_rmse"] == pytest.approx(layer["avg_rmse"], rel=1e-12)
                assert joint["avg_cosine_similarity"] == pytest.approx(layer["avg_cosine_similarity"], rel=1e-12)
    assert {name: sorted(calls) for name, calls in together.items()} == \
        {name: sorted(calls) for name, calls in expected.items()}
    assert not torch.equal(outs[0], model(x).detach())


def test_per_tensor_granularity_equals_a_spec_per_layer_with_its_scale():
    """One spec calibrated per tensor faults each layer as a spec naming that layer and its
    per-tensor scale (max |w| / code_max) does."""
    model, x = mlp(), inputs((3, 6))
    one = InjectSpec(fault=BitFlip(ber=0.05), site="weight", format="int8", granularity="per_tensor", seed=8,
                     persistence="permanent")
    _, outs_one, _ = _per_site_records(copy.deepcopy(model), [one], x, forwards=1)
    faulty = copy.deepcopy(model)
    with torch.no_grad():
        handle = inject(faulty, one)
        rec = Recorder()
        handle.add_listener(rec)
        faulty(x)
        handle.remove()
    assert len(rec.calls) == 3
    for name, draw, old, new in rec.calls:
        weight = dict(model.named_modules())[name.split(":")[0]].weight.detach()
        scale = weight.abs().max() / 127
        expected_old = torch.clamp(torch.round(weight.reshape(-1)[draw.index] / scale), -128, 127).to(torch.int32)
        assert torch.equal(old, expected_old), name
        assert torch.equal(new, IntFormat(8).xor(old, draw.mask.to(torch.int32))), name
    with pytest.raises(QFaultConfigError, match="granularity"):
        InjectSpec(fault=BitFlip(ber=0.05), site="output", format="int8", granularity="per_tensor")
    with pytest.raises(QFaultConfigError, match="granularity"):
        InjectSpec(fault=BitFlip(ber=0.05), site="weight", format="int8", granularity="per_row")
    assert "granularity" not in InjectSpec(fault=BitFlip(ber=0.05)).to_dict()  # old spec dicts unchanged
    assert InjectSpec.from_dict(one.to_dict()) == one


def test_weight_statistics_follow_an_in_place_weight_update():
    """The clean norm of a weight is kept between forwards only while the weight is unchanged:
    after an optimizer-like in-place update, a forward's statistics are those of the new weights."""
    x = inputs((3, 6))
    spec = InjectSpec(fault=BitFlip(ber=0.05), site="weight", format="int8", names=("0",), seed=3,
                      persistence="permanent", scale=0.01)

    def cosine(model, forwards=1, update_after_first=False):
        handle = inject(model, spec)
        with torch.no_grad():
            for step in range(forwards):
                model(x)
                if update_after_first and step == 0:
                    model[0].weight.mul_(2.0)
        value = handle.statistics().to_dict()["layers"]["0"]["avg_cosine_similarity"]
        handle.remove()
        return value

    before = cosine(mlp())
    doubled = mlp()
    with torch.no_grad():
        doubled[0].weight.mul_(2.0)
    after = cosine(doubled)
    assert before != pytest.approx(after, rel=1e-9)  # the update changes the statistic
    assert cosine(mlp(), forwards=2, update_after_first=True) == pytest.approx((before + after) / 2, rel=1e-12)


@pytest.mark.parametrize("site", ["weight", "output"])
def test_statistics_under_inference_mode(site):
    """Inference tensors carry no version counter: statistics still work, and weights keep theirs."""
    model, x = mlp(), inputs((3, 6))
    spec = InjectSpec(fault=BitFlip(ber=0.05), site=site, format="int8", seed=2,
                      types=("ReLU",) if site == "output" else None)
    with inject(model, spec) as handle, torch.inference_mode():
        model(x)
        model(x)
    layers = handle.statistics().to_dict()["layers"]
    assert all(layer["forwards"] == 2 for layer in layers.values())
    assert sum(layer["injected_count"] for layer in layers.values()) > 0


class _Interrupting(torch.nn.Module):
    """A model whose forward can be interrupted half-way, as Ctrl-C interrupts it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)
        self.interrupt = False

    def forward(self, x):
        x = self.first(x)
        if self.interrupt:
            raise KeyboardInterrupt
        return self.second(x)


@pytest.mark.parametrize("after", ["disable", "forward", "remove", "reset", "enable", "state_dict"])
def test_a_forward_interrupted_by_keyboard_interrupt_leaves_nothing_stale(after):
    model = _Interrupting()
    clean_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 8)
    with torch.no_grad():
        clean = model(x)
        handle = inject(model, InjectSpec(fault=BitFlip(ber=0.2), site="weight", format="int8", seed=1))
        faulty_before = model(x)
        model.interrupt = True
        with pytest.raises(KeyboardInterrupt):
            model(x)
        model.interrupt = False
        if after == "state_dict":  # saving a checkpoint right after the interrupt
            assert all(torch.equal(v, clean_state[k]) for k, v in model.state_dict().items())
        elif after != "forward":
            getattr(handle, after)()
        if after in ("disable", "remove"):
            assert all(torch.equal(v, clean_state[k]) for k, v in model.state_dict().items())
            assert torch.equal(model(x), clean)
        else:
            out = model(x)  # a fresh forward: new faults, set up and undone as usual
            assert not torch.equal(out, clean) and not torch.equal(out, faulty_before)
            assert all(torch.equal(v, clean_state[k]) for k, v in model.state_dict().items())
            handle.disable()
            assert torch.equal(model(x), clean)
        handle.remove()
    assert all(torch.equal(v, clean_state[k]) for k, v in model.state_dict().items())


def test_a_bad_regular_expression_in_names_is_a_config_error():
    with pytest.raises(QFaultConfigError, match=r"names='re:\(\(' is invalid: allowed shell globs or 're:<regex>' "
                                                r"with a valid regular expression \(missing \)"):
        InjectSpec(fault=BitFlip(ber=0.1), names=("conv*", "re:(("))
    assert InjectSpec(fault=BitFlip(ber=0.1), names=("re:layer[0-9]+",)).names == ("re:layer[0-9]+",)


@pytest.mark.parametrize("fault", ["random_value", "lsb_flip", "msb_flip", "full_flip"])
@pytest.mark.parametrize("fmt", ["int8", "uint4", "int4"])
@pytest.mark.parametrize("site, granularity", [("weight", "per_channel"), ("weight", "per_tensor"),
                                               ("output", None)])
def test_element_faults_are_the_same_outside_and_under_autograd(fault, fmt, site, granularity):
    """The same seed gives the same faulted forward whether the numpy codec (no autograd) or the
    torch codec (autograd recording) computes it, for weights and activations."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5))
    x = torch.randn(8, 30)
    spec = InjectSpec(fault={"type": fault, "probability": 20.0}, site=site, format=fmt, seed=3,
                      granularity=granularity, names=("1",) if site == "output" else None)  # the ReLU's output
    outs = []
    for grad in (False, True):
        with inject(model, [spec]), torch.set_grad_enabled(grad):
            outs.append(model(x))
    clean = model(x)
    assert torch.equal(outs[0], outs[1].detach())
    assert not torch.equal(outs[0], clean.detach())
