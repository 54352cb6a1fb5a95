"""Campaign engine: specs, plans, trials, executors, stop rules, a resumable SQLite store,
outcomes and reports."""

from ._executors import Executor, LocalExecutor, RayExecutor
from ._outcomes import GoldenRun, OutcomeBatch, classify
from ._plan import fault_population
from ._report import write_report
from ._runner import (
    CampaignResult, PointSummary, build_campaign_model, campaign_status, load_batches, run_campaign, summarize,
)
from ._spec import CampaignSpec, ModelSource, StopRule, spec_diff
from ._stats import leveugle_margin, leveugle_sample_size, mean_ci, wilson_interval
from ._store import CampaignStore, StoreMismatch
from ._trial import TrialContext, TrialFunction, execute_trial, predict, trial_seed

__all__ = [
    "CampaignSpec", "ModelSource", "StopRule", "spec_diff",
    "run_campaign", "campaign_status", "summarize", "write_report", "CampaignResult", "PointSummary",
    "CampaignStore", "StoreMismatch", "Executor", "LocalExecutor", "build_campaign_model", "trial_seed",
    "fault_population", "load_batches", "predict",
    "RayExecutor", "TrialContext", "TrialFunction", "execute_trial",
    "classify", "OutcomeBatch", "GoldenRun",
    "leveugle_sample_size", "leveugle_margin", "mean_ci", "wilson_interval",
]
