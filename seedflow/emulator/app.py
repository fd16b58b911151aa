"""The emulator's ASGI app: RunComfy's four queue endpoints plus the output files.

Shapes, states and status codes follow ``api-contract.md``. Handlers are plain functions over
dicts (no model classes on the hot path) because the status endpoint must stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import UnknownModelError
from ..models import ModelSpec, get_model, stated_image_count
from .config import EmulatorConfig
from .faults import Fault
from .images import image_dimensions, render_png
from .state import COMPLETED, FAILED, IN_QUEUE, RequestRecord, Scheduler, Stats, canonical_json

__all__ = ["EmulatorState", "create_app"]

# RunComfy's documented error codes.
MODEL_UNKNOWN, NO_BALANCE, BAD_TOKEN, NOT_FOUND = 400001, 400002, 400004, 404001
_CODE_MESSAGES = {
    MODEL_UNKNOWN: "unknown or invalid model id",
    NO_BALANCE: "insufficient balance: top up your account",
    BAD_TOKEN: "invalid or missing API token",
    403001: "this request belongs to another account",
    NOT_FOUND: "request not found",
}


class EmulatorState:
    """Everything one emulator app holds; ``app.state.emulator`` is one of these."""

    def __init__(self, config: EmulatorConfig, base_url: str | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self.scheduler = Scheduler(config, self.stats)
        #: Fixed address for the URLs the emulator hands out; None = taken from each request.
        self.base_url = base_url

    @property
    def requests(self) -> dict[str, RequestRecord]:
        return self.scheduler.records


def _error(
    status: int,
    message: str,
    code: int | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error answer: ``error_code`` (when there is one), ``error_message``, and ``extra``."""
    body: dict[str, Any] = {"error_message": message}
    if code is not None:
        body = {"error_code": code, **body}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


