"""Executors (trial functions, Ray on a local cluster) and the Parquet export of reports."""

from __future__ import annotations

import csv
import pickle
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from qfault import QFaultConfigError
from qfault.campaign import (
    CampaignSpec, CampaignStore, LocalExecutor, TrialContext, TrialFunction, build_campaign_model, load_batches,
    predict, run_campaign, summarize, write_report,
)
from qfault.campaign import _report
from qfault.cli.main import main
from test_campaign import rows
from test_campaign import spec_dict as base_spec_dict

QUIET = {"progress": False, "log": lambda *_: None}


def spec_dict(tmp_path: Path, store: str = "t.db", **changes) -> dict:
    return base_spec_dict(tmp_path, **{"limit": 100, "store": str(tmp_path / store), **changes})


def make_spec(tmp_path: Path, store: str = "t.db", **changes) -> CampaignSpec:
    return CampaignSpec.from_dict(spec_dict(tmp_path, store, **changes))


def trial_function(spec: CampaignSpec) -> TrialFunction:
    """The picklable trial of ``spec`` (model, batches and golden run built as run_campaign does)."""
    model = build_campaign_model(spec.model, log=lambda *_: None)
    batches = load_batches(spec)
    logits = predict(model, batches)
    labels = torch.cat([y for _, y in batches])
    golden = {"logits": logits, "labels": labels, "accuracy": 100.0 * float((logits.argmax(1) == labels).float().mean())}
    return TrialFunction(TrialContext(spec, model, batches, golden))


class UseTrialFunction:
    """Executor wrapper that runs ``function`` instead of run_campaign's closure."""

    def __init__(self, inner, function):
        self.inner, self.function = inner, function

    def map(self, fn, items):
        return self.inner.map(self.function, items)


# -- trial functions (no Ray) -----------------------------------------------------------------

def test_trial_function_gives_the_rows_of_run_campaign_and_pickles(tmp_path):
    reference = make_spec(tmp_path, "reference.db")
    run_campaign(reference, **QUIET)
    spec = make_spec(tmp_path, "function.db")
    function = pickle.loads(pickle.dumps(trial_function(spec)))  # plain pickle: no closure inside
    run_campaign(spec, executor=UseTrialFunction(LocalExecutor(), function), **QUIET)
    assert rows(spec.store_path()) == rows(reference.store_path())
    assert len(rows(spec.store_path())) == 6


def test_a_trial_takes_its_faults_from_the_campaign_plan(tmp_path):
    from qfault.injection import InjectSpec

    function = trial_function(make_spec(tmp_path))  # no plan given: resolved on first use
    row = function((1, {"fault.ber": 0.02}, 0))
    assert (row.point, row.repetition, row.point_values) == (1, 0, {"fault.ber": 0.02}) and row.faults > 0
    (planned,) = function.context.plan.points[1].faults
    assert isinstance(planned, InjectSpec) and planned.fault.ber == 0.02
    with pytest.raises(ValueError, match="point 1"):  # values that are not the plan's point 1
        function((1, {"fault.ber": 0.5}, 0))


