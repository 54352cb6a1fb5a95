"""Applying drawn faults is a pure tensor program: it compiles with fullgraph=True."""

import torch

from qfault.faults import BitFlip, RandomValue, StuckAt, apply_draw, draw_faults, make_generator
from qfault.formats import FloatFormat, IntFormat


def test_apply_draw_compiles_fullgraph_and_matches_eager():
    fmt = IntFormat(8)
    x = torch.randn(16, 32)
    scale = x.abs().amax(dim=1) / 127
    for fault in (BitFlip(ber=0.05), StuckAt(rate=5.0), RandomValue(probability=10.0)):
        draw = draw_faults(fault, x.shape, fmt, make_generator(0, type(fault).__name__))

        def run(x, scale):
            return apply_draw(x, fmt, draw, scale=scale, zero_point=0, axis=0, check=False)[0]

        compiled = torch.compile(run, fullgraph=True, backend="eager")
        assert torch.equal(compiled(x, scale), run(x, scale))


def test_apply_draw_on_ieee_bits_compiles_fullgraph():
    fmt = FloatFormat("float32")
    x = torch.randn(64)
    draw = draw_faults(BitFlip(count=5), x.shape, fmt, make_generator(1))

    def run(x):
        return apply_draw(x, fmt, draw, check=False)[0]

    compiled = torch.compile(run, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), run(x))
