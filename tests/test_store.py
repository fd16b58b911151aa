"""The run folder and journal: durable records, atomic manifest, paths kept inside the run."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from seedflow.errors import RunError
from seedflow.models import load_bundled_schema
from seedflow.store import (
    OutputRecord,
    RunStore,
    find_run,
    git_commit_of,
    list_runs,
    new_run_id,
    sanitize_name,
)

MODEL = "bytedance/seedream-4-0/sequential"


@dataclass(frozen=True)
class FakeJob:
    """Shaped like seedflow.plan.Job (the store only reads these attributes)."""

    name: str
    index: int
    input: Mapping[str, Any]
    group: str | None = None
    model: str = MODEL
    variables: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 1
    images: int = 2

    @property
    def id(self) -> str:
        canonical = json.dumps({"model": self.model, "input": self.input}, sort_keys=True)
        return "j" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FakePlan:
    jobs: tuple[FakeJob, ...]
    pipeline_path: str | None = None
    pipeline_name: str = "demo"
    pipeline_text: str = "name: demo\n"
    axes: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: {"style": ("a", "b")})
    estimated_cost: float = 0.108
    currency: str = "USD"

    @property
    def pipeline_sha256(self) -> str:
        return hashlib.sha256(self.pipeline_text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.pipeline_name, "jobs": [j.name for j in self.jobs]}


def make_plan(n: int = 2, **kwargs: Any) -> FakePlan:
    jobs = tuple(
        FakeJob(
            name=f"job {i}/é",
            index=i,
            input={"text": f"Generate 2 images, take {i}", "seed": i},
            variables={"style": "ab"[i % 2]},
            seed=i,
        )
        for i in range(n)
    )
    return FakePlan(jobs=jobs, **kwargs)


def validate_manifest(path: Path) -> dict[str, Any]:
    manifest = json.loads(path.read_text())
    schema = load_bundled_schema("manifest.schema.json")
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(manifest)
    return manifest


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore.create(tmp_path / "runs", make_plan(), base_url="http://127.0.0.1:1")
    yield s
    s.close()


def test_create_lays_out_the_run_folder(store: RunStore, tmp_path: Path) -> None:
    folder = store.path
    assert folder.parent == tmp_path / "runs" / "demo"
    assert folder.name == store.run_id
    for name in ("pipeline.yaml", "plan.json", "journal.sqlite", "manifest.json"):
        assert (folder / name).is_file(), name
    assert (folder / "images").is_dir()
    manifest = validate_manifest(folder / "manifest.json")
    assert manifest["totals"]["by_state"] == {"pending": 2}
    assert manifest["status"] == "running"
    assert manifest["axes"] == {"style": ["a", "b"]}
    assert [j["state"] for j in manifest["jobs"]] == ["pending", "pending"]


def test_journal_is_wal(store: RunStore) -> None:
    conn = sqlite3.connect(store.path / "journal.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_state_changes_are_committed_and_seen_by_another_connection(store: RunStore) -> None:
    store.mark_submitting(0)
    # a second reader (as after a crash) sees the journaled submit before any answer came
    other = RunStore.open(store.path)
    assert other.job(0).state == "submitting"
    assert other.job(0).attempts == 1
    store.record_submission(0, "req-1")
    assert other.job(0).request_id == "req-1"
    assert other.job(0).state == "queued"
    assert other.job(0).submitted_at is not None
    other.close()


def test_full_lifecycle_in_manifest(store: RunStore) -> None:
    store.mark_submitting(0)
    store.record_submission(0, "req-1")
    store.mark_running(0)
    store.record_outputs(0, ["http://h/a.png", "http://h/b.png"])
    job = store.job(0)
    assert len(job.missing_outputs) == 2
    path = store.output_path(job, 0, "http://h/a.png")
    path.write_bytes(b"png")
    store.record_download(
        0,
        OutputRecord(0, "http://h/a.png", store.relative(path), "0" * 64, 3, 4, 5, "image/png"),
    )
    assert len(store.job(0).missing_outputs) == 1
    store.finish(0, "partial", "received 1 of 2 images")
    store.mark_submitting(1)
    store.mark_unknown(1, "answer lost")
    store.set_meta(ended_at="2026-11-25T17:00:00.000Z")
    manifest = validate_manifest(store.write_manifest())
    first, second = manifest["jobs"]
    assert first["state"] == "partial"
    assert first["outputs"][0]["path"] == "images/job_0_e-00.png"
    assert first["outputs"][1]["path"] is None
    assert first["images_received"] == 2
    assert second["state"] == "unknown"
    assert manifest["totals"]["images"] == 1
    assert manifest["status"] == "finished_with_errors"


def test_resubmit_clears_previous_attempt(store: RunStore) -> None:
    store.mark_submitting(0)
    store.record_submission(0, "req-1")
    store.record_outputs(0, ["http://h/a.png"])
    store.finish(0, "failed", "boom")
    store.mark_submitting(0)
    job = store.job(0)
    assert (job.state, job.attempts, job.request_id, job.error, job.outputs) == (
        "submitting",
        2,
        None,
        None,
        [],
    )


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/abs/path", "..", ".hidden", "a\x00b", "名前", "", "x" * 500]
)
def test_sanitize_name_is_safe(name: str) -> None:
    clean = sanitize_name(name)
    assert clean and not clean.startswith(".")
    assert "/" not in clean and "\\" not in clean and "\x00" not in clean
    assert len(clean) <= 80


def test_output_paths_never_leave_the_run(store: RunStore) -> None:
    with pytest.raises(RunError, match="outside the run folder"):
        store.resolve_inside("../escape.png")
    with pytest.raises(RunError):
        store.resolve_inside("/etc/passwd")
    with pytest.raises(RunError):
        store.resolve_inside(".")
    job = store.job(0)
    job.stem = "../../evil"  # even a corrupted stem cannot escape
    with pytest.raises(RunError):
        store.output_path(job, 0, "http://h/x.png")


def test_output_path_extension_follows_url_and_content_type(store: RunStore) -> None:
    job = store.job(1)
    assert store.output_path(job, 3, "http://h/x.jpeg").name == "job_1_e-03.jpg"
    assert store.output_path(job, 3, "http://h/x", "image/webp").name == "job_1_e-03.webp"
    assert store.output_path(job, 3, "http://h/x?sig=1").name == "job_1_e-03.png"


def test_names_that_sanitise_alike_get_distinct_stems(tmp_path: Path) -> None:
    jobs = (
        FakeJob(name="a/b", index=0, input={"text": "x", "seed": 0}),
        FakeJob(name="a_b", index=1, input={"text": "y", "seed": 1}),
    )
    with RunStore.create(tmp_path, FakePlan(jobs=jobs), base_url="x") as s:
        stems = [j.stem for j in s.jobs()]
    assert len(set(stems)) == 2


def test_run_ids_sort_by_time() -> None:
    import datetime as dt

    t0 = dt.datetime(2026, 11, 25, 17, 0, 0, tzinfo=dt.timezone.utc)
    ids = [new_run_id(t0 + dt.timedelta(seconds=s)) for s in (3, 1, 2)]
    assert sorted(ids) == [ids[1], ids[2], ids[0]]
    assert ids[1].startswith("20261125T170001Z-")


def test_manifest_write_is_atomic(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (store.path / "manifest.json").read_text()
    import seedflow.store as store_module

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", broken_replace)
    store.mark_submitting(0)
    with pytest.raises(OSError):
        store.write_manifest()
    assert (store.path / "manifest.json").read_text() == before
    assert not [p for p in store.path.iterdir() if p.name.endswith(".tmp")]


def test_list_and_find_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    a = RunStore.create(root, make_plan(), base_url="x", run_id="20261125T170000Z-aaaa")
    b = RunStore.create(
        root, make_plan(pipeline_name="other"), base_url="x", run_id="20261125T170500Z-bbbb"
    )
    a.close()
    b.close()
    infos = list_runs(root)
    assert [i.run_id for i in infos] == ["20261125T170000Z-aaaa", "20261125T170500Z-bbbb"]
    assert infos[1].pipeline == "other"
    assert infos[0].jobs == 2
    assert find_run("20261125T170500Z-bbbb", root) == b.path
    assert find_run("20261125T1700", root) == a.path  # unique prefix
    assert find_run(str(a.path), root) == a.path
    with pytest.raises(RunError, match="ambiguous"):
        find_run("20261125T17", root)
    with pytest.raises(RunError, match="no run"):
        find_run("nope", root)
    assert list_runs(tmp_path / "missing") == []


def test_open_rejects_a_folder_without_journal(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="not a seedflow run folder"):
        RunStore.open(tmp_path)


def test_lock_refuses_a_second_runner(store: RunStore) -> None:
    store.lock()
    other = RunStore.open(store.path)
    with pytest.raises(RunError, match="another seedflow process"):
        other.lock()
    store.unlock()
    other.lock()
    other.close()


def test_git_commit_recorded_when_pipeline_is_in_a_repo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    pipeline = repo / "p.yaml"
    pipeline.write_text("name: demo\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "p.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "p"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit_of(pipeline) == (head, False)
    pipeline.write_text("name: changed\n")
    assert git_commit_of(pipeline) == (head, True)
    plan = make_plan(pipeline_path=str(pipeline))
    with RunStore.create(tmp_path / "runs", plan, base_url="x") as s:
        manifest = validate_manifest(s.path / "manifest.json")
    assert manifest["pipeline"]["git_commit"] == head
    # outside any repository: recorded as null, never an error
    outside = tmp_path / "plain.yaml"
    outside.write_text("x")
    assert git_commit_of(outside) == (None, None)
    assert git_commit_of(None) == (None, None)


def test_events_are_journaled(store: RunStore) -> None:
    store.add_event("job_failed", 1, {"error": "boom"})
    events = store.events()
    assert events[0]["kind"] == "run_created"
    assert events[-1] == {**events[-1], "job": 1, "kind": "job_failed", "data": {"error": "boom"}}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of a folder with its size and modification time (to prove nothing is written)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.mark.parametrize("content", [b"", b"not a database at all, just text\n", "foreign"])
def test_an_empty_or_foreign_journal_is_refused_and_left_as_it_is(
    tmp_path: Path, content: bytes | str
) -> None:
    folder = tmp_path / "pipeline" / "run"  # laid out as under a runs root
    folder.mkdir(parents=True)
    journal = folder / "journal.sqlite"
    if content == "foreign":
        with sqlite3.connect(journal) as conn:
            conn.execute("CREATE TABLE notes(x)")
        conn.close()
    else:
        journal.write_bytes(content)
    before = journal.read_bytes()
    for readonly in (False, True):
        expected = "is empty" if content == b"" else "not a seedflow journal"
        with pytest.raises(RunError, match=expected) as caught:
            RunStore.open(folder, readonly=readonly)
        assert "restore journal.sqlite" in (caught.value.hint or "")
    assert journal.read_bytes() == before  # never turned into an empty seedflow schema
    [info] = list_runs(tmp_path)  # listed, not silently dropped
    assert info.status == "unreadable" and info.path == folder


def test_reading_a_run_writes_nothing_into_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with RunStore.create(root, make_plan(), base_url="x") as created:
        folder = created.path
    before = _snapshot(folder)
    [info] = list_runs(root)
    with RunStore.open(folder, readonly=True) as store:
        assert store.manifest()["run_id"] == info.run_id
        assert store.live_status() == "interrupted"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.set_meta(x=1)
    assert _snapshot(folder) == before


def test_a_read_only_reader_sees_a_live_runs_latest_changes(store: RunStore) -> None:
    store.mark_submitting(0)
    with RunStore.open(store.path, readonly=True) as reader:
        assert reader.job(0).state == "submitting"
        store.record_submission(0, "req-1")
        assert reader.job(0).request_id == "req-1"


def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    """Another process holding the run's lock, as a live `seedflow run` does."""
    code = (
        "import fcntl, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX);"
        " print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_an_unended_run_nobody_drives_is_interrupted(store: RunStore) -> None:
    assert store.manifest()["status"] == "running"  # the manifest's own word is unchanged
    store.lock()
    assert store.live_status() == "running"  # this process drives it
    store.unlock()
    assert store.live_status() == "interrupted"
    assert list_runs(store.path.parent.parent)[0].status == "interrupted"
    holder = _hold_lock(store.path)
    try:
        assert store.live_status() == "running"
        assert list_runs(store.path.parent.parent)[0].status == "running"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert store.live_status() == "interrupted"  # the holder died: its lock went with it
    store.set_meta(ended_at="2026-11-25T18:00:00Z")
    assert store.live_status() != "interrupted"  # an ended run is never interrupted


def test_run_files_are_readable_by_others_as_the_umask_allows(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with RunStore.create(tmp_path / "runs", make_plan(), base_url="x") as created:
            created.write_manifest()
            folder = created.path
    finally:
        os.umask(old)
    for name in ("manifest.json", "plan.json", "pipeline.yaml"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name
    old = os.umask(0o077)
    try:
        with RunStore.create(tmp_path / "private", make_plan(), base_url="x") as created:
            assert (created.path / "manifest.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
