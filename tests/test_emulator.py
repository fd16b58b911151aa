"""The emulator's behaviour over real HTTP on loopback: states, queue, auth, validation, faults."""

from __future__ import annotations

import asyncio
import io
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from seedflow.cli import cli
from seedflow.emulator import (
    EmulatorConfig,
    EmulatorHandle,
    Fault,
    Faults,
    canonical_json,
    create_app,
    image_dimensions,
    parse_fault,
    parse_range,
    render_png,
)

MODEL = "bytedance/seedream-4-0/sequential"
SUBMIT = f"/v1/models/{MODEL}"


def body(count: int = 2, **extra: Any) -> dict[str, Any]:
    """A valid input asking for ``count`` images."""
    return {
        "text": f"Generate {count} images of a lighthouse at dusk",
        "sequential_image_generation_options": count,
        **extra,
    }


@pytest.fixture
def api(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, headers={"Authorization": "Bearer t"}) as c:
        yield c


def client_for(emu: EmulatorHandle, token: str = "t") -> httpx.Client:
    return httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {token}"})


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def submit(c: httpx.Client, data: dict[str, Any] | None = None) -> str:
    r = c.post(SUBMIT, json=data if data is not None else body())
    assert r.status_code == 200, r.text
    return str(r.json()["request_id"])


def state_of(c: httpx.Client, rid: str) -> dict[str, Any]:
    r = c.get(f"/v1/requests/{rid}/status")
    assert r.status_code == 200, r.text
    return dict(r.json())


# --- the happy path ----------------------------------------------------------------------------


def test_job_goes_from_queue_to_completed_with_downloadable_pngs(
    emulator_factory: Callable[..., EmulatorHandle],
) -> None:
    emu = emulator_factory(processing_time=(0.4, 0.4), concurrency=1)
    with client_for(emu) as c:
        first, second = submit(c, body(3, image_size="1440:2560 (9:16)")), submit(c)
        assert state_of(c, first)["status"] == "in_progress"
        assert state_of(c, second)["status"] == "in_queue"
        pending = c.get(f"/v1/requests/{first}/result").json()
        assert pending["status"] == "in_progress" and "output" not in pending
        wait_until(lambda: state_of(c, first)["status"] == "completed")
        result = c.get(f"/v1/requests/{first}/result").json()
        assert result["status"] == "succeeded"
        urls = result["output"]["images"]
        assert len(urls) == 3 and len(set(urls)) == 3
        for url in urls:
            assert url.startswith(emu.base_url + "/")
            # The file host needs no token.
            r = httpx.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(r.content)).size == (144, 256)
    assert emu.stats.downloads == 3


