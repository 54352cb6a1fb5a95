"""``qfault campaign resume|status|report`` on a store file, the stored spec used for a YAML spec
given without overrides, and report legends placed outside the plotted data."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from qfault.cli.main import main
from qfault.testing import store_rows as rows

FACTORY = "qfault.testing:tiny_digits_mlp"
#: the overrides of the first run (the YAML file says limit 120, repetitions 3)
OVERRIDES = ["limit=60", "repetitions=2"]


def write_spec(tmp_path: Path) -> Path:
    """A YAML spec without a ``store`` field: its store is ``c.qfault.db`` beside it."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "seed": 3, "model": {"source": "factory", "factory": FACTORY}, "dataset": "digits",
        "limit": 120, "batch_size": 64,
        "faults": [{"fault": {"type": "bit_flip", "ber": 0.01}, "site": "weight", "format": "int8",
                    "persistence": "permanent"}],
        "sweep": {"fault.ber": [0.0, 0.02]}, "repetitions": 3,
    }))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report_files(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text() for name in ("summary.json", "points.csv", "trials.csv")}


@pytest.fixture
def campaign(tmp_path, capsys):
    """A spec file and its store, run with :data:`OVERRIDES`."""
    spec = write_spec(tmp_path)
    assert main(["campaign", "run", str(spec), *OVERRIDES, "--no-progress"]) == 0
    store = tmp_path / "c.qfault.db"
    assert len(rows(store)) == 2 * 2
    capsys.readouterr()
    return spec, store


def test_report_and_status_take_the_store_file(campaign, tmp_path, capsys):
    spec, store = campaign
    assert main(["campaign", "status", str(store)]) == 0
    assert f"store {store}: 4 trials completed (2 per point)" in capsys.readouterr().out
    assert main(["campaign", "report", str(store), "--out", str(tmp_path / "from_store"), "--no-plot"]) == 0
    assert main(["campaign", "report", str(spec), *OVERRIDES, "--out", str(tmp_path / "typed"), "--no-plot"]) == 0
    assert report_files(tmp_path / "from_store") == report_files(tmp_path / "typed")
    assert len((tmp_path / "typed" / "trials.csv").read_text().splitlines()) == 1 + 4


def test_report_defaults_to_a_folder_beside_the_store(campaign, capsys):
    _, store = campaign
    assert main(["campaign", "report", str(store), "--no-plot"]) == 0
    assert (store.parent / "c.qfault.db.report" / "summary.json").is_file()


def test_spec_without_overrides_uses_the_stored_spec(campaign, tmp_path, capsys):
    spec, store = campaign
    assert main(["campaign", "report", str(spec), "--out", str(tmp_path / "plain"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "using the spec its store" in line]
    assert lines == [f"{spec}: using the spec its store {store} was created with; differences "
                     "(spec file -> stored): limit: 120 -> 60; repetitions: 3 -> 2"]
    assert main(["campaign", "report", str(spec), *OVERRIDES, "--out", str(tmp_path / "typed"), "--no-plot"]) == 0
    assert "using the spec its store" not in capsys.readouterr().out
    assert report_files(tmp_path / "plain") == report_files(tmp_path / "typed")
    assert main(["campaign", "status", str(spec)]) == 0
    assert "4 trials completed (2 per point)" in capsys.readouterr().out


def test_resume_takes_the_store_file_and_the_plain_spec(campaign, tmp_path, capsys):
    spec, store = campaign
    complete = rows(store)
    for target in (store, spec):
        conn = sqlite3.connect(store)  # as if killed before the last trials were stored
        conn.execute("DELETE FROM trials WHERE point = 1")
        conn.commit()
        conn.close()
        assert len(rows(store)) == 2
        assert main(["campaign", "resume", str(target), "--no-progress"]) == 0
        assert rows(store) == complete, target


def test_overrides_with_a_different_store_are_still_refused(campaign, capsys):
    spec, store = campaign
    before = digest(store)
    assert main(["campaign", "report", str(spec), "limit=60", "repetitions=1", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qfault: error: store ") and "created by a different spec" in err
    assert "repetitions: 2 -> 1" in err and "limit" not in err
    assert main(["campaign", "status", str(spec), "seed=4"]) == 2
    assert "seed: 3 -> 4" in capsys.readouterr().err
    # run refuses a different spec, overrides or not
    assert main(["campaign", "run", str(spec), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "limit: 60 -> 120" in err and "repetitions: 2 -> 3" in err
    assert digest(store) == before


@pytest.mark.parametrize("action", ["run", "validate"])
def test_run_and_validate_refuse_a_store(campaign, action, capsys):
    _, store = campaign
    before = digest(store)
    assert main(["campaign", action, str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qfault: error: spec='{store}' is invalid: allowed a campaign YAML file")
    assert "this is a campaign store" in err and "resume|status|report" in err
    assert digest(store) == before


@pytest.mark.parametrize("action", ["report", "status", "resume"])
def test_overrides_with_a_store_are_refused(campaign, action, capsys):
    _, store = campaign
    before = digest(store)
    assert main(["campaign", action, str(store), "limit=60", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qfault: error: overrides='limit=60' is invalid: allowed none with a store file")
    assert digest(store) == before


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path, capsys):
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE x (a)")
    conn.commit()
    conn.close()
    before = digest(foreign)
    assert main(["campaign", "report", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qfault: error: store='{foreign}' is invalid: allowed a")
    assert "qfault campaign store" in err and "left untouched" in err
    assert main(["campaign", "run", str(foreign)]) == 2
    assert "a SQLite file but not a campaign store" in capsys.readouterr().err
    assert digest(foreign) == before


# -- report legends ---------------------------------------------------------------------------

def legend_boxes(monkeypatch) -> dict[str, list]:
    """Record, for every figure saved, ``(legend box, axes box)`` of each axes with a legend."""
    from matplotlib.figure import Figure

    saved: dict[str, list] = {}
    original = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        saved[Path(path).name] = [(ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer))
                                  for ax in fig.axes if ax.get_legend() is not None]
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def assert_outside(saved: dict[str, list], names: set[str]) -> None:
    assert names <= set(saved)
    for name in names:
        assert saved[name], f"{name} has a legend"
        for legend, axes in saved[name]:
            assert legend.width > 0 and legend.height > 0
            assert not legend.overlaps(axes), (name, legend, axes)


def test_report_legends_do_not_cover_the_data(campaign, tmp_path, monkeypatch, capsys):
    _, store = campaign
    saved = legend_boxes(monkeypatch)
    assert main(["campaign", "report", str(store), "--out", str(tmp_path / "report")]) == 0
    assert_outside(saved, {"accuracy.png", "outcomes.png"})
    for name in ("accuracy.png", "outcomes.png", "report.html"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_systolic_legend_does_not_cover_the_bars(tmp_path, monkeypatch):
    from qfault.campaign._report import _systolic_plots

    saved = legend_boxes(monkeypatch)
    rows = [SimpleNamespace(details={"fault": {"line": line, "x": x, "y": y},
                                     "outcomes": [2] * (x + 1) + [3] + [0] * 6})
            for line in "abc" for x in range(3) for y in range(2)]
    _systolic_plots(rows, tmp_path)
    assert_outside(saved, {"systolic_lines.png"})
