"""The asyncio network layer under httpx (seedflow.http.install_asyncio_backend), on loopback.

What the rest of seedflow relies on: a refused connection is a ConnectError (a submit that
certainly did not land), a silent server a ReadTimeout, and a keep-alive connection the server
closed while idle is noticed and replaced instead of failing the next request.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpcore
import httpx
import pytest

from seedflow.client import Client
from seedflow.emulator import EmulatorHandle
from seedflow.http import _AsyncioBackend, install_asyncio_backend

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _serve(handler: Handler) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


_OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


def _backend_of(client: httpx.AsyncClient) -> object:
    return client._transport._pool._network_backend  # type: ignore[attr-defined]


async def _client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2.0) as client:
        assert install_asyncio_backend(client)
        yield client


async def test_installed_on_the_clients_httpx_builds_only() -> None:
    async with httpx.AsyncClient() as plain:
        assert install_asyncio_backend(plain)
        assert isinstance(_backend_of(plain), _AsyncioBackend)
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    async with httpx.AsyncClient(transport=mock) as mocked:
        assert not install_asyncio_backend(mocked)  # a transport given by the caller is its own
    async with httpx.AsyncClient(proxy="http://127.0.0.1:9") as proxied:
        install_asyncio_backend(proxied)
        pools = [t._pool for t in proxied._mounts.values()]  # type: ignore[union-attr]
        assert pools and all(isinstance(p, httpcore.AsyncHTTPProxy) for p in pools)
        # proxies keep httpcore's defaults
        assert not any(isinstance(p._network_backend, _AsyncioBackend) for p in pools)
    client = Client("t0ken", base_url="http://127.0.0.1:9")
    try:
        assert isinstance(_backend_of(client._api), _AsyncioBackend)
        assert isinstance(_backend_of(client._files), _AsyncioBackend)
    finally:
        await client.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async for client in _client():
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    server, url = await _serve(silent)
    async with server:
        async for client in _client():
            with pytest.raises(httpx.ReadTimeout):
                await client.get(url, timeout=0.2)
        server.close()


async def test_connection_closed_mid_answer_is_a_read_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()
        writer.transport.abort()  # a reset, not a clean close

    server, url = await _serve(hang_up)
    async with server:
        async for client in _client():
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                await client.get(url)


async def test_keep_alive_is_reused_and_a_server_side_close_is_noticed() -> None:
    connections: list[int] = []

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connections.append(1)
        await _read_request(reader)
        writer.write(_OK)  # keep-alive by default in HTTP/1.1 ...
        await writer.drain()
        await _read_request(reader)
        writer.write(_OK)
        await writer.drain()
        writer.close()  # ... then hung up after the second answer, while the client is idle

    server, url = await _serve(one_answer_per_connection)
    async with server:
        async for client in _client():
            for _ in range(2):
                assert (await client.get(url)).json() == {"ok": True}
            assert len(connections) == 1  # the second request reused the connection
            await asyncio.sleep(0.05)  # the close reaches the client's idle connection
            assert (await client.get(url)).json() == {"ok": True}
            assert len(connections) == 2  # noticed as closed: a new connection, no error


async def test_backend_connects_to_the_emulator(emulator: EmulatorHandle) -> None:
    backend = _AsyncioBackend()
    host, port = emulator.base_url.removeprefix("http://").split(":")
    stream = await backend.connect_tcp(host, int(port), timeout=2.0)
    try:
        assert isinstance(stream, httpcore.AsyncNetworkStream)
        assert stream.get_extra_info("server_addr")[1] == int(port)
        assert stream.get_extra_info("is_readable") is False
        await stream.write(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n", timeout=2.0)
        assert (await stream.read(65536, timeout=2.0)).startswith(b"HTTP/1.1 ")
    finally:
        await stream.aclose()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_goes_through_tls_on_the_asyncio_backend(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert_file, key_file)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_OK)
        await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    trusted = ssl.create_default_context(cafile=str(cert_file))
    async with server, httpx.AsyncClient(verify=trusted, timeout=5.0) as client:
        assert install_asyncio_backend(client)
        response = await client.get(f"https://127.0.0.1:{port}/")
        assert response.json() == {"ok": True}
        # the certificate is checked: an untrusting client refuses the same server
        async with httpx.AsyncClient(timeout=5.0) as untrusting:
            install_asyncio_backend(untrusting)
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://127.0.0.1:{port}/")