def test_records_keep_input_timestamps_and_processing_duration(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    rid = submit(api, body(1, seed=7))
    wait_until(lambda: emulator.requests[rid].state == "completed")
    record = emulator.requests[rid]
    assert record.input == body(1, seed=7) and record.seed == 7 and record.images_requested == 1
    assert record.created <= record.started <= record.completed  # type: ignore[operator]
    assert record.processing_duration == pytest.approx(0.05, abs=0.05)
    assert record.image_urls == [f"{emulator.base_url}/files/{rid}/0.png"]


def test_stats_count_calls_and_submits_per_canonical_input(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    rid = submit(api, {"sequential_image_generation_options": 2, "text": "Two images of a cat"})
    submit(api, {"text": "Two images of a cat", "sequential_image_generation_options": 2})
    submit(api, body(1))
    api.post(SUBMIT, json={"text": 3})  # rejected: a call, not a submit
    for _ in range(3):
        api.get(f"/v1/requests/{rid}/status")
    api.get(f"/v1/requests/{rid}/result")
    api.post(f"/v1/requests/{rid}/cancel")
    key = canonical_json({"text": "Two images of a cat", "sequential_image_generation_options": 2})
    stats = emulator.stats
    assert stats.submits_by_input[key] == 2 and stats.duplicates() == {key: 2}
    assert (stats.submits, stats.submit_calls) == (3, 4)
    assert (stats.status_calls, stats.result_calls, stats.cancel_calls) == (3, 1, 1)


# --- queue and scheduler -------------------------------------------------------------------


def test_queue_positions_are_real_and_move_on_cancel(
    emulator_factory: Callable[..., EmulatorHandle],
) -> None:
    emu = emulator_factory(processing_time=(30.0, 30.0), concurrency=1)
    with client_for(emu) as c:
        ids = [submit(c) for _ in range(4)]
        assert state_of(c, ids[0])["status"] == "in_progress"
        assert [state_of(c, rid)["queue_position"] for rid in ids[1:]] == [0, 1, 2]
        r = c.post(f"/v1/requests/{ids[1]}/cancel")
        assert r.status_code == 202 and r.json()["outcome"] == "cancelled"
        assert [state_of(c, rid)["queue_position"] for rid in ids[2:]] == [0, 1]
        assert state_of(c, ids[1])["status"] == "cancelled"
        assert c.get(f"/v1/requests/{ids[1]}/result").json()["status"] == "cancelled"


def test_cancel_is_a_no_op_once_running_or_finished(
    emulator_factory: Callable[..., EmulatorHandle],
) -> None:
    emu = emulator_factory(processing_time=(0.3, 0.3), concurrency=1)
    with client_for(emu) as c:
        rid = submit(c)
        r = c.post(f"/v1/requests/{rid}/cancel")
        assert r.status_code == 202
        assert r.json() == {
            "request_id": rid,
            "status": "in_progress",
            "outcome": "not_cancellable",
        }
        wait_until(lambda: state_of(c, rid)["status"] == "completed")
        assert c.post(f"/v1/requests/{rid}/cancel").json()["outcome"] == "not_cancellable"
        assert emu.requests[rid].state == "completed"


def test_at_most_k_jobs_run_at_once(emulator_factory: Callable[..., EmulatorHandle]) -> None:
    emu = emulator_factory(processing_time=(0.1, 0.1), concurrency=2)
    with client_for(emu) as c:
        ids = [submit(c, body(1, seed=i)) for i in range(6)]
        wait_until(lambda: all(emu.requests[r].state == "completed" for r in ids))
    spans = [(emu.requests[r].started, emu.requests[r].completed) for r in ids]
    for started, _ in spans:
        running = sum(1 for s, e in spans if s <= started < e)  # type: ignore[operator]
        assert running <= 2
    # Submission order is queue order.
    starts = [s for s, _ in spans]
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_queue_time_delays_the_start(emulator_factory: Callable[..., EmulatorHandle]) -> None:
    emu = emulator_factory(queue_time=(0.2, 0.2), concurrency=4)
    with client_for(emu) as c:
        rid = submit(c)
        assert state_of(c, rid)["status"] == "in_queue"
        wait_until(lambda: emu.requests[rid].state == "completed")
    record = emu.requests[rid]
    assert record.started - record.created >= 0.19  # type: ignore[operator]


def test_config_changes_take_effect_while_running(
    emulator_factory: Callable[..., EmulatorHandle],
) -> None:
    emu = emulator_factory(processing_time=(30.0, 30.0), concurrency=1)
    with client_for(emu) as c:
        ids = [submit(c) for _ in range(3)]
        assert [state_of(c, r)["status"] for r in ids] == ["in_progress", "in_queue", "in_queue"]
        emu.config.concurrency = 3
        submit(c)  # the scheduler looks at the new limit on its next move
        assert [state_of(c, r)["status"] for r in ids] == ["in_progress"] * 3


# --- auth, models, validation --------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "token abc"])
def test_missing_or_malformed_token_is_401(emulator: EmulatorHandle, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in [("POST", SUBMIT), ("GET", "/v1/requests/x/status"),
                         ("GET", "/v1/requests/x/result"), ("POST", "/v1/requests/x/cancel")]:  # fmt: skip
        r = httpx.request(method, emulator.base_url + path, headers=headers, json=body())
        assert r.status_code == 401
        assert r.json()["error_code"] == 400004
    assert emulator.stats.submits == 0


def test_configured_token_is_enforced(emulator_factory: Callable[..., EmulatorHandle]) -> None:
    emu = emulator_factory(token="s3cret")
    with client_for(emu, "wrong") as c:
        assert c.post(SUBMIT, json=body()).status_code == 401
    with client_for(emu, "s3cret") as c:
        assert c.post(SUBMIT, json=body()).status_code == 200
    assert "s3cret" not in repr(emu.config)


def test_unknown_model_is_400001(api: httpx.Client) -> None:
    r = api.post("/v1/models/bytedance/seedream-9", json=body())
    assert r.status_code == 400
    assert r.json()["error_code"] == 400001
    assert MODEL in r.json()["error_message"]  # it says which models exist


@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
def test_unknown_request_is_404001(api: httpx.Client, endpoint: str) -> None:
    method = "POST" if endpoint == "cancel" else "GET"
    r = api.request(method, f"/v1/requests/no-such-id/{endpoint}")
    assert r.status_code == 404 and r.json()["error_code"] == 404001


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"sequential_image_generation_options": 2}, ["body"]),  # text is required
        (body(2, image_size="1000:1000"), ["body", "image_size"]),
        (body(2, seed="7"), ["body", "seed"]),
        ({"text": "Generate 2 images " + "x" * 600, "sequential_image_generation_options": 2},
         ["body", "text"]),
        (body(2) | {"sequential_image_generation_options": 16}, ["body", "sequential_image_generation_options"]),
        ({"text": "Generate 4 images of a cat", "sequential_image_generation_options": 2},
         ["body", "sequential_image_generation_options"]),
        ({"text": "Generate 4 images of a cat"}, ["body", "sequential_image_generation_options"]),
        ({"text": "A cat on a mat", "sequential_image_generation_options": 1},
         ["body", "sequential_image_generation_options"]),
        ([1, 2], ["body"]),
    ],
)  # fmt: skip
def test_invalid_input_is_422_with_detail(
    emulator: EmulatorHandle, api: httpx.Client, data: Any, loc: list[str]
) -> None:
    r = api.post(SUBMIT, json=data)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail
    assert detail[0]["loc"] == loc and detail[0]["msg"]
    assert emulator.stats.submits == 0 and not emulator.requests


