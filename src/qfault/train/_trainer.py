"""Fault-aware training (seed 001): the documented schedule, checkpoints, resume, metrics.

Faults go where seed 001 puts them: into the integer codes of the Brevitas activation quantizers'
outputs (``qfault.inject`` with ``site="output"``), drawn afresh on every faulty forward. The
schedule is the one the seed documents: training faults only in epochs 0, N, 2N, ...
(``epoch_interval``), on the share ``step_interval`` of the steps of such an epoch, drawn at
random at its start; ``apply_during`` says whether training and/or evaluation see faults.

Every random choice derives from the run's seed and the epoch (data order, dropout, the faulty
steps, the faults), so a run resumed from the checkpoint of epoch e continues exactly as an
uninterrupted one (same final weights).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .._errors import QFaultConfigError
from ..faults import derive_seed
from ..injection import InjectSpec, inject
from ._config import FAULT_MODELS, FatConfig, FaultInjectionConfig


def fault_specs(config: FaultInjectionConfig, seed: int) -> list[InjectSpec]:
    """The inject specs of a ``fault_injection`` section: faults on the outputs of the Brevitas
    activation quantizers (QuantIdentity, QuantReLU, QuantHardTanh), every forward a new draw."""
    if config.hw_mask:
        fault = {"type": "hw_periodic", "probability": config.probability, "frequency_value": config.frequency_value,
                 "strategy": FAULT_MODELS[config.injection_type]}
    else:
        fault = {"type": FAULT_MODELS[config.injection_type], "probability": config.probability}
    where: dict[str, Any] = {}
    if config.mode == "layer":
        if config.injection_layer >= 0:
            where["indices"] = (config.injection_layer,)
        else:
            where["layer_mode"] = "random_per_run"
    return [InjectSpec(fault=fault, site="output", persistence="transient", gradient=config.gradient_mode,
                       seed=seed, track_statistics=config.track_statistics, **where)]


def faulty_steps(config: FaultInjectionConfig, seed: int, epoch: int, steps: int) -> torch.Tensor:
    """Which of an epoch's ``steps`` training steps are faulty (bool ``[steps]``): none outside
    epochs 0, N, 2N, ... (``epoch_interval``) or without training faults; else each step with
    probability ``step_interval``, drawn from the run's seed and the epoch."""
    if not config.enabled or config.apply_during == "eval" or epoch % config.epoch_interval:
        return torch.zeros(steps, dtype=torch.bool)
    generator = torch.Generator().manual_seed(derive_seed(seed, "steps", epoch) >> 1)
    return torch.rand(steps, generator=generator) < config.step_interval


@dataclass
class EpochMetrics:
    """One epoch of training: mean loss and accuracy (%) over its steps, clean and faulty
    validation accuracy (%; faulty only with fault injection enabled), steps with faults."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float
    val_faulty_accuracy: float | None
    faulty_steps: int
    steps: int
    learning_rate: float
    seconds: float


@dataclass
class TrainResult:
    """What a run produced: its per-epoch metrics, the best validation accuracy and where the
    files are."""

    history: list[EpochMetrics]
    best_accuracy: float
    best_epoch: int
    out_dir: Path | None
    files: list[Path] = field(default_factory=list)


def _optimizer(config: FatConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = config.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.learning_rate, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.learning_rate, weight_decay=o.weight_decay)


def _scheduler(config: FatConfig, optimizer: torch.optim.Optimizer):
    s = config.scheduler
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, s.T_max or config.training.epochs)
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, s.step_size, s.gamma)
    return None


def run_seed(config: FatConfig) -> int:
    """The run's seed: ``seed.value`` (a fresh random one when ``seed.enabled`` is false)."""
    return config.seed.value if config.seed.enabled else int(torch.seed()) >> 1


def fault_seed(config: FatConfig, seed: int) -> int:
    """The seed of every fault: ``fault_injection.seed``, else one derived from the run's seed."""
    fi = config.fault_injection
    return fi.seed if fi.seed is not None else derive_seed(seed, "faults") >> 1


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``model`` in eval mode over ``data``."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        out = model(x)
        out = getattr(out, "value", out)
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return 100.0 * correct / max(1, total)


