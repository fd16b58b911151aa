"""The async client of RunComfy's Model API queue: submit, status, result, cancel, wait, download.

::

    async with Client() as client:                      # token from RUNCOMFY_API_TOKEN
        sub = await client.submit("bytedance/seedream-4-0/sequential", {"text": "..."})
        result = await client.wait(sub.request_id)
        for i, url in enumerate(result.outputs.images):
            await client.download(url, folder / f"{i}.png")

Only :class:`seedflow.errors.ApiError` subclasses escape (mapped in :mod:`seedflow.http`). The
token goes only to the API's own origin: output files are fetched by a second HTTP client that
has no token at all, and httpx drops ``Authorization`` on redirects to another origin.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import anyio
import httpx

from .download import Download, fetch_file
from .errors import (
    ApiError,
    AuthenticationError,
    DownloadError,
    JobFailed,
    ModelRejected,
    NetworkError,
    RateLimited,
    RequestNotFound,
    ServerError,
    SubmitOutcomeUnknown,
    UnexpectedResponse,
    UsageError,
)
from .http import (
    certainly_not_sent,
    check_base_url,
    excerpt,
    install_asyncio_backend,
    map_transport_error,
    raise_for_answer,
    server_message,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_REQUESTS_PER_SECOND",
    "TERMINAL_STATES",
    "CancelOutcome",
    "Client",
    "Download",
    "Outputs",
    "PartialOutputs",
    "PollPolicy",
    "Result",
    "RetryPolicy",
    "Status",
    "Submission",
    "normalise_state",
    "resolve_base_url",
    "resolve_token",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
#: RunComfy publishes no rate limit; this keeps a large sweep polite by default.
DEFAULT_MAX_REQUESTS_PER_SECOND = 20.0
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
KNOWN_STATES = frozenset({"in_queue", "in_progress"}) | TERMINAL_STATES
# The result endpoint spells success "succeeded"; American spelling of cancelled is tolerated.
_STATE_ALIASES = {"succeeded": "completed", "canceled": "cancelled"}
_TOKEN_VARS = ("RUNCOMFY_API_TOKEN", "RUNCOMFY_TOKEN")
_TOKEN_HINT = (
    "create a token in your RunComfy profile, then: export RUNCOMFY_API_TOKEN=<token> "
    "(or use --offline to run against the local emulator)"
)


_ClientT = TypeVar("_ClientT", bound="Client")

#: What a bearer token may contain (RFC 6750 b64token, loosened to any visible ASCII).
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def resolve_token(env: Mapping[str, str] = os.environ) -> str | None:
    """The API token from ``RUNCOMFY_API_TOKEN``, else ``RUNCOMFY_TOKEN``; None when unset."""
    for name in _TOKEN_VARS:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def resolve_base_url(base_url: str | None = None, env: Mapping[str, str] = os.environ) -> str:
    """The API base URL: the argument, else ``RUNCOMFY_BASE_URL``, else RunComfy's; checked."""
    chosen = base_url or env.get("RUNCOMFY_BASE_URL", "").strip() or DEFAULT_BASE_URL
    return str(check_base_url(chosen))


def normalise_state(raw: str) -> str:
    """A state as seedflow names it (``succeeded`` -> ``completed``); unknown ones unchanged."""
    state = raw.strip().lower()
    return _STATE_ALIASES.get(state, state)


# --- answers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """The service accepted a job: its id and where to ask about it."""

    request_id: str
    status_url: str
    result_url: str
    cancel_url: str


