"""seedflow: declarative, reproducible workflow runner for RunComfy's Model API."""

from __future__ import annotations

from .errors import *
from .errors import __all__ as _error_names
from .executor import RunEvent, RunSummary, StopControl, resume_run, run_pipeline
from .models import ModelSpec, get_model, list_models
from .pipeline import load_pipeline
from .plan import Job, Plan, plan_file
from .store import RunStore, find_run, list_runs

__version__ = "0.1.0"

__all__ = [
    "__version__", "ModelSpec", "get_model", "list_models",
    "Job", "Plan", "plan_file", "load_pipeline",
    "run_pipeline", "resume_run", "RunSummary", "RunEvent", "StopControl",
    "RunStore", "list_runs", "find_run",
    *_error_names,
]