def test_ray_flags_need_the_ray_executor(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path)))
    assert main(["campaign", "run", str(path), "--no-progress", "--workers", "2"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "t.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_gpus_per_worker_on_a_machine_without_gpus_is_refused_before_anything(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path)))
    code = main(["campaign", "run", str(path), "--no-progress", "--executor", "ray", "--gpus-per-worker", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("qfault: error: --gpus-per-worker=1.0 is invalid: allowed at most this machine's 0 GPU(s)")
    assert not (tmp_path / "t.db").exists()


# -- Parquet ----------------------------------------------------------------------------------

def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def as_csv_text(column: str, value, kind: str) -> str:
    return kind.format(value) if kind.startswith("{") else str(value)


def test_parquet_tables_read_back_equal_the_csv(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    spec = make_spec(tmp_path, sweep={"fault.ber": [0.0, 0.02], "format": ["int8", "int4"]}, repetitions=2)
    result = run_campaign(spec, **QUIET)
    out = tmp_path / "report"
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        written = write_report(result, store, out, plots=False, parquet=True)
        tables = _report._tables(result, store)
    assert {p.name for p in written} >= {"points.parquet", "trials.parquet", "points.csv", "trials.csv"}
    for name, table in zip(("points", "trials"), tables):
        csv_rows = read_csv(out / f"{name}.csv")
        parquet = pq.read_table(out / f"{name}.parquet")
        assert parquet.column_names == csv_rows[0]
        data = parquet.to_pylist()
        assert len(data) == len(csv_rows) - 1 == (4 if name == "points" else 8)
        for record, csv_row in zip(data, csv_rows[1:]):
            assert [as_csv_text(c, record[c], k) for c, k in zip(table.header, table.kinds)] == csv_row
        types = dict(zip(parquet.column_names, map(str, parquet.schema.types)))
        assert types["point"] == "int64" and types["format"] == "string"
        assert types["accuracy_mean" if name == "points" else "accuracy"] == "double"
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert [r["format"] for r in trials[:2]] == ['"int8"', '"int8"']
    assert trials[0]["masked"] == trials[0]["images"] == 100  # BER 0: nothing changes


def test_report_without_pyarrow_skips_parquet_or_says_what_is_missing(tmp_path, monkeypatch):
    spec = make_spec(tmp_path, repetitions=1, sweep={"fault.ber": [0.0]})
    result = run_campaign(spec, **QUIET)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        written = write_report(result, store, tmp_path / "r", plots=False)
    assert sorted(p.name for p in written) == ["points.csv", "summary.json", "trials.csv"]
    with CampaignStore(spec.store_path(), spec, create=False) as store:
        with pytest.raises(QFaultConfigError, match="pyarrow"):
            write_report(summarize(spec, store), store, tmp_path / "r2", plots=False, parquet=True)


# -- Ray (local cluster) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # 4 logical CPU slots (on any number of cores): the module's 2-worker executor plus the CLI's
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_executor(ray_cluster):
    from qfault.campaign import RayExecutor

    with RayExecutor(num_workers=2) as executor:
        yield executor
    assert ray_cluster.is_initialized()  # it joined the cluster, so it leaves it running


@pytest.mark.ray
def test_ray_executor_gives_the_rows_of_the_local_executor(tmp_path, ray_executor):
    local = make_spec(tmp_path, "local.db")
    run_campaign(local, executor=LocalExecutor(), **QUIET)
    remote = make_spec(tmp_path, "ray.db")
    result = run_campaign(remote, executor=ray_executor, **QUIET)
    assert [p.trials for p in result.points] == [3, 3]
    assert rows(remote.store_path()) == rows(local.store_path())
    assert ray_executor.devices() == ["cpu", "cpu"]
    # the picklable trial function, shipped once per worker, gives the same rows too
    function = make_spec(tmp_path, "function.db")
    run_campaign(function, executor=UseTrialFunction(ray_executor, trial_function(function)), **QUIET)
    assert rows(function.store_path()) == rows(local.store_path())


@pytest.mark.ray
def test_ray_executor_with_the_adaptive_stop_rule(tmp_path, ray_executor):
    stop = {"rule": "ci", "half_width": 0.5, "min_repetitions": 3, "max_repetitions": 5}
    local = make_spec(tmp_path, "local.db", stop=stop)
    run_campaign(local, **QUIET)
    remote = make_spec(tmp_path, "ray.db", stop=stop)
    run_campaign(remote, executor=ray_executor, **QUIET)
    assert rows(remote.store_path()) == rows(local.store_path())


@pytest.mark.ray
def test_ray_map_streams_in_completion_order_and_raises_worker_errors(ray_executor, tmp_path):
    release = tmp_path / "release"

    def wait_or_return(item):
        """A "slow" item holds its worker until the driver has a result in hand (or 60 s pass:
        then an executor that yields in submission order fails the test instead of hanging)."""
        if item == "quick":
            return "quick"
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "slow" if release.exists() else "slow, never released"

    stream = ray_executor.map(wait_or_return, ["slow", "quick", "quick", "quick"])
    first = next(stream)  # a quick item comes back while the slow one still holds its worker
    release.touch()
    assert first == "quick"
    assert sorted([first, *stream]) == ["quick", "quick", "quick", "slow"]

    def fail(item):
        if item == 2:
            raise ValueError("trial 2 failed")
        return item

    with pytest.raises(ValueError, match="trial 2 failed"):
        list(ray_executor.map(fail, range(4)))
    assert sorted(ray_executor.map(lambda x: x * x, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.ray
def test_cli_runs_on_ray(tmp_path, ray_cluster):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec_dict(tmp_path, "cli.db", repetitions=2)))
    assert main(["campaign", "run", str(path), "--no-progress", "--executor", "ray", "--workers", "2"]) == 0
    local = make_spec(tmp_path, "local.db", repetitions=2)
    run_campaign(local, **QUIET)
    assert rows(tmp_path / "cli.db") == rows(local.store_path())
    assert ray_cluster.is_initialized()


@pytest.mark.ray
def test_ray_executor_fails_clearly_when_the_cluster_cannot_place_its_workers(ray_cluster):
    from qfault.campaign import RayExecutor

    executor = RayExecutor(num_workers=1, num_cpus_per_worker=64, start_timeout_s=1.0)
    with pytest.raises(QFaultConfigError, match="num_workers"):
        list(executor.map(abs, [1]))
    assert ray_cluster.is_initialized()
    with pytest.raises(QFaultConfigError, match="num_workers"):
        RayExecutor(num_workers=0)


@pytest.mark.ray
def test_gpus_per_worker_without_gpus_is_refused_at_once(ray_cluster):
    """No waiting for GPUs the cluster does not have: the check comes before any actor is placed
    (it used to wait start_timeout_s, then name num_workers)."""
    from qfault.campaign import RayExecutor

    if ray_cluster.cluster_resources().get("GPU", 0):
        pytest.skip("this cluster has GPUs")
    executor = RayExecutor(num_workers=2, num_gpus_per_worker=1, start_timeout_s=300.0)
    with pytest.raises(QFaultConfigError, match=r"num_gpus_per_worker=1 is invalid: allowed at most the Ray "
                                                r"cluster's GPUs \(0\) across 2 worker\(s\) \(no GPU here"):
        list(executor.map(abs, [1]))
    assert executor._actors == [] and ray_cluster.is_initialized()


@pytest.mark.ray
@pytest.mark.parametrize("template, overrides", [
    ("campaign_digits.yaml", ["limit=60", "repetitions=2", "sweep.fault.ber=[0.001, 0.03]"]),
    ("campaign_seed000.yaml", ["limit=60", "repetitions=2", "sweep.mitigation.rate=[2]",
                               "sweep.mitigation.method=[raw, cvm]"]),
])
def test_ray_runs_the_shipped_brevitas_templates_as_the_local_executor(tmp_path, ray_executor, capsys, template,
                                                                         overrides):
    """Brevitas models do not pickle: each worker builds the model from the spec (and proves by its
    digest that it built the driver's), so the templates' rows equal the local executor's."""
    assert main(["cp", template, str(tmp_path)]) == 0
    spec_path = str(tmp_path / template)
    local = CampaignSpec.from_yaml(spec_path, [*overrides, f"store={tmp_path / 'local.db'}"])
    run_campaign(local, **QUIET)
    remote = CampaignSpec.from_yaml(spec_path, [*overrides, f"store={tmp_path / 'ray.db'}"])
    result = run_campaign(remote, executor=ray_executor, **QUIET)
    assert [p.trials for p in result.points] == [2, 2]
    assert rows(remote.store_path()) == rows(local.store_path())
