"""``qfault sensitivity``: the shipped template runs end to end; bad specs are one clear error."""

from __future__ import annotations

import json

import yaml

from qfault.cli._templates import template_path
from qfault.cli.main import main


def test_sensitivity_template_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    with template_path("sensitivity_digits.yaml") as path:
        code = main(["sensitivity", str(path), "limit=64", "top=10", f"model.kwargs.cache={tmp_path}",
                     "model.kwargs.epochs=1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "delta ranking of 78976 bits on 64 images" in printed and "1.weight" in printed
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["bits"] == 78976 and len(ranking["top"]) == 10
    assert [t["name"] for t in ranking["tensors"]] == ["1.weight", "4.weight", "8.weight"]
    faults = yaml.safe_load((out / "faults.yaml").read_text())["faults"]
    assert sum(len(spec["fault"]["sites"]) for spec in faults) == 10
    assert {(spec["names"][0], tuple(site)) for spec in faults for site in spec["fault"]["sites"]} == {
        (top["tensor"].rsplit(".", 1)[0], (top["element"], top["bit"])) for top in ranking["top"]}
    assert (out / "layers.png").stat().st_size > 0 and (out / "bit_positions.png").stat().st_size > 0


def test_bad_specs_are_reported_at_once(tmp_path, capsys):
    with template_path("sensitivity_digits.yaml") as path:
        code = main(["sensitivity", str(path), "sensitivity.method=hess", "top=0", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "sensitivity.method='hess'" in err and "top=0" in err
    assert not (tmp_path / "o").exists()
