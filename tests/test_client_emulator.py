"""The client against the real emulator over loopback: every state, error class and fault."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from seedflow.client import Client, PollPolicy, RetryPolicy, Status
from seedflow.emulator import EmulatorHandle
from seedflow.errors import (
    AuthenticationError,
    DownloadError,
    InputRejected,
    InsufficientBalance,
    ModelRejected,
    NetworkError,
    RateLimited,
    RequestNotFound,
    ServerError,
    SubmitOutcomeUnknown,
)

pytestmark = pytest.mark.anyio

MODEL = "bytedance/seedream-4-0/sequential"
Factory = Callable[..., EmulatorHandle]


def job(n: int = 2, subject: str = "a red fox", **extra: Any) -> dict[str, Any]:
    return {
        "text": f"Generate {n} images of {subject}",
        "sequential_image_generation_options": n,
        **extra,
    }


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(emu: EmulatorHandle, token: str = "test-token", **kwargs: Any) -> Client:
    kwargs.setdefault("retry", RetryPolicy(attempts=4, base_delay=0.01))
    kwargs.setdefault(
        "poll",
        PollPolicy(
            first_delay=0.02, running_interval=0.05, queue_interval=0.2, per_queue_position=0.02
        ),
    )
    kwargs.setdefault("max_requests_per_second", 500.0)
    return Client(token, base_url=emu.base_url, **kwargs)


class Sleeps:
    """Stands in for the client's back-off sleep: records it, waits only a moment."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        await anyio.sleep(0.001)


# --- the happy path and every state ---------------------------------------------------------------


async def test_submit_wait_download(emulator: EmulatorHandle, tmp_path: Path) -> None:
    async with client_for(emulator) as client:
        submission = await client.submit(MODEL, job(3, seed=11))
        assert submission.status_url.startswith(emulator.base_url)
        result = await client.wait(submission.request_id)
        assert result.state == "completed"
        assert len(result.outputs.images) == 3 and result.partial(3) is None
        files = [
            await client.download(url, tmp_path / f"{i}.png")
            for i, url in enumerate(result.outputs.images)
        ]
    for got in files:
        data = got.path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert got.sha256 == hashlib.sha256(data).hexdigest() and got.bytes == len(data)
        assert got.content_type == "image/png"
    assert len({f.sha256 for f in files}) == 3  # different images per index
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png", "2.png"]
    assert emulator.stats.submits == 1


async def test_wait_sees_queue_positions_then_running_then_completed(
    emulator_factory: Factory,
) -> None:
    emu = emulator_factory(concurrency=1, processing_time=(0.15, 0.15))
    seen: dict[str, list[Status]] = {}
    async with client_for(emu) as client:
        subs = [await client.submit(MODEL, job(1, f"fox {i}")) for i in range(3)]
        async with anyio.create_task_group() as tg:
            for sub in subs:
                seen[sub.request_id] = []
                tg.start_soon(
                    lambda s=sub: client.wait(s.request_id, on_status=seen[s.request_id].append)
                )
    last = [(s.state, s.queue_position) for s in seen[subs[-1].request_id]]
    assert last[0] == ("in_queue", 1)
    assert ("in_queue", 0) in last and ("in_progress", None) in last
    assert last[-1] == ("completed", None)
    for sub in subs:
        assert emu.requests[sub.request_id].state == "completed"


async def test_cancel_queued_and_running_jobs(emulator_factory: Factory) -> None:
    emu = emulator_factory(concurrency=1, processing_time=(0.5, 0.5))
    async with client_for(emu) as client:
        running = await client.submit(MODEL, job(1, "first"))
        queued = await client.submit(MODEL, job(1, "second"))
        cancelled = await client.cancel(queued.request_id)
        assert (cancelled.outcome, cancelled.status) == ("cancelled", "cancelled")
        assert (await client.wait(queued.request_id)).state == "cancelled"
        refused = await client.cancel(running.request_id)
        assert refused.outcome == "not_cancellable"
        assert (await client.status(running.request_id)).state == "in_progress"


async def test_failed_job(emulator: EmulatorHandle) -> None:
    emulator.config.faults.add("job", "fail")
    async with client_for(emulator) as client:
        result = await client.wait((await client.submit(MODEL, job())).request_id)
    assert result.state == "failed" and result.error and "failed" in result.error
    assert result.outputs.images == ()


async def test_partial_result_reports_both_numbers(emulator: EmulatorHandle) -> None:
    emulator.config.faults.add("job", "partial")
    async with client_for(emulator) as client:
        result = await client.wait((await client.submit(MODEL, job(4))).request_id)
    short = result.partial(4)
    assert result.state == "completed"
    assert short is not None and (short.received, short.requested) == (2, 4)


# --- every error class ----------------------------------------------------------------------------


