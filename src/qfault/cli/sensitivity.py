"""``qfault sensitivity SPEC.yaml [key=value ...]``: rank the bits of a model's weights.

The spec names the model (as a campaign's ``model``), the data the loss is taken on, and the
:class:`~qfault.sensitivity.SensitivityConfig` fields under ``sensitivity``; see
``configs/sensitivity_digits.yaml``. The command prints a per-layer vulnerability table and
writes ``ranking.json`` (the top bits and the tables), ``faults.yaml`` (the top bits as a
campaign's ``faults`` list), ``layers.png`` and ``bit_positions.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SensitivityJob:
    """A ``qfault sensitivity`` spec.

    Args:
        name: label of the outputs.
        model: where the model comes from (a campaign's ``model`` section).
        dataset: the data set the loss is taken on (default: the digits training split).
        limit: the first ``limit`` images of it.
        batch_size: images per differentiated batch.
        sensitivity: :class:`~qfault.sensitivity.SensitivityConfig` fields.
        top: bits listed in ``ranking.json`` and turned into ``faults.yaml``.
    """

    name: str = "sensitivity"
    model: Any = field(default_factory=dict)
    dataset: Any = field(default_factory=lambda: {"name": "digits", "train": True})
    limit: int | None = 512
    batch_size: int = 256
    sensitivity: Any = field(default_factory=dict)
    top: int = 100

    def __post_init__(self) -> None:
        from .._errors import QFaultConfigError, check_range
        from ..campaign import ModelSource
        from ..sensitivity import SensitivityConfig

        if not isinstance(self.name, str) or not self.name:
            raise QFaultConfigError("name", self.name, "a non-empty string")
        for key, cls in (("model", ModelSource), ("sensitivity", SensitivityConfig)):
            value = getattr(self, key)
            if not isinstance(value, (dict, cls)):
                raise QFaultConfigError(key, value, f"a mapping of {cls.__name__} fields")
            if isinstance(value, dict):
                try:
                    object.__setattr__(self, key, cls(**value))
                except QFaultConfigError as exc:
                    field_name = exc.field if exc.field.startswith(f"{key}.") else f"{key}.{exc.field}"
                    raise QFaultConfigError(field_name, exc.value, exc.allowed, exc.hint) from None
        if self.limit is not None:
            check_range("limit", self.limit, 1, 10**9, integer=True)
        check_range("batch_size", self.batch_size, 1, 10**7, integer=True)
        check_range("top", self.top, 1, 10**9, integer=True)


class Sensitivity:
    name = "sensitivity"
    help = "rank the bits of a model's weights by sensitivity (Hessian, gradient, bit-flip delta)"
    description = ("Rank every bit of the selected weights of a model by how much a flip would hurt (methods: "
                   "delta = |gradient x exact flip change|, gradient, taylor, hessian = FKeras' eigenvector score), "
                   "on the spec's data. Prints a per-layer table and writes ranking.json, faults.yaml (the top "
                   "bits as a campaign faults list), layers.png and bit_positions.png to --out. "
                   "Template: qfault cp sensitivity_digits.yaml .")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("spec", help="the sensitivity spec (YAML)")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="override spec fields (dotted keys)")
        parser.add_argument("--out", default=None, help="output folder (default: <spec name>-sensitivity)")

    def run(self, args: argparse.Namespace) -> int:
        from ..campaign import build_campaign_model
        from ..config import check_dataclass, load_config
        from ..data import make_loader
        from ..sensitivity import rank_bits

        data = load_config(args.spec, args.overrides, what="spec")
        job = check_dataclass(SensitivityJob, data, nested=_nested_checks())
        out = Path(args.out or f"{job.name}-sensitivity")
        model = build_campaign_model(job.model, log=print)
        batches = [(x, y) for x, y in make_loader(job.dataset, batch_size=job.batch_size, limit=job.limit)]
        ranking = rank_bits(model, batches, job.sensitivity)
        out.mkdir(parents=True, exist_ok=True)
        ranking.to_json(out / "ranking.json", top=job.top)
        _write_faults(out / "faults.yaml", ranking.fault_specs(job.top))
        _print_table(job, ranking, sum(len(y) for _, y in batches))
        _plot(ranking, out)
        print(f"Wrote {out / 'ranking.json'}, {out / 'faults.yaml'}, {out / 'layers.png'}, "
              f"{out / 'bit_positions.png'}")
        return 0


def _nested_checks() -> dict:
    """Unknown keys of the ``model`` and ``sensitivity`` mappings, each reported with a hint."""
    from ..campaign import ModelSource
    from ..config import check_keys
    from ..sensitivity import SensitivityConfig

    def keys_of(cls):
        def check(value, where, errors):
            if isinstance(value, dict):
                check_keys(value, tuple(cls.__dataclass_fields__), where, errors)

        return check

    return {"model": keys_of(ModelSource), "sensitivity": keys_of(SensitivityConfig)}


def _write_faults(path: Path, specs: list[dict]) -> None:
    import yaml

    text = ("# The most sensitive bits as explicit bit flips: paste under a campaign's `faults:` key\n"
            + yaml.safe_dump({"faults": specs}, sort_keys=False, default_flow_style=None))
    path.write_text(text, encoding="utf-8")


def _print_table(job: SensitivityJob, ranking, images: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{job.name}: {ranking.method} ranking of {len(ranking)} bits on {images} images "
                        f"({ranking.seconds:.1f} s)")
    for column in ("tensor", "weights", "bits", "top 1 % share", "mean score", "max score", "trace"):
        table.add_column(column, justify="left" if column == "tensor" else "right")
    for row in ranking.layer_table():
        table.add_row(row["tensor"], str(row["numel"]), str(row["bits"]), f"{100 * row['top_share']:.1f} %",
                      f"{row['mean_score']:.3g}", f"{row['max_score']:.3g}",
                      "" if row["trace"] is None else f"{row['trace']:.3g}")
    Console().print(table)


def _plot(ranking, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = ranking.layer_table()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([row["tensor"] for row in layers], [100 * row["top_share"] for row in layers])
    ax.set_ylabel("share of the top 1 % bits (%)")
    ax.set_title(f"{ranking.method}: most sensitive bits by layer")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out / "layers.png", dpi=120)
    plt.close(fig)
    positions = ranking.bit_position_table()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([str(row["from_msb"]) for row in positions], [100 * row["top_share"] for row in positions])
    ax.set_xlabel("bit position from the MSB (0 = sign / most significant)")
    ax.set_ylabel("share of the top 1 % bits (%)")
    fig.tight_layout()
    fig.savefig(out / "bit_positions.png", dpi=120)
    plt.close(fig)
