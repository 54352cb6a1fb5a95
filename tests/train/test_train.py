"""Fault-aware training (seed 001): config, schedule, checkpoints and resume, CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from qfault import QFaultConfigError
from qfault.cli.main import main
from qfault.data import build_dataset, build_model
from qfault.train import FatConfig, FaultInjectionConfig, fault_specs, faulty_steps, train_fat

SEED_DOC = next(Path(__file__).resolve().parents[3].glob("shared/seeds/001_*.txt"), None)


def _yaml_blocks(text: str) -> list[dict]:
    """The YAML examples of the seed's document."""
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return [yaml.safe_load(b) for b in blocks]


@pytest.mark.skipif(SEED_DOC is None, reason="seed document not beside the project")
def test_every_example_config_of_the_seed_loads():
    examples = [b for b in _yaml_blocks(SEED_DOC.read_text()) if isinstance(b, dict)]
    assert len(examples) >= 15
    for data in examples:
        config = FatConfig.from_dict(data)
        assert isinstance(config.fault_injection, FaultInjectionConfig)
    complete = FatConfig.from_dict(next(b for b in examples if "hw_mask" in b.get("fault_injection", {})))
    assert complete.fault_injection.frequency_value == 1024 and complete.fault_injection.gradient_mode == "ste"


def test_documented_defaults():
    fi = FaultInjectionConfig()
    assert (fi.enabled, fi.probability, fi.injection_type, fi.apply_during, fi.mode, fi.injection_layer) == (
        False, 5.0, "random", "train", "full_model", -1)
    assert (fi.epoch_interval, fi.step_interval, fi.seed, fi.hw_mask, fi.frequency_value, fi.gradient_mode) == (
        1, 0.5, None, False, 1024, "ste")


def test_every_bad_field_at_once():
    with pytest.raises(QFaultConfigError) as info:
        FatConfig.from_dict({"fault_injection": {"probabilty": 5, "mode": "x", "step_interval": 2, "seed": "a"},
                             "training": {"epochs": 0}, "optimizer": {"name": "rmsprop"}, "colour": 1})
    message = str(info.value)
    for part in ("did you mean 'probability'", "fault_injection.mode='x'", "fault_injection.step_interval=2",
                 "fault_injection.seed='a'", "training.epochs=0", "optimizer.name='rmsprop'", "colour"):
        assert part in message, part


def test_fault_specs_follow_the_section():
    spec, = fault_specs(FaultInjectionConfig(enabled=True, probability=3.0, injection_type="msb_flip",
                                             gradient_mode="zero_faulty", mode="layer", injection_layer=2), seed=7)
    assert spec.site.value == "output" and spec.indices == (2,) and spec.gradient == "zero_faulty"
    assert spec.fault.probability == 3.0 and type(spec.fault).__name__ == "MSBFlip" and spec.seed == 7
    spec, = fault_specs(FaultInjectionConfig(mode="layer", hw_mask=True, frequency_value=64), seed=1)
    assert spec.layer_mode == "random_per_run" and spec.fault.frequency_value == 64


def test_schedule_epoch_and_step_intervals():
    fi = FaultInjectionConfig(enabled=True, epoch_interval=3, step_interval=0.3)
    counts = [int(faulty_steps(fi, 5, epoch, 1000).sum()) for epoch in range(7)]
    assert counts[1] == counts[2] == counts[4] == counts[5] == 0
    assert all(240 < c < 360 for c in (counts[0], counts[3], counts[6]))
    assert torch.equal(faulty_steps(fi, 5, 3, 50), faulty_steps(fi, 5, 3, 50))  # seeded
    assert not torch.equal(faulty_steps(fi, 5, 0, 50), faulty_steps(fi, 5, 3, 50))  # redrawn per epoch
    assert not faulty_steps(FaultInjectionConfig(enabled=True, apply_during="eval"), 5, 0, 50).any()
    assert not faulty_steps(FaultInjectionConfig(enabled=True, step_interval=0.0), 5, 0, 50).any()
    assert faulty_steps(FaultInjectionConfig(enabled=True, step_interval=1.0), 5, 0, 50).all()


def _config(tmp_path, **fault) -> FatConfig:
    return FatConfig.from_dict({"name": "t", "training": {"epochs": 3, "batch_size": 128},
                                "optimizer": {"learning_rate": 0.005},
                                "fault_injection": {"enabled": True, "probability": 5.0, **fault},
                                "checkpoint": {"dir": str(tmp_path)}})