def test_body_that_is_not_json_is_422(api: httpx.Client) -> None:
    r = api.post(SUBMIT, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_count_in_words_and_default_count_are_accepted(api: httpx.Client) -> None:
    submit(api, {"text": "Four consecutive storyboard panels of a heist",
                 "sequential_image_generation_options": 4})  # fmt: skip
    submit(api, {"text": "Generate 3 images of a beautiful sunset over a calm ocean."})


# --- images --------------------------------------------------------------------------------


def test_images_are_deterministic_and_differ_by_seed_and_index() -> None:
    a = render_png("a red fox", 1, 0, 256, 144)
    assert a == render_png("a red fox", 1, 0, 256, 144)
    others = {render_png("a red fox", 2, 0, 256, 144), render_png("a red fox", 1, 1, 256, 144),
              render_png("a blue fox", 1, 0, 256, 144)}  # fmt: skip
    assert a not in others and len(others) == 3

    def pixels(png: bytes) -> list[bytes]:
        raw = Image.open(io.BytesIO(png)).convert("RGB").tobytes()
        return [raw[i : i + 3] for i in range(0, len(raw), 3)]

    # Visibly different: most pixels change between seeds.
    base, reseeded = pixels(a), pixels(render_png("a red fox", 2, 0, 256, 144))
    changed = sum(1 for p, q in zip(base, reseeded) if sum(abs(x - y) for x, y in zip(p, q)) > 30)
    assert changed > len(base) // 2


@pytest.mark.parametrize(("width", "height"), [(256, 144), (171, 256), (1, 1), (512, 288)])
def test_images_are_valid_pngs_of_the_asked_size(width: int, height: int) -> None:
    png = render_png("a red fox", 1, 0, width, height)
    Image.open(io.BytesIO(png)).verify()  # every chunk's CRC checked
    image = Image.open(io.BytesIO(png))
    image.load()  # the compressed rows decode to exactly width x height pixels
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (width, height))


