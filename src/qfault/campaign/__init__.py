"""Campaign engine: specs, stop rules, a resumable SQLite store, outcomes and reports."""

from ._executors import RayExecutor, TrialContext, TrialFunction, execute_trial
from ._outcomes import GoldenRun, OutcomeBatch, classify
from ._report import write_report
from ._runner import (
    CampaignResult, Executor, LocalExecutor, PointSummary, build_campaign_model, campaign_status, fault_population,
    run_campaign, summarize, trial_seed,
)
from ._spec import CampaignSpec, ModelSource, StopRule, spec_diff
from ._stats import leveugle_margin, leveugle_sample_size, mean_ci, wilson_interval
from ._store import CampaignStore, StoreMismatch

__all__ = [
    "CampaignSpec", "ModelSource", "StopRule", "spec_diff",
    "run_campaign", "campaign_status", "summarize", "write_report", "CampaignResult", "PointSummary",
    "CampaignStore", "StoreMismatch", "Executor", "LocalExecutor", "build_campaign_model", "trial_seed",
    "fault_population",
    "RayExecutor", "TrialContext", "TrialFunction", "execute_trial",
    "classify", "OutcomeBatch", "GoldenRun",
    "leveugle_sample_size", "leveugle_margin", "mean_ci", "wilson_interval",
]
