"""Running the emulator on a real socket: in a background thread (``serve``) or in front (``run``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from .app import EmulatorState, create_app
from .config import EmulatorConfig
from .state import RequestRecord, Stats

__all__ = ["EmulatorHandle", "bind", "run", "serve", "serve_in_thread"]


@dataclass
class EmulatorHandle:
    """A running emulator: its address, its (mutable) config, and what it has received."""

    base_url: str
    state: EmulatorState

    @property
    def config(self) -> EmulatorConfig:
        return self.state.config

    @property
    def stats(self) -> Stats:
        return self.state.stats

    @property
    def requests(self) -> dict[str, RequestRecord]:
        """request_id -> record (state, input, timestamps, processing duration, image URLs).

        A snapshot of the mapping (safe to iterate while the server adds requests); the
        records themselves are live.
        """
        return dict(self.state.requests)


class _Server(uvicorn.Server):
    """uvicorn, stopping at once when asked.

    uvicorn notices ``should_exit`` on a 0.1 s tick and then sleeps another 0.1 s while
    connections close; tests start and stop an emulator each, so those pauses add up.
    """

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Ask the server to stop (from any thread)."""
        self.should_exit = True
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._wake.set)

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        ticks = asyncio.ensure_future(super().main_loop())
        woken = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait({ticks, woken}, return_when=asyncio.FIRST_COMPLETED)
        for task in (ticks, woken):
            task.cancel()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            servers, connections = self.servers, self.server_state.connections
        except AttributeError:  # another uvicorn: its own shutdown is slower but right
            await super().shutdown(sockets)
            return
        for server in servers:
            server.close()
        for connection in list(connections):
            connection.shutdown()  # idle keep-alive connections close now, busy ones after
        deadline = time.monotonic() + 1.0
        while connections and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for server in servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)


def _uvicorn_config(app: ASGIApp, *, log_level: str = "warning") -> uvicorn.Config:
    # h11 and the plain asyncio loop are always installed; no access log: it costs more than
    # the status endpoint itself.
    return uvicorn.Config(
        app,
        loop="asyncio",
        http="h11",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=1,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = a free port), ready for uvicorn."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on such sockets, and without it
    # every answer (written in pieces) waits ~40 ms for the client's delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    """The host as it goes in a URL (a wildcard address is reached via loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def serve(
    config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[EmulatorHandle]:
    """Run an emulator in a background thread for the duration of the ``with`` block.

    ``port=0`` picks a free port; the handle's ``base_url`` says which.
    """
    sock = bind(host, port)
    base_url = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
    app = create_app(config or EmulatorConfig(), base_url=base_url)
    with serve_in_thread(app, sock):
        yield EmulatorHandle(base_url=base_url, state=app.state.emulator)


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, sock: socket.socket) -> Iterator[None]:
    """Serve any ASGI app on a bound socket from a background thread, as ``serve`` does.

    The socket is closed afterwards. (The status benchmark serves its baseline app this way.)
    """
    server = _Server(_uvicorn_config(app))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="seedflow-emulator", daemon=True
    )
    thread.start()
    try:
        _wait_started(server, thread)
        yield
    finally:
        server.stop()
        thread.join(timeout=10)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the emulator could not start (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the emulator did not start within {timeout:.0f} s")
        time.sleep(0.005)


def run(
    config: EmulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_start: Callable[[str], None] | None = None,
) -> None:
    """Run an emulator in the foreground until interrupted (what ``seedflow emulator`` does)."""
    sock = bind(host, port)
    base_url = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
    app = create_app(config, base_url=base_url)
    server = uvicorn.Server(_uvicorn_config(app))
    if on_start is not None:
        on_start(base_url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
