"""The qfault command: help, ls, the demo end to end, and bad input."""

import json
import os
import subprocess
import sys

import pytest

from qfault.cli.main import main


def qfault_cmd(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qfault.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_help_lists_subcommands():
    result = qfault_cmd("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout and "ls" in result.stdout


def test_ls_lists_registries(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "bit_flip" in out and "stuck_at" in out and "int<b>" in out and "digits_cnn" in out


def test_bad_probability_is_one_clear_error(tmp_path, capsys):
    code = main(["demo", "--act-prob", "150", "--out", str(tmp_path), "--cache-dir", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "act-prob=150.0" in err and "[0.0, 100.0]" in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_demo_end_to_end_and_cache(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["demo", "--out", str(out), "--cache-dir", str(cache), "--runs", "2", "--epochs", "3",
            "--weight-ber", "0,1e-1", "--act-prob", "0,20", "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "accuracy_vs_rate.png").stat().st_size > 1000
    assert results["trained_now"] is True
    base = results["baseline_accuracy"]
    weight = results["sweeps"]["weight_bit_flip"]["results"]
    act = results["sweeps"]["activation_random_value"]["results"]
    assert [r["rate"] for r in weight] == [0.0, 0.1] and len(weight[0]["accuracies"]) == 2
    # rate 0 is the clean model; heavy faults hurt
    assert weight[0]["mean_accuracy"] == base and act[0]["mean_accuracy"] == base
    assert weight[1]["mean_accuracy"] < base and act[1]["mean_accuracy"] < base
    assert "Baseline accuracy" in capsys.readouterr().out
    # second run loads the cache and reproduces the same numbers (same seed)
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["trained_now"] is False
    assert again["sweeps"] == results["sweeps"]
    # a corrupt cache is reported and rebuilt, not trusted
    (checkpoint,) = cache.glob("*.pt")
    checkpoint.write_bytes(b"not a checkpoint")
    assert main(args) == 0
    assert "unreadable" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["trained_now"] is True


def test_ls_and_cp_config_templates(tmp_path, capsys):
    assert main(["ls", "configs"]) == 0
    assert "campaign_digits.yaml" in capsys.readouterr().out
    assert main(["cp", "campaign_digits", str(tmp_path)]) == 0
    copied = tmp_path / "campaign_digits.yaml"
    from qfault.campaign import CampaignSpec

    spec = CampaignSpec.from_yaml(copied)  # the template is a valid spec
    assert spec.sweep["fault.ber"][0] == 0.0001
    assert main(["cp", "campaign_digits", str(tmp_path)]) == 2  # never overwrites
    assert "does not exist yet" in capsys.readouterr().err
    assert main(["cp", "nope", str(tmp_path)]) == 2