class _DroppedConnection(Response):
    """Closes the socket without sending a byte of the answer."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _close_transport(scope)


class _TruncatedPNG(Response):
    """Announces the full Content-Length, sends half the body, then closes the socket."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._data = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"image/png"),
            (b"content-length", str(len(self._data)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        half = self._data[: len(self._data) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        await _close_transport(scope)


class ConnectionDropped(RuntimeError):
    """Raised where the server gives no socket to close (an in-process ASGI transport)."""


_SERVER_SEND = "seedflow.emulator.server_send"


class _EmulatorApp(Starlette):
    """Starlette, remembering the server's own ``send`` (middleware wraps the one handlers see)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_SERVER_SEND] = send
        await super().__call__(scope, receive, send)


async def _close_transport(scope: Scope) -> None:
    # The ASGI spec has no "hang up" message. uvicorn's `send` is a method of the request cycle
    # that owns the socket's transport: closing it is exactly what a lost answer looks like.
    send = scope.get(_SERVER_SEND)
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionDropped("emulator fault: connection dropped")
    transport.close()
    # Let the server notice the disconnect before the app returns, so it writes nothing more.
    for _ in range(3):
        await asyncio.sleep(0)


def _fault_response(fault: Fault) -> Response | None:
    """The answer a fault replaces the real one with (None: answer normally)."""
    kind = fault.kind
    if kind == "429":
        headers = {"Retry-After": str(fault.retry_after)}
        return _error(429, "too many requests: slow down", headers=headers)
    if kind == "429-bare":
        return _error(429, "too many requests: slow down")
    if kind == "500":
        return _error(500, "internal server error")
    if kind == "503":
        return _error(503, "service temporarily unavailable")
    if kind == "error200":
        code = fault.error_code()
        return _error(200, _CODE_MESSAGES.get(code, "request could not be processed"), code)
    if kind == "drop":
        return _DroppedConnection()
    return None


class _Endpoint:
    """Shared steps of the four API endpoints: counting, auth, faults."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def authorised(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        expected = self.state.config.token
        if scheme.lower() != "bearer" or not token or (expected is not None and token != expected):
            return _error(401, _CODE_MESSAGES[BAD_TOKEN], BAD_TOKEN)
        return None

    async def fault(self, endpoint: str) -> Fault | None:
        """The fault hitting this call, after sleeping if it is a slow one."""
        faults = self.state.config.faults
        if not faults.rules:
            return None
        fault = faults.pick(endpoint, self.state.scheduler.rng)
        if fault is None:
            return None
        self.state.stats.faults_fired[f"{endpoint}:{fault.kind}"] += 1
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return None
        return fault

    def base_url(self, request: Request) -> str:
        if self.state.base_url is not None:
            return self.state.base_url
        return str(request.base_url).rstrip("/")

    def record(self, request: Request) -> RequestRecord | Response:
        request_id = request.path_params["request_id"]
        record = self.state.requests.get(request_id)
        if record is None:
            return _error(404, f"request {request_id} not found", NOT_FOUND)
        return record


def _status_body(record: RequestRecord, scheduler: Scheduler, status: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": record.request_id,
        "status": status,
        "status_url": record.status_url,
        "result_url": record.result_url,
    }
    if status == IN_QUEUE:
        body["queue_position"] = scheduler.queue_position(record)
    return body


def _validate(spec: ModelSpec, body: Any) -> list[dict[str, Any]]:
    """The service's 422 ``detail`` list for this body (empty when it is acceptable)."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "the body must be a JSON object", "type": "type_error"}]
    detail = [
        {"loc": ["body", *error.absolute_path], "msg": error.message, "type": error.validator}
        for error in sorted(
            spec.validator().iter_errors(body), key=lambda e: list(map(str, e.path))
        )
    ]
    if detail or not (spec.count_must_match_prompt and spec.prompt_field and spec.count_field):
        return detail
    count = spec.image_count(body)
    stated = stated_image_count(str(body.get(spec.prompt_field, "")))
    if stated != count:
        said = "does not state a number of images" if stated is None else f"asks for {stated}"
        detail.append({
            "loc": ["body", spec.count_field],
            "msg": f"{spec.count_field} is {count} but the prompt {said}; they must match",
            "type": "count_mismatch",
        })  # fmt: skip
    return detail


def _new_record(
    state: EmulatorState, spec: ModelSpec, body: dict[str, Any], base: str
) -> RequestRecord:
    scheduler = state.scheduler
    seed = body.get(spec.seed_field) if spec.seed_field else None
    if not isinstance(seed, int):
        seed = scheduler.rng.randrange(2**31)  # the service picks one when none is sent
    size = body.get(spec.size_field) if spec.size_field else None
    return RequestRecord(
        request_id=scheduler.new_request_id(),
        model_id=spec.model_id,
        input=body,
        images_requested=spec.image_count(body),
        prompt=str(body.get(spec.prompt_field, "")) if spec.prompt_field else "",
        seed=seed,
        image_size=size if isinstance(size, str) else spec.defaults().get(spec.size_field or ""),
        base_url=base,
    )


def create_app(config: EmulatorConfig | None = None, *, base_url: str | None = None) -> Starlette:
    """The emulator as an ASGI app (``app.state.emulator`` holds its state and counters).

    ``base_url`` fixes the address used in the URLs it hands out; by default each request's
    own address is used, which also works under ``httpx.ASGITransport``.
    """
    state = EmulatorState(config or EmulatorConfig(), base_url)
    ep = _Endpoint(state)
    stats, scheduler = state.stats, state.scheduler

    async def submit(request: Request) -> Response:
        stats.submit_calls += 1
        denied = ep.authorised(request)
        if denied is not None:
            return denied
        fault = await ep.fault("submit")
        if fault is not None and fault.kind != "drop":
            return _fault_response(fault)  # type: ignore[return-value]
        try:
            spec = get_model(request.path_params["model_id"])
        except UnknownModelError as exc:
            return _error(
                400, f"{exc.message}; {exc.hint}" if exc.hint else exc.message, MODEL_UNKNOWN
            )
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            detail = [{"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]
            return _error(422, "input rejected", detail=detail)
        detail = _validate(spec, body)
        if detail:
            return _error(422, "input rejected", detail=detail)
        faults = state.config.faults
        if faults.balance is not None:
            if faults.balance <= 0:
                return _error(402, _CODE_MESSAGES[NO_BALANCE], NO_BALANCE)
            faults.balance -= 1
        record = _new_record(state, spec, body, ep.base_url(request))
        stats.submits += 1
        stats.submits_by_input[canonical_json(body)] += 1
        scheduler.add(record)
        if fault is not None:  # a drop: accepted and billed, but the answer is lost
            return _DroppedConnection()
        return JSONResponse({
            "request_id": record.request_id,
            "status_url": record.status_url,
            "result_url": record.result_url,
            "cancel_url": record.cancel_url,
        })  # fmt: skip

    async def status(request: Request) -> Response:
        stats.status_calls += 1
        answer = ep.authorised(request) or _fault_response_or_none(await ep.fault("status"))
        if answer is not None:
            return answer
        record = ep.record(request)
        if isinstance(record, Response):
            return record
        return JSONResponse(_status_body(record, scheduler, record.state))

    async def result(request: Request) -> Response:
        stats.result_calls += 1
        answer = ep.authorised(request) or _fault_response_or_none(await ep.fault("result"))
        if answer is not None:
            return answer
        record = ep.record(request)
        if isinstance(record, Response):
            return record
        if record.state == COMPLETED:
            body = _status_body(record, scheduler, "succeeded")
            body["output"] = {"images": list(record.image_urls)}
        else:
            body = _status_body(record, scheduler, record.state)
            if record.state == FAILED:
                body["error"] = record.error
        return JSONResponse(body)

    async def cancel(request: Request) -> Response:
        stats.cancel_calls += 1
        answer = ep.authorised(request) or _fault_response_or_none(await ep.fault("cancel"))
        if answer is not None:
            return answer
        record = ep.record(request)
        if isinstance(record, Response):
            return record
        outcome = "cancelled" if scheduler.cancel(record) else "not_cancellable"
        body = {"request_id": record.request_id, "status": record.state, "outcome": outcome}
        return JSONResponse(body, status_code=202)

    async def download(request: Request) -> Response:
        stats.downloads += 1
        fault = await ep.fault("download")
        if fault is not None and fault.kind != "truncate":
            return _fault_response(fault)  # type: ignore[return-value]
        record = state.requests.get(request.path_params["request_id"])
        index = request.path_params["index"]
        if record is None or record.state != COMPLETED or index >= len(record.image_urls):
            return Response("Not Found", status_code=404, media_type="text/plain")
        ttl = state.config.faults.file_ttl
        if (
            ttl is not None
            and record.completed is not None
            and time.time() - record.completed > ttl
        ):
            return Response("Request has expired", status_code=403, media_type="text/plain")
        size = image_dimensions(record.image_size, full_size=state.config.image_size == "full")
        if state.config.image_size == "full":  # tens of ms: keep the event loop free
            png = await run_in_threadpool(render_png, record.prompt, record.seed, index, *size)
        else:  # about half a millisecond: a thread hop would cost as much
            png = render_png(record.prompt, record.seed, index, *size)
        if fault is not None:
            return _TruncatedPNG(png)
        return Response(png, media_type="image/png")

    routes = [
        Route("/v1/models/{model_id:path}", submit, methods=["POST"]),
        Route("/v1/requests/{request_id}/status", status, methods=["GET"]),
        Route("/v1/requests/{request_id}/result", result, methods=["GET"]),
        Route("/v1/requests/{request_id}/cancel", cancel, methods=["POST"]),
        Route("/files/{request_id}/{index:int}.png", download, methods=["GET"]),
    ]
    app = _EmulatorApp(routes=routes)
    app.state.emulator = state
    return app


def _fault_response_or_none(fault: Fault | None) -> Response | None:
    return None if fault is None else _fault_response(fault)
