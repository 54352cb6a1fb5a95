"""Registered demo models and the small training / evaluation loops the demo uses."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._errors import QFaultConfigError
from .._registry import Registry

MODELS: Registry = Registry("model")


@dataclass(frozen=True)
class TrainingRecipe:
    """How :func:`load_demo_model` trains a registered model.

    Attributes:
        epochs: default number of epochs (part of the cache file name).
        lr: Adam learning rate.
        threads: torch threads while training (``None``: leave the current setting). Tiny
            models train faster on one thread, and the trained weights then do not depend on
            the machine's core count.
    """

    epochs: int = 15
    lr: float = 0.01
    threads: int | None = None


_RECIPES: dict[str, TrainingRecipe] = {}


def register_model(name: str, *, epochs: int = 15, lr: float = 0.01, threads: int | None = None):
    """Register a demo model builder under ``name``, with its training recipe (see
    :class:`TrainingRecipe`)."""

    def wrap(fn: Callable[..., nn.Module]):
        MODELS.register(name, fn)
        _RECIPES[name.lower()] = TrainingRecipe(epochs=epochs, lr=lr, threads=threads)
        return fn

    return wrap


def training_recipe(name: str) -> TrainingRecipe:
    """The training recipe of a registered demo model (an unknown name lists the valid ones)."""
    return _RECIPES.get(MODELS.canonical(name), TrainingRecipe())


@register_model("digits_cnn")
def digits_cnn(weight_bits: int = 8, act_bits: int = 8) -> nn.Module:
    """A small Brevitas CNN for 1x8x8 digits: 2 quantized convs, 1 quantized linear layer.

    Integer weights (``weight_bits``) and activations (``act_bits``); 3 QuantReLU and one input
    QuantIdentity are activation fault sites, 3 weight layers are weight fault sites.
    """
    import brevitas.nn as qnn

    return nn.Sequential(
        qnn.QuantIdentity(bit_width=act_bits),
        qnn.QuantConv2d(1, 16, 3, padding=1, bias=False, weight_bit_width=weight_bits),
        nn.BatchNorm2d(16),
        qnn.QuantReLU(bit_width=act_bits),
        qnn.QuantConv2d(16, 32, 3, padding=1, stride=2, bias=False, weight_bit_width=weight_bits),
        nn.BatchNorm2d(32),
        qnn.QuantReLU(bit_width=act_bits),
        nn.Flatten(),
        qnn.QuantLinear(32 * 4 * 4, 10, bias=True, weight_bit_width=weight_bits),
    )


@register_model("digits_vit", epochs=40, lr=0.002, threads=1)
def digits_vit(weight_bits: int = 8, act_bits: int = 8, embed_dim: int = 48, depth: int = 2,
               num_heads: int = 4, mlp_ratio: float = 2.0, seed: int = 0) -> nn.Module:
    """A small timm ViT for 1x8x8 digits with seed 000's quantized Linear layers.

    ``timm.models.vision_transformer.VisionTransformer`` (random init from ``seed``, never
    downloads): 2x2 patches (16 tokens + a class token), ``embed_dim`` 48, ``depth`` 2 blocks
    of ``num_heads`` 4 heads, MLP ratio 2, class-token pooling, a 10-class ``head``. Every
    ``nn.Linear`` but ``head`` (qkv, proj, fc1, fc2 of each block: 8 layers) is swapped for a
    :class:`~qfault.layers.SeedQuantLinear` (``weight_bits``/``act_bits``), *not frozen*:
    :func:`load_demo_model` trains it in :func:`~qfault.layers.float_mode`, caches the float
    weights and freezes the codes after training or loading; call ``freeze()`` on its layers
    yourself when you use this builder directly. ``patch_embed`` stays a float Conv2d, as in the
    seed.
    """
    from timm.models.vision_transformer import VisionTransformer

    from ..layers import SeedQuantConfig, swap_modules

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=embed_dim,
                                  depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, global_pool="token")
    swap_modules(model, SeedQuantConfig(weight_bits=weight_bits, act_bits=act_bits, skip=("head",)))
    return model


class LeNet5(nn.Module):
    """LeNet-5 as seed 003's tutorial defines it (conv1 1->6 5x5, 2x2 max pool, conv2 6->16 5x5,
    fc1 256->120, fc2 120->84, fc3 84->10, ReLU), for 1x28x28 inputs; ``upsample`` first resizes
    smaller images (the 8x8 digits) to 28x28 (bilinear)."""

    def __init__(self, classes: int = 10, size: int = 28):
        super().__init__()
        self.upsample = nn.Upsample(size=(size, size), mode="bilinear", align_corners=False)
        self.conv1 = nn.Conv2d(1, 6, 5, padding="valid")
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding="valid")
        side = ((size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@register_model("digits_lenet5", epochs=15, lr=0.003, threads=1)
def digits_lenet5(seed: int = 0) -> nn.Module:
    """Seed 003's LeNet-5 (float) for the 8x8 digits, upsampled to its 28x28 input: the model of
    the systolic-array campaign (``configs/campaign_systolic_lenet.yaml``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LeNet5()


#: the bit-width search file shipped for ``digits_lsq`` (seed 004's JSON layout)
DIGITS_LSQ_BIT_WIDTHS = Path(__file__).resolve().parent.parent / "configs" / "digits_lsq_bit_widths.json"


@register_model("digits_lsq", epochs=20, lr=0.005, threads=1)
def digits_lsq(bit_widths: str | os.PathLike | None = None, config_index: int = 0, per_channel: bool = False,
               seed: int = 0) -> nn.Module:
    """A mixed-precision LSQ CNN for 1x8x8 digits (seed 004's layers): four 3x3 convs with
    BatchNorm and ReLU and a linear classifier, converted by ``swap_modules(model,
    LsqConfig(...))``. The first conv and the classifier have ``fixed_bits = (8, 8)``; the three
    inner convs take their ``(weight, activation)`` bits from configuration ``config_index`` of
    the search JSON ``bit_widths`` (default: the shipped ``digits_lsq_bit_widths.json``,
    weights 6/4/2 bits, activations 6/4/4). :func:`load_demo_model` trains it with QAT.
    """
    from ..layers import LsqConfig, apply_bit_width_config, swap_modules

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 2 * 2, 10),
        )
    swap_modules(model, LsqConfig(weight_bits=None, act_bits=None, per_channel=per_channel))
    apply_bit_width_config(model, DIGITS_LSQ_BIT_WIDTHS if bit_widths is None else bit_widths, config_index)
    return model


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered demo model by name; an unknown name lists the valid ones."""
    return MODELS.get(name)(**kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 15,
                     batch_size: int = 64, lr: float = 0.01, seed: int = 0,
                     time_limit_s: float | None = None, progress=None) -> list[float]:
    """Adam + cross-entropy over shuffled mini-batches; returns the mean loss of each epoch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    losses = []
    start = time.monotonic()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        scheduler.step()
        losses.append(total / len(y))
        if progress is not None:
            progress()
        if time_limit_s is not None and time.monotonic() - start > time_limit_s:
            break
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size])
        logits = getattr(logits, "value", logits)
        correct += int((logits.argmax(dim=1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / len(y)


#: the bundled digits' shape, given to builders that take these arguments when the caller does not
DIGITS_SHAPE = {"in_channels": 1, "image_size": 8, "num_classes": 10}


def _digits_kwargs(name: str, model_kwargs: dict) -> dict:
    """``model_kwargs`` with the digits' shape filled in where the builder takes it."""
    accepted = inspect.signature(MODELS.get(name)).parameters
    return {**{k: v for k, v in DIGITS_SHAPE.items() if k in accepted and k not in model_kwargs}, **model_kwargs}


def _check_model_kwargs(name: str, model_kwargs: dict | None) -> dict:
    """``model_kwargs`` as a dict whose keys the builder of ``name`` takes (else one clear error)."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict):
        raise QFaultConfigError("model_kwargs", model_kwargs, "a mapping of the model builder's arguments")
    builder = MODELS.get(name)
    allowed = [p for p in inspect.signature(builder).parameters]
    unknown = sorted(set(model_kwargs) - set(allowed))
    if unknown:
        raise QFaultConfigError(f"model_kwargs.{unknown[0]}", model_kwargs[unknown[0]],
                                f"arguments of the {name} builder: " + ", ".join(allowed))
    return dict(model_kwargs)


def _training_specs(train_faults: list | None) -> list:
    """The fault-aware training specs, each active in training only."""
    if not train_faults:
        return []
    from ..injection import InjectSpec

    if not isinstance(train_faults, (list, tuple)):
        raise QFaultConfigError("train_faults", train_faults, "a list of InjectSpec dicts")
    specs = []
    for i, item in enumerate(train_faults):
        try:
            spec = item if isinstance(item, InjectSpec) else InjectSpec.from_dict(item)
        except QFaultConfigError as exc:
            raise QFaultConfigError(f"train_faults[{i}].{exc.field}", exc.value, exc.allowed, exc.hint) from None
        except (TypeError, AttributeError):
            raise QFaultConfigError(f"train_faults[{i}]", item, "an InjectSpec dict (fault, site, ...)") from None
        # seeded like the training itself (seed 0), so a fault-aware run is reproducible
        specs.append(dataclasses.replace(spec, active_in="train", seed=0 if spec.seed is None else spec.seed))
    return specs


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where trained demo models are cached: ``explicit``, ``$QFAULT_CACHE`` or ``~/.cache/qfault``."""
    return Path(explicit or os.environ.get("QFAULT_CACHE") or Path.home() / ".cache" / "qfault")


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _seed_quant_layers(model: nn.Module) -> list[nn.Module]:
    from ..layers import SeedQuantLinear

    return [m for m in model.modules() if isinstance(m, SeedQuantLinear)]


def _freeze(model: nn.Module) -> nn.Module:
    """Freeze the codes of every SeedQuantLinear (after its float weights are final)."""
    for layer in _seed_quant_layers(model):
        layer.freeze()
    return model.eval()


def load_demo_model(name: str = "digits_cnn", *, epochs: int | None = None, cache: str | os.PathLike | None = None,
                    retrain: bool = False, log: Callable[[str], None] = print,
                    progress: Callable[[], None] | None = None, model_kwargs: dict | None = None,
                    train_faults: list | None = None) -> tuple[nn.Module, bool]:
    """A trained demo model (eval mode), from the cache when a valid checkpoint is there.

    Trains on the digits training split otherwise (``digits_cnn``: about 10 s on 2 cores;
    ``digits_vit``: about 25 s) and caches the result atomically; a corrupt cache is reported
    through ``log`` and rebuilt. ``epochs=None`` takes the model's default (15 for ``digits_cnn``,
    40 for ``digits_vit``). A model with :class:`~qfault.layers.SeedQuantLinear` layers is
    trained in float (:func:`~qfault.layers.float_mode`), its float weights are cached, and
    its codes are frozen after training or loading.

    Args:
        model_kwargs: arguments of the model's builder (e.g. ``{"bit_widths": "search.json"}``
            for ``digits_lsq``).
        train_faults: fault-aware training: :class:`~qfault.injection.InjectSpec` objects or
            dicts, injected while the model trains (``active_in="train"``: evaluation is clean;
            seed 0 where a spec has none), e.g. ``[{"fault": {"type": "bit_flip", "ber": 1e-3},
            "site": "weight"}]``: transient faults are redrawn on every training step.

    Models built with other ``model_kwargs`` (a file among them by its content) or trained with
    other ``train_faults`` are cached under their own file names.

    Returns:
        ``(model, trained_now)``.
    """
    from ._digits import load_digits_split

    recipe = training_recipe(name)
    epochs = recipe.epochs if epochs is None else epochs
    model_kwargs = _check_model_kwargs(name, model_kwargs)
    defaults = _digits_kwargs(name, {})  # the digits' shape, for builders that take it: not a variant
    model_kwargs = _digits_kwargs(name, model_kwargs)
    specs = _training_specs(train_faults)
    variant = ""
    if (model_kwargs and model_kwargs != defaults) or specs:  # a variant: its own cache file, named by what makes it one
        # files among the arguments (e.g. a bit-width JSON) count by their content, not their path
        files = {k: hashlib.sha256(Path(v).read_bytes()).hexdigest() for k, v in model_kwargs.items()
                 if isinstance(v, (str, os.PathLike)) and Path(v).is_file()}
        key = json.dumps({"model": model_kwargs, "files": files,
                          "train_faults": [spec.to_dict() for spec in specs]}, sort_keys=True, default=str)
        variant = "_" + hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    path = cache_dir(cache) / f"{name}_w8a8_e{epochs}{variant}.pt"
    model = build_model(name, **model_kwargs)
    if path.exists() and not retrain:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint["model_state_dict"])
            log(f"Loaded cached model {path}")
            return _freeze(model), False
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            log(f"Cached model {path} is unreadable ({type(exc).__name__}: {exc}); retraining")
            model = build_model(name, **model_kwargs)
    x_train, y_train, _, _ = load_digits_split()
    start = time.monotonic()
    float_ctx = nullcontext()
    if _seed_quant_layers(model):
        from ..layers import float_mode

        float_ctx = float_mode(model)  # rounding has no gradient: train the float weights
    fault_ctx = nullcontext()
    if specs:
        from ..injection import inject

        fault_ctx = inject(model, specs)  # removed when training ends
    with _threads(recipe.threads), float_ctx, fault_ctx:
        train_classifier(model, x_train, y_train, epochs=epochs, lr=recipe.lr, seed=0, time_limit_s=60.0,
                         progress=progress)
    log(f"Trained {name} in {time.monotonic() - start:.1f} s" + (" with faults (fault-aware)" if specs else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model_state_dict": model.state_dict(), "model": name}, tmp)  # float weights, no codes
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache
    return _freeze(model), True