def train_fat(model: nn.Module, train_set: Dataset, val_set: Dataset, config: FatConfig, *,
              out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
              log: Callable[[str], None] = print) -> TrainResult:
    """Train ``model`` (in place) with seed 001's fault-aware schedule.

    Args:
        model: a model whose activation quantizers are Brevitas layers (faults go after them).
        train_set, val_set: ``(input, label)`` data sets.
        config: the run (:class:`FatConfig`).
        out_dir: where ``last.pt`` (every epoch: model, optimizer, scheduler, epoch, RNG states,
            config), ``best.pt``, ``metrics.csv``, ``curves.png`` and (with statistics)
            ``fault_injection_stats.json`` go; None: nothing is written.
        resume: continue from ``out_dir/last.pt`` (its config must match, checkpoint fields aside).
        progress: a progress bar per epoch with the running loss and accuracy.

    Returns:
        A :class:`TrainResult`.

    Raises:
        QFaultConfigError: ``out_dir`` already holds a run and ``resume`` is false (nothing is
            overwritten), a corrupt checkpoint, a checkpoint of another configuration, a model
            with no injection layer while faults are enabled.
    """
    fi = config.fault_injection
    seed = run_seed(config)
    faults_seed = fault_seed(config, seed)
    optimizer = _optimizer(config, model)
    scheduler = _scheduler(config, optimizer)
    out = Path(out_dir) if out_dir is not None else None
    history: list[EpochMetrics] = []
    best_accuracy, best_epoch, start = -1.0, -1, 0
    if out is not None:
        last = out / "last.pt"
        if resume and last.exists():
            state = _load_checkpoint(last, config)
            model.load_state_dict(state["model_state_dict"])
            _restore_hidden_state(model, state.get("hidden_state", {}))
            optimizer.load_state_dict(state["optimizer_state_dict"])
            if scheduler is not None and state.get("scheduler_state_dict") is not None:
                scheduler.load_state_dict(state["scheduler_state_dict"])
            history = [EpochMetrics(**row) for row in json.loads(state["history"])]
            best_accuracy, best_epoch = state["best_accuracy"], state["best_epoch"]
            start = state["epoch"] + 1
            seed = state["seed"]
            faults_seed = fault_seed(config, seed)
            log(f"Resuming {config.name} from epoch {start} ({last})")
        elif last.exists():
            raise QFaultConfigError("checkpoint.dir", str(out), "a folder without a previous run",
                                    hint=f"{last} exists: pass --resume to continue it, or choose another "
                                         "checkpoint.dir / name; nothing was overwritten")
        out.mkdir(parents=True, exist_ok=True)
    if fi.enabled:  # a model without injection sites is refused here, before any training
        inject(model, fault_specs(fi, faults_seed)).remove()
    statistics = None
    deterministic = torch.are_deterministic_algorithms_enabled()
    if config.seed.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for epoch in range(start, config.training.epochs):
            metrics, epoch_stats = _train_epoch(model, train_set, val_set, config, optimizer, scheduler, seed,
                                                faults_seed, epoch, progress)
            statistics = epoch_stats if epoch_stats is not None else statistics
            history.append(metrics)
            score = metrics.val_faulty_accuracy if (fi.enabled and fi.apply_during in ("eval", "both")) \
                else metrics.val_accuracy
            improved = score > best_accuracy
            if improved:
                best_accuracy, best_epoch = score, epoch
            if fi.verbose or progress:
                faulty = "" if metrics.val_faulty_accuracy is None else f", faulty {metrics.val_faulty_accuracy:.2f}%"
                log(f"epoch {epoch}: loss {metrics.train_loss:.4f}, train {metrics.train_accuracy:.2f}%, "
                    f"val {metrics.val_accuracy:.2f}%{faulty}, faulty steps {metrics.faulty_steps}/{metrics.steps}")
            if out is not None:
                state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                         "scheduler_state_dict": None if scheduler is None else scheduler.state_dict(),
                         "epoch": epoch, "seed": seed, "config": json.dumps(config.to_dict()),
                         "fingerprint": config.fingerprint(), "history": json.dumps([asdict(h) for h in history]),
                         "best_accuracy": best_accuracy, "best_epoch": best_epoch,
                         "rng_state": torch.get_rng_state(), "accuracy": metrics.val_accuracy,
                         "hidden_state": _hidden_state(model)}
                _save_atomic(state, out / "last.pt")
                if improved and config.checkpoint.save_best:
                    _save_atomic(state, out / "best.pt")
                _write_metrics(out / "metrics.csv", history)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    files = []
    if out is not None:
        files = [out / "last.pt", out / "metrics.csv"]
        if (out / "best.pt").exists():
            files.insert(1, out / "best.pt")
        if history:
            files.append(_plot_curves(out / "curves.png", history, config.name))
        if statistics is not None:
            path = out / "fault_injection_stats.json"
            path.write_text(json.dumps(statistics, indent=2) + "\n")
            files.append(path)
    return TrainResult(history, best_accuracy, best_epoch, out, files)


