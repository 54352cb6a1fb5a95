"""Fault-aware training of Brevitas models (seed 001): its YAML configuration and schedule.

:class:`FatConfig` is seed 001's configuration (the ``fault_injection`` section with every
documented key, and the ``seed``, ``dataset``, ``model``, ``quantization``, ``training``,
``optimizer``, ``scheduler`` and ``checkpoint`` sections of its examples), validated with every
bad field reported at once. :func:`train_fat` trains a model with the documented schedule
(``epoch_interval``, faulty steps drawn at each epoch's start with probability ``step_interval``,
``apply_during``), faults in the integer codes of the Brevitas activation quantizers drawn afresh
on every faulty forward, gradients by ``gradient_mode``; checkpoints every epoch and resumes to
the same weights as an uninterrupted run. ``qfault train --config FILE`` runs it.
"""

from ._config import (
    FAULT_MODELS,
    INJECTION_TYPES,
    CheckpointConfig,
    FatConfig,
    FaultInjectionConfig,
    ModelConfig,
    OptimizerConfig,
    QuantizationConfig,
    SchedulerConfig,
    SeedConfig,
    TrainingConfig,
)
from ._trainer import (
    EpochMetrics,
    TrainResult,
    evaluate_accuracy,
    fault_seed,
    fault_specs,
    faulty_steps,
    run_seed,
    train_fat,
)

__all__ = [
    "FatConfig", "FaultInjectionConfig", "SeedConfig", "ModelConfig", "QuantizationConfig", "TrainingConfig",
    "OptimizerConfig", "SchedulerConfig", "CheckpointConfig", "INJECTION_TYPES", "FAULT_MODELS",
    "train_fat", "TrainResult", "EpochMetrics", "fault_specs", "faulty_steps", "evaluate_accuracy", "run_seed",
    "fault_seed",
]
