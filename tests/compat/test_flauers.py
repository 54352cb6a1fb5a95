"""flauers' API (``qfault.compat.flauers``): the tutorial's cells give the tutorial's values, and
the translation onto qfault's systolic core holds against brute-force references."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfault.compat.flauers.torch  # noqa: F401 - the tutorial's ``import flauers.torch``
from qfault import QFaultConfigError
from qfault.compat import flauers
from qfault.systolic import ArrayFault

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flauers_tutorial.py"

A = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
B = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])


def float_array(n1=10, n2=10, n3=10, T=flauers.projection_matrices.output_stationary):
    return flauers.SystolicArray(n1, n2, n3, T, in_dtype=np.float32)


# ------------------------------------------------------------------ (1) matmul cells
def test_default_matmul_is_int8_exact():
    C = flauers.matmul(A, B)
    assert isinstance(C, np.ndarray) and C.dtype == np.int32
    assert np.array_equal(C, A @ B)
    assert np.array_equal(flauers.matmul(A.astype(np.float32), B.astype(np.float32)), A @ B)


def test_half_values_raise_the_casting_error():
    with pytest.raises(flauers.exceptions.CastingError) as info:
        flauers.matmul(A * 0.5, B * 0.5)
    assert isinstance(info.value, QFaultConfigError)
    assert info.value.field == "A" and "int8" in str(info.value) and "float64" in str(info.value)


def _stuck_c_reference(a: np.ndarray, b: np.ndarray, position: int) -> np.float32:
    """C[0, 0] of an output-stationary array whose PE (1, 1) has bit ``position`` (from the LSB)
    of register c stuck at 1: float32 multiply, float32 add, then the mask, for each k."""
    c = np.float32(0)
    for k in range(a.shape[1]):
        c = np.float32(c + np.float32(np.float32(a[0, k]) * np.float32(b[k, 0])))
        c = np.array(c).view(np.int32) | np.int32(1 << position)
        c = c.view(np.float32)[()]
    return c


def test_tutorial_stuck_at_on_c_gives_710_75_and_nothing_else():
    hw = float_array()
    a, b = A * 0.5, B * 0.5
    golden = hw.matmul(a, b)
    assert golden.dtype == np.float32 and np.array_equal(golden, a @ b)
    f = flauers.fault_models.StuckAt(x=1, y=1, line="c", bit=5, polarity=1)
    fault_id = hw.add_fault(f)
    assert hw.fault_list == {fault_id: f}
    faulty = hw.matmul(a, b)
    assert faulty[0, 0] == np.float32(710.75) == _stuck_c_reference(a, b, 31 - 5)
    same = (a @ b) == faulty
    assert not same[0, 0] and same.sum() == same.size - 1
    hw.clear_all_faults()
    assert hw.fault_list == {} and np.array_equal(hw.matmul(a, b), golden)
    again = hw.add_fault(f)
    hw.clear_single_fault(again)
    assert np.array_equal(hw.matmul(a, b), golden)


def test_tensors_in_tensors_out_and_msb_last():
    hw = float_array()
    f = flauers.fault_models.Fault("c", 1, 1, "inf", bit=31 - 5, polarity=1, msb="last")
    hw.add_fault(f)
    out = hw.matmul(torch.tensor(A * 0.5), torch.tensor(B * 0.5))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out[0, 0].item() == 710.75


def test_fault_translation():
    f = flauers.fault_models.StuckAt("b", x=2, y=3, bit=7, polarity=0)
    assert f.line is flauers.utils.LineType.b and f.line.name == "b"
    assert (f.t_start, f.t_stop, f.should_reverse_bits) == (0, float("inf"), True)
    assert f.to_array_fault(4) == ArrayFault("b", 2, 3, 7, 0, 0, None, "first", 4)
    timed = flauers.fault_models.Fault(flauers.utils.LineType.a, 1, 2, (3, 9), 0, 1, msb="last")
    assert timed.to_array_fault() == ArrayFault("a", 1, 2, 0, 1, 3, 9, "last")
    assert [m.name for m in flauers.utils.LineType] == ["b", "a", "c"]
    with pytest.raises(flauers.exceptions.InjectionError):
        flauers.fault_models.StuckAt("d", x=1, y=1, bit=0, polarity=1)


def test_refused_faults_and_shapes_raise_flauers_errors():
    hw = float_array(3, 3, 3)
    with pytest.raises(flauers.exceptions.InjectionError, match=r"\(x, y\)") as info:
        hw.add_fault(flauers.fault_models.StuckAt("a", x=4, y=1, bit=0, polarity=1))
    assert isinstance(info.value, QFaultConfigError) and hw.fault_list == {}
    with pytest.raises(flauers.exceptions.InjectionError, match="bit"):
        hw.add_fault(flauers.fault_models.StuckAt("a", x=1, y=1, bit=32, polarity=1))
    with pytest.raises(flauers.exceptions.DimensionError, match="N1"):
        hw.matmul(np.ones((4, 3)), np.ones((3, 3)))
    with pytest.raises(flauers.exceptions.DimensionError):
        hw.matmul(np.ones((3, 2)), np.ones((3, 3)))
    assert np.array_equal(hw.matmul(A * 0.5, B * 0.5, tiling=True), (A * 0.5) @ (B * 0.5))
    with pytest.raises(flauers.exceptions.WrongDtypeError) as dtype_info:
        flauers.SystolicArray(3, 3, 3, flauers.projection_matrices.output_stationary, in_dtype=np.uint8)
    assert isinstance(dtype_info.value, QFaultConfigError)
    assert flauers.SystolicArray(2, 2, 2, flauers.projection_matrices.output_stationary,
                                 in_dtype=np.int16).mac_dtype == np.dtype(np.int64)


@pytest.mark.parametrize("name", flauers.projection_matrices.__all__)
def test_physical_mapping_holds_every_pe_and_iteration(name):
    T = getattr(flauers.projection_matrices, name)
    hw = flauers.SystolicArray(3, 4, 2, T)
    expected: dict = {}
    for i in range(1, 4):
        for j in range(1, 5):
            for k in range(1, 3):
                x, y, t = (int(v) for v in T @ np.array([i, j, k]))
                expected.setdefault((x, y), []).append(((i, j, k), t))
    assert hw.physical_mapping == expected
    assert list(hw.physical_mapping) == list(expected) == hw.space_projection()
    for x, y in hw.physical_mapping:  # every key is a PE the array accepts
        hw.add_fault(flauers.fault_models.StuckAt("c", x=x, y=y, bit=0, polarity=1))
    assert len(hw.fault_list) == len(expected)


# --------------------------------------------------------------- (2) convolution cells
def _xcorr(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    oh, ow = x.shape[0] - k.shape[0] + 1, x.shape[1] - k.shape[1] + 1
    return np.array([[(x[r:r + k.shape[0], c:c + k.shape[1]] * k).sum() for c in range(ow)] for r in range(oh)])


def test_convolution_cells():
    x = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    k = np.array([[1, 1], [1, 1]])
    expected = np.array([[12, 16], [24, 28]])
    assert np.array_equal(_xcorr(x, k), expected)
    C = flauers.convolve(x, k)
    assert C.dtype == np.int32 and np.array_equal(C, expected)
    hw = float_array()
    assert np.array_equal(flauers.convolve_with_array(x, k, array=hw), expected)
    im2col = flauers.lowerings.S_Im2Col(x.shape, k.shape)
    x_low, k_low = im2col.lower_activation(x), im2col.lower_kernel(k)
    assert x_low.tolist() == [[1, 4, 2, 5, 3, 6], [4, 7, 5, 8, 6, 9]]
    assert k_low.tolist() == [[1, 0], [1, 0], [1, 1], [1, 1], [0, 1], [0, 1]]
    assert (im2col.lowered_activation_shape, im2col.lowered_kernel_shape) == ((2, 6), (6, 2))
    assert np.array_equal(im2col.lift(hw.matmul(x_low, k_low)), expected)


def test_im2col_matches_cross_correlation_on_random_inputs():
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 6, size=(7, 7))
    k = rng.integers(-3, 4, size=(3, 3))
    im2col = flauers.lowerings.S_Im2Col(x.shape, k.shape)
    assert np.array_equal(im2col.lift(im2col.lower_activation(x) @ im2col.lower_kernel(k)), _xcorr(x, k))
    assert np.array_equal(flauers.convolve(x, k), _xcorr(x, k))
    with pytest.raises(flauers.lowerings.ShapeError):
        flauers.lowerings.S_Im2Col((2, 2), (3, 3))


# ----------------------------------------------------------------- (3) torch layers
class SmallLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.fc1 = nn.Linear(4 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _integer_model(seed=0):
    torch.manual_seed(seed)
    model = SmallLeNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape).float())
    return model.eval()


def test_replaced_model_equals_the_original_without_faults():
    model = _integer_model()
    x = torch.randint(0, 4, (7, 1, 8, 8)).float()  # batch 7 > N1: the linear layers tile
    with torch.no_grad():
        golden = model(x)
    names = flauers.torch.compatible_layers(model)
    assert names == ["conv1", "conv2", "fc1", "fc2"]
    hw = flauers.SystolicArray(6, 6, 24, flauers.projection_matrices.output_stationary, in_dtype=np.float32)
    assert flauers.torch.replace_layers(model, names, hardware=hw) is model
    assert type(model.conv1).__name__ == "SystolicConv2d" and type(model.fc1).__name__ == "SystolicLinear"
    with torch.no_grad():
        assert torch.equal(model(x), golden)
    with pytest.raises(QFaultConfigError, match="names"):
        flauers.torch.replace_layers(_integer_model(), ["conv3"], hardware=hw)


def test_layer_fault_on_one_channel_changes_only_that_channel():
    reference = _integer_model()
    model = _integer_model()
    hw = float_array(6, 6, 24)
    flauers.torch.replace_layers(model, ["conv1", "conv2"], hardware=hw)
    x = torch.randint(0, 4, (2, 1, 8, 8)).float()
    outputs = {}
    model.conv1.register_forward_hook(lambda m, i, o: outputs.__setitem__("conv1", o))
    with torch.no_grad():
        golden = reference.conv1(x)
        fault = flauers.fault_models.StuckAt("c", x=1, y=1, bit=5, polarity=1)
        for layer in (model.conv1, model.conv2):  # the tutorial's campaign loop
            layer.clear_faults()
            layer.add_fault(fault, 1)
        assert len(hw.fault_list) == 1 and len(hw.core.faults) == 1  # added once to the shared array
        model(x)
    changed = (outputs["conv1"] != golden).any(dim=(0, 2, 3))
    assert changed.tolist() == [False, True, False]
    # the faulty channel is the bias plus the faulty lowered products, summed over input channels
    im2col = flauers.lowerings.S_Im2Col((8, 8), (3, 3))
    w = reference.conv1.weight.detach()
    for image in range(2):
        total = reference.conv1.bias.detach()[1].expand(6, 6).clone()
        low = im2col.lower_activation(x[image, 0])
        total = total + im2col.lift(hw.matmul(low, im2col.lower_kernel(w[1, 0])))
        assert torch.equal(outputs["conv1"][image, 1], total)
    model.conv2.clear_faults()
    assert hw.fault_list == {}
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


# ------------------------------------------------------------------ (4) the tutorial
def _run_example(workdir: Path, faults: int) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--faults", str(faults), "--workdir", str(workdir),
                             "--train-seconds", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_tutorial_script_runs_and_resumes(tmp_path):
    first = _run_example(tmp_path, 2)
    assert "model accuracy is" in first.stdout and "CastingError" in first.stdout
    assert "710.75" in first.stdout
    path = tmp_path / "results" / "lenet.mnist.os.csv"
    with path.open() as f:
        header = next(csv.reader(f))
    assert header == ["fault_seed", "dataset_seed", "dataset_index", "line", "channel", "row", "col", "bit",
                      "polarity", "ftype"]
    second = _run_example(tmp_path, 3)
    assert "Next seed will be 2" in second.stdout
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert Counter(r["fault_seed"] for r in rows) == {"0": 100, "1": 100, "2": 100}
    assert {r["line"] for r in rows} <= {"a", "b", "c"} and {r["ftype"] for r in rows} <= {"0", "1", "2"}


# ------------------------------------------------------------- (5) the names it uses
def _resolve(dotted: str):
    obj = {"flauers": flauers}[dotted.split(".")[0]]
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def test_every_name_the_tutorial_uses_exists():
    used = set(re.findall(r"\bflauers(?:\.\w+)+", EXAMPLE.read_text()))
    assert {"flauers.matmul", "flauers.SystolicArray", "flauers.convolve", "flauers.convolve_with_array",
            "flauers.lowerings.S_Im2Col", "flauers.fault_models.StuckAt", "flauers.exceptions.CastingError",
            "flauers.projection_matrices.output_stationary", "flauers.torch.compatible_layers",
            "flauers.torch.replace_layers"} <= used
    for name in sorted(used):
        assert _resolve(name) is not None, name
    hw = float_array()
    for attribute in ("N1", "N2", "N3", "T", "in_dtype", "mac_dtype", "fault_list", "physical_mapping",
                      "space_projection", "add_fault", "clear_all_faults", "clear_single_fault", "matmul"):
        assert hasattr(hw, attribute), attribute
    f = flauers.fault_models.StuckAt("a", x=1, y=1, bit=0, polarity=1)
    for attribute in ("x", "y", "bit", "polarity", "line", "t_start", "t_stop", "should_reverse_bits"):
        assert hasattr(f, attribute), attribute
    im2col = flauers.lowerings.S_Im2Col((3, 3), (2, 2))
    for attribute in ("lower_activation", "lower_kernel", "lift", "lowered_activation_shape",
                      "lowered_kernel_shape"):
        assert hasattr(im2col, attribute), attribute
    layer = flauers.torch.SystolicConv2d(1, 2, 3, hardware=hw)
    assert callable(layer.add_fault) and callable(layer.clear_faults)
    for error in ("CastingError", "DimensionError", "InjectionError", "WrongDtypeError"):
        assert issubclass(getattr(flauers.exceptions, error), QFaultConfigError)