async def test_wrong_token(emulator_factory: Factory) -> None:
    emu = emulator_factory(token="the-right-one")
    async with client_for(emu, token="a-wrong-one") as client:
        with pytest.raises(AuthenticationError) as info:
            await client.submit(MODEL, job())
    assert info.value.error_code == 400004 and "a-wrong-one" not in str(info.value)
    async with client_for(emu, token="the-right-one") as client:
        await client.submit(MODEL, job())


async def test_unknown_model(emulator: EmulatorHandle) -> None:
    async with client_for(emulator) as client:
        with pytest.raises(ModelRejected) as info:
            await client.submit("bytedance/nope", job())
    assert info.value.error_code == 400001


async def test_rejected_input_carries_detail(emulator: EmulatorHandle) -> None:
    async with client_for(emulator) as client:
        with pytest.raises(InputRejected) as info:
            await client.submit(MODEL, job(3) | {"text": "Generate 2 images of a fox"})
    assert info.value.status_code == 422
    assert any("sequential_image_generation_options" in str(d) for d in info.value.detail)
    assert emulator.stats.submits == 0


async def test_unknown_request(emulator: EmulatorHandle) -> None:
    async with client_for(emulator) as client:
        for call in (client.status, client.result, client.cancel):
            with pytest.raises(RequestNotFound) as info:
                await call("no-such-request")
            assert info.value.error_code == 404001


async def test_balance_runs_out(emulator: EmulatorHandle) -> None:
    emulator.config.faults.balance = 1
    async with client_for(emulator) as client:
        await client.submit(MODEL, job(1, "one"))
        with pytest.raises(InsufficientBalance) as info:
            await client.submit(MODEL, job(1, "two"))
    assert info.value.status_code == 402 and "top up" in info.value.format_message()
    assert emulator.stats.submits == 1 and emulator.stats.submit_calls == 2


async def test_nothing_listening_is_a_network_error() -> None:
    with socket.socket() as closed:  # bound but not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        retry = RetryPolicy(attempts=2, base_delay=0.01)
        async with Client("t", base_url=f"http://127.0.0.1:{port}", retry=retry) as client:
            with pytest.raises(NetworkError) as info:
                await client.submit(MODEL, job())
    assert not isinstance(info.value, SubmitOutcomeUnknown)  # certainly not sent
    assert "could not connect to 127.0.0.1" in str(info.value)


# --- faults on the four endpoints -----------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
@pytest.mark.parametrize("kind", ["429", "429-bare", "500", "503", "drop"])
async def test_reads_recover_from_transient_faults(
    emulator: EmulatorHandle, endpoint: str, kind: str
) -> None:
    async with client_for(emulator) as client:
        sub = await client.submit(MODEL, job())
        emulator.config.faults.add(endpoint, kind, next=2)
        sleeps = Sleeps()
        client._sleep = sleeps
        answer = await getattr(client, endpoint)(sub.request_id)
    assert answer.request_id == sub.request_id
    assert emulator.stats.faults_fired[f"{endpoint}:{kind}"] == 2
    assert len(sleeps.seconds) == 2
    if kind == "429":
        assert sleeps.seconds == [1.0, 1.0]  # the emulator's Retry-After


async def test_persistent_faults_surface_as_their_error_class(emulator: EmulatorHandle) -> None:
    async with client_for(emulator) as client:
        client._sleep = Sleeps()
        sub = await client.submit(MODEL, job())
        for kind, error in (("429", RateLimited), ("503", ServerError), ("drop", NetworkError)):
            emulator.config.faults.clear()
            emulator.config.faults.add("status", kind)
            with pytest.raises(error):
                await client.status(sub.request_id)


async def test_wait_rides_out_a_bad_spell_of_the_api(emulator: EmulatorHandle) -> None:
    async with client_for(emulator) as client:
        sub = await client.submit(MODEL, job())
        emulator.config.faults.add("status", "500", next=6)  # more than one call's retries
        emulator.config.faults.add("result", "drop", next=2)
        result = await client.wait(sub.request_id)
    assert result.state == "completed" and len(result.outputs.images) == 2
    assert emulator.stats.faults_fired["status:500"] == 6
    assert emulator.stats.faults_fired["result:drop"] == 2


async def test_error_code_on_http_200(emulator: EmulatorHandle) -> None:
    async with client_for(emulator) as client:
        sub = await client.submit(MODEL, job())
        emulator.config.faults.add("status", "error200", next=1)
        with pytest.raises(RequestNotFound):
            await client.status(sub.request_id)
        emulator.config.faults.add("submit", "error200", next=1)
        with pytest.raises(InsufficientBalance):
            await client.submit(MODEL, job(1, "again"))
    assert emulator.stats.submit_calls == 2 and emulator.stats.submits == 1


async def test_slow_answers_past_the_timeout_are_retried(emulator: EmulatorHandle) -> None:
    async with client_for(emulator, timeout=0.2) as client:
        sub = await client.submit(MODEL, job())
        emulator.config.faults.add("status", "slow", delay=0.5, next=1)
        assert (await client.status(sub.request_id)).request_id == sub.request_id
    assert emulator.stats.status_calls == 2