@dataclass(frozen=True)
class Status:
    """Where a job stands. ``queue_position`` is set only while ``in_queue``."""

    request_id: str
    state: str
    queue_position: int | None = None

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more."""
        return self.state in TERMINAL_STATES

    @property
    def known(self) -> bool:
        """False for a state the documentation does not describe."""
        return self.state in KNOWN_STATES


@dataclass(frozen=True)
class Outputs:
    """Output URLs; ``image``/``video`` (one URL) are folded into ``images``/``videos``."""

    images: tuple[str, ...] = ()
    videos: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images) + len(self.videos)


@dataclass(frozen=True)
class PartialOutputs:
    """A completed job returned fewer outputs than it asked (and was billed) for."""

    received: int
    requested: int

    def __str__(self) -> str:
        return f"received {self.received} of {self.requested} requested outputs"


@dataclass(frozen=True)
class Result:
    """What the result endpoint said; ``outputs`` is empty unless the job completed."""

    request_id: str
    state: str
    outputs: Outputs
    raw: Mapping[str, Any] = field(repr=False)
    error: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more."""
        return self.state in TERMINAL_STATES

    def partial(self, requested: int) -> PartialOutputs | None:
        """Both numbers when a completed job returned fewer than ``requested`` outputs, else None."""
        if self.state == "completed" and len(self.outputs) < requested:
            return PartialOutputs(received=len(self.outputs), requested=requested)
        return None

    def raise_for_failure(self) -> None:
        """Raise :class:`JobFailed` (with the service's reason) if the job failed."""
        if self.state == "failed":
            raise JobFailed(
                f"job {self.request_id} failed: {self.error}", request_id=self.request_id
            )


@dataclass(frozen=True)
class CancelOutcome:
    """``outcome`` is ``cancelled``, or ``not_cancellable`` (already running or finished)."""

    request_id: str
    status: str
    outcome: Literal["cancelled", "not_cancellable"]


# --- policies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter; ``Retry-After`` is honoured when given."""

    attempts: int = 5  # tries per call, the first included
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 120.0  # a longer Retry-After is reported instead of slept through

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before try ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            return retry_after
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2.0**attempt))


@dataclass(frozen=True)
class PollPolicy:
    """How :meth:`Client.wait` polls: soon at first, slower the further back in the queue,
    fast while running so completion is noticed promptly.

    While a job is queued, the wait measures how fast its queue position drops and polls again
    about halfway to the expected start; until the queue has moved, it guesses from the position.
    """

    first_delay: float = 0.25
    running_interval: float = 1.0  # cap while in_progress
    growth: float = 1.5  # each poll in the same state waits this much longer, up to the cap
    queue_interval: float = 10.0  # cap while in_queue
    per_queue_position: float = 0.1  # guess: extra seconds per job ahead, before any movement
    unknown_status_timeout: float = 60.0  # an undocumented state is an error after this long
    unreachable_timeout: float = 300.0  # polls failing (after their retries) this long: error

    def next_delay(
        self, status: Status, polls_in_state: int, drain_rate: float | None = None
    ) -> float:
        """Seconds until the next status poll, after ``polls_in_state`` polls in this state.

        ``drain_rate``: queue positions per second, as measured while this job waited.
        """
        grown = self.first_delay * self.growth ** max(0, polls_in_state)
        if status.state != "in_queue":
            return min(self.running_interval, grown)
        ahead = max(0, status.queue_position or 0)
        if drain_rate:
            guess = 0.5 * (ahead + 1) / drain_rate
        else:
            guess = grown + self.per_queue_position * ahead
        return min(self.queue_interval, max(self.first_delay, guess))


class _QueueWatch:
    """Measures how fast a job's queue position drops (positions per second)."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None

    def drain_rate(self, status: Status) -> float | None:
        """Note a status; the drain rate so far, or None until the queue has moved."""
        if status.state != "in_queue" or status.queue_position is None:
            return None
        now = time.monotonic()
        if self._first is None or status.queue_position > self._first[1]:
            self._first = (now, status.queue_position)
        moved = self._first[1] - status.queue_position
        return moved / max(now - self._first[0], 1e-3) if moved > 0 else None


class _RateLimiter:
    """Spaces requests at least ``1 / rate`` seconds apart, across every task sharing it.

    No lock is needed: a slot is claimed without awaiting, so concurrent tasks queue up in order.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 0.0 if math.isinf(rate) else 1.0 / rate
        self._clock = clock
        self._next = -math.inf

    def claim(self) -> float:
        """Reserve the next slot; seconds to wait until it."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now


class _Stopwatch:
    """How long, and how many times in a row, something has been going on."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.count = 0

    def tick(self) -> float:
        """Note one more occurrence; seconds since the first."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        self.count += 1
        return now - self.since

    def reset(self) -> None:
        self.since, self.count = None, 0


class _BearerAuth(httpx.Auth):
    """Adds the token only to requests for the API's own origin; its repr shows no token."""

    def __init__(self, token: str, origin: httpx.URL) -> None:
        self._token = token
        self._origin = (origin.scheme, origin.host, origin.port)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if (request.url.scheme, request.url.host, request.url.port) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "<_BearerAuth ***>"


