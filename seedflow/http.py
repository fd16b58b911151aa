"""The one boundary where HTTP answers and transport failures become seedflow errors.

Every answer of the API goes through :func:`raise_for_answer`, HTTP 200 included: some RunComfy
APIs answer 200 with a top-level ``error_code``. RunComfy's ``error_code`` wins over the HTTP
status when both are present (a 403 carrying 403001 is an unknown request, not a bad token).
Every httpx exception goes through :func:`map_transport_error`. Nothing else in seedflow looks at
status codes or httpx exceptions, and ``tests/test_client.py`` checks that each documented code
and status is mapped here.

Messages never contain the token: bodies are quoted only through :func:`excerpt`, which redacts it,
and URLs only through :func:`describe_url`, which drops query strings (they carry signatures).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import select
import socket
import ssl
import sys
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from .errors import (
    ApiError,
    AuthenticationError,
    InputRejected,
    InsufficientBalance,
    ModelRejected,
    NetworkError,
    RateLimited,
    RequestNotFound,
    ServerError,
    SubmitOutcomeUnknown,
    UnexpectedResponse,
    UsageError,
)

__all__ = [
    "ERROR_CODES",
    "HTTP_STATUSES",
    "certainly_not_sent",
    "check_base_url",
    "describe_url",
    "excerpt",
    "install_asyncio_backend",
    "is_loopback",
    "map_transport_error",
    "parse_retry_after",
    "raise_for_answer",
    "server_message",
]

#: RunComfy's documented ``error_code`` values.
ERROR_CODES: Mapping[int, type[ApiError]] = {
    400001: ModelRejected,
    400002: InsufficientBalance,
    400004: AuthenticationError,
    403001: RequestNotFound,
    404001: RequestNotFound,
}

#: HTTP statuses with a meaning of their own (every other 5xx is a ServerError).
HTTP_STATUSES: Mapping[int, type[ApiError]] = {
    400: InputRejected,
    401: AuthenticationError,
    402: InsufficientBalance,
    403: AuthenticationError,
    404: RequestNotFound,
    413: InputRejected,
    422: InputRejected,
    429: RateLimited,
}

_SUMMARIES: Mapping[type[ApiError], str] = {
    AuthenticationError: "the API refused the token",
    InsufficientBalance: "the RunComfy account has no credit left",
    ModelRejected: "the API does not accept this model id",
    InputRejected: "the API rejected the input",
    RequestNotFound: "the API does not know this request (unknown, expired or another account's)",
    RateLimited: "the API is rate limiting requests",
    ServerError: "the API failed",
}

_HINTS: Mapping[type[ApiError], str] = {
    AuthenticationError: "check RUNCOMFY_API_TOKEN (create or renew a token in your RunComfy "
    "profile, then: export RUNCOMFY_API_TOKEN=...)",
    InsufficientBalance: "top up the RunComfy balance, then resume the run; nothing more was "
    "submitted",
    ModelRejected: "check the model id (seedflow models lists the bundled ones)",
    RateLimited: "lower --max-requests-per-second or try again later",
}

_EXCERPT_CHARS = 200


def excerpt(text: str, *, redact: str | None = None, limit: int = _EXCERPT_CHARS) -> str:
    """A short one-line quote of ``text`` for an error message, with ``redact`` blanked out."""
    if redact:
        text = text.replace(redact, "***")
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[:limit] + "..."
    return flat or "<empty body>"


def describe_url(url: httpx.URL | str) -> str:
    """``host/path`` of a URL: enough to recognise it, without query strings (signatures)."""
    parsed = httpx.URL(str(url))
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.host}{port}{parsed.path}"


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> httpx.URL:
    """The API base URL, checked: https, or plain http only for loopback; no trailing slash."""
    hint = "use https://, or http:// only for a local emulator (127.0.0.1, ::1, localhost)"
    try:
        parsed = httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        raise UsageError(f"invalid API base URL '{url}': {exc}", hint=hint) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"invalid API base URL '{url}': expected http(s)://host", hint=hint)
    if parsed.userinfo:
        raise UsageError(
            "the API base URL must not carry credentials",
            hint="set the token in RUNCOMFY_API_TOKEN instead",
        )
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        raise UsageError(
            f"refusing plain http:// for {parsed.host}: the token would travel unencrypted",
            hint=hint,
        )
    return parsed.copy_with(path=parsed.path.rstrip("/"), query=None, fragment=None)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_code(body: Any) -> int | None:
    """RunComfy's numeric ``error_code`` at the top level (or inside an ``error`` object)."""
    if not isinstance(body, dict):
        return None
    raw = body.get("error_code")
    if raw is None and isinstance(body.get("error"), dict):
        raw = body["error"].get("error_code", body["error"].get("code"))
    if not isinstance(raw, (int, str)) or isinstance(raw, bool):
        return None
    try:
        code = int(raw)
    except (TypeError, ValueError):
        return None
    return code or None  # error_code 0 means "no error" in APIs that always send it


