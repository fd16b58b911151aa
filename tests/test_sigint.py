"""Ctrl-C on a running `seedflow run`: once stops sending and cancels queued jobs; twice stops
at once. Either way the run stays resumable. The emulator runs in this process, so it outlives
the interrupted runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from seedflow.emulator import EmulatorHandle, canonical_json

TOKEN = "sigint-token-91ab"
RUNNER = [sys.executable, "-c", "from seedflow.cli import main; main()"]


def write_pipeline(folder: Path, jobs: int) -> Path:
    path = folder / "interrupt.yaml"
    path.write_text(
        "version: 1\nname: interrupt\nmodel: bytedance/seedream-4-0/sequential\n"
        "input:\n"
        '  text: "Generate 2 images of a harbour at dawn, take {{ seed }}."\n'
        "  sequential_image_generation_options: 2\n"
        f"seeds: {{start: 0, count: {jobs}}}\n"
        'job_name: "harbour-{{ seed }}"\n'
    )
    return path


def start(args: list[str], emulator: EmulatorHandle) -> subprocess.Popen[str]:
    env = {**os.environ, "RUNCOMFY_API_TOKEN": TOKEN}
    env.pop("RUNCOMFY_BASE_URL", None)
    return subprocess.Popen(
        [*RUNNER, *args, "--base-url", emulator.base_url, "--max-rps", "500"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def manifest_of(root: Path) -> tuple[Path, dict[str, Any]]:
    (folder,) = [p.parent for p in root.glob("*/*/manifest.json")]
    return folder, json.loads((folder / "manifest.json").read_text())


def submits(emulator: EmulatorHandle, manifest: dict[str, Any]) -> list[int]:
    return [emulator.stats.submits_by_input[canonical_json(j["input"])] for j in manifest["jobs"]]


def test_one_sigint_cancels_queued_jobs_and_waits_for_running_ones(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.concurrency = 2
    emulator.config.processing_time = (1.5, 1.5)
    pipeline = write_pipeline(tmp_path, 8)
    proc = start(["run", str(pipeline), "--out", str(tmp_path), "--concurrency", "8"], emulator)
    # every job accepted: two running, six waiting in the service's queue
    wait_until(lambda: emulator.stats.submits == 8 and any(
        r.state == "in_progress" for r in emulator.requests.values()))  # fmt: skip
    time.sleep(0.3)  # let the runner journal the last request ids
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "stopping: no new jobs will be sent; cancelling" in err
    assert "waiting for" in err and "Ctrl-C again" in err
    assert emulator.stats.cancel_calls >= 6
    folder, manifest = manifest_of(tmp_path)
    by_state = manifest["totals"]["by_state"]
    assert by_state == {"completed": 2, "cancelled": 6}, by_state
    assert manifest["stop_reason"] == "interrupted by the user (Ctrl-C)"
    assert f"seedflow resume {folder}" in err
    # resumable: the cancelled jobs are sent again, the finished ones are not
    emulator.config.concurrency = 8
    emulator.config.processing_time = (0.05, 0.05)
    again = start(["resume", str(folder), "-q"], emulator)
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    _, manifest = manifest_of(tmp_path)
    assert manifest["totals"]["by_state"] == {"completed": 8}
    counts = submits(emulator, manifest)
    assert sorted(counts) == [1, 1, 2, 2, 2, 2, 2, 2]
    # every accepted submit is accounted for in the journal
    assert sum(j["attempts"] for j in manifest["jobs"]) == emulator.stats.submits


def test_two_sigints_stop_at_once_and_the_run_resumes(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.concurrency = 2
    emulator.config.processing_time = (3.0, 3.0)
    pipeline = write_pipeline(tmp_path, 6)
    proc = start(["run", str(pipeline), "--out", str(tmp_path), "--concurrency", "6"], emulator)
    wait_until(lambda: emulator.stats.submits == 6)
    time.sleep(0.3)
    begun = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - begun < 2.5  # did not wait for the 3 s jobs
    assert proc.returncode == 130, err
    folder, manifest = manifest_of(tmp_path)
    assert manifest["ended_at"] is None
    running = [j for j in manifest["jobs"] if j["state"] in ("queued", "running")]
    assert running and all(j["request_id"] for j in running)
    emulator.config.concurrency = 8
    for _ in range(2):  # jobs the first Ctrl-C managed to cancel are sent by the next resume
        again = start(["resume", str(folder), "-q"], emulator)
        _, err = again.communicate(timeout=60)
        _, manifest = manifest_of(tmp_path)
        if again.returncode == 0:
            break
    assert again.returncode == 0, err
    assert manifest["totals"]["by_state"] == {"completed": 6}
    for before in running:
        after = manifest["jobs"][before["index"]]
        if after["attempts"] == 1:  # not cancelled: polled to the end, never resubmitted
            assert after["request_id"] == before["request_id"]
    assert sum(j["attempts"] for j in manifest["jobs"]) == emulator.stats.submits
