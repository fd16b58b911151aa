"""The emulator's answers have exactly the shapes api-contract.md documents.

Each check names the exact key set: an extra or missing key fails, so the emulator cannot
drift from the contract the client is written against.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from seedflow.emulator import EmulatorHandle
from seedflow.models import get_model

MODEL = "bytedance/seedream-4-0/sequential"
BODY = {"text": "Generate 2 images of a red kite", "sequential_image_generation_options": 2}
STATUS_KEYS = {"request_id", "status", "status_url", "result_url"}
STATUS_STATES = {"in_queue", "in_progress", "completed", "cancelled", "failed"}
RESULT_STATES = {"in_queue", "in_progress", "succeeded", "cancelled", "failed"}


@pytest.fixture
def slow(emulator_factory: Callable[..., EmulatorHandle]) -> EmulatorHandle:
    """One job runs at a time for a long while: the rest stay queued."""
    return emulator_factory(processing_time=(30.0, 30.0), concurrency=1)


def connect(emu: EmulatorHandle) -> httpx.Client:
    return httpx.Client(base_url=emu.base_url, headers={"Authorization": "Bearer any"})


@pytest.fixture
def api(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    with connect(emulator) as c:
        yield c


def json_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert isinstance(data, dict)
    return data


def submit(c: httpx.Client, emu: EmulatorHandle) -> dict[str, Any]:
    data = json_of(c.post(f"/v1/models/{MODEL}", json=BODY), 200)
    rid = data["request_id"]
    base = f"{emu.base_url}/v1/requests/{rid}"
    assert data == {
        "request_id": rid,
        "status_url": f"{base}/status",
        "result_url": f"{base}/result",
        "cancel_url": f"{base}/cancel",
    }
    assert isinstance(rid, str) and rid
    return data


def finish(emu: EmulatorHandle, rid: str) -> None:
    deadline = time.monotonic() + 5
    while not emu.requests[rid].terminal:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_submit_answers_the_four_documented_fields(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    submit(api, emulator)


def test_status_shapes_per_state(slow: EmulatorHandle) -> None:
    with connect(slow) as c:
        running, queued, cancelled = (submit(c, slow) for _ in range(3))
        c.post(cancelled["cancel_url"])
        for sub, state in [
            (running, "in_progress"),
            (queued, "in_queue"),
            (cancelled, "cancelled"),
        ]:
            data = json_of(c.get(sub["status_url"]), 200)
            keys = STATUS_KEYS | ({"queue_position"} if state == "in_queue" else set())
            assert set(data) == keys
            assert data["status"] == state and data["request_id"] == sub["request_id"]
            assert (data["status_url"], data["result_url"]) == (
                sub["status_url"],
                sub["result_url"],
            )
        assert json_of(c.get(queued["status_url"]), 200)["queue_position"] == 0


def test_completed_and_succeeded(emulator: EmulatorHandle, api: httpx.Client) -> None:
    sub = submit(api, emulator)
    finish(emulator, sub["request_id"])
    status = json_of(api.get(sub["status_url"]), 200)
    assert set(status) == STATUS_KEYS and status["status"] == "completed"
    result = json_of(api.get(sub["result_url"]), 200)
    assert set(result) == STATUS_KEYS | {"output"} and result["status"] == "succeeded"
    assert set(result["output"]) == {"images"}
    # The output validates against the bundled output schema of the model.
    jsonschema.validate({"output": result["output"]}, get_model(MODEL).output_schema)
    assert all(url.startswith(f"{emulator.base_url}/files/") for url in result["output"]["images"])


def test_unfinished_result_answers_its_status(slow: EmulatorHandle) -> None:
    with connect(slow) as c:
        running, queued = submit(c, slow), submit(c, slow)
        data = json_of(c.get(running["result_url"]), 200)
        assert set(data) == STATUS_KEYS and data["status"] == "in_progress"
        data = json_of(c.get(queued["result_url"]), 200)
        assert set(data) == STATUS_KEYS | {"queue_position"} and data["status"] == "in_queue"


def test_failed_result_has_an_error_message(emulator: EmulatorHandle, api: httpx.Client) -> None:
    emulator.config.faults.add("job", "fail")
    sub = submit(api, emulator)
    finish(emulator, sub["request_id"])
    assert json_of(api.get(sub["status_url"]), 200)["status"] == "failed"
    data = json_of(api.get(sub["result_url"]), 200)
    assert set(data) == STATUS_KEYS | {"error"} and data["status"] == "failed"
    assert isinstance(data["error"], str) and data["error"]


def test_cancel_answers_202_with_an_outcome(slow: EmulatorHandle) -> None:
    with connect(slow) as c:
        running, queued = submit(c, slow), submit(c, slow)
        assert json_of(c.post(queued["cancel_url"]), 202) == {
            "request_id": queued["request_id"], "status": "cancelled", "outcome": "cancelled",
        }  # fmt: skip
        assert json_of(c.post(running["cancel_url"]), 202) == {
            "request_id": running["request_id"], "status": "in_progress",
            "outcome": "not_cancellable",
        }  # fmt: skip


def test_states_stay_within_the_documented_sets(slow: EmulatorHandle) -> None:
    with connect(slow) as c:
        subs = [submit(c, slow) for _ in range(3)]
        c.post(subs[2]["cancel_url"])
        for sub in subs:
            assert json_of(c.get(sub["status_url"]), 200)["status"] in STATUS_STATES
            assert json_of(c.get(sub["result_url"]), 200)["status"] in RESULT_STATES


@pytest.mark.parametrize(
    ("call", "status", "code"),
    [
        (lambda c: c.post("/v1/models/no/such-model", json=BODY), 400, 400001),
        (lambda c: c.get("/v1/requests/missing/status"), 404, 404001),
        (lambda c: c.get("/v1/requests/missing/result"), 404, 404001),
        (lambda c: c.post("/v1/requests/missing/cancel"), 404, 404001),
        (
            lambda c: c.get("/v1/requests/missing/status", headers={"Authorization": ""}),
            401,
            400004,
        ),
    ],
)
def test_error_bodies_carry_error_code_and_message(
    api: httpx.Client, call: Callable[[httpx.Client], httpx.Response], status: int, code: int
) -> None:
    data = json_of(call(api), status)
    assert set(data) == {"error_code", "error_message"}
    assert data["error_code"] == code and isinstance(data["error_message"], str)


def test_insufficient_balance_is_402_with_400002(
    emulator: EmulatorHandle, api: httpx.Client
) -> None:
    emulator.config.faults.balance = 0
    data = json_of(api.post(f"/v1/models/{MODEL}", json=BODY), 402)
    assert set(data) == {"error_code", "error_message"} and data["error_code"] == 400002


def test_validation_error_has_a_detail_list(api: httpx.Client) -> None:
    data = json_of(api.post(f"/v1/models/{MODEL}", json={"text": 42}), 422)
    assert set(data) == {"error_message", "detail"}
    assert data["detail"] and all(set(item) == {"loc", "msg", "type"} for item in data["detail"])


def test_rate_limit_and_error_200_shapes(emulator: EmulatorHandle, api: httpx.Client) -> None:
    emulator.config.faults.add("status", "429", next=1, retry_after=3)
    emulator.config.faults.add("status", "error200", next=1)
    response = api.get("/v1/requests/x/status")
    assert response.headers["retry-after"] == "3"
    assert set(json_of(response, 429)) == {"error_message"}
    data = json_of(api.get("/v1/requests/x/status"), 200)
    assert set(data) == {"error_code", "error_message"} and data["error_code"] == 404001
