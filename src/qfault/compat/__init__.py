"""The APIs of the reference tools, translated to qfault's core so that their users' scripts run
with only their import lines changed. One module per tool; no logic of its own beyond the
translation (see docs/differences.md for where qfault deliberately differs).

- :mod:`qfault.compat.rfq`: seed 004's fault injector for LSQ mixed-precision models
  (``util.fault_injector``, ``util.qat.set_bit_width``).
- :mod:`qfault.compat.fkeras`: FKeras' fixed-point bit flips (``fkeras.utils``) and QKeras'
  ``quantized_bits``, on PyTorch tensors (seed 002).
- :mod:`qfault.compat.fat`: seed 001's fault-injection API (``utils.fault_injection``:
  ``FaultInjectionConfig``, ``FaultInjector``, ``FaultStatistics``, the strategies) on
  ``qfault.inject`` and ``qfault.train``.
- :mod:`qfault.compat.flauers`: flauers' systolic-array simulator (``flauers``,
  ``flauers.torch``) on :mod:`qfault.systolic` (seed 003).
"""
