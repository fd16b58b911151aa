"""The executor against the emulator over real HTTP: happy paths, faults, stops, resume, reuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from seedflow.client import PollPolicy, RetryPolicy
from seedflow.emulator import EmulatorHandle, canonical_json
from seedflow.errors import LimitExceeded, PipelineError
from seedflow.executor import RunEvent, StopControl, resume_run, run_pipeline
from seedflow.models import load_bundled_schema
from seedflow.plan import plan_file

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))
TOKEN = "test-token-5f0c1d"
FAST = {
    "poll": PollPolicy(first_delay=0.02, running_interval=0.05, queue_interval=0.2),
    "retry": RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05),
    "max_requests_per_second": 2000.0,
}


def write_pipeline(folder: Path, jobs: int, *, count: int = 2, name: str = "many") -> Path:
    """A pipeline of ``jobs`` jobs (one per seed) asking for ``count`` images each."""
    path = folder / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\nmodel: bytedance/seedream-4-0/sequential\n"
        "input:\n"
        f'  text: "Generate {count} images of a lighthouse, take {{{{ seed }}}}."\n'
        f"  sequential_image_generation_options: {count}\n"
        '  image_size: "2048:2048 (1:1)"\n'
        f"seeds: {{start: 0, count: {jobs}}}\n"
        'job_name: "lighthouse-{{ seed }}"\n'
    )
    return path


def run(pipeline: Any, emulator: EmulatorHandle, out: Path, **kwargs: Any) -> Any:
    return run_pipeline(
        pipeline, out=out, base_url=emulator.base_url, token=TOKEN, **{**FAST, **kwargs}
    )


def resume(folder: Path, emulator: EmulatorHandle, **kwargs: Any) -> Any:
    return resume_run(folder, base_url=emulator.base_url, token=TOKEN, **{**FAST, **kwargs})


def manifest_of(folder: Path) -> dict[str, Any]:
    manifest = json.loads((folder / "manifest.json").read_text())
    validator = jsonschema.Draft202012Validator(
        load_bundled_schema("manifest.schema.json"),
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    validator.validate(manifest)
    return manifest


def assert_images_intact(folder: Path, manifest: dict[str, Any]) -> int:
    """Every recorded output exists inside the run with the recorded sha256 and size."""
    seen = 0
    for job in manifest["jobs"]:
        for out in job["outputs"]:
            assert out["path"], (job["name"], out)
            file = folder / out["path"]
            assert file.resolve().is_relative_to(folder.resolve())
            data = file.read_bytes()
            assert hashlib.sha256(data).hexdigest() == out["sha256"]
            assert len(data) == out["bytes"]
            assert out["width"] and out["height"]
            seen += 1
    return seen


def submits_per_job(emulator: EmulatorHandle, manifest: dict[str, Any]) -> list[int]:
    by_input = emulator.stats.submits_by_input
    return [by_input[canonical_json(job["input"])] for job in manifest["jobs"]]


@pytest.mark.parametrize("pipeline", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_happy_path_on_each_recipe(
    pipeline: Path, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    events: list[RunEvent] = []
    summary = run(pipeline, emulator, tmp_path, on_event=events.append)
    assert summary.ok and summary.exit_code == 0, summary.to_dict()
    folder = summary.path
    assert folder.parent.parent == tmp_path
    manifest = manifest_of(folder)
    plan = plan_file(pipeline)
    assert manifest["status"] == "completed"
    assert manifest["totals"]["by_state"] == {"completed": len(plan.jobs)}
    assert assert_images_intact(folder, manifest) == plan.total_images
    assert manifest["totals"]["images"] == plan.total_images
    assert submits_per_job(emulator, manifest) == [1] * len(plan.jobs)
    assert [j["input"] for j in manifest["jobs"]] == [dict(j.input) for j in plan.jobs]
    assert manifest["axes"] == {k: list(v) for k, v in plan.axes.items()}
    assert list(manifest["axes"]) == list(plan.axes)  # in pipeline order
    for job in manifest["jobs"]:
        assert job["request_id"] in emulator.requests
        assert job["submitted_at"] and job["completed_at"] and job["attempts"] == 1
    assert (folder / "pipeline.yaml").read_text() == pipeline.read_text()
    assert json.loads((folder / "plan.json").read_text())["totals"]["jobs"] == len(plan.jobs)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("image_downloaded") == plan.total_images


def test_request_id_is_journaled_before_polling(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """When a job is first seen running, its request id is already in the journal."""
    import sqlite3

    emulator.config.processing_time = (0.3, 0.3)
    seen: list[tuple[str, str | None]] = []

    def check(event: RunEvent) -> None:
        if event.kind in ("job_submitted", "job_started"):
            folder = next(tmp_path.glob("*/*/journal.sqlite"))
            row = (
                sqlite3.connect(folder)
                .execute("SELECT state, request_id FROM jobs WHERE idx = ?", (event.job_index,))
                .fetchone()
            )
            seen.append(row)

    summary = run(write_pipeline(tmp_path, 3), emulator, tmp_path, on_event=check)
    assert summary.ok
    assert len(seen) == 6 and all(request_id for _, request_id in seen)


def test_faults_429_5xx_drops_and_truncation(emulator: EmulatorHandle, tmp_path: Path) -> None:
    faults = emulator.config.faults
    faults.add("submit", "429", rate=0.3)
    faults.add("submit", "503", rate=0.2)
    faults.add("status", "429-bare", rate=0.2)
    faults.add("status", "500", rate=0.2)
    faults.add("status", "drop", rate=0.1)
    faults.add("result", "503", rate=0.3)
    faults.add("download", "truncate", rate=0.3)
    faults.add("download", "500", rate=0.1)
    # Twelve tries per call: the emulator's faults come from a seeded generator, and with the
    # last file of the run downloading alone, six tries could all meet a streak of it
    # (every=3 did the same when the retries kept step with two other downloads).
    retry = RetryPolicy(attempts=12, base_delay=0.01, max_delay=0.05)
    summary = run(write_pipeline(tmp_path, 12), emulator, tmp_path, concurrency=4, retry=retry)
    manifest = manifest_of(summary.path)
    assert summary.ok, summary.to_dict()
    assert manifest["totals"]["by_state"] == {"completed": 12}
    assert assert_images_intact(summary.path, manifest) == 24
    assert submits_per_job(emulator, manifest) == [1] * 12
    assert emulator.stats.faults_fired  # the faults did fire


def test_a_submit_refused_longer_than_the_client_retries_is_sent_again_not_failed(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    # more 429s in a row than one round of client retries: the job was never accepted,
    # so the run sends it again later instead of failing it
    emulator.config.faults.add("submit", "429-bare", next=7)
    summary = run(write_pipeline(tmp_path, 2), emulator, tmp_path, concurrency=1)
    manifest = manifest_of(summary.path)
    assert summary.ok, summary.to_dict()
    assert manifest["totals"]["by_state"] == {"completed": 2}
    assert submits_per_job(emulator, manifest) == [1, 1]


def test_a_failing_job_does_not_stop_the_others(emulator: EmulatorHandle, tmp_path: Path) -> None:
    emulator.config.faults.add("job", "fail", next=2)
    summary = run(write_pipeline(tmp_path, 6), emulator, tmp_path, concurrency=2)
    manifest = manifest_of(summary.path)
    assert manifest["totals"]["by_state"] == {"completed": 4, "failed": 2}
    assert summary.exit_code == 1 and manifest["status"] == "finished_with_errors"
    assert len(summary.failures) == 2
    assert all("generation failed" in (f.error or "") for f in summary.failures)
    assert submits_per_job(emulator, manifest) == [1] * 6
    # --retry-failed sends exactly the failed ones again
    again = resume(summary.path, emulator, retry_failed=True)
    manifest = manifest_of(again.path)
    assert again.ok and manifest["totals"]["by_state"] == {"completed": 6}
    counts = submits_per_job(emulator, manifest)
    assert sorted(counts) == [1, 1, 1, 1, 2, 2]
    assert sorted(j["attempts"] for j in manifest["jobs"]) == [1, 1, 1, 1, 2, 2]


def test_partial_results_are_recorded_with_both_numbers(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.faults.add("job", "partial", every=2)
    summary = run(write_pipeline(tmp_path, 4, count=3), emulator, tmp_path, concurrency=1)
    manifest = manifest_of(summary.path)
    assert manifest["totals"]["by_state"] == {"completed": 2, "partial": 2}
    partial = [j for j in manifest["jobs"] if j["state"] == "partial"]
    for job in partial:
        assert job["images_requested"] == 3 and job["images_received"] == 1
        assert job["error"] == "received 1 of 3 requested images"
        assert len(job["outputs"]) == 1
    assert assert_images_intact(summary.path, manifest) == 2 * 3 + 2 * 1
    assert len(summary.partial) == 2 and not summary.failures


def test_balance_running_out_stops_submitting_and_resume_finishes(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.faults.balance = 3
    summary = run(write_pipeline(tmp_path, 8), emulator, tmp_path, concurrency=2)
    manifest = manifest_of(summary.path)
    by_state = manifest["totals"]["by_state"]
    assert by_state.get("completed") == 3 and by_state.get("pending") == 5
    assert manifest["status"] == "stopped" and "credit" in manifest["stop_reason"]
    assert summary.exit_code == 1 and len(summary.unfinished) == 5
    assert emulator.stats.submits == 3
    emulator.config.faults.balance = None  # topped up
    again = resume(summary.path, emulator)
    manifest = manifest_of(again.path)
    assert again.ok and manifest["totals"]["by_state"] == {"completed": 8}
    assert submits_per_job(emulator, manifest) == [1] * 8
    assert assert_images_intact(again.path, manifest) == 16


def test_lost_submit_answer_is_unknown_and_never_resent_silently(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.faults.add("submit", "drop", next=1)
    summary = run(write_pipeline(tmp_path, 3), emulator, tmp_path, concurrency=1)
    manifest = manifest_of(summary.path)
    assert manifest["totals"]["by_state"] == {"completed": 2, "unknown": 1}
    unknown = next(j for j in manifest["jobs"] if j["state"] == "unknown")
    assert unknown["request_id"] is None and unknown["error"]
    assert summary.exit_code == 1
    assert submits_per_job(emulator, manifest) == [1, 1, 1]  # it did reach the service once
    again = resume(summary.path, emulator)
    assert manifest_of(again.path)["totals"]["by_state"] == {"completed": 2, "unknown": 1}
    assert submits_per_job(emulator, manifest) == [1, 1, 1]
    # only an explicit flag resends it (here the user accepts paying twice)
    forced = resume(summary.path, emulator, resend_unknown=True)
    manifest = manifest_of(forced.path)
    assert forced.ok and manifest["totals"]["by_state"] == {"completed": 3}
    assert sorted(submits_per_job(emulator, manifest)) == [1, 1, 2]


def test_abort_then_resume_polls_instead_of_resubmitting(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.processing_time = (0.2, 0.2)
    stop = StopControl()

    def abort_after_three_submits(event: RunEvent) -> None:
        if (
            event.kind == "job_submitted"
            and event.counts.get("queued", 0) + event.counts.get("running", 0) >= 3
        ):
            stop.abort()

    summary = run(
        write_pipeline(tmp_path, 10), emulator, tmp_path, concurrency=4, stop=stop,
        on_event=abort_after_three_submits,
    )  # fmt: skip
    assert summary.aborted and summary.exit_code == 130
    manifest = manifest_of(summary.path)
    assert manifest["ended_at"] is None
    in_flight = [j for j in manifest["jobs"] if j["request_id"]]
    assert len(in_flight) >= 3
    again = resume(summary.path, emulator)
    manifest = manifest_of(again.path)
    assert again.ok and manifest["totals"]["by_state"] == {"completed": 10}
    assert submits_per_job(emulator, manifest) == [1] * 10
    for before in in_flight:  # same request ids: polled, not resubmitted
        after = manifest["jobs"][before["index"]]
        assert after["request_id"] == before["request_id"] and after["attempts"] == 1


def test_missing_downloads_are_fetched_on_resume(emulator: EmulatorHandle, tmp_path: Path) -> None:
    emulator.config.faults.add("download", "drop", every=1)
    summary = run(
        write_pipeline(tmp_path, 2), emulator, tmp_path,
        retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02),
    )  # fmt: skip
    manifest = manifest_of(summary.path)
    assert manifest["totals"]["by_state"] == {"failed": 2}
    assert all("output" in j["error"] for j in manifest["jobs"])
    assert manifest["totals"]["images"] == 0
    emulator.config.faults.clear()
    again = resume(summary.path, emulator)  # no --retry-failed needed: nothing is resent
    manifest = manifest_of(again.path)
    assert again.ok and manifest["totals"]["by_state"] == {"completed": 2}
    assert assert_images_intact(again.path, manifest) == 4
    assert submits_per_job(emulator, manifest) == [1, 1]


def test_user_stop_cancels_queued_jobs_and_waits_for_running_ones(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.concurrency = 1
    emulator.config.processing_time = (0.4, 0.4)
    stop = StopControl()
    messages: list[str] = []

    def interrupt_when_all_submitted(event: RunEvent) -> None:
        # one Ctrl-C only (a second one would abort)
        pending = event.counts.get("pending", 0)
        if event.kind == "job_submitted" and pending == 2 and not stop.submitting_stopped:
            stop.interrupt()
        if event.kind == "stopping":
            messages.append(event.message or "")

    summary = run(
        write_pipeline(tmp_path, 6), emulator, tmp_path, concurrency=4, stop=stop,
        on_event=interrupt_when_all_submitted,
    )  # fmt: skip
    manifest = manifest_of(summary.path)
    by_state = manifest["totals"]["by_state"]
    assert by_state.get("pending") == 2, by_state
    assert by_state.get("cancelled", 0) >= 2 and by_state.get("completed", 0) >= 1
    assert emulator.stats.cancel_calls >= 2
    assert summary.exit_code == 130 and summary.interrupted
    assert "cancelling" in messages[0] and "Ctrl-C again" in messages[0]
    # the run stays resumable: cancelled and unsent jobs are sent again
    again = resume(summary.path, emulator)
    manifest = manifest_of(again.path)
    assert again.ok and manifest["totals"]["by_state"] == {"completed": 6}
    assert max(submits_per_job(emulator, manifest)) <= 2


def test_reuse_takes_identical_jobs_from_earlier_runs(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    pipeline = write_pipeline(tmp_path, 3)
    first = run(pipeline, emulator, tmp_path / "runs")
    assert first.ok
    write_pipeline(tmp_path, 4)  # one more seed: one new job
    second = run(pipeline, emulator, tmp_path / "runs", reuse=True)
    manifest = manifest_of(second.path)
    assert manifest["totals"]["by_state"] == {"reused": 3, "completed": 1}
    assert all(j["reused_from"] == first.run_id for j in manifest["jobs"][:3])
    assert submits_per_job(emulator, manifest) == [1, 1, 1, 1]
    assert assert_images_intact(second.path, manifest) == 8
    assert second.ok


def test_guards_before_anything_is_sent(emulator: EmulatorHandle, tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, 5)
    with pytest.raises(LimitExceeded, match="max-images 4"):
        run(pipeline, emulator, tmp_path / "runs", max_images=4)
    with pytest.raises(LimitExceeded, match="max-cost"):
        run(pipeline, emulator, tmp_path / "runs", max_cost=0.01)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: bad\nmodel: bytedance/seedream-4-0/sequential\n"
        "input: {image_size: huge}\n"
    )
    with pytest.raises(PipelineError):
        run(bad, emulator, tmp_path / "runs")
    assert emulator.stats.submit_calls == 0
    assert not (tmp_path / "runs").exists()


def test_token_never_written_anywhere(emulator: EmulatorHandle, tmp_path: Path) -> None:
    emulator.config.faults.add("status", "500", next=2)
    emulator.config.faults.add("job", "fail", next=1)
    events: list[RunEvent] = []
    summary = run(write_pipeline(tmp_path, 3), emulator, tmp_path, on_event=events.append)
    for file in summary.path.rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes(), file
    assert all(TOKEN not in json.dumps(e.to_dict()) for e in events)
    assert TOKEN not in json.dumps(summary.to_dict())


def test_learned_poll_waits_for_likely_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    """After enough jobs finished, polls go where completions happen, not every second."""
    from types import SimpleNamespace

    import seedflow.executor as executor_module
    from seedflow.executor import LearnedPoll

    clock = [0.0]
    monkeypatch.setattr(executor_module.time, "monotonic", lambda: clock[0])
    base = PollPolicy(first_delay=0.25, running_interval=1.0)
    poll = LearnedPoll(base, share=0.5, min_samples=16)
    running = SimpleNamespace(request_id="r", state="in_progress")
    poll.track("r")
    assert poll.first_delay == 0.25  # nothing learned yet: the client's policy
    assert poll.next_delay(running, 0) == base.next_delay(running, 0)
    for n in range(40):  # jobs that take 30 to 40 s
        clock[0] = 0.0
        poll.track(f"j{n}")
        clock[0] = 29.5
        poll.next_delay(SimpleNamespace(request_id=f"j{n}", state="in_progress"), 0)
        clock[0] = 30.5 + n / 4  # finished between the two polls: about 30-40 s
        poll.finished(f"j{n}")
    clock[0] = 0.0
    poll.track("r")
    first = poll.first_delay
    assert 29.0 <= first <= 31.0  # not before the earliest completions
    clock[0] = first
    assert poll.next_delay(running, 0) <= 1.0  # then at most running_interval apart
    queued = SimpleNamespace(request_id="r", state="in_queue", queue_position=3)
    assert poll.next_delay(queued, 0) == base.next_delay(queued, 0)
    assert poll.unknown_status_timeout == base.unknown_status_timeout


def test_learned_poll_default_asks_fewer_than_a_poll_every_half_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Jobs of 0.2-1.0 s: fewer status requests per job than polling every 0.5 s (1.625)."""
    from types import SimpleNamespace

    import seedflow.executor as executor_module
    from seedflow.executor import LearnedPoll

    clock = [0.0]
    monkeypatch.setattr(executor_module.time, "monotonic", lambda: clock[0])
    poll = LearnedPoll(PollPolicy(first_delay=0.25, running_interval=1.0))
    durations = [0.2 + 0.8 * (n + 0.5) / 200 for n in range(200)]
    for n, duration in enumerate(durations):  # learn: each seen finishing when it did
        clock[0] = 0.0
        poll.track(f"j{n}")
        clock[0] = duration  # polled just as it finished
        poll.next_delay(SimpleNamespace(request_id=f"j{n}", state="in_progress"), 0)
        poll.finished(f"j{n}")
    polls, delays = [], []
    for n, duration in enumerate(durations):
        clock[0] = 0.0
        poll.track(f"r{n}")
        age, count = poll.first_delay, 1
        while age < duration:  # still running at this poll: ask again later
            clock[0] = age
            age += poll.next_delay(SimpleNamespace(request_id=f"r{n}", state="in_progress"), 0)
            count += 1
        polls.append(count)
        delays.append(age - duration)
    assert sum(polls) / len(polls) < 1.5
    assert sum(delays) / len(delays) < 0.3  # and completions are still noticed promptly
    # a job outliving every one seen is polled at the client's running interval, not in a loop
    clock[0] = 0.0
    poll.track("late")
    clock[0] = 5.0
    assert poll.next_delay(SimpleNamespace(request_id="late", state="in_progress"), 3) == 1.0


def test_a_refused_token_stops_sending(
    emulator: EmulatorHandle, tmp_path: Path
) -> None:
    emulator.config.token = "the-right-token"
    summary = run(write_pipeline(tmp_path, 5), emulator, tmp_path, concurrency=1)
    manifest = manifest_of(summary.path)
    assert manifest["totals"]["by_state"] == {"pending": 5}
    assert manifest["status"] == "stopped" and manifest["stop_reason"]
    assert summary.exit_code == 1 and len(summary.unfinished) == 5
    assert emulator.stats.submit_calls == 1 and emulator.stats.submits == 0
    # with the right token the same run finishes
    again = resume_run(summary.path, base_url=emulator.base_url, token="the-right-token", **FAST)
    assert again.ok and manifest_of(again.path)["totals"]["by_state"] == {"completed": 5}