# --- submit: never a second bill ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "429-bare", "503"])
async def test_submit_is_retried_when_certainly_not_accepted(
    emulator: EmulatorHandle, kind: str
) -> None:
    emulator.config.faults.add("submit", kind, next=2)
    async with client_for(emulator) as client:
        client._sleep = Sleeps()
        await client.submit(MODEL, job())
    assert emulator.stats.submit_calls == 3
    assert emulator.stats.submits == 1 and not emulator.stats.duplicates()


async def test_dropped_submit_answer_is_unknown_and_not_resent(emulator: EmulatorHandle) -> None:
    emulator.config.faults.add("submit", "drop", next=1)
    async with client_for(emulator) as client:
        with pytest.raises(SubmitOutcomeUnknown) as info:
            await client.submit(MODEL, job())
    assert "billed" in info.value.format_message()
    # the service took it (and would bill it); seedflow sent it exactly once
    assert emulator.stats.submit_calls == 1 and emulator.stats.submits == 1


async def test_submit_timing_out_is_unknown_and_not_resent(emulator: EmulatorHandle) -> None:
    emulator.config.faults.add("submit", "slow", delay=0.4, next=1)
    async with client_for(emulator, timeout=0.1) as client:
        with pytest.raises(SubmitOutcomeUnknown):
            await client.submit(MODEL, job())
    await anyio.sleep(0.5)
    # whether the service kept it is unknowable from here; it was sent exactly once
    assert emulator.stats.submit_calls == 1 and emulator.stats.submits <= 1


async def test_submit_500_is_unknown_and_not_resent(emulator: EmulatorHandle) -> None:
    emulator.config.faults.add("submit", "500", next=1)
    async with client_for(emulator) as client:
        with pytest.raises(SubmitOutcomeUnknown):
            await client.submit(MODEL, job())
    assert emulator.stats.submit_calls == 1


# --- downloads ------------------------------------------------------------------------------------


async def _completed(client: Client, n: int = 1) -> list[str]:
    result = await client.wait((await client.submit(MODEL, job(n))).request_id)
    return list(result.outputs.images)


async def test_truncated_download_is_retried(emulator: EmulatorHandle, tmp_path: Path) -> None:
    async with client_for(emulator) as client:
        [url] = await _completed(client)
        emulator.config.faults.add("download", "truncate", next=1)
        got = await client.download(url, tmp_path / "0.png")
    assert got.bytes == len((tmp_path / "0.png").read_bytes())
    assert emulator.stats.downloads == 2


async def test_always_truncated_download_leaves_no_file(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    async with client_for(emulator) as client:
        [url] = await _completed(client)
        emulator.config.faults.add("download", "truncate")
        with pytest.raises(DownloadError):
            await client.download(url, tmp_path / "0.png")
    assert list(tmp_path.iterdir()) == []
    assert emulator.stats.downloads == client.retry.attempts


@pytest.mark.parametrize("kind", ["500", "503", "429", "drop"])
async def test_download_recovers_from_transient_faults(
    emulator: EmulatorHandle, tmp_path: Path, kind: str
) -> None:
    async with client_for(emulator) as client:
        [url] = await _completed(client)
        emulator.config.faults.add("download", kind, next=1)
        client._sleep = Sleeps()
        await client.download(url, tmp_path / "0.png")
    assert (tmp_path / "0.png").read_bytes().startswith(b"\x89PNG")


async def test_expired_file_url(emulator: EmulatorHandle, tmp_path: Path) -> None:
    emulator.config.faults.file_ttl = 0.0
    async with client_for(emulator) as client:
        [url] = await _completed(client)
        await anyio.sleep(0.01)
        with pytest.raises(DownloadError) as info:
            await client.download(url, tmp_path / "0.png")
    assert "HTTP 403" in str(info.value) and "/files/" in str(info.value)
    assert emulator.stats.downloads == 1 and list(tmp_path.iterdir()) == []


# --- many waits on one client ---------------------------------------------------------------------


async def test_many_concurrent_waits_share_the_request_rate(emulator_factory: Factory) -> None:
    emu = emulator_factory(concurrency=8, processing_time=(0.1, 0.3))
    rate = 60.0
    async with client_for(emu, max_requests_per_second=rate) as client:
        subs = [await client.submit(MODEL, job(1, f"fox {i}")) for i in range(24)]
        started = anyio.current_time()
        results: list[str] = []

        async def one(request_id: str) -> None:
            results.append((await client.wait(request_id)).state)

        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(one, sub.request_id)
        elapsed = anyio.current_time() - started
    assert results == ["completed"] * 24
    calls = emu.stats.status_calls + emu.stats.result_calls
    assert calls <= rate * elapsed + 2
