"""The API client's edge cases, with httpx.MockTransport standing in for the service."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from seedflow.client import (
    DEFAULT_BASE_URL,
    Client,
    PollPolicy,
    RetryPolicy,
    Status,
    _QueueWatch,
    _RateLimiter,
    normalise_state,
    resolve_base_url,
    resolve_token,
)
from seedflow.errors import (
    ApiError,
    AuthenticationError,
    DownloadError,
    InputRejected,
    InsufficientBalance,
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
from seedflow.http import ERROR_CODES, HTTP_STATUSES, parse_retry_after, raise_for_answer

pytestmark = pytest.mark.anyio

TOKEN = "sk-test-7f3a9c1e5b"
API = "https://api.example.test"
MODEL = "bytedance/seedream-4-0/sequential"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """Records every request the client sends and every back-off it sleeps."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def make_client(handler: Handler, **kwargs: Any) -> tuple[Client, Recorder]:
    recorder = Recorder(handler)
    kwargs.setdefault("retry", RetryPolicy(attempts=4, base_delay=0.01))
    kwargs.setdefault("max_requests_per_second", float("inf"))
    client = Client(TOKEN, base_url=API, transport=httpx.MockTransport(recorder), **kwargs)
    client._sleep = recorder.sleep
    return client, recorder