@pytest.mark.parametrize(
    ("size", "small", "full"),
    [("2048:2048 (1:1)", (256, 256), (2048, 2048)), ("2560:1440 (16:9)", (256, 144), (2560, 1440)),
     ("1664:2496 (2:3)", (171, 256), (1664, 2496)), ("3024:1296 (21:9)", (256, 110), (3024, 1296)),
     (None, (256, 144), (2560, 1440))],
)  # fmt: skip
def test_image_dimensions_follow_the_aspect_ratio(
    size: str | None, small: tuple[int, int], full: tuple[int, int]
) -> None:
    assert image_dimensions(size) == small
    assert image_dimensions(size, full_size=True) == full


def test_full_size_images_on_request(emulator_factory: Callable[..., EmulatorHandle]) -> None:
    emu = emulator_factory(image_size="full")
    with client_for(emu) as c:
        rid = submit(c, body(1, image_size="1728:2304 (3:4)"))
        wait_until(lambda: emu.requests[rid].state == "completed")
        png = httpx.get(emu.requests[rid].image_urls[0]).content
    assert Image.open(io.BytesIO(png)).size == (1728, 2304)


def test_job_without_seed_still_has_stable_images(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    rid = submit(api, body(1))
    wait_until(lambda: emulator.requests[rid].state == "completed")
    url = emulator.requests[rid].image_urls[0]
    assert httpx.get(url).content == httpx.get(url).content


def test_file_urls_of_unfinished_or_unknown_jobs_are_404(
    emulator_factory: Callable[..., EmulatorHandle],
) -> None:
    emu = emulator_factory(processing_time=(30.0, 30.0))
    with client_for(emu) as c:
        rid = submit(c)
    assert httpx.get(f"{emu.base_url}/files/{rid}/0.png").status_code == 404
    assert httpx.get(f"{emu.base_url}/files/nope/0.png").status_code == 404


# --- faults --------------------------------------------------------------------------------


def test_429_with_and_without_retry_after(emulator: EmulatorHandle, api: httpx.Client) -> None:
    emulator.config.faults.add("submit", "429", next=1, retry_after=7)
    emulator.config.faults.add("submit", "429-bare", next=1)
    first, second = api.post(SUBMIT, json=body()), api.post(SUBMIT, json=body())
    assert (first.status_code, first.headers.get("retry-after")) == (429, "7")
    assert (second.status_code, second.headers.get("retry-after")) == (429, None)
    assert api.post(SUBMIT, json=body()).status_code == 200
    assert emulator.stats.submits == 1  # a 429 never creates a job


@pytest.mark.parametrize("code", [500, 503])
@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
def test_server_errors(
    emulator: EmulatorHandle, api: httpx.Client, code: int, endpoint: str
) -> None:
    rid = submit(api)
    emulator.config.faults.add(endpoint, str(code), next=1)
    method = "POST" if endpoint == "cancel" else "GET"
    assert api.request(method, f"/v1/requests/{rid}/{endpoint}").status_code == code
    assert api.request(method, f"/v1/requests/{rid}/{endpoint}").status_code in (200, 202)


def test_http_200_carrying_an_error_code(emulator: EmulatorHandle, api: httpx.Client) -> None:
    emulator.config.faults.add("submit", "error200", next=1)
    emulator.config.faults.add("status", "error200", next=1, code=403001)
    r = api.post(SUBMIT, json=body())
    assert r.status_code == 200 and r.json()["error_code"] == 400002
    assert emulator.stats.submits == 0
    rid = submit(api)
    r = api.get(f"/v1/requests/{rid}/status")
    assert r.status_code == 200 and r.json()["error_code"] == 403001 and "status" not in r.json()


def test_dropped_submit_is_accepted_but_unanswered(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    emulator.config.faults.add("submit", "drop", next=1)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(SUBMIT, json=body(1, seed=3))
    # The service took (and billed) it even though the answer was lost.
    assert emulator.stats.submits == 1 and len(emulator.requests) == 1
    assert api.post(SUBMIT, json=body(1, seed=4)).status_code == 200


@pytest.mark.parametrize("endpoint", ["status", "result", "cancel"])
def test_dropped_connection_on_polling_endpoints(
    emulator: EmulatorHandle, api: httpx.Client, endpoint: str
) -> None:
    rid = submit(api)
    emulator.config.faults.add(endpoint, "drop", next=1)
    method = "POST" if endpoint == "cancel" else "GET"
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.request(method, f"/v1/requests/{rid}/{endpoint}")
    assert api.request(method, f"/v1/requests/{rid}/{endpoint}").status_code in (200, 202)


def test_slow_answers(emulator: EmulatorHandle, api: httpx.Client) -> None:
    rid = submit(api)
    emulator.config.faults.add("status", "slow", next=1, delay=0.5)
    with pytest.raises(httpx.ReadTimeout):
        api.get(f"/v1/requests/{rid}/status", timeout=0.1)
    assert api.get(f"/v1/requests/{rid}/status").status_code == 200


def test_truncated_download(emulator: EmulatorHandle, api: httpx.Client) -> None:
    rid = submit(api, body(1))
    wait_until(lambda: emulator.requests[rid].state == "completed")
    url = emulator.requests[rid].image_urls[0]
    emulator.config.faults.add("download", "truncate", next=1)
    with pytest.raises(httpx.RemoteProtocolError, match="expected"):
        httpx.get(url)
    assert Image.open(io.BytesIO(httpx.get(url).content)).format == "PNG"


@pytest.mark.parametrize("kind", ["429", "500", "503", "drop"])
def test_download_faults(emulator: EmulatorHandle, api: httpx.Client, kind: str) -> None:
    rid = submit(api, body(1))
    wait_until(lambda: emulator.requests[rid].state == "completed")
    url = emulator.requests[rid].image_urls[0]
    emulator.config.faults.add("download", kind, next=1)
    if kind == "drop":
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url)
    else:
        assert httpx.get(url).status_code == int(kind)
    assert httpx.get(url).status_code == 200


def test_file_urls_expire_after_ttl(emulator: EmulatorHandle, api: httpx.Client) -> None:
    rid = submit(api, body(1))
    wait_until(lambda: emulator.requests[rid].state == "completed")
    record = emulator.requests[rid]
    emulator.config.faults.file_ttl = 60.0
    assert httpx.get(record.image_urls[0]).status_code == 200
    record.completed -= 61  # type: ignore[operator]  # as if a minute had passed
    response = httpx.get(record.image_urls[0])
    assert response.status_code == 403 and "expired" in response.text


def test_failing_jobs(emulator: EmulatorHandle, api: httpx.Client) -> None:
    emulator.config.faults.add("job", "fail", next=1)
    failed, ok = submit(api, body(2, seed=1)), submit(api, body(2, seed=2))
    wait_until(lambda: all(emulator.requests[r].terminal for r in (failed, ok)))
    assert state_of(api, failed)["status"] == "failed"
    result = api.get(f"/v1/requests/{failed}/result").json()
    assert result["status"] == "failed" and result["error"] and "output" not in result
    assert api.get(f"/v1/requests/{ok}/result").json()["status"] == "succeeded"


@pytest.mark.parametrize(("asked", "got"), [(5, 2), (2, 1), (1, 0)])
def test_partial_results(emulator: EmulatorHandle, api: httpx.Client, asked: int, got: int) -> None:
    emulator.config.faults.add("job", "partial")
    rid = submit(
        api,
        body(asked)
        if asked > 1
        else {"text": "Generate 1 image of a cat", "sequential_image_generation_options": 1},
    )
    wait_until(lambda: emulator.requests[rid].terminal)
    result = api.get(f"/v1/requests/{rid}/result").json()
    assert result["status"] == "succeeded" and len(result["output"]["images"]) == got


def test_balance_runs_out_after_n_submits(emulator: EmulatorHandle, api: httpx.Client) -> None:
    emulator.config.faults.balance = 2
    submit(api, body(1, seed=1))
    submit(api, body(1, seed=2))
    r = api.post(SUBMIT, json=body(1, seed=3))
    assert r.status_code == 402 and r.json()["error_code"] == 400002
    assert emulator.stats.submits == 2 and len(emulator.requests) == 2
    emulator.config.faults.balance = None  # topped up
    submit(api, body(1, seed=3))


def test_fault_triggers_every_next_and_rate() -> None:
    rng = random.Random(0)
    every = Fault("status", "500", every=3)
    assert [every.fires(rng) for _ in range(7)] == [False, False, True, False, False, True, False]
    faults = Faults([Fault("status", "500", next=2), Fault("status", "503", next=1)])
    assert [getattr(faults.pick("status", rng), "kind", None) for _ in range(4)] == [
        "500", "500", "503", None,
    ]  # fmt: skip
    assert faults.pick("result", rng) is None
    always, never = Fault("job", "fail"), Fault("job", "fail", rate=0.0)
    assert all(always.fires(rng) for _ in range(20)) and not any(
        never.fires(rng) for _ in range(20)
    )
    some = Fault("job", "fail", rate=0.3)
    hits = sum(some.fires(rng) for _ in range(2000))
    assert 450 < hits < 750


def test_parse_fault_and_range() -> None:
    fault = parse_fault("status:slow:delay=2.5,rate=0.1")
    assert (fault.endpoint, fault.kind, fault.delay, fault.rate) == ("status", "slow", 2.5, 0.1)
    assert parse_fault("submit:drop:next=1").next == 1
    assert parse_fault("result:error200:code=404001").error_code() == 404001
    for bad in ["status", "nowhere:500", "status:teapot", "status:truncate", "job:500",
                "status:500:rate=2", "status:500:every=0", "status:500:speed=1", "status:500:rate=x"]:  # fmt: skip
        with pytest.raises(ValueError):
            parse_fault(bad)
    assert parse_range("0.5") == (0.5, 0.5) and parse_range("1-3") == (1.0, 3.0)
    for bad in ["x", "3-1", "-1"]:
        with pytest.raises(ValueError):
            parse_range(bad)
    with pytest.raises(ValueError):
        EmulatorConfig(concurrency=0)


# --- in-process app and the command line ------------------------------------------------------


def test_app_runs_in_process_under_asgi_transport() -> None:
    app = create_app(EmulatorConfig(processing_time=(0.02, 0.02)))

    async def flow() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emu.test",
                                     headers={"Authorization": "Bearer t"}) as c:  # fmt: skip
            sub = (await c.post(SUBMIT, json=body(2))).json()
            assert sub["status_url"] == f"http://emu.test/v1/requests/{sub['request_id']}/status"
            while (await c.get(sub["status_url"])).json()["status"] != "completed":
                await asyncio.sleep(0.01)
            return dict((await c.get(sub["result_url"])).json())

    result = asyncio.run(flow())
    assert result["status"] == "succeeded" and len(result["output"]["images"]) == 2


