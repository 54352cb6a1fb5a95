"""Per-site injection statistics (definitions of seed 001, without its counting bias).

Per injecting forward: values seen (``numel``), values faulted (codes that changed), RMSE between
clean and faulty codes over the changed elements (integer units), cosine similarity between the
whole clean and faulty code tensors. RMSE and cosine are averaged over the forwards in which
something changed. Unlike seed 001, forwards in which nothing was hit still count as seen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field


@dataclass
class SiteStats:
    """Running statistics of one injection site."""

    name: str
    layer_id: int
    total_values: int = 0
    faulted_values: int = 0
    forwards: int = 0
    sample_count: int = 0
    rmse_sum: float = 0.0
    cosine_sum: float = 0.0

    def record(self, numel: int, changed: int, sq_err_sum: float, clean_sq: float, dot_delta: float,
               faulty_sq: float) -> None:
        """Add one forward: ``sq_err_sum`` = sum (new-old)^2 over changed codes; ``clean_sq`` =
        ||clean||^2; ``dot_delta`` = <clean, faulty> - ||clean||^2; ``faulty_sq`` = ||faulty||^2."""
        self.forwards += 1
        self.total_values += numel
        self.faulted_values += changed
        if changed:
            self.sample_count += 1
            self.rmse_sum += math.sqrt(sq_err_sum / changed)
            denom = math.sqrt(max(clean_sq, 0.0)) * math.sqrt(max(faulty_sq, 0.0))
            self.cosine_sum += 1.0 if denom == 0 else (clean_sq + dot_delta) / denom

    @property
    def rate(self) -> float:
        """Percentage of values seen that were faulted."""
        return 100.0 * self.faulted_values / self.total_values if self.total_values else 0.0

    @property
    def avg_rmse(self) -> float:
        return self.rmse_sum / self.sample_count if self.sample_count else 0.0

    @property
    def avg_cosine_similarity(self) -> float:
        return self.cosine_sum / self.sample_count if self.sample_count else 1.0

    def to_dict(self) -> dict:
        return {
            "layer_id": self.layer_id, "name": self.name, "total_activations": self.total_values,
            "injected_count": self.faulted_values, "injection_rate": self.rate,
            "avg_rmse": self.avg_rmse, "avg_cosine_similarity": self.avg_cosine_similarity,
            "sample_count": self.sample_count, "forwards": self.forwards,
        }


@dataclass
class Statistics:
    """Statistics of every site of an injection handle."""

    sites: list[SiteStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        """``{"summary": {...}, "layers": {"<id>": {...}}}`` (seed 001's statistics file schema)."""
        total = sum(s.total_values for s in self.sites)
        faulted = sum(s.faulted_values for s in self.sites)
        return {
            "summary": {
                "total_injected": faulted, "total_activations": total,
                "overall_injection_rate": 100.0 * faulted / total if total else 0.0,
                "num_layers": len(self.sites),
            },
            "layers": {str(s.layer_id): s.to_dict() for s in self.sites},
        }

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def table(self):
        """A ``rich.table.Table`` with one row per site and a total row."""
        from rich.table import Table

        table = Table(title="Fault injection statistics")
        for col in ("Layer", "Name", "Injected", "Total", "Rate (%)", "RMSE", "Cos Sim (%)"):
            table.add_column(col, justify="left" if col == "Name" else "right")
        for s in self.sites:
            table.add_row(str(s.layer_id), s.name, str(s.faulted_values), str(s.total_values),
                          f"{s.rate:.4f}", f"{s.avg_rmse:.4f}", f"{100 * s.avg_cosine_similarity:.4f}")
        summary = self.to_dict()["summary"]
        table.add_row("TOTAL", "", str(summary["total_injected"]), str(summary["total_activations"]),
                      f"{summary['overall_injection_rate']:.4f}", "", "")
        return table

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=120, record=True)
        with console.capture() as capture:
            console.print(self.table())
        return capture.get()