def server_message(body: Any) -> str | None:
    """What the service said, from the first of the fields RunComfy uses for it."""
    if not isinstance(body, dict):
        return None
    nested = body.get("error")
    for source in (body, nested if isinstance(nested, dict) else {}):
        for key in ("error_message", "message", "error", "detail"):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    detail = body.get("detail")
    if isinstance(detail, list) and detail:
        return _format_detail(detail)
    return None


def _format_detail(detail: list[Any]) -> str:
    """Validation errors (``[{"loc": [...], "msg": ...}]``) as ``field: message; ...``."""
    parts = []
    for item in detail[:3]:
        if isinstance(item, dict):
            loc = [str(p) for p in item.get("loc", []) if p != "body"]
            msg = item.get("msg") or item.get("message") or json.dumps(item)[:80]
            parts.append(f"{'.'.join(loc)}: {msg}" if loc else str(msg))
        else:
            parts.append(str(item)[:80])
    if len(detail) > 3:
        parts.append(f"and {len(detail) - 3} more")
    return "; ".join(parts)


def _parse_body(response: httpx.Response) -> tuple[Any, bool]:
    """(the JSON body, True) or (None, False) when it is not JSON."""
    try:
        return json.loads(response.content), True
    except (ValueError, UnicodeDecodeError):
        return None, False


def raise_for_answer(
    response: httpx.Response, *, redact: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The answer's JSON object, or the seedflow error it stands for.

    Checks RunComfy's ``error_code`` first (on every answer, 200 included), then the HTTP status,
    then that a successful answer is a JSON object.
    """
    body, parsed = _parse_body(response)
    status = response.status_code
    code = _error_code(body)
    quoted = excerpt(server_message(body) or response.text, redact=redact)
    where = f"HTTP {status}" + (f", error_code {code}" if code else "")
    fields: dict[str, Any] = {"status_code": status, "error_code": code, "request_id": request_id}

    cls: type[ApiError] | None = None
    if code is not None:
        cls = ERROR_CODES.get(code)
        if cls is None and 200 <= status < 300:
            raise UnexpectedResponse(
                f"the API answered with an unknown error_code {code} ({where}): {quoted}", **fields
            )
    if cls is None and status >= 400:
        cls = HTTP_STATUSES.get(status) or (ServerError if status >= 500 else None)
        if cls is None:
            raise UnexpectedResponse(
                f"unexpected answer from the API ({where}): {quoted}", **fields
            )
    if cls is not None:
        text = f"{_SUMMARIES[cls]} ({where}): {quoted}"
        hint = _HINTS.get(cls)
        if cls is RateLimited:
            after = parse_retry_after(response.headers.get("retry-after"))
            raise RateLimited(text, retry_after=after, hint=hint, **fields)
        if cls is InputRejected:
            detail = body.get("detail") if isinstance(body, dict) else None
            raise InputRejected(text, detail=detail, hint=hint, **fields)
        error = cls(text, hint=hint, **fields)
        if isinstance(error, ServerError):  # a 503 may say when to come back
            error.retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise error

    if not 200 <= status < 300:
        raise UnexpectedResponse(f"unexpected answer from the API ({where}): {quoted}", **fields)
    if not parsed or not isinstance(body, dict):
        raise UnexpectedResponse(
            f"the API answered {where} with something that is not a JSON object: "
            f"{excerpt(response.text, redact=redact)}",
            **fields,
        )
    return body


def certainly_not_sent(exc: httpx.HTTPError) -> bool:
    """True when the request never reached the service (no connection was made)."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def map_transport_error(
    exc: httpx.HTTPError, *, submit: bool = False, request_id: str | None = None
) -> ApiError:
    """The seedflow error for an httpx exception (the caller raises it ``from exc``).

    For a submit, anything but a failed connection means the body may have reached the service:
    that is a :class:`SubmitOutcomeUnknown`, never to be resent automatically.
    """
    url = describe_url(exc.request.url) if _has_request(exc) else "the API"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        what = f"could not connect to {url}: {type(exc).__name__}"
    elif isinstance(exc, httpx.TimeoutException):
        what = f"timed out talking to {url} ({type(exc).__name__})"
    else:
        what = f"the connection to {url} failed ({type(exc).__name__}: {exc})"
    if submit and not certainly_not_sent(exc):
        return SubmitOutcomeUnknown(
            f"submit sent but no answer came back: {what}",
            hint="the job may have been accepted and billed; it is recorded as unknown and was "
            "not resent",
            request_id=request_id,
        )
    return NetworkError(what, hint="check the network and the base URL", request_id=request_id)


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        return exc.request is not None
    except RuntimeError:  # raised by httpx when the error was created without a request
        return False