def test_cli_rejects_a_bad_fault_without_traceback() -> None:
    outcome = CliRunner().invoke(cli, ["emulator", "--fault", "status:teapot"])
    assert outcome.exit_code == 2
    assert "unknown fault kind 'teapot'" in outcome.output and "Traceback" not in outcome.output


def test_cli_serves_the_documented_flow() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from seedflow.cli import main; main()", "emulator", "--port", "0",
         "--queue-time", "0",
         "--processing-time", "0.1", "--fault", "status:429:next=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split("listening on ")[1].split()[0]
        with httpx.Client(base_url=base_url, headers={"Authorization": "Bearer anything"}) as c:
            sub = c.post(SUBMIT, json=body(2)).json()
            assert c.get(sub["status_url"]).status_code == 429  # the --fault took effect
            deadline = time.monotonic() + 5
            while c.get(sub["status_url"]).json()["status"] != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            result = c.get(sub["result_url"]).json()
            assert result["status"] == "succeeded" and len(result["output"]["images"]) == 2
            assert c.post(sub["cancel_url"]).json()["outcome"] == "not_cancellable"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1})
    assert canonical_json({"a": 1}) == json.dumps({"a": 1}, separators=(",", ":"))


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 10_000), height=st.integers(1, 10_000))
def test_small_images_keep_the_aspect_ratio(width: int, height: int) -> None:
    w, h = image_dimensions(f"{width}:{height} (x)")
    assert max(w, h) == 256
    # Each side is the scaled side rounded to a whole pixel (at least one).
    scale = 256 / max(width, height)
    assert abs(w - max(1.0, width * scale)) <= 0.5 and abs(h - max(1.0, height * scale)) <= 0.5
    assert image_dimensions(f"{width}:{height} (x)", full_size=True) == (width, height)