# --- the client ---------------------------------------------------------------------------------


class Client:
    """Async client of the Model API; use as ``async with Client(...) as client:``.

    ``token``: default ``RUNCOMFY_API_TOKEN`` (else ``RUNCOMFY_TOKEN``). ``base_url``: default
    ``RUNCOMFY_BASE_URL``, else RunComfy's; plain http only for loopback. ``transport``: an httpx
    transport for both the API and file downloads (tests pass a MockTransport).
    ``max_requests_per_second``: one budget shared by every call and every concurrent
    :meth:`wait` of this client (default 20; ``float("inf")`` for none). ``timeout``: seconds per
    network operation.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_requests_per_second: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        token = (token or "").strip() or resolve_token()
        if not token:
            raise AuthenticationError("no RunComfy API token is set", hint=_TOKEN_HINT)
        if not _TOKEN_CHARS.fullmatch(token):
            # never echo it: a pasted token with a line break is still a secret
            raise AuthenticationError(
                "the RunComfy API token contains a space, line break or other character a "
                "token cannot have",
                hint="set RUNCOMFY_API_TOKEN again from your RunComfy profile, on one line",
            )
        self.base_url = resolve_base_url(base_url)
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        rate = (
            DEFAULT_MAX_REQUESTS_PER_SECOND
            if max_requests_per_second is None
            else (max_requests_per_second)
        )
        if not rate > 0:
            raise UsageError(
                f"max requests per second must be positive, not {max_requests_per_second}",
                hint='use float("inf") for no limit',
            )
        self.max_requests_per_second = rate
        self._limiter = _RateLimiter(self.max_requests_per_second)
        self._token = token
        # Tests replace this to observe back-off without waiting.
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        headers = {"User-Agent": f"seedflow/{_version()}", "Accept": "application/json"}
        # A small pool: httpcore scans every pooled connection on each request (twice), so 64
        # idle connections cost more CPU than the request; 16 keep the service busy, and the
        # rate limit (20/s by default) keeps fewer than that in flight against the real API.
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        self._api = httpx.AsyncClient(
            base_url=self.base_url,
            auth=_BearerAuth(token, httpx.URL(self.base_url)),
            headers=headers,
            transport=transport,
            timeout=timeout,
            limits=limits,
            follow_redirects=True,
        )
        # A second client, with no token at all, for the hosts that serve output files.
        self._files = httpx.AsyncClient(
            headers={"User-Agent": headers["User-Agent"]},
            transport=transport,
            timeout=timeout,
            limits=limits,
            follow_redirects=True,
        )
        if transport is None:
            for http in (self._api, self._files):
                install_asyncio_backend(http)

    def __repr__(self) -> str:
        return f"<seedflow.Client base_url={self.base_url!r}>"

    async def __aenter__(self: _ClientT) -> _ClientT:  # noqa: PYI019 - typing.Self needs 3.11
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._api.aclose()
        await self._files.aclose()

    # --- the four endpoints ---------------------------------------------------------------------

    async def submit(self, model_id: str, input: Mapping[str, Any]) -> Submission:
        """Submit one job. Retried only when the service certainly did not get it.

        Raises :class:`SubmitOutcomeUnknown` when the body may have reached the service but no
        readable answer came back: it may have been billed, so it is never resent.
        """
        path = "/v1/models/" + _model_path(model_id)
        body = await self._call("POST", path, json=dict(input), submit=True)
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise SubmitOutcomeUnknown(
                "the API accepted a submit without a request_id: "
                f"{excerpt(str(body), redact=self._token)}",
                hint="the job may have been accepted and billed; it was not resent",
            )
        urls = {
            name: self._request_url(request_id, name) for name in ("status", "result", "cancel")
        }
        return Submission(
            request_id=request_id,
            status_url=_str_or(body.get("status_url"), urls["status"]),
            result_url=_str_or(body.get("result_url"), urls["result"]),
            cancel_url=_str_or(body.get("cancel_url"), urls["cancel"]),
        )

    async def status(self, request_id: str) -> Status:
        """The job's state (normalised) and queue position."""
        body = await self._call("GET", _request_path(request_id, "status"), request_id=request_id)
        state = _state_of(body, request_id)
        position = body.get("queue_position")
        if state != "in_queue" or not isinstance(position, int) or isinstance(position, bool):
            position = None
        return Status(request_id=request_id, state=state, queue_position=position)

    async def result(self, request_id: str) -> Result:
        """The job's outputs once completed; for an unfinished job, its current state."""
        body = await self._call("GET", _request_path(request_id, "result"), request_id=request_id)
        state = _state_of(body, request_id)
        outputs = _outputs_of(body.get("output")) if state == "completed" else Outputs()
        error = None
        if state == "failed":
            error = server_message(body) or "the job failed on the service (no reason given)"
        return Result(request_id=request_id, state=state, outputs=outputs, raw=body, error=error)

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Ask to cancel a queued job; a running or finished job answers ``not_cancellable``."""
        body = await self._call("POST", _request_path(request_id, "cancel"), request_id=request_id)
        state = normalise_state(str(body.get("status", "")))
        outcome: Literal["cancelled", "not_cancellable"]
        if body.get("outcome") in ("cancelled", "not_cancellable"):
            outcome = body["outcome"]
        else:  # tolerate an answer without `outcome`: the status says what happened
            outcome = "cancelled" if state == "cancelled" else "not_cancellable"
        return CancelOutcome(request_id=request_id, status=state, outcome=outcome)

    # --- polling --------------------------------------------------------------------------------

    async def wait(
        self, request_id: str, *, on_status: Callable[[Status], None] | None = None
    ) -> Result:
        """Poll until the job is terminal, then return its result.

        ``on_status`` is called whenever the state or queue position changes. A failed or
        cancelled job is returned (``result.state``), not raised. Polls that fail even after
        their retries (429, 5xx, network) are tolerated for ``PollPolicy.unreachable_timeout``
        seconds. An undocumented state, or a result that stays unfinished after the status said
        terminal, raises :class:`UnexpectedResponse` after ``unknown_status_timeout`` seconds.
        """
        await self._sleep(self.poll.first_delay)
        seen: Status | None = None
        polls_in_state = 0
        failing, strange, queue = _Stopwatch(), _Stopwatch(), _QueueWatch()
        while True:
            try:
                status = await self.status(request_id)
                result = await self.result(request_id) if status.terminal else None
            except ApiError as error:
                # A paid job is not given up for a bad minute of the API: keep polling.
                pause = self._pause_for(error, failing.count)
                if not error.retryable or pause is None:
                    raise
                if failing.tick() > self.poll.unreachable_timeout:
                    raise
                log.info("polling %s: %s; again in %.2f s", request_id, error.message, pause)
                await self._sleep(pause)
                continue
            failing.reset()
            if on_status is not None and status != seen:
                on_status(status)
            polls_in_state = polls_in_state + 1 if seen and seen.state == status.state else 0
            seen = status
            if result is not None and result.terminal:
                return result
            if result is not None:
                problem = f"the status says {status.state} but the result says {result.state}"
            elif not status.known:
                problem = f"the API reports an undocumented state '{status.state}'"
            else:
                strange.reset()
                drain = queue.drain_rate(status)
                await self._sleep(self.poll.next_delay(status, polls_in_state, drain))
                continue
            if strange.tick() > self.poll.unknown_status_timeout:
                raise UnexpectedResponse(
                    f"{problem} for {self.poll.unknown_status_timeout:g} s",
                    request_id=request_id,
                    hint="check the job on RunComfy; seedflow stopped polling it",
                )
            await self._sleep(self.poll.running_interval)

    # --- downloads ------------------------------------------------------------------------------

    async def download(self, url: str, dest: Path) -> Download:
        """Fetch ``url`` into ``dest`` atomically (temp file in ``dest.parent``, then rename).

        The file host never sees the API token. Short bodies and 429/5xx are retried; an
        expired or missing file (403/404/410) is a :class:`DownloadError` at once.
        """
        dest = Path(dest)
        attempt = 0
        while True:
            try:
                return await fetch_file(self._files, url, dest)
            except DownloadError as error:
                attempt += 1
                if not error.retryable or attempt >= self.retry.attempts:
                    raise
                delay = self.retry.delay(attempt - 1)
                log.info("%s; retrying in %.2f s", error.message, delay)
                await self._sleep(delay)

    # --- plumbing -------------------------------------------------------------------------------

    def _request_url(self, request_id: str, action: str) -> str:
        return self.base_url + _request_path(request_id, action)

    def _pause_for(self, error: ApiError, attempt: int) -> float | None:
        """Seconds to back off before trying again; None when the service asked for too long."""
        retry_after = error.retry_after if isinstance(error, (RateLimited, ServerError)) else None
        if retry_after is not None and retry_after > self.retry.max_retry_after:
            return None
        return self.retry.delay(attempt, retry_after)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        submit: bool = False,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """One API call through the rate limiter and the error boundary, retried per policy."""
        attempt = 0
        while True:
            try:
                return await self._call_once(method, path, json, submit, request_id)
            except ApiError as error:
                attempt += 1
                if not _may_retry(error, submit) or attempt >= self.retry.attempts:
                    raise
                delay = self._pause_for(error, attempt - 1)
                if delay is None:
                    raise
                log.info("%s %s: %s; retrying in %.2f s", method, path, error.message, delay)
                await self._sleep(delay)

    async def _call_once(
        self, method: str, path: str, json: Any, submit: bool, request_id: str | None
    ) -> dict[str, Any]:
        wait = self._limiter.claim()
        if wait > 0:
            await anyio.sleep(wait)
        try:
            response = await self._api.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, submit=submit, request_id=request_id) from exc
        try:
            return raise_for_answer(response, redact=self._token, request_id=request_id)
        except (ServerError, UnexpectedResponse) as error:
            if submit and error.status_code != 503:
                # 500/502/504 or an unreadable answer: the job may exist and be billed.
                raise SubmitOutcomeUnknown(
                    f"submit outcome unknown: {error.message}",
                    hint="the job may have been accepted and billed; it is recorded as unknown "
                    "and was not resent",
                    status_code=error.status_code,
                    error_code=error.error_code,
                ) from error
            raise


def _may_retry(error: ApiError, submit: bool) -> bool:
    """Whether a failed call may be sent again. A submit only when it certainly did not land."""
    if not submit:
        return error.retryable
    if isinstance(error, SubmitOutcomeUnknown):
        return False
    if isinstance(error, RateLimited):
        return True
    if isinstance(error, ServerError):
        return error.status_code == 503
    return isinstance(error, NetworkError) and _connect_failed(error)


def _connect_failed(error: NetworkError) -> bool:
    cause = error.__cause__
    return isinstance(cause, httpx.HTTPError) and certainly_not_sent(cause)


def _model_path(model_id: str) -> str:
    """The model id as path segments (it contains slashes, sent as is), each segment quoted."""
    segments = model_id.split("/")
    if not model_id or any(s in ("", ".", "..") for s in segments):
        raise ModelRejected(f"'{model_id}' is not a model id", hint="e.g. owner/model/variant")
    return "/".join(quote(s, safe="") for s in segments)


def _request_path(request_id: str, action: str) -> str:
    if not request_id or request_id in (".", ".."):
        raise RequestNotFound(f"'{request_id}' is not a request id")
    return f"/v1/requests/{quote(request_id, safe='')}/{action}"


def _state_of(body: Mapping[str, Any], request_id: str) -> str:
    raw = body.get("status")
    if not isinstance(raw, str) or not raw.strip():
        raise UnexpectedResponse(
            f"the API answer has no status: {excerpt(str(body))}", request_id=request_id
        )
    return normalise_state(raw)


def _outputs_of(output: Any) -> Outputs:
    """``output.image/images/video/videos`` (each a URL or a list of URLs) as two tuples."""
    if not isinstance(output, Mapping):
        return Outputs()

    def urls(*keys: str) -> tuple[str, ...]:
        found: list[str] = []
        for key in keys:
            value = output.get(key)
            items = value if isinstance(value, list) else [value]
            found.extend(v for v in items if isinstance(v, str) and v)
        return tuple(found)

    return Outputs(images=urls("image", "images"), videos=urls("video", "videos"))


def _str_or(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _version() -> str:
    try:
        return importlib.metadata.version("seedflow")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        return "0"
