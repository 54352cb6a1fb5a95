"""Campaign reports: JSON, CSV, PNG plots and one self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from ._runner import CampaignResult
from ._store import CampaignStore

OUTCOME_KEYS = ("masked", "non_critical", "sdc1", "due")


def write_report(result: CampaignResult, store: CampaignStore, out: str | Path, plots: bool = True,
                 parquet: bool | None = None) -> list[Path]:
    """Write ``summary.json``, ``points.csv``, ``trials.csv``, (with ``parquet``) ``points.parquet`` and
    ``trials.parquet``, and (with ``plots``) PNGs and ``report.html`` into ``out``; returns the
    written paths.

    ``parquet=None`` writes the Parquet files when pyarrow is installed (``pip install
    'qfault[report]'``); ``True`` requires it. The Parquet tables have the CSV columns, with full
    precision numbers (the CSVs round to 6 decimals, ``elapsed_s`` to 4) and sweep values as the
    same JSON strings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    summary = out / "summary.json"
    summary.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    written.append(summary)
    points, trials = _tables(result, store)
    points_csv = out / "points.csv"
    _write_csv(points_csv, points)
    written.append(points_csv)
    trials_csv = out / "trials.csv"
    _write_csv(trials_csv, trials)
    written.append(trials_csv)
    if parquet is None:
        parquet = _have_pyarrow()
    if parquet:
        written.append(_write_parquet(out / "points.parquet", points))
        written.append(_write_parquet(out / "trials.parquet", trials))
    systolic = [row for row in store.trials() if row.details and "fault" in row.details]
    if systolic:
        written.append(_systolic_csv(out / "systolic.csv", systolic))
    if plots and result.points:
        written.extend(_plots(result, out))
        if systolic:
            written.extend(_systolic_plots(systolic, out))
        written.append(_html(result, out, [p for p in written if p.suffix == ".png"]))
    return written


#: seed 003's result columns (one row per image), then ours
SYSTOLIC_COLUMNS = ("fault_seed", "dataset_seed", "dataset_index", "line", "channel", "row", "col", "bit", "polarity",
                    "ftype", "point", "image")


