"""``qfault evaluate``: seed 001's evaluation through the campaign engine."""

from __future__ import annotations

import json

import pytest
import torch

from qfault.cli.main import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits CNN trained for one epoch with faults (``qfault train``), and its config."""
    root = tmp_path_factory.mktemp("eval")
    assert main(["cp", "fat_digits.yaml", str(root)]) == 0
    config = root / "fat_digits.yaml"
    checkpoint_dir = root / "experiments"
    assert main(["train", "--config", str(config), "training.epochs=1", f"checkpoint.dir={checkpoint_dir}",
                 "--no-progress"]) == 0
    return config, checkpoint_dir / "fat-digits" / "best.pt"


def test_single_probability_with_statistics(trained, tmp_path, capsys):
    config, checkpoint = trained
    output = tmp_path / "single.json"
    assert main(["evaluate", "--config", str(config), "--checkpoint", str(checkpoint), "--probability", "10",
                 "--output", str(output), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for line in ("Using device: cpu", "Dataset: digits", "Model: digits_cnn", "Injection layers: 3",
                 "Baseline accuracy:", "Fault accuracy:", "Accuracy degradation:", "FAULT INJECTION STATISTICS",
                 "TOTAL"):
        assert line in out, line
    data = json.loads(output.read_text())
    assert {"config_file", "checkpoint", "model", "dataset", "num_injection_layers", "fault_config",
            "baseline_accuracy", "fault_probability", "fault_accuracy", "accuracy_degradation"} <= set(data)
    assert data["fault_config"] == {"mode": "full_model", "injection_type": "random"}
    assert data["accuracy_degradation"] == pytest.approx(data["baseline_accuracy"] - data["fault_accuracy"])
    layers = data["statistics"]["layers"]
    assert len(layers) == 3 and all(8 < layer["injection_rate"] < 12 for layer in layers.values())
    assert (tmp_path / "single.report" / "report.html").exists()


def test_sweep_with_runs_resumes(trained, tmp_path, capsys):
    config, checkpoint = trained
    output = tmp_path / "sweep.json"
    args = ["evaluate", "--config", str(config), "--checkpoint", str(checkpoint), "--sweep", "0,20",
            "--num-runs", "3", "--injection-type", "msb_flip", "--output", str(output), "--no-progress"]
    assert main(args) == 0
    first = json.loads(output.read_text())["sweep_results"]
    assert first["probabilities"] == [0.0, 20.0] and first["num_runs"] == 3
    clean, faulty = first["results"]
    assert clean["accuracies"] == [clean["accuracies"][0]] * 3 and clean["std_accuracy"] == 0.0
    assert len(faulty["accuracies"]) == 3 and faulty["mean_accuracy"] < clean["mean_accuracy"]
    stores = list(tmp_path.glob("sweep.*.qfault.db"))
    assert len(stores) == 1
    assert main(args) == 0  # the same evaluation again: resumed from its store, same numbers
    assert json.loads(output.read_text())["sweep_results"] == first
    assert "Sweep Summary" in capsys.readouterr().out


def test_bad_checkpoints_and_arguments(trained, tmp_path, capsys):
    config, checkpoint = trained
    base = ["evaluate", "--config", str(config), "--no-progress", "--output", str(tmp_path / "x.json")]
    assert main(base + ["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "--checkpoint=" in capsys.readouterr().err
    state = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    state["1.weight"] = state["1.weight"][:, :, :2]
    torch.save({"model_state_dict": state}, tmp_path / "other.pt")
    assert main(base + ["--checkpoint", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err
    assert "key '1.weight'" in err and "checkpoint shape (16, 1, 2, 3), model shape (16, 1, 3, 3)" in err
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    assert main(base + ["--checkpoint", str(tmp_path / "corrupt.pt")]) == 2
    assert "readable PyTorch checkpoint" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(checkpoint), "--sweep", "1,x"]) == 2
    assert "--sweep='1,x'" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(checkpoint), "--probability", "150"]) == 2
    assert "--probability=150.0" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
