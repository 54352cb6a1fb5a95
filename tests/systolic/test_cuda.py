"""The systolic fast path on CUDA equals the CPU result (same code, same bits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qfault.systolic import ArrayConfig, ArrayFault, SystolicArray, SystolicConv2d, SystolicLinear, list_dataflows

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.cpu().contiguous()
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


@pytest.mark.parametrize("dataflow", list_dataflows())
@pytest.mark.parametrize("in_dtype", ["int8", "int16", "int32", "float16", "float32", "float64"])
def test_matmul_on_cuda_equals_cpu(dataflow, in_dtype):
    rng = np.random.default_rng(0)
    array = SystolicArray(ArrayConfig(5, 6, 7, dataflow, in_dtype, tiling=True))
    dtype = getattr(torch, in_dtype)
    if dtype.is_floating_point:
        a, b = torch.randn(9, 11).to(dtype), torch.randn(11, 8).to(dtype)
    else:
        a, b = torch.randint(-100, 100, (9, 11)).to(dtype), torch.randint(-100, 100, (11, 8)).to(dtype)
    pes = array.pes()
    for line in "abc":
        for polarity in (0, 1, 2):
            array.clear_faults()
            x, y = pes[rng.integers(len(pes))]
            array.add_fault(ArrayFault(line, x, y, int(rng.integers(array.widths[line])), polarity))
            cpu = array.matmul(a, b)
            cuda = array.matmul(a.cuda(), b.cuda())
            reached = torch.zeros(9, 8, dtype=torch.bool)
            plan = array.plan((9, 11, 8))
            reached[plan.rows, plan.cols] = True
            assert torch.equal(_bits(cpu)[reached], _bits(cuda)[reached])  # recomputed: bit-exact
            if not dtype.is_floating_point:
                assert torch.equal(cpu, cuda.cpu())
            else:  # clean outputs: each device's own matmul
                torch.testing.assert_close(cpu[~reached], cuda.cpu()[~reached], rtol=1e-2, atol=1e-2)


def test_layers_on_cuda_equal_cpu():
    conv, linear = nn.Conv2d(2, 3, 3, padding=1).double(), nn.Linear(12, 5).double()
    array = SystolicArray(ArrayConfig(6, 6, 32, "row_stationary", "float64", tiling=True))
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    layers = [SystolicConv2d(conv, array), SystolicLinear(linear, array)]
    array.add_fault(ArrayFault("c", 2, -3, 12, 2, channel=1))
    for layer, inputs in zip(layers, (x, torch.randn(7, 12, dtype=torch.float64))):
        cpu = layer(inputs)
        layer.cuda()
        assert torch.allclose(cpu, layer(inputs.cuda()).cpu(), rtol=1e-12, atol=1e-12)
        layer.cpu()