def _systolic_csv(path: Path, rows: list) -> Path:
    """One row per image of every systolic trial, in the seed's columns: ``fault_seed`` is the
    trial (repetition), ``dataset_seed``/``dataset_index`` the pass over the data and the batch,
    ``row``/``col`` the PE (x, y), ``ftype`` the outcome: 0 masked, 1 non-critical, 2 SDC-1
    (and 3 DUE, which the seed does not have)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SYSTOLIC_COLUMNS)
        for row in rows:
            d = row.details
            fault = d["fault"]
            for image, outcome in enumerate(d["outcomes"]):
                writer.writerow([row.repetition, d.get("epoch"), d.get("batch"), fault["line"], fault["channel"],
                                 fault["x"], fault["y"], fault["bit"], fault["polarity"], outcome, row.point, image])
    return path


def _systolic_plots(rows: list, out: Path) -> list[Path]:
    """SDC-1 (and DUE) rate of the images per faulted line, with 95% Wilson intervals, and the
    SDC-1 rate per PE as a heat map (blank: no trial faulted that PE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ._stats import wilson_interval

    per_line: dict[str, list[int]] = {}
    per_pe: dict[tuple[int, int], list[int]] = {}
    for row in rows:
        fault, outcomes = row.details["fault"], row.details["outcomes"]
        per_line.setdefault(fault["line"], []).extend(outcomes)
        per_pe.setdefault((fault["x"], fault["y"]), []).extend(outcomes)
    paths = []
    fig, ax = plt.subplots(figsize=(5.8, 3.6))
    lines = sorted(per_line)
    for offset, (code, label) in enumerate(((2, "SDC-1"), (3, "DUE"))):
        rates, low, high = [], [], []
        for line in lines:
            hits, total = sum(o == code for o in per_line[line]), len(per_line[line])
            lo, hi = wilson_interval(hits, total)
            rates.append(100 * hits / total)
            low.append(rates[-1] - 100 * lo)
            high.append(100 * hi - rates[-1])
        ax.bar(np.arange(len(lines)) + 0.38 * offset, rates, width=0.38, yerr=[low, high], capsize=3, label=label)
    ax.set_xticks(np.arange(len(lines)) + 0.19, [f"line {line}" for line in lines])
    ax.set_ylabel("images (%), 95% Wilson")
    ax.set_title("outcome rate per faulted register line")
    _legend_outside(ax)
    path = out / "systolic_lines.png"
    _save(fig, path)
    paths.append(path)

    xs = sorted({x for x, _ in per_pe})
    ys = sorted({y for _, y in per_pe})
    grid = np.full((max(ys) - min(ys) + 1, max(xs) - min(xs) + 1), np.nan)
    for (x, y), outcomes in per_pe.items():
        grid[y - min(ys), x - min(xs)] = 100 * sum(o == 2 for o in outcomes) / len(outcomes)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    ax.set_facecolor("0.88")  # PEs no trial faulted
    image = ax.imshow(grid, origin="lower", cmap="magma", interpolation="nearest",
                      extent=(min(xs) - 0.5, max(xs) + 0.5, min(ys) - 0.5, max(ys) + 0.5))
    fig.colorbar(image, ax=ax, label="SDC-1 (% of images)")
    ax.set_xlabel("PE x")
    ax.set_ylabel("PE y")
    ax.set_title(f"SDC-1 rate per faulted PE ({len(per_pe)} PEs sampled, grey: none)")
    path = out / "systolic_pes.png"
    _save(fig, path)
    paths.append(path)
    return paths


class _Table:
    """Columns with a kind each: ``int``, ``json`` (sweep values as JSON text) or a float format."""

    def __init__(self, columns: list[tuple[str, str]], rows: list[list]):
        self.header = [name for name, _ in columns]
        self.kinds = [kind for _, kind in columns]
        self.rows = rows


def _tables(result: CampaignResult, store: CampaignStore) -> tuple[_Table, _Table]:
    """The points and trials tables with unrounded values."""
    axes = list(result.spec.sweep)
    six = "{:.6f}"
    points = _Table(
        [("point", "int"), *[(a, "json") for a in axes], ("trials", "int"), ("accuracy_mean", six),
         ("accuracy_std", six), ("accuracy_ci95", six), *[(f"{k}_rate", six) for k in OUTCOME_KEYS + ("sdc5",)]],
        [[p.point, *[json.dumps(p.values.get(a)) for a in axes], p.trials,
          float(p.accuracy_mean), float(p.accuracy_std), float(p.accuracy_ci),
          *[float(p.rates.get(k, {}).get("rate", 0.0)) for k in OUTCOME_KEYS + ("sdc5",)]]
         for p in result.points])
    rows = list(store.trials())
    count_keys = sorted({k for row in rows for k in row.counts})
    trials = _Table(
        [("point", "int"), ("repetition", "int"), *[(a, "json") for a in axes], ("seed", "int"),
         ("accuracy", six), ("faulted_values", "int"), ("elapsed_s", "{:.4f}"), *[(k, "int") for k in count_keys]],
        [[row.point, row.repetition, *[json.dumps(row.point_values.get(a)) for a in axes],
          row.seed, float(row.accuracy), row.faults, float(row.elapsed_s),
          *[int(row.counts.get(k, 0)) for k in count_keys]]
         for row in rows])
    return points, trials


def _write_csv(path: Path, table: _Table) -> None:
    formats = [k if k.startswith("{") else None for k in table.kinds]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(table.header)
        for row in table.rows:
            writer.writerow([fmt.format(v) if fmt else v for fmt, v in zip(formats, row)])


def _have_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _write_parquet(path: Path, table: _Table) -> Path:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        from .._errors import QFaultConfigError

        raise QFaultConfigError("parquet", True, "an installed pyarrow", hint="pip install 'qfault[report]'") from None
    types = {"int": pa.int64(), "json": pa.string()}
    schema = pa.schema([(name, types.get(kind, pa.float64())) for name, kind in zip(table.header, table.kinds)])
    columns = [pa.array([row[i] for row in table.rows], type=schema.field(i).type) for i in range(len(table.header))]
    pq.write_table(pa.Table.from_arrays(columns, schema=schema), path)
    return path


def _axis_values(result: CampaignResult) -> tuple[str, list]:
    axes = list(result.spec.sweep)
    if not axes:
        return "point", [p.point for p in result.points]
    axis = axes[0]
    return axis, [p.values.get(axis) for p in result.points]


def _plots(result: CampaignResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis, xs = _axis_values(result)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    labels = [json.dumps(x) for x in xs]
    paths = []

    # accuracy vs the first sweep axis, one line (with its 95 % CI band) per value of the others
    categories = list(dict.fromkeys(labels))
    others = [a for a in result.spec.sweep if a != axis]
    series: dict[str, list] = {}
    for point, x, label in zip(result.points, xs, labels):
        key = ", ".join(f"{a.split('.')[-1]}={json.dumps(point.values.get(a))}" for a in others) or "faulty"
        series.setdefault(key, []).append((x if numeric else categories.index(label), point))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for key, members in series.items():
        members.sort(key=lambda item: item[0])
        pos = [m[0] for m in members]
        means = [m[1].accuracy_mean for m in members]
        halves = [m[1].accuracy_ci if m[1].accuracy_ci != float("inf") else 0.0 for m in members]
        ax.plot(pos, means, marker="o", label=key)
        ax.fill_between(pos, [max(0.0, m - h) for m, h in zip(means, halves)],
                        [min(100.0, m + h) for m, h in zip(means, halves)], alpha=0.2)
    ax.axhline(result.golden_accuracy, color="gray", linestyle="--", label="golden")
    if result.float_accuracy is not None:
        ax.axhline(result.float_accuracy, color="black", linestyle=":", label="float")
    if numeric and all(x > 0 for x in xs) and max(xs) / min(xs) > 50:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right")
    ax.set_xlabel(axis)
    ax.set_ylabel("top-1 accuracy (%), 95% CI bands")
    ax.set_title(result.spec.name)
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    path = out / "accuracy.png"
    _save(fig, path)
    paths.append(path)

    if "indices" in result.spec.sweep:  # per-layer vulnerability: SDC-1 rate with Wilson intervals
        fig, ax = plt.subplots(figsize=(6.5, 4))
        names = [json.dumps(p.values.get("indices")) for p in result.points]
        rates = [100 * p.rates.get("sdc1", {}).get("rate", 0.0) for p in result.points]
        low = [r - 100 * p.rates.get("sdc1", {}).get("low", 0.0) for r, p in zip(rates, result.points)]
        high = [100 * p.rates.get("sdc1", {}).get("high", 0.0) - r for r, p in zip(rates, result.points)]
        ax.bar(range(len(rates)), rates, yerr=[low, high], capsize=3)
        ax.set_xticks(range(len(rates)), names, rotation=45, ha="right")
        ax.set_xlabel("layer (indices)")
        ax.set_ylabel("SDC-1 (% of images), 95% Wilson")
        ax.set_title("per-layer vulnerability")
        path = out / "vulnerability.png"
        _save(fig, path)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(result.points)
    for key in OUTCOME_KEYS:
        heights = [100 * p.rates.get(key, {}).get("rate", 0.0) for p in result.points]
        ax.bar(range(len(result.points)), heights, bottom=bottom, label=key)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(result.points)), labels, rotation=45, ha="right")
    ax.set_xlabel(axis)
    ax.set_ylabel("images (%)")
    ax.set_title("outcome classes")
    _legend_outside(ax, reverse=True)  # top to bottom as the bars stack
    path = out / "outcomes.png"
    _save(fig, path)
    paths.append(path)
    return paths


