"""The qfault command: subcommands, help, ls/cp, the demo through the campaign engine, and bad input."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from qfault.cli.main import SUBCOMMANDS, build_parser, main


def qfault_cmd(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qfault.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_help_lists_subcommands():
    result = qfault_cmd("--help")
    assert result.returncode == 0
    for cls in SUBCOMMANDS:
        assert cls.name in result.stdout and cls.help[:30] in " ".join(result.stdout.split())


def test_subcommands_are_classes_with_one_module_each(capsys):
    from qfault.cli._subcommand import Subcommand

    names = [cls.name for cls in SUBCOMMANDS]
    assert names == ["demo", "campaign", "train", "evaluate", "sensitivity", "ls", "cp"]
    assert len({cls.__module__ for cls in SUBCOMMANDS}) == len(SUBCOMMANDS)
    for cls in SUBCOMMANDS:
        assert isinstance(cls(), Subcommand)
        assert cls.__module__ == f"qfault.cli.{cls.name}"
        assert main([cls.name, "--help"]) == 0
        assert cls.description.split()[0] in capsys.readouterr().out
    args = build_parser().parse_args(["ls", "faults"])
    assert type(args.subcommand).__name__ == "Ls" and args.what == "faults"


def test_usage_errors_are_one_line_with_exit_code_2():
    for argv in (["demo", "--runs", "x"], ["campaign", "launch", "x.yaml"], ["nope"], ["ls", "colours"]):
        result = qfault_cmd(*argv)
        assert result.returncode == 2, argv
        assert result.stderr.startswith("qfault: error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr and "usage:" not in result.stderr


def test_ls_lists_registries(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "bit_flip" in out and "stuck_at" in out and "int<b>" in out and "digits_cnn" in out
    assert main(["ls", "faults"]) == 0
    assert capsys.readouterr().out.startswith("faults: ")


def test_ls_and_cp_config_templates(tmp_path, capsys):
    assert main(["ls", "configs"]) == 0
    out = capsys.readouterr().out
    for name in ("campaign_digits.yaml", "demo_weight_ber.yaml", "demo_act_prob.yaml"):
        assert name in out
    assert main(["cp", "campaign_digits", str(tmp_path)]) == 0
    copied = tmp_path / "campaign_digits.yaml"
    from qfault.campaign import CampaignSpec

    spec = CampaignSpec.from_yaml(copied)  # the template is a valid spec
    assert spec.sweep["fault.ber"][0] == 0.0001
    assert main(["cp", "campaign_digits", str(tmp_path)]) == 2  # never overwrites
    assert "does not exist yet" in capsys.readouterr().err
    assert main(["cp", "campaign_digit", str(tmp_path / "x.yaml")]) == 2
    assert "did you mean 'campaign_digits.yaml'?" in capsys.readouterr().err
    assert main(["cp", "campaign_digits", str(tmp_path / "no" / "x.yaml")]) == 2
    assert "existing folder" in capsys.readouterr().err


def test_every_shipped_template_is_a_valid_spec(tmp_path):
    from qfault.campaign import CampaignSpec
    from qfault.cli._templates import template_path, templates

    from qfault.cli.sensitivity import SensitivityJob, _nested_checks
    from qfault.config import check_dataclass, load_config

    assert len(templates()) >= 4
    for name in templates():
        with template_path(name) as path:
            if name.startswith("sensitivity_"):  # a `qfault sensitivity` spec
                job = check_dataclass(SensitivityJob, load_config(path, [], what="spec"), nested=_nested_checks())
                assert job.sensitivity.method, name
                continue
            if name.startswith("fat_"):  # a `qfault train` config (seed 001's layout)
                from qfault.train import FatConfig

                assert FatConfig.from_yaml(path).fault_injection.enabled, name
                continue
            spec = CampaignSpec.from_yaml(path, [f"store={tmp_path / name}.db"])
        assert spec.points(), name


def test_campaign_resume_without_a_store_is_a_clear_error(tmp_path, capsys):
    from qfault.cli._templates import template_path

    with template_path("campaign_digits.yaml") as path:
        code = main(["campaign", "resume", str(path), f"store={tmp_path / 'none.db'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("qfault: error: store=") and "qfault campaign run" in err
    assert not (tmp_path / "none.db").exists()


# -- demo ---------------------------------------------------------------------------------------

def demo_args(**changes) -> argparse.Namespace:
    args = build_parser().parse_args(["demo"])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def test_demo_templates_hold_the_demo_faults(tmp_path):
    """Weight BitFlip(ber) permanent on the codes, RandomValue(probability) on outputs, 5 runs."""
    from qfault.cli.demo import build_specs
    from qfault.faults import BitFlip, RandomValue
    from qfault.injection import InjectSpec, Site

    weight, act = build_specs(demo_args(), tmp_path)
    for spec in (weight, act):
        assert spec.repetitions == 5 and spec.seed == 0 and spec.stop.rule == "fixed"
        assert spec.model.source == "demo" and spec.model.name == "digits_cnn" and spec.dataset == "digits"
        assert len(spec.faults) == 1 and spec.store_path().parent == tmp_path
    w, a = InjectSpec.from_dict(weight.faults[0]), InjectSpec.from_dict(act.faults[0])
    assert isinstance(w.fault, BitFlip) and w.site == Site.WEIGHT and w.permanent and w.format is None
    assert isinstance(a.fault, RandomValue) and a.site == Site.OUTPUT and not a.permanent and a.format is None
    assert weight.sweep == {"fault.ber": [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]}
    assert act.sweep == {"fault.probability": [0.1, 0.5, 1.0, 2.0, 5.0, 10.0]}
    assert weight.store_path() != act.store_path()


def test_demo_flags_are_overrides(tmp_path):
    from qfault.cli.demo import SWEEPS, build_specs, overrides

    args = demo_args(runs=2, seed=7, epochs=3, weight_ber=[0.0, 0.1], act_prob=[20.0])
    assert overrides(args, SWEEPS[0]) == ["repetitions=2", "seed=7", "model.kwargs.epochs=3",
                                          "sweep.fault.ber=[0.0, 0.1]"]
    weight, act = build_specs(args, tmp_path)
    assert (weight.repetitions, weight.seed, weight.model.kwargs) == (2, 7, {"epochs": 3})
    assert weight.sweep == {"fault.ber": [0.0, 0.1]} and act.sweep == {"fault.probability": [20.0]}


def test_bad_probability_is_one_clear_error(tmp_path, capsys):
    code = main(["demo", "--act-prob", "150", "--out", str(tmp_path), "--cache-dir", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == "qfault: error: --act-prob=150.0 is invalid: allowed a number in [0.0, 100.0]\n"
    assert not (tmp_path / "results.json").exists()


def test_every_bad_demo_flag_at_once_before_any_work(tmp_path):
    result = qfault_cmd("demo", "--runs", "0", "--weight-ber", "0.1,2", "--act-prob=-1,5", "--epochs", "0",
                        "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "qfault: error: 4 invalid fields:"
    assert sorted(line.split("=")[0].strip() for line in lines[1:]) == ["--act-prob", "--epochs", "--runs",
                                                                         "--weight-ber"]
    assert "--weight-ber=2.0 is invalid: allowed a number in [0.0, 1.0]" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_demo_end_to_end_and_cache(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["demo", "--out", str(out), "--cache-dir", str(cache), "--runs", "2", "--epochs", "3",
            "--weight-ber", "0,1e-1", "--act-prob", "0,20", "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "accuracy_vs_rate.png").stat().st_size > 1000
    assert results["trained_now"] is True and results["num_runs"] == 2 and results["test_images"] == 449
    base = results["baseline_accuracy"]
    weight = results["sweeps"]["weight_bit_flip"]["results"]
    act = results["sweeps"]["activation_random_value"]["results"]
    assert [r["rate"] for r in weight] == [0.0, 0.1] and len(weight[0]["accuracies"]) == 2
    assert [r["rate"] for r in act] == [0.0, 20.0]
    # each campaign's golden run is the baseline (the first left the model as it was); rate 0 is
    # the clean model; heavy faults hurt
    assert [s["golden_accuracy"] for s in results["sweeps"].values()] == [base, base]
    assert weight[0]["mean_accuracy"] == base and act[0]["mean_accuracy"] == base
    assert weight[1]["mean_accuracy"] < base and act[1]["mean_accuracy"] < base
    assert "Baseline accuracy" in capsys.readouterr().out
    # the numbers are those of the campaign stores in the output folder
    from qfault.campaign import CampaignSpec, CampaignStore
    from qfault.cli.demo import build_specs

    for key, spec in zip(("weight_bit_flip", "activation_random_value"),
                         build_specs(build_parser().parse_args(args), out)):
        sweep = results["sweeps"][key]
        assert sweep["store"] == str(spec.store_path()) and sweep["fingerprint"] == spec.fingerprint()
        with CampaignStore(spec.store_path(), spec, create=False) as store:
            stored = [row.accuracy for row in store.trials()]
        assert stored == [acc for row in sweep["results"] for acc in row["accuracies"]]
        # the resolved spec beside the store opens it with `qfault campaign`
        assert CampaignSpec.from_yaml(sweep["spec"]).store_path() == spec.store_path()
        assert main(["campaign", "status", sweep["spec"]]) == 0
        assert "4 trials completed" in capsys.readouterr().out
    # second run loads the cache and reproduces the same numbers (same seed)
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["trained_now"] is False
    assert again["sweeps"] == results["sweeps"]
    # another seed gives other fault draws (a fresh store, not the old one)
    assert main(args + ["--seed", "1"]) == 0
    other = json.loads((out / "results.json").read_text())
    assert other["sweeps"]["weight_bit_flip"]["results"][1]["accuracies"] != weight[1]["accuracies"]
    # a corrupt cache is reported and rebuilt, not trusted
    (checkpoint,) = cache.glob("*.pt")
    checkpoint.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(args) == 0
    assert "unreadable" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["trained_now"] is True