def _model():
    torch.manual_seed(0)  # the same initial weights for every run of a test
    return build_model("digits_cnn")


def _data():
    return build_dataset({"name": "digits", "train": True}), build_dataset("digits")


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    import qfault.train._trainer as trainer

    train, val = _data()
    config = FatConfig.from_dict({**_config(tmp_path).to_dict(), "training": {"epochs": 2, "batch_size": 128}})
    straight = _model()
    result = train_fat(straight, train, val, config, out_dir=tmp_path / "a", progress=False)
    assert [h.epoch for h in result.history] == [0, 1]
    assert all(h.faulty_steps > 0 for h in result.history) and result.history[0].val_faulty_accuracy is not None
    original = trainer._train_epoch

    def crash_in_epoch_1(*args):
        if args[-2] == 1:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(trainer, "_train_epoch", crash_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_fat(_model(), train, val, config, out_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(trainer, "_train_epoch", original)
    changed = FatConfig.from_dict({**config.to_dict(), "optimizer": {"learning_rate": 0.001}})
    with pytest.raises(QFaultConfigError, match="changed sections: optimizer"):
        train_fat(_model(), train, val, changed, out_dir=tmp_path / "b", resume=True, progress=False)
    resumed = _model()
    again = train_fat(resumed, train, val, config, out_dir=tmp_path / "b", resume=True, progress=False)
    assert [h.epoch for h in again.history] == [0, 1]
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert (tmp_path / "a" / "best.pt").exists() and (tmp_path / "a" / "curves.png").exists()
    header = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_accuracy,val_accuracy,val_faulty_accuracy")


def test_nothing_written_is_overwritten_and_bad_checkpoints_are_refused(tmp_path):
    train, val = _data()
    config = FatConfig.from_dict({**_config(tmp_path).to_dict(), "training": {"epochs": 1, "batch_size": 256}})
    train_fat(_model(), train, val, config, out_dir=tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(QFaultConfigError, match="last.pt exists: pass --resume"):
        train_fat(_model(), train, val, config, out_dir=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(QFaultConfigError, match="checkpoint=.*readable qfault training checkpoint.*untouched"):
        train_fat(_model(), train, val, config, out_dir=tmp_path / "bad", resume=True, progress=False)
    assert (tmp_path / "bad" / "last.pt").read_bytes() == b"not a checkpoint"
    with pytest.raises(QFaultConfigError, match="QuantIdentity/QuantReLU/QuantHardTanh.*no injectable layer"):
        train_fat(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), train, val, config,
                  progress=False)


def test_cli_train(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cp", "fat_digits.yaml", str(tmp_path)]) == 0
    assert main(["train", "--config", "fat_digits.yaml", "training.epochs=1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best validation accuracy" in out and (tmp_path / "experiments" / "fat-digits" / "last.pt").exists()
    assert main(["train", "--config", "fat_digits.yaml", "training.epochs=2", "--resume", "--no-progress"]) == 2
    assert "changed sections: training" in capsys.readouterr().err
    assert main(["train", "--config", "fat_digits.yaml", "model.name=digits_cn", "name=x", "--no-progress"]) == 2
    assert "model.name='digits_cn'" in capsys.readouterr().err
    assert main(["train", "--config", "fat_digits.yaml", "model.kwargs.depth=3", "name=y", "--no-progress"]) == 2
    assert "model.kwargs.depth=3" in capsys.readouterr().err


@pytest.mark.skipif(SEED_DOC is None, reason="seed document not beside the project")
def test_the_seeds_example_configs_run_on_the_embedded_default(tmp_path, monkeypatch):
    """Every example config of the seed runs with only ``dataset`` changed (and one epoch)."""
    monkeypatch.chdir(tmp_path)
    examples = [b for b in _yaml_blocks(SEED_DOC.read_text()) if isinstance(b, dict) and "fault_injection" in b]
    complete = [b for b in examples if {"model", "training"} <= set(b)]
    assert len(complete) == 2  # the FAT training and the fault evaluation configs (quant_cnv)
    for index, data in enumerate(complete + examples[:1]):
        path = tmp_path / f"example{index}.yaml"
        path.write_text(yaml.safe_dump(data))
        assert main(["train", "--config", str(path), "dataset=digits", "training.epochs=1", f"name=ex{index}",
                     f"checkpoint.dir={tmp_path / 'runs'}", "--no-progress"]) == 0
        assert (tmp_path / "runs" / f"ex{index}" / "last.pt").exists()