def _train_epoch(model, train_set, val_set, config: FatConfig, optimizer, scheduler, seed: int, faults_seed: int,
                 epoch: int, progress: bool) -> tuple[EpochMetrics, dict | None]:
    fi = config.fault_injection
    batch_size = config.training.batch_size
    start = time.monotonic()
    torch.manual_seed(derive_seed(seed, "epoch", epoch) >> 1)  # dropout and any other global draw
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(derive_seed(seed, "order", epoch) >> 1))
    loader = DataLoader(Subset(train_set, order.tolist()), batch_size=batch_size, shuffle=False)
    steps = len(loader)
    schedule = faulty_steps(fi, seed, epoch, steps)
    handle = inject(model, fault_specs(fi, derive_seed(faults_seed, "train", epoch) >> 1)) if bool(schedule.any()) \
        else None
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = _Bar(progress, f"epoch {epoch}", steps)
    try:
        for step, (x, y) in enumerate(loader):
            if handle is not None:
                handle.enable() if bool(schedule[step]) else handle.disable()
            optimizer.zero_grad()
            out = model(x)
            out = getattr(out, "value", out)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((out.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.advance(loss=total_loss / seen, accuracy=100.0 * correct / seen)
    finally:
        bar.close()
        if handle is not None:
            handle.remove()
    learning_rate = optimizer.param_groups[0]["lr"]
    if scheduler is not None:
        scheduler.step()
    val_clean = evaluate_accuracy(model, val_set)
    val_faulty, stats = None, None
    if fi.enabled:
        with inject(model, fault_specs(fi, derive_seed(faults_seed, "eval", epoch) >> 1)) as faulted:
            val_faulty = evaluate_accuracy(model, val_set)
            if fi.track_statistics and fi.apply_during in ("eval", "both"):
                stats = faulted.statistics().to_dict()
    metrics = EpochMetrics(epoch, total_loss / max(1, seen), 100.0 * correct / max(1, seen), val_clean, val_faulty,
                           int(schedule.sum()), steps, learning_rate, time.monotonic() - start)
    return metrics, stats


def _hidden_state(model: nn.Module) -> dict:
    """State a ``state_dict`` leaves out but training depends on: the statistics counters (and
    their running buffers) of Brevitas' scale-from-statistics modules, which a loaded state dict
    would otherwise mark as finished."""
    hidden = {}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "counter", None), int) and hasattr(module, "collect_stats_steps"):
            entry = {"counter": module.counter}
            buffer = getattr(module, "buffer", None)
            if isinstance(buffer, torch.Tensor):
                entry["buffer"] = buffer.detach().clone()
            hidden[name] = entry
    return hidden


def _restore_hidden_state(model: nn.Module, hidden: dict) -> None:
    modules = dict(model.named_modules())
    for name, entry in hidden.items():
        module = modules.get(name)
        if module is None:
            continue
        module.counter = int(entry["counter"])
        if "buffer" in entry and isinstance(getattr(module, "buffer", None), torch.Tensor):
            module.buffer.copy_(entry["buffer"])


def _load_checkpoint(path: Path, config: FatConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QFaultConfigError("checkpoint", str(path), "a readable qfault training checkpoint",
                                hint=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                                     "the file was left untouched") from None
    needed = ("model_state_dict", "optimizer_state_dict", "epoch", "fingerprint", "config", "history")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise QFaultConfigError("checkpoint", str(path), "a qfault training checkpoint (last.pt)",
                                hint="keys missing; the file was left untouched")
    if state["fingerprint"] != config.fingerprint():
        stored = json.loads(state["config"])
        changed = sorted(k for k in set(stored) | set(config.to_dict())
                         if k not in ("checkpoint", "name") and stored.get(k) != config.to_dict().get(k))
        raise QFaultConfigError("config", str(path), "the configuration the run was started with",
                                hint="changed sections: " + ", ".join(changed) + "; resume with the original "
                                     "configuration or start a new run elsewhere")
    return state


def _save_atomic(state: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)  # a crash never leaves a half-written checkpoint


def _write_metrics(path: Path, history: list[EpochMetrics]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        names = list(asdict(history[0]))
        writer.writerow(names)
        for row in history:
            writer.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)
                             for v in asdict(row).values()])
    os.replace(tmp, path)


def _plot_curves(path: Path, history: list[EpochMetrics], name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [h.train_loss for h in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    right.plot(epochs, [h.train_accuracy for h in history], marker="o", label="train")
    right.plot(epochs, [h.val_accuracy for h in history], marker="o", label="val (clean)")
    if any(h.val_faulty_accuracy is not None for h in history):
        right.plot(epochs, [h.val_faulty_accuracy for h in history], marker="o", label="val (faulty)")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy (%)")
    right.legend(fontsize="small")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class _Bar:
    """A rich progress bar per epoch with the running loss and accuracy (or nothing)."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     TextColumn("{task.fields[status]}"), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=total, status="")

    def advance(self, loss: float, accuracy: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, status=f"loss {loss:.4f} acc {accuracy:.1f}%")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
