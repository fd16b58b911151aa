"""seedflow: declarative, reproducible workflow runner for RunComfy's Model API."""

from __future__ import annotations

from .errors import *  # noqa: F403
from .errors import __all__ as _error_names
from .models import ModelSpec, get_model, list_models

__version__ = "0.1.0"

__all__ = ["__version__", "ModelSpec", "get_model", "list_models", *_error_names]