# --- a lighter network layer for httpx on asyncio -------------------------------------------


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """An httpcore stream on asyncio's own streams.

    httpx's default goes through anyio, whose per-call cancel scopes, and whose way of answering
    httpcore's "is this idle connection readable?" (asked of every pooled connection on every
    request; anyio builds a dict of socket attributes, with a getpeername call, each time) cost
    more CPU than the rest of a request on loopback. Errors are httpcore's, as httpx expects.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._socket: socket.socket | None = writer.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ReadError(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    async def aclose(self) -> None:
        # Not waiting for the close: a TLS peer that never answers the close would hold us.
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:  # ssl.SSLError included
            raise httpcore.ConnectError(exc) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _readable(self._socket)
        if info == "socket":
            return self._socket
        name = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername"}
        return self._writer.get_extra_info(name[info]) if info in name else None


def _readable(sock: socket.socket | None) -> bool:
    """Whether data (or the peer's close) is waiting: an idle pooled connection that was hung up."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connects plain TCP on asyncio; anything else (trio, a bound local address, socket
    options, Unix sockets) is left to httpcore's own anyio backend."""

    def __init__(self) -> None:
        self._fallback = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if local_address is not None or socket_options or not _on_asyncio():
            return await self._fallback.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        return _AsyncioStream(reader, writer)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._fallback.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._fallback.sleep(seconds)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio, say: anyio knows how to talk to it
        return False
    return True


def install_asyncio_backend(client: httpx.AsyncClient) -> bool:
    """Make ``client``'s direct connections use asyncio streams instead of anyio's.

    Only a transport httpx built itself is changed, and only its plain connection pool
    (proxies keep httpcore's defaults; under trio the anyio backend is used); True if one was. Needs Python 3.11
    (``asyncio.timeout``, ``StreamWriter.start_tls``); on 3.10 nothing changes.
    """
    if sys.version_info < (3, 11):
        return False
    installed = False
    with contextlib.suppress(AttributeError):  # another httpx: its defaults are right, if slower
        transports = [client._transport, *client._mounts.values()]
        for transport in transports:
            pool = getattr(transport, "_pool", None)
            if type(pool) is httpcore.AsyncConnectionPool and hasattr(pool, "_network_backend"):
                pool._network_backend = _AsyncioBackend()
                installed = True
    return installed
