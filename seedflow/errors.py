"""The one exception hierarchy of seedflow.

Every error a person can cause or meet is a :class:`SeedflowError`; its message is written for
that person (what is wrong, where, how to fix it). The CLI prints ``format_message()`` without a
traceback and exits with ``exit_code``; anything else is a bug and keeps its traceback.

::

    SeedflowError
    ├── UsageError                  bad option or argument, missing token, ...
    ├── PipelineError               a pipeline is invalid: carries every Problem found
    ├── LockMismatch                a pipeline no longer expands to its lock file
    ├── LimitExceeded               --max-jobs / --max-images / --max-cost refused a plan
    ├── UnknownModelError           a model id that no bundled schema describes
    ├── RunError                    the run folder or journal is missing or unusable
    └── ApiError                    anything the RunComfy API (or the way to it) said
        ├── AuthenticationError     401/403, error_code 400004
        ├── InsufficientBalance     402, error_code 400002: stop submitting at once
        ├── ModelRejected           error_code 400001: no job of this model can succeed
        ├── InputRejected           422: the service refused the input (with its detail)
        ├── RequestNotFound         404, error_code 404001 / 403001
        ├── RateLimited             429 (retry_after when the service said)
        ├── ServerError             5xx
        ├── NetworkError            the service could not be reached or the answer was lost
        │   └── SubmitOutcomeUnknown  a submit whose answer was lost: it may have been billed
        ├── UnexpectedResponse      an answer seedflow cannot read (with an excerpt)
        ├── JobFailed               the job itself failed on the service
        └── DownloadError           an output file could not be fetched
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ApiError",
    "AuthenticationError",
    "DownloadError",
    "InputRejected",
    "InsufficientBalance",
    "JobFailed",
    "LimitExceeded",
    "LockMismatch",
    "ModelRejected",
    "NetworkError",
    "PipelineError",
    "Problem",
    "RateLimited",
    "RequestNotFound",
    "RunError",
    "SeedflowError",
    "ServerError",
    "SubmitOutcomeUnknown",
    "UnexpectedResponse",
    "UnknownModelError",
    "UsageError",
]


class SeedflowError(Exception):
    """Base of every error seedflow reports to a person."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def format_message(self) -> str:
        """The text shown to the user: the message, then the fix if one is known."""
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

    def __str__(self) -> str:
        return self.format_message()


class UsageError(SeedflowError):
    """A command was called with something it cannot use."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline, located as precisely as seedflow can.

    ``severity`` is ``"error"`` or ``"warning"``; warnings never make a pipeline invalid.
    """

    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    job: str | None = None
    variables: dict[str, Any] | None = field(default=None, compare=False)
    field: str | None = None
    hint: str | None = None
    severity: str = "error"

    def location(self) -> str:
        """``file:line:column`` as far as it is known (editors make these clickable)."""
        where = self.file or "<pipeline>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def format(self) -> str:
        """One block of text: location, severity, job, field, message and fix."""
        head = f"{self.location()}: {self.severity}"
        if self.job is not None:
            head += f" in job '{self.job}'"
        if self.field is not None:
            head += f", field '{self.field}'"
        lines = [f"{head}: {self.message}"]
        if self.variables:
            shown = ", ".join(f"{k}={v!r}" for k, v in self.variables.items())
            lines.append(f"  variables: {shown}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The problem as plain data (for ``--format json``)."""
        return {
            "severity": self.severity,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "job": self.job,
            "variables": self.variables,
            "field": self.field,
            "hint": self.hint,
        }


class PipelineError(SeedflowError):
    """A pipeline is invalid. Carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[Problem], *, file: str | None = None) -> None:
        self.problems = list(problems)
        self.file = file
        errors = [p for p in self.problems if p.severity == "error"]
        count = len(errors)
        noun = "error" if count == 1 else "errors"
        where = f" in {file}" if file else ""
        super().__init__(f"{count} {noun}{where}")

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def format_message(self) -> str:
        blocks = [p.format() for p in self.problems]
        blocks.append(f"pipeline invalid: {self.message}; nothing was sent")
        return "\n".join(blocks)


class LockMismatch(SeedflowError):
    """The pipeline no longer expands to the jobs recorded in its lock file."""


class LimitExceeded(SeedflowError):
    """A plan is larger than a limit the user set (or seedflow's default)."""


class UnknownModelError(SeedflowError):
    """No bundled schema describes this model id."""


class RunError(SeedflowError):
    """A run folder or its journal cannot be used."""


class ApiError(SeedflowError):
    """Something the API, or the way to it, answered.

    ``status_code`` is the HTTP status (when there was an answer), ``error_code`` RunComfy's
    numeric code (when it sent one), ``request_id`` the job concerned (when known).
    """

    #: True when trying the same call again later may succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status_code: int | None = None,
        error_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code
        self.error_code = error_code
        self.request_id = request_id


class AuthenticationError(ApiError):
    """The token is missing, wrong, expired or revoked, or the account is inactive."""


class InsufficientBalance(ApiError):
    """The account has no credit left: stop submitting at once."""


class ModelRejected(ApiError):
    """The service does not know this model id: no job of it can succeed."""


class InputRejected(ApiError):
    """The service refused the input; ``detail`` holds what it said."""

    def __init__(self, message: str, *, detail: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.detail = detail


class RequestNotFound(ApiError):
    """The request id is unknown, expired, deleted, or belongs to another account."""


class RateLimited(ApiError):
    """The service asked us to slow down."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(ApiError):
    """The service failed (5xx)."""

    retryable = True
    #: Seconds the service asked to wait (a 503's Retry-After), when it said.
    retry_after: float | None = None


class NetworkError(ApiError):
    """The service could not be reached, or its answer was lost on the way."""

    retryable = True


class SubmitOutcomeUnknown(NetworkError):
    """A submit was sent but its answer was lost: it may have been accepted and billed.

    Never resent automatically: a second submit is a second bill.
    """

    retryable = False


class UnexpectedResponse(ApiError):
    """An answer seedflow cannot read; the message quotes a short excerpt."""


class JobFailed(ApiError):
    """The service ran the job and it failed."""


class DownloadError(ApiError):
    """An output file could not be downloaded (expired URL, bad status, short body...)."""

    retryable = True