def test_request_ids_differ_between_emulators_with_the_same_seed() -> None:
    from seedflow.emulator import EmulatorConfig, serve

    body = {"text": "Generate 1 image of a fox", "sequential_image_generation_options": 1}
    ids = []
    for _ in range(2):
        with serve(EmulatorConfig(seed=0)) as emu:
            answer = httpx.post(
                f"{emu.base_url}/v1/models/bytedance/seedream-4-0/sequential",
                json=body, headers={"Authorization": "Bearer t"},
            )
            ids.append(answer.json()["request_id"])
    assert ids[0] != ids[1]


def _banner(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[str, str]:
    """The emulator command's startup output (stdout, stderr), without serving anything."""
    from seedflow.cli import emulator_cmd

    def fake_run(_config: object, *, host: str, port: int, on_start: Callable[[str], None]) -> None:
        on_start(f"http://{host}:{port or 40123}")

    monkeypatch.setattr(emulator_cmd, "run", fake_run)
    outcome = CliRunner().invoke(cli, ["emulator", *args], env={"SEEDFLOW_EMULATOR_TOKEN": None})
    assert outcome.exit_code == 0, outcome.output
    return outcome.stdout, outcome.stderr


def test_cli_banner_with_a_token_shows_a_placeholder_that_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, err = _banner(monkeypatch, "--token", "s3cret-value")
    assert "Bearer test" not in out  # it would be refused
    assert 'Bearer $TOKEN"' in out and "set TOKEN" in out
    assert "s3cret-value" not in out + err
    assert err == ""  # loopback: no warning


def test_cli_banner_without_a_token_says_any_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = _banner(monkeypatch)
    assert "any bearer token" in out and "Bearer test" in out and err == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_cli_warns_when_listening_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    _, err = _banner(monkeypatch, "--host", host)
    assert "reachable from the network" in err and "ANY bearer token" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_cli_does_not_warn_on_loopback(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    assert _banner(monkeypatch, "--host", host)[1] == ""


@pytest.mark.parametrize("port", ["65536", "-1"])
def test_cli_port_out_of_range_is_a_usage_error(port: str) -> None:
    outcome = CliRunner().invoke(cli, ["emulator", "--port", port])
    assert outcome.exit_code == 2 and "0<=x<=65535" in outcome.output