def _legend_outside(ax, reverse: bool = False) -> None:
    """The legend to the right of the axes, where it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    if reverse:
        handles, labels = handles[::-1], labels[::-1]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")


def _save(fig, path: Path) -> None:
    """Save at 110 dpi, cropped to what is drawn (legends outside the axes included), and close."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _html(result: CampaignResult, out: Path, images: list[Path]) -> Path:
    rows = "".join(
        f"<tr><td>{p.point}</td><td>{html.escape(json.dumps(p.values))}</td><td>{p.trials}</td>"
        f"<td>{p.accuracy_mean:.2f} ± {p.accuracy_ci if p.accuracy_ci != float('inf') else float('nan'):.2f}</td>"
        + "".join(f"<td>{100 * p.rates.get(k, {}).get('rate', 0.0):.2f}</td>" for k in OUTCOME_KEYS)
        + "</tr>" for p in result.points)
    pictures = "".join(
        f'<img alt="{img.stem}" src="data:image/png;base64,{base64.b64encode(img.read_bytes()).decode()}">'
        for img in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(result.spec.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}img{{max-width:48%}}</style>
</head><body><h1>{html.escape(result.spec.name)}</h1>
<p>Golden accuracy {result.golden_accuracy:.2f}%{'' if result.float_accuracy is None else f' (float {result.float_accuracy:.2f}%)'} · spec fingerprint <code>{result.spec.fingerprint()[:16]}</code> ·
<a href="summary.json">summary.json</a> · <a href="points.csv">points.csv</a> · <a href="trials.csv">trials.csv</a></p>
<table><tr><th>point</th><th>values</th><th>trials</th><th>accuracy (%) ± 95% CI</th>
{''.join(f'<th>{k} (%)</th>' for k in OUTCOME_KEYS)}</tr>{rows}</table>{pictures}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