def answers(*responses: httpx.Response | Exception) -> Handler:
    """A handler giving these answers in turn (an exception is raised), the last one forever."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise type(item)(str(item), request=request)  # type: ignore[call-arg]
        return item

    return handler


def ok(**body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


ACCEPTED = ok(
    request_id="r1",
    status_url=f"{API}/v1/requests/r1/status",
    result_url=f"{API}/v1/requests/r1/result",
    cancel_url=f"{API}/v1/requests/r1/cancel",
)


# --- token and base URL ---------------------------------------------------------------------------


def test_token_env_order() -> None:
    assert resolve_token({"RUNCOMFY_API_TOKEN": "a", "RUNCOMFY_TOKEN": "b"}) == "a"
    assert resolve_token({"RUNCOMFY_TOKEN": " b "}) == "b"
    assert resolve_token({"RUNCOMFY_API_TOKEN": " "}) is None
    assert resolve_token({}) is None


def test_missing_token_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCOMFY_API_TOKEN", raising=False)
    monkeypatch.delenv("RUNCOMFY_TOKEN", raising=False)
    with pytest.raises(AuthenticationError) as info:
        Client(base_url=API)
    assert "export RUNCOMFY_API_TOKEN=" in info.value.format_message()


async def test_env_token_is_sent_as_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "from-env")
    recorder = Recorder(answers(ok(request_id="r1", status="in_queue", queue_position=0)))
    async with Client(base_url=API, transport=httpx.MockTransport(recorder)) as client:
        await client.status("r1")
    assert recorder.requests[0].headers["authorization"] == "Bearer from-env"


def test_base_url_default_environment_and_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_url(None, {}) == DEFAULT_BASE_URL
    assert resolve_base_url(None, {"RUNCOMFY_BASE_URL": "https://proxy.test/api/"}) == (
        "https://proxy.test/api"
    )
    assert resolve_base_url("https://a.test", {"RUNCOMFY_BASE_URL": "https://b.test"}) == (
        "https://a.test"
    )


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8123", "http://127.9.9.9", "http://localhost:80", "http://[::1]:9"]
)
def test_plain_http_is_accepted_for_loopback(url: str) -> None:
    assert resolve_base_url(url, {}).startswith("http://")


@pytest.mark.parametrize(
    "url", ["http://model-api.runcomfy.net", "http://10.0.0.1", "http://128.0.0.1", "ftp://x.test"]
)
def test_plain_http_elsewhere_is_refused(url: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve_base_url(url, {})
    assert "http" in info.value.format_message()


async def test_base_url_path_prefix_is_kept() -> None:
    recorder = Recorder(answers(ok(status="in_queue")))
    transport = httpx.MockTransport(recorder)
    async with Client(TOKEN, base_url=f"{API}/gateway/", transport=transport) as client:
        await client.status("r1")
    assert str(recorder.requests[0].url) == f"{API}/gateway/v1/requests/r1/status"
    assert recorder.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("rate", [0, -1.0, float("nan")])
def test_a_request_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(UsageError, match="positive"):
        Client(TOKEN, base_url=API, max_requests_per_second=rate)


def test_repr_never_shows_the_token() -> None:
    client, _ = make_client(answers(ok()))
    assert TOKEN not in repr(client)
    assert TOKEN not in repr(client._api.auth)
    assert API in repr(client)


# --- the error boundary ---------------------------------------------------------------------------


def test_every_documented_error_code_and_status_is_mapped() -> None:
    assert {400001, 400002, 400004, 403001, 404001} <= set(ERROR_CODES)
    assert {401, 402, 403, 404, 422, 429} <= set(HTTP_STATUSES)


def _answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("GET", f"{API}/v1/requests/r1/status")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers, request=request)


@pytest.mark.parametrize("http_status", [200, 400, 403, 404])
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (400001, ModelRejected),
        (400002, InsufficientBalance),
        (400004, AuthenticationError),
        (403001, RequestNotFound),
        (404001, RequestNotFound),
    ],
)
def test_error_codes_win_on_any_status(http_status: int, code: int, expected: type) -> None:
    body = {"error_code": code, "error_message": "told you so"}
    with pytest.raises(expected) as info:
        raise_for_answer(_answer(http_status, body))
    assert info.value.error_code == code
    assert "told you so" in info.value.message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (402, InsufficientBalance),
        (404, RequestNotFound),
        (422, InputRejected),
        (429, RateLimited),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (418, UnexpectedResponse),
    ],
)
def test_http_statuses_are_mapped(status: int, expected: type) -> None:
    with pytest.raises(expected) as info:
        raise_for_answer(_answer(status, {"message": "nope"}))
    assert info.value.status_code == status


def test_error_code_as_string_and_zero() -> None:
    with pytest.raises(InsufficientBalance):
        raise_for_answer(_answer(200, {"error_code": "400002"}))
    assert raise_for_answer(_answer(200, {"error_code": 0, "status": "in_queue"}))["status"]


def test_unknown_error_code_on_200_is_unexpected() -> None:
    with pytest.raises(UnexpectedResponse, match="999999"):
        raise_for_answer(_answer(200, {"error_code": 999999}))


def test_rejected_input_carries_the_servers_detail() -> None:
    detail = [{"loc": ["body", "text"], "msg": "at most 600 characters", "type": "too_long"}]
    with pytest.raises(InputRejected) as info:
        raise_for_answer(_answer(422, {"detail": detail}))
    assert info.value.detail == detail
    assert "text: at most 600 characters" in info.value.message


def test_unparseable_body_quotes_a_short_excerpt_without_the_token() -> None:
    body = f"<html>{'oops ' * 200} Authorization: Bearer {TOKEN}</html>".encode()
    with pytest.raises(UnexpectedResponse) as info:
        raise_for_answer(_answer(200, body), redact=TOKEN)
    assert "<html>oops" in info.value.message
    assert len(info.value.message) < 400
    with pytest.raises(UnexpectedResponse) as info:
        raise_for_answer(_answer(200, f"echo {TOKEN}".encode()), redact=TOKEN)
    assert TOKEN not in str(info.value) and "***" in str(info.value)


def test_a_long_server_message_is_shortened() -> None:
    with pytest.raises(ServerError) as info:
        raise_for_answer(_answer(500, {"error_message": "stack " * 500 + TOKEN}), redact=TOKEN)
    assert len(info.value.message) < 300 and TOKEN not in info.value.message


def test_json_that_is_not_an_object_is_unexpected() -> None:
    with pytest.raises(UnexpectedResponse):
        raise_for_answer(_answer(200, [1, 2]))


def test_retry_after_in_seconds_and_as_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    when = datetime(2030, 1, 1, 0, 0, 30, tzinfo=timezone.utc)
    now = (when - timedelta(seconds=30)).timestamp()
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == pytest.approx(30)
    with pytest.raises(RateLimited) as info:
        raise_for_answer(_answer(429, {"message": "slow down"}, {"Retry-After": "12"}))
    assert info.value.retry_after == 12.0


# --- retries --------------------------------------------------------------------------------------


async def test_status_is_retried_on_5xx_and_network_errors() -> None:
    client, rec = make_client(
        answers(
            httpx.Response(500),
            httpx.ReadTimeout("slow"),
            httpx.Response(502, text="bad gateway"),
            ok(request_id="r1", status="in_progress"),
        )
    )
    async with client:
        status = await client.status("r1")
    assert status.state == "in_progress"
    assert len(rec.requests) == 4
    assert len(rec.sleeps) == 3
    assert all(0 <= s <= 0.01 * 2**i for i, s in enumerate(rec.sleeps))


async def test_retries_give_up_after_the_policy_attempts() -> None:
    client, rec = make_client(answers(httpx.Response(503)))
    async with client:
        with pytest.raises(ServerError):
            await client.result("r1")
    assert len(rec.requests) == 4


async def test_retry_after_is_honoured() -> None:
    client, rec = make_client(
        answers(
            httpx.Response(429, headers={"Retry-After": "3"}),
            ok(request_id="r1", status="completed"),
        )
    )
    async with client:
        await client.status("r1")
    assert rec.sleeps == [3.0]


async def test_retry_after_on_503_is_honoured() -> None:
    client, rec = make_client(
        answers(httpx.Response(503, headers={"Retry-After": "2"}), ok(status="in_queue"))
    )
    async with client:
        await client.status("r1")
    assert rec.sleeps == [2.0]


async def test_a_retry_after_beyond_the_cap_is_reported_not_slept() -> None:
    client, rec = make_client(answers(httpx.Response(429, headers={"Retry-After": "3600"})))
    async with client:
        with pytest.raises(RateLimited) as info:
            await client.status("r1")
    assert info.value.retry_after == 3600
    assert len(rec.requests) == 1 and rec.sleeps == []


async def test_not_found_is_not_retried() -> None:
    client, rec = make_client(answers(httpx.Response(404, json={"error_code": 404001})))
    async with client:
        with pytest.raises(RequestNotFound):
            await client.status("gone")
    assert len(rec.requests) == 1


# --- submit: never a second bill ------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("no route"),
        httpx.Response(429),
        httpx.Response(503),
    ],
    ids=["refused", "connect-timeout", "429", "503"],
)
async def test_submit_is_retried_when_the_service_certainly_did_not_take_it(first: Any) -> None:
    client, rec = make_client(answers(first, ACCEPTED))
    async with client:
        submission = await client.submit(MODEL, {"text": "Generate 3 images of a cat"})
    assert submission.request_id == "r1"
    assert len(rec.requests) == 2


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("no answer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
        httpx.WriteTimeout("stuck"),
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(504),
        httpx.Response(200, text="<html>proxy page</html>"),
        ok(status="in_queue"),
    ],
    ids=[
        "read-timeout",
        "dropped",
        "reset",
        "write-timeout",
        "500",
        "502",
        "504",
        "garbage",
        "no-request-id",
    ],
)
async def test_submit_with_unknown_outcome_is_never_resent(failure: Any) -> None:
    client, rec = make_client(answers(failure, ACCEPTED))
    async with client:
        with pytest.raises(SubmitOutcomeUnknown) as info:
            await client.submit(MODEL, {"text": "Generate 3 images of a cat"})
    assert len(rec.requests) == 1
    assert not info.value.retryable
    assert "billed" in info.value.format_message()


async def test_submit_refused_to_the_end_is_a_plain_network_error() -> None:
    client, rec = make_client(answers(httpx.ConnectError("refused")))
    async with client:
        with pytest.raises(NetworkError) as info:
            await client.submit(MODEL, {"text": "x"})
    assert not isinstance(info.value, SubmitOutcomeUnknown)
    assert len(rec.requests) == 4


async def test_submit_rejections_are_not_retried() -> None:
    client, rec = make_client(answers(ok(error_code=400002, error_message="balance is 0")))
    async with client:
        with pytest.raises(InsufficientBalance):
            await client.submit(MODEL, {"text": "x"})
    assert len(rec.requests) == 1


async def test_submit_sends_the_model_path_and_body_as_is() -> None:
    client, rec = make_client(answers(ok(request_id="abc")))
    async with client:
        submission = await client.submit(MODEL, {"text": "Generate 2 images", "seed": 7})
    request = rec.requests[0]
    assert request.method == "POST"
    assert request.url.path == f"/v1/models/{MODEL}"
    assert json.loads(request.content) == {"text": "Generate 2 images", "seed": 7}
    # URLs the service left out are filled in from the base URL.
    assert submission.status_url == f"{API}/v1/requests/abc/status"


async def test_malformed_ids_never_reach_the_wire() -> None:
    client, rec = make_client(answers(ok(status="in_queue")))
    async with client:
        with pytest.raises(ModelRejected):
            await client.submit("../../admin", {})
        with pytest.raises(RequestNotFound):
            await client.status("")
        await client.status("a/../b?x")  # quoted into one path segment
    assert rec.requests[0].url.raw_path == b"/v1/requests/a%2F..%2Fb%3Fx/status"


# --- states, results, cancel ----------------------------------------------------------------------


def test_state_normalisation() -> None:
    assert normalise_state("succeeded") == "completed"
    assert normalise_state("SUCCEEDED") == "completed"
    assert normalise_state("canceled") == "cancelled"
    assert normalise_state("in_queue") == "in_queue"
    for state in ("completed", "failed", "cancelled"):
        assert Status("r", state).terminal
    assert not Status("r", "in_progress").terminal
    assert not Status("r", "warming_up").known


async def test_queue_position_only_while_queued() -> None:
    client, _ = make_client(
        answers(ok(status="in_queue", queue_position=4), ok(status="in_progress", queue_position=0))
    )
    async with client:
        assert (await client.status("r1")).queue_position == 4
        assert (await client.status("r1")).queue_position is None


async def test_result_folds_every_output_kind_and_reports_partial() -> None:
    output = {
        "image": "https://f.test/a.png",
        "images": ["https://f.test/b.png"],
        "video": "https://f.test/v.mp4",
    }
    client, _ = make_client(answers(ok(request_id="r1", status="succeeded", output=output)))
    async with client:
        result = await client.result("r1")
    assert result.state == "completed"
    assert result.outputs.images == ("https://f.test/a.png", "https://f.test/b.png")
    assert result.outputs.videos == ("https://f.test/v.mp4",)
    assert result.partial(3) is None
    short = result.partial(5)
    assert short is not None and (short.received, short.requested) == (3, 5)
    assert str(short) == "received 3 of 5 requested outputs"


async def test_unfinished_and_failed_results() -> None:
    client, _ = make_client(
        answers(ok(status="in_progress"), ok(status="failed", error_message="NSFW filter"))
    )
    async with client:
        running = await client.result("r1")
        failed = await client.result("r1")
    assert (running.state, running.terminal, len(running.outputs)) == ("in_progress", False, 0)
    assert running.partial(3) is None
    assert failed.state == "failed" and failed.error == "NSFW filter"
    running.raise_for_failure()
    with pytest.raises(JobFailed, match="NSFW filter"):
        failed.raise_for_failure()


async def test_result_without_status_is_unexpected() -> None:
    client, _ = make_client(answers(ok(request_id="r1")))
    async with client:
        with pytest.raises(UnexpectedResponse):
            await client.result("r1")


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ({"status": "cancelled", "outcome": "cancelled"}, "cancelled"),
        ({"status": "in_progress", "outcome": "not_cancellable"}, "not_cancellable"),
        ({"status": "cancelled"}, "cancelled"),
        ({"status": "completed"}, "not_cancellable"),
    ],
)
async def test_cancel_outcomes(body: dict[str, Any], outcome: str) -> None:
    client, rec = make_client(answers(httpx.Response(202, json={"request_id": "r1", **body})))
    async with client:
        answer = await client.cancel("r1")
    assert answer.outcome == outcome
    assert rec.requests[0].method == "POST"
    assert rec.requests[0].url.path == "/v1/requests/r1/cancel"


# --- wait -----------------------------------------------------------------------------------------


async def test_wait_backs_off_in_the_queue_and_polls_fast_while_running() -> None:
    states = [
        ok(status="in_queue", queue_position=6),
        ok(status="in_queue", queue_position=6),
        ok(status="in_queue", queue_position=1),
        ok(status="in_progress"),
        ok(status="in_progress"),
        ok(status="in_progress"),
        ok(status="in_progress"),
        ok(status="in_progress"),
        ok(status="completed"),
    ]
    done = ok(status="succeeded", output={"images": ["https://f.test/1.png"]})

    def handler(request: httpx.Request) -> httpx.Response:
        return states.pop(0) if request.url.path.endswith("/status") else done

    client, rec = make_client(handler)
    seen: list[Status] = []
    async with client:
        result = await client.wait("r1", on_status=seen.append)
    assert result.state == "completed" and result.outputs.images == ("https://f.test/1.png",)
    assert rec.sleeps[0] == client.poll.first_delay
    queued, running = rec.sleeps[1:4], rec.sleeps[4:]
    assert queued[0] < queued[1]  # longer the longer it waits in the same place
    assert queued[2] < queued[1]  # shorter once near the front
    assert all(s <= client.poll.running_interval for s in running)
    assert max(running) == client.poll.running_interval
    # on_status sees changes only: position 6, position 1, running, completed
    assert [(s.state, s.queue_position) for s in seen] == [
        ("in_queue", 6),
        ("in_queue", 1),
        ("in_progress", None),
        ("completed", None),
    ]


def test_queue_position_further_back_waits_longer() -> None:
    policy = PollPolicy()
    near = policy.next_delay(Status("r", "in_queue", 0), 0)
    far = policy.next_delay(Status("r", "in_queue", 30), 0)
    assert near < far <= policy.queue_interval
    assert policy.next_delay(Status("r", "in_progress"), 50) == policy.running_interval


def test_a_measured_queue_drain_sets_the_next_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = PollPolicy()
    # 9 ahead, the queue moves one place a second: look again halfway to the start
    assert policy.next_delay(Status("r", "in_queue", 9), 3, drain_rate=1.0) == 5.0
    assert policy.next_delay(Status("r", "in_queue", 0), 3, drain_rate=100.0) == policy.first_delay
    assert policy.next_delay(Status("r", "in_queue", 500), 3, drain_rate=1.0) == 10.0

    clock = [0.0]
    monkeypatch.setattr("seedflow.client.time.monotonic", lambda: clock[0])
    watch = _QueueWatch()
    assert watch.drain_rate(Status("r", "in_queue", 10)) is None
    clock[0] = 2.0
    assert watch.drain_rate(Status("r", "in_queue", 10)) is None  # has not moved yet
    clock[0] = 4.0
    assert watch.drain_rate(Status("r", "in_queue", 6)) == pytest.approx(1.0)
    assert watch.drain_rate(Status("r", "in_progress")) is None


async def test_wait_returns_failed_and_cancelled_jobs() -> None:
    for final in ("failed", "cancelled"):
        client, _ = make_client(answers(ok(status=final, error_message="boom")))
        async with client:
            assert (await client.wait("r1")).state == final


async def test_wait_gives_up_on_an_undocumented_state() -> None:
    client, rec = make_client(
        answers(ok(status="warming_up")), poll=PollPolicy(unknown_status_timeout=0.05)
    )

    async def real_sleep(seconds: float) -> None:
        rec.sleeps.append(seconds)
        await anyio.sleep(0.01)

    client._sleep = real_sleep
    async with client:
        with pytest.raises(UnexpectedResponse, match="warming_up"):
            await client.wait("r1")
    assert 2 <= len(rec.requests) < 50


async def test_wait_rides_out_polls_that_fail_after_their_retries() -> None:
    statuses = [httpx.Response(500)] * 6 + [httpx.Response(429)] * 4 + [ok(status="completed")]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return statuses.pop(0)
        return ok(status="succeeded", output={"images": ["https://f.test/1.png"]})

    client, _ = make_client(handler)  # 4 attempts per call: 2 status() calls fail outright
    async with client:
        result = await client.wait("r1")
    assert result.state == "completed" and statuses == []


async def test_wait_stops_when_the_api_stays_unreachable() -> None:
    client, _ = make_client(answers(httpx.Response(503)), poll=PollPolicy(unreachable_timeout=0.05))

    async def real_sleep(seconds: float) -> None:
        await anyio.sleep(0.01)

    client._sleep = real_sleep
    async with client:
        with pytest.raises(ServerError):
            await client.wait("r1")


async def test_wait_does_not_ride_out_errors_that_will_not_pass() -> None:
    client, rec = make_client(answers(httpx.Response(404, json={"error_code": 404001})))
    async with client:
        with pytest.raises(RequestNotFound):
            await client.wait("r1")
    assert len(rec.requests) == 1


async def test_wait_gives_up_when_result_never_catches_up_with_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return ok(status="completed" if request.url.path.endswith("/status") else "in_progress")

    client, _ = make_client(handler, poll=PollPolicy(unknown_status_timeout=0.05))

    async def real_sleep(seconds: float) -> None:
        await anyio.sleep(0.01)

    client._sleep = real_sleep
    async with client:
        with pytest.raises(UnexpectedResponse, match="result says in_progress"):
            await client.wait("r1")


# --- the request rate -----------------------------------------------------------------------------


def test_rate_limiter_spaces_claims_across_callers() -> None:
    now = [100.0]
    limiter = _RateLimiter(4.0, clock=lambda: now[0])
    waits = [limiter.claim() for _ in range(8)]
    assert waits == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    now[0] = 200.0  # idle for a while: no burst credit is saved up
    assert limiter.claim() == 0 and limiter.claim() == pytest.approx(0.25)


async def test_concurrent_calls_share_one_request_rate() -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(anyio.current_time())
        return ok(status="in_progress")

    client, _ = make_client(handler, max_requests_per_second=100.0)
    async with client, anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(client.status, f"r{i}")
    times.sort()
    assert len(times) == 30
    assert times[-1] - times[0] >= 29 / 100 * 0.95  # never faster than 100 per second
    # ... in any window either (slots are claimed in order; wake-ups may jitter by a tick)
    assert max(sum(1 for t in times if start <= t < start + 0.1) for start in times) <= 11


# --- the token goes only to the API ---------------------------------------------------------------


async def test_redirect_to_another_host_does_not_carry_the_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "api.example.test" and request.url.path.endswith("/status"):
            return httpx.Response(307, headers={"Location": "https://elsewhere.test/s"})
        return ok(status="in_queue", queue_position=1)

    client, rec = make_client(handler)
    async with client:
        await client.status("r1")
    first, second = rec.requests
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert second.url.host == "elsewhere.test"
    assert "authorization" not in second.headers


async def test_same_origin_redirect_keeps_the_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/requests/r1/status":
            return httpx.Response(307, headers={"Location": "/v2/requests/r1/status"})
        return ok(status="in_queue")

    client, rec = make_client(handler)
    async with client:
        await client.status("r1")
    assert rec.requests[1].headers["authorization"] == f"Bearer {TOKEN}"


async def test_token_never_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, _ = make_client(
        answers(
            httpx.Response(401, text=f"bad token {TOKEN}"),
            httpx.Response(200, text=TOKEN),
            httpx.Response(500, text=f"crashed holding {TOKEN}"),  # retried: logged
            httpx.Response(500, text=f"crashed holding {TOKEN}"),
            httpx.Response(500, text=f"crashed holding {TOKEN}"),
            httpx.Response(500, text=f"crashed holding {TOKEN}"),
        )
    )
    errors: list[ApiError] = []
    async with client:
        for _ in range(3):
            try:
                await client.status("r1")
            except ApiError as error:
                errors.append(error)
    assert [type(e) for e in errors] == [AuthenticationError, UnexpectedResponse, ServerError]
    assert "retrying" in caplog.text
    for error in errors:
        assert TOKEN not in error.format_message() and TOKEN not in repr(error)
    assert caplog.records and TOKEN not in caplog.text


# --- downloads ------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
FILE_URL = "https://files.example.test/out/r1/0.png?X-Signature=s3cr3t&Expires=1"


def file_host(*responses: httpx.Response) -> Handler:
    return answers(*responses)


async def test_download_streams_checks_and_renames(tmp_path: Path) -> None:
    client, rec = make_client(
        file_host(httpx.Response(200, content=PNG, headers={"content-type": "image/png"}))
    )
    dest = tmp_path / "images" / "job-0.png"
    async with client:
        got = await client.download(FILE_URL, dest)
    assert dest.read_bytes() == PNG
    assert got.sha256 == hashlib.sha256(PNG).hexdigest()
    assert got.bytes == len(PNG) and got.content_type == "image/png" and got.path == dest
    assert "authorization" not in rec.requests[0].headers
    assert list(dest.parent.iterdir()) == [dest]


async def test_download_from_the_api_host_still_sends_no_token(tmp_path: Path) -> None:
    client, rec = make_client(file_host(httpx.Response(200, content=PNG)))
    async with client:
        await client.download(f"{API}/files/0.png", tmp_path / "0.png")
    assert "authorization" not in rec.requests[0].headers


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_expired_file_urls_name_host_and_path_but_not_the_signature(
    tmp_path: Path, status: int
) -> None:
    client, rec = make_client(file_host(httpx.Response(status, text="AccessDenied")))
    async with client:
        with pytest.raises(DownloadError) as info:
            await client.download(FILE_URL, tmp_path / "0.png")
    message = info.value.format_message()
    assert "files.example.test/out/r1/0.png" in message and "s3cr3t" not in message
    assert f"HTTP {status}" in message
    assert len(rec.requests) == 1  # not retried
    assert list(tmp_path.iterdir()) == []


async def test_a_short_body_is_retried_and_never_left_under_the_final_name(
    tmp_path: Path,
) -> None:
    short = httpx.Response(200, content=PNG[:100], headers={"content-length": str(len(PNG))})
    client, rec = make_client(file_host(short))
    dest = tmp_path / "0.png"
    async with client:
        with pytest.raises(DownloadError, match="short download"):
            await client.download(FILE_URL, dest)
    assert len(rec.requests) == 4
    assert list(tmp_path.iterdir()) == []

    full = httpx.Response(200, content=PNG, headers={"content-type": "image/png"})
    client, rec = make_client(file_host(short, full))
    async with client:
        got = await client.download(FILE_URL, dest)
    assert dest.read_bytes() == PNG and got.bytes == len(PNG)
    assert list(tmp_path.iterdir()) == [dest]


async def test_download_refuses_pages_that_are_not_images(tmp_path: Path) -> None:
    page = httpx.Response(200, text="<html>sign in</html>", headers={"content-type": "text/html"})
    client, _ = make_client(file_host(page))
    async with client:
        with pytest.raises(DownloadError, match="text/html"):
            await client.download(FILE_URL, tmp_path / "0.png")
    assert list(tmp_path.iterdir()) == []


async def test_download_network_failure_is_a_download_error(tmp_path: Path) -> None:
    client, rec = make_client(file_host(httpx.ReadError("reset")))
    async with client:
        with pytest.raises(DownloadError):
            await client.download(FILE_URL, tmp_path / "0.png")
    assert len(rec.requests) == 4
    assert list(tmp_path.iterdir()) == []


async def test_a_failed_download_keeps_an_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "0.png"
    dest.write_bytes(b"previous")
    client, _ = make_client(file_host(httpx.Response(410)))
    async with client:
        with pytest.raises(DownloadError):
            await client.download(FILE_URL, dest)
    assert dest.read_bytes() == b"previous"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "https://", "ftp://h.test/x?sig=s3cr3t", ""])
async def test_download_refuses_urls_that_are_not_http(tmp_path: Path, url: str) -> None:
    client, rec = make_client(file_host(httpx.Response(200, content=PNG)))
    async with client:
        with pytest.raises(DownloadError, match="not an http") as info:
            await client.download(url, tmp_path / "0.png")
    assert "s3cr3t" not in str(info.value)
    assert rec.requests == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "two words", "tab\there", "nul\x00"])
def test_a_malformed_token_is_refused_without_being_echoed(token: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        Client(token, base_url="http://127.0.0.1:9")
    message = info.value.format_message()
    assert "RUNCOMFY_API_TOKEN" in message
    assert token.split()[0] not in message
