"""seedflow: declarative, reproducible workflow runner for RunComfy's Model API."""

from __future__ import annotations

from .errors import (
    ApiError,
    AuthenticationError,
    DownloadError,
    InputRejected,
    InsufficientBalance,
    JobFailed,
    LimitExceeded,
    LockMismatch,
    ModelRejected,
    NetworkError,
    PipelineError,
    Problem,
    RateLimited,
    RequestNotFound,
    RunError,
    SeedflowError,
    ServerError,
    SubmitOutcomeUnknown,
    UnexpectedResponse,
    UnknownModelError,
    UsageError,
)
from .executor import RunEvent, RunSummary, StopControl, resume_run, run_pipeline
from .models import ModelSpec, get_model, list_models
from .pipeline import load_pipeline
from .plan import Job, Plan, plan_file
from .store import RunStore, find_run, list_runs

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AuthenticationError",
    "DownloadError",
    "InputRejected",
    "InsufficientBalance",
    "Job",
    "JobFailed",
    "LimitExceeded",
    "LockMismatch",
    "ModelRejected",
    "ModelSpec",
    "NetworkError",
    "PipelineError",
    "Plan",
    "Problem",
    "RateLimited",
    "RequestNotFound",
    "RunError",
    "RunEvent",
    "RunStore",
    "RunSummary",
    "SeedflowError",
    "ServerError",
    "StopControl",
    "SubmitOutcomeUnknown",
    "UnexpectedResponse",
    "UnknownModelError",
    "UsageError",
    "__version__",
    "find_run",
    "get_model",
    "list_models",
    "list_runs",
    "load_pipeline",
    "plan_file",
    "resume_run",
    "run_pipeline",
]
