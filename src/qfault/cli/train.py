"""``qfault train --config FILE [key=value ...]``: fault-aware training of a Brevitas model (seed 001).

The config is seed 001's YAML layout (:class:`~qfault.train.FatConfig`; template
``qfault cp fat_digits.yaml .``). The model comes from the registry (``model.name``, with the
``quantization`` bit widths and the data set's channels, image size and classes passed to
builders that take them), the data from ``dataset`` (local folders; the embedded digits by
default). Files go to ``<checkpoint.dir>/<name>/``: ``last.pt`` every epoch, ``best.pt``,
``metrics.csv``, ``curves.png``; ``--resume`` continues from ``last.pt``.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

#: builder argument names of the quantization widths, by config key
_WIDTH_NAMES = {"weight_bit_width": ("weight_bit_width", "weight_bits"), "act_bit_width": ("act_bit_width", "act_bits")}


class Train:
    name = "train"
    help = "fault-aware training of a Brevitas model from seed 001's YAML config"
    description = ("Train a registered Brevitas model with activation faults on the schedule of seed 001's "
                   "fault_injection section (epoch_interval, step_interval drawn per epoch, apply_during, "
                   "gradient_mode). Checkpoints every epoch (model, optimizer, scheduler, epoch, RNG state, "
                   "config), best.pt, metrics.csv and curves.png under <checkpoint.dir>/<name>/; --resume "
                   "continues to the same final weights as an uninterrupted run. Template: "
                   "qfault cp fat_digits.yaml .")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="the training config (YAML, seed 001's layout)")
        parser.add_argument("overrides", nargs="*", metavar="key=value",
                            help="override config fields (dotted keys: fault_injection.probability=10)")
        parser.add_argument("--resume", action="store_true", help="continue from <checkpoint.dir>/<name>/last.pt")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        from ..train import FatConfig, train_fat

        config = FatConfig.from_yaml(args.config, args.overrides)
        import torch

        from ..faults import derive_seed
        from ..train import run_seed

        train_set, val_set = build_datasets(config)
        with torch.random.fork_rng(devices=[]):  # the initial weights follow the run's seed
            torch.manual_seed(derive_seed(run_seed(config), "init") >> 1)
            model = build_fat_model(config, train_set)
        out = Path(config.checkpoint.dir) / config.name if config.checkpoint.enabled else None
        result = train_fat(model, train_set, val_set, config, out_dir=out, resume=args.resume,
                           progress=not args.no_progress)
        _print_history(config, result)
        if result.files:
            print("Wrote " + ", ".join(str(p) for p in result.files))
        return 0


def build_datasets(config: Any) -> tuple[Any, Any]:
    """The training and validation splits of ``config.dataset``."""
    from ..data import build_dataset

    spec = {"name": config.dataset} if isinstance(config.dataset, str) else dict(config.dataset)
    spec.pop("train", None)
    return build_dataset({**spec, "train": True}), build_dataset({**spec, "train": False})


def model_kwargs(config: Any, train_set: Any) -> dict:
    """The builder arguments of ``config.model``: its ``kwargs``, the ``quantization`` widths and
    the data set's shape (``in_channels``, ``image_size``, ``num_classes``) where the builder
    takes them.

    Raises:
        QFaultConfigError: an unknown model name, a bit width the builder does not take, an
            argument it does not know.
    """
    from .._errors import QFaultConfigError
    from ..data import MODELS

    try:
        builder = MODELS.get(config.model.name)
    except QFaultConfigError as exc:
        raise QFaultConfigError("model.name", config.model.name, exc.allowed, hint=exc.hint) from None
    accepted = set(inspect.signature(builder).parameters)
    kwargs = dict(config.model.kwargs)
    for key, names in _WIDTH_NAMES.items():
        value = getattr(config.quantization, key)
        if value is None:
            continue
        name = next((n for n in names if n in accepted), None)
        if name is None:
            raise QFaultConfigError(f"quantization.{key}", value, f"null for model {config.model.name} (its builder "
                                    "takes no bit width)")
        kwargs.setdefault(name, value)
    x, _ = train_set[0]
    labels = getattr(train_set, "targets", None)
    if labels is None and hasattr(train_set, "tensors"):  # a TensorDataset (the embedded digits)
        labels = train_set.tensors[1].tolist()
    shape = {"in_channels": int(x.shape[0]), "image_size": int(x.shape[-1])}
    if "num_classes" in accepted:
        shape["num_classes"] = int(max(labels) + 1) if labels is not None else 10
    for name, value in shape.items():
        if name in accepted:
            kwargs.setdefault(name, value)
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise QFaultConfigError(f"model.kwargs.{unknown[0]}", kwargs[unknown[0]],
                                f"arguments of {config.model.name}: " + ", ".join(sorted(accepted)))
    return kwargs


def build_fat_model(config: Any, train_set: Any) -> Any:
    """The registered model ``config.model.name`` built with :func:`model_kwargs`."""
    from ..data import build_model

    return build_model(config.model.name, **model_kwargs(config, train_set))


def _print_history(config: Any, result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{config.name}: best validation accuracy {result.best_accuracy:.2f}% "
                        f"(epoch {result.best_epoch})")
    for column in ("epoch", "loss", "train %", "val %", "val faulty %", "faulty steps", "lr", "s"):
        table.add_column(column, justify="right")
    for h in result.history:
        table.add_row(str(h.epoch), f"{h.train_loss:.4f}", f"{h.train_accuracy:.2f}", f"{h.val_accuracy:.2f}",
                      "-" if h.val_faulty_accuracy is None else f"{h.val_faulty_accuracy:.2f}",
                      f"{h.faulty_steps}/{h.steps}", f"{h.learning_rate:.2g}", f"{h.seconds:.1f}")
    Console().print(table)
