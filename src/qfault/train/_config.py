"""Seed 001's YAML configuration as validated frozen dataclasses.

The ``fault_injection`` section has every key of the seed's reference with its documented meaning
and default; the surrounding sections of its examples (``seed``, ``dataset``, ``model``,
``quantization``, ``training``, ``optimizer``, ``scheduler``, ``checkpoint``) configure
``qfault train``. :meth:`FatConfig.from_yaml` goes through the one config path
(:func:`qfault.config.load_config`: YAML plus ``key=value`` overrides) and reports every bad field
at once, each by its dotted name with the allowed values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._errors import QFaultConfigError, check_bool, check_choice, check_range
from ..config import ConfigErrors, check_dataclass, load_config

INJECTION_TYPES = ("random", "lsb_flip", "msb_flip", "full_flip")
#: the core fault model of each seed ``injection_type``
FAULT_MODELS = {"random": "random_value", "lsb_flip": "lsb_flip", "msb_flip": "msb_flip", "full_flip": "full_flip"}
MODES = ("full_model", "layer")
PHASES = ("train", "eval", "both")
GRADIENT_MODES = ("ste", "zero_faulty")
OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULERS = ("cosine", "step", "none")


@dataclass(frozen=True)
class FaultInjectionConfig:
    """Seed 001's ``fault_injection`` section.

    Args:
        enabled: master switch (no faults at all when false).
        probability: percent of activation values hit, per element (0-100).
        mode: ``full_model`` (every injection layer) or ``layer`` (one).
        injection_layer: the layer of ``layer`` mode (0-based, in model order; -1: a random one,
            drawn again for every run and every training epoch).
        injection_type: ``random``, ``lsb_flip``, ``msb_flip`` or ``full_flip``.
        apply_during: ``train``, ``eval`` or ``both``.
        epoch_interval: faults in training epochs 0, N, 2N, ... only.
        step_interval: share of faulty training steps (0-1), the faulty steps drawn at random at
            the start of each faulty epoch; 0 disables training faults.
        seed: seed of every fault drawn (None: drawn from the run's seed).
        track_statistics: per-layer statistics (injected, total, rate, RMSE, cosine similarity).
        verbose: print what is injected.
        hw_mask: a periodic hardware pattern over ``frequency_value`` MAC units instead of
            independent elements.
        frequency_value: the pattern's period (parallel MAC units).
        gradient_mode: ``ste`` (gradients pass unchanged) or ``zero_faulty`` (zero at faulty
            positions).
    """

    enabled: bool = False
    probability: float = 5.0
    mode: str = "full_model"
    injection_layer: int = -1
    injection_type: str = "random"
    apply_during: str = "train"
    epoch_interval: int = 1
    step_interval: float = 0.5
    seed: int | None = None
    track_statistics: bool = True
    verbose: bool = False
    hw_mask: bool = False
    frequency_value: int = 1024
    gradient_mode: str = "ste"

    def __post_init__(self) -> None:
        where = "fault_injection."
        check_bool(where + "enabled", self.enabled)
        check_range(where + "probability", self.probability, 0.0, 100.0)
        check_choice(where + "mode", self.mode, MODES)
        check_range(where + "injection_layer", self.injection_layer, -1, 10**6, integer=True)
        check_choice(where + "injection_type", self.injection_type, INJECTION_TYPES)
        check_choice(where + "apply_during", self.apply_during, PHASES)
        check_range(where + "epoch_interval", self.epoch_interval, 1, 10**6, integer=True)
        check_range(where + "step_interval", self.step_interval, 0.0, 1.0)
        if self.seed is not None:
            check_range(where + "seed", self.seed, 0, 2**63 - 1, integer=True)
        for name in ("track_statistics", "verbose", "hw_mask"):
            check_bool(where + name, getattr(self, name))
        check_range(where + "frequency_value", self.frequency_value, 1, 2**31, integer=True)
        check_choice(where + "gradient_mode", self.gradient_mode, GRADIENT_MODES)

    @classmethod
    def from_dict(cls, data: dict) -> "FaultInjectionConfig":
        """The section from a mapping (every bad key reported at once)."""
        return check_dataclass(cls, data, where="fault_injection")

    def validate(self) -> None:
        """Checked when built: kept for the seed's API (``config.validate()``)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SeedConfig:
    """``seed: {enabled, value, deterministic}``: the run's seed (data order, initialisation,
    faults when ``fault_injection.seed`` is null) and deterministic kernels."""

    enabled: bool = True
    value: int = 42
    deterministic: bool = False

    def __post_init__(self) -> None:
        check_bool("seed.enabled", self.enabled)
        check_range("seed.value", self.value, 0, 2**63 - 1, integer=True)
        check_bool("seed.deterministic", self.deterministic)


@dataclass(frozen=True)
class ModelConfig:
    """``model: {name, kwargs}``: a registered model (``qfault ls models``; the name is checked
    against the registry when the run builds it, before anything is written)."""

    name: str = "digits_cnn"
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise QFaultConfigError("model.name", self.name, "a registered model name")
        if not isinstance(self.kwargs, dict):
            raise QFaultConfigError("model.kwargs", self.kwargs, "a mapping of the builder's arguments")


@dataclass(frozen=True)
class QuantizationConfig:
    """``quantization: {weight_bit_width, act_bit_width}`` (passed to models that take them)."""

    weight_bit_width: int | None = None
    act_bit_width: int | None = None

    def __post_init__(self) -> None:
        for name in ("weight_bit_width", "act_bit_width"):
            value = getattr(self, name)
            if value is not None:
                check_range(f"quantization.{name}", value, 1, 32, integer=True)


@dataclass(frozen=True)
class TrainingConfig:
    """``training: {batch_size, epochs}``."""

    batch_size: int = 64
    epochs: int = 10

    def __post_init__(self) -> None:
        check_range("training.batch_size", self.batch_size, 1, 10**6, integer=True)
        check_range("training.epochs", self.epochs, 1, 10**6, integer=True)


@dataclass(frozen=True)
class OptimizerConfig:
    """``optimizer: {name: adam|sgd|adamw, learning_rate, weight_decay, momentum}``."""

    name: str = "adam"
    learning_rate: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        check_choice("optimizer.name", self.name, OPTIMIZERS)
        check_range("optimizer.learning_rate", self.learning_rate, 0.0, 1e3)
        check_range("optimizer.weight_decay", self.weight_decay, 0.0, 1e3)
        check_range("optimizer.momentum", self.momentum, 0.0, 1.0)


@dataclass(frozen=True)
class SchedulerConfig:
    """``scheduler: {name: cosine|step|none, T_max, step_size, gamma}`` (stepped once per epoch;
    ``T_max`` null: the number of epochs)."""

    name: str = "cosine"
    T_max: int | None = None  # noqa: N815 - the seed's key
    step_size: int = 30
    gamma: float = 0.1

    def __post_init__(self) -> None:
        check_choice("scheduler.name", self.name, SCHEDULERS)
        if self.T_max is not None:
            check_range("scheduler.T_max", self.T_max, 1, 10**6, integer=True)
        check_range("scheduler.step_size", self.step_size, 1, 10**6, integer=True)
        check_range("scheduler.gamma", self.gamma, 0.0, 1.0)


@dataclass(frozen=True)
class CheckpointConfig:
    """``checkpoint: {enabled, dir, save_best}``: ``last.pt`` after every epoch and ``best.pt``
    at the best validation accuracy, in ``dir``."""

    enabled: bool = True
    dir: str = "./experiments"
    save_best: bool = True

    def __post_init__(self) -> None:
        check_bool("checkpoint.enabled", self.enabled)
        if not isinstance(self.dir, str) or not self.dir:
            raise QFaultConfigError("checkpoint.dir", self.dir, "a folder path")
        check_bool("checkpoint.save_best", self.save_best)


#: fields that do not change what a run computes (left out of the fingerprint)
NON_SEMANTIC = ("checkpoint", "name")


@dataclass(frozen=True)
class FatConfig:
    """A whole ``qfault train`` / ``qfault evaluate`` configuration (seed 001's YAML layout).

    ``dataset`` is a data set name or ``{name, root, ...}`` (``qfault.data.build_dataset``;
    local folders only, the embedded ``digits`` by default).
    """

    name: str = "fat"
    seed: SeedConfig = field(default_factory=SeedConfig)
    dataset: Any = "digits"
    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault_injection: FaultInjectionConfig = field(default_factory=FaultInjectionConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise QFaultConfigError("name", self.name, "a non-empty string")
        if not isinstance(self.dataset, (str, dict)):
            raise QFaultConfigError("dataset", self.dataset, "a data set name or {name, root, ...}")
        for key, cls in (("seed", SeedConfig), ("model", ModelConfig), ("quantization", QuantizationConfig),
                         ("training", TrainingConfig), ("optimizer", OptimizerConfig),
                         ("scheduler", SchedulerConfig), ("checkpoint", CheckpointConfig),
                         ("fault_injection", FaultInjectionConfig)):
            value = getattr(self, key)
            if isinstance(value, dict):
                object.__setattr__(self, key, cls(**value))
            elif not isinstance(value, cls):
                raise QFaultConfigError(key, value, f"a mapping of {cls.__name__} fields")

    @classmethod
    def from_dict(cls, data: Any) -> "FatConfig":
        """Every bad field at once (a :class:`~qfault.config.ConfigErrors`)."""
        if not isinstance(data, dict):
            raise QFaultConfigError("config", type(data).__name__, "a mapping of configuration sections")
        errors = ConfigErrors()
        config = check_dataclass(cls, data, errors=errors)
        errors.raise_if_any()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "FatConfig":
        """Load a YAML file with ``key=value`` overrides (``fault_injection.probability=10``)."""
        data = load_config(Path(path), overrides, what="config")
        try:
            return cls.from_dict(data)
        except ConfigErrors as exc:
            exc.source = str(path)
            raise

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    def fingerprint(self) -> str:
        """SHA-256 of the fields that change what training computes."""
        data = {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
