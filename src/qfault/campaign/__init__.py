"""Campaign engine: specs, plans, trials, executors, stop rules, a resumable SQLite store,
outcomes and reports."""

from ._executors import Executor, LocalExecutor, RayExecutor
from ._outcomes import GoldenRun, OutcomeBatch, classify
from ._plan import fault_population
from ._report import write_report
from ._model import build_campaign_model, campaign_model, data_digest, model_digest
from ._runner import (
    CampaignResult, PointSummary, campaign_status, check_campaign, load_batches, run_campaign, summarize,
    validate_campaign,
)
from ._spec import CampaignSpec, ModelSource, StopRule, spec_diff
from ._stats import leveugle_margin, leveugle_sample_size, mean_ci, wilson_interval
from ._store import CampaignStore, StoreMismatch, read_store_spec, spec_extension
from ._trial import TrialContext, TrialFunction, execute_trial, predict, trial_seed

__all__ = [
    "CampaignSpec", "ModelSource", "StopRule", "spec_diff",
    "run_campaign", "campaign_status", "summarize", "write_report", "CampaignResult", "PointSummary",
    "CampaignStore", "StoreMismatch", "read_store_spec", "spec_extension", "Executor", "LocalExecutor", "build_campaign_model", "trial_seed",
    "fault_population", "load_batches", "predict", "campaign_model", "check_campaign", "validate_campaign", "model_digest",
    "data_digest",
    "RayExecutor", "TrialContext", "TrialFunction", "execute_trial",
    "classify", "OutcomeBatch", "GoldenRun",
    "leveugle_sample_size", "leveugle_margin", "mean_ci", "wilson_interval",
]
