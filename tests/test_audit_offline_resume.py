"""Resuming an interrupted ``--offline`` run.

The in-process emulator of ``--offline`` starts with the same seed in every process, so it hands
out the same request ids again; on resume, a job recorded with an old request id is polled
against a new emulator that either does not know it (the job fails with 404) or has given that
very id to another job (the job silently receives the other job's images).

The interruption is simulated by rewinding rows of a finished run's journal to the state a
``kill -9`` leaves behind (the same states the crash tests produce), which keeps the test fast
and deterministic.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner, Result

from seedflow.cli import cli

ROOT = Path(__file__).resolve().parents[1]
STORYBOARD = ROOT / "pipelines" / "storyboard.yaml"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"RUNCOMFY_API_TOKEN": ""})


def finished_offline_run(tmp_path: Path) -> Path:
    ran = invoke("run", str(STORYBOARD), "--offline", "-q", "--out", str(tmp_path))
    assert ran.exit_code == 0, ran.output
    return next((tmp_path / "storyboard").iterdir())


def rewind(folder: Path, idx: int, *, keep_request_id: bool) -> None:
    """Put job ``idx`` back to 'accepted, not finished' (or 'never sent') and drop its images."""
    with sqlite3.connect(folder / "journal.sqlite") as db:
        (stem,) = db.execute("SELECT stem FROM jobs WHERE idx = ?", (idx,)).fetchone()
        if keep_request_id:
            db.execute(
                "UPDATE jobs SET state = 'queued', images_received = NULL, "
                "started_at = NULL, completed_at = NULL WHERE idx = ?",
                (idx,),
            )
        else:
            db.execute(
                "UPDATE jobs SET state = 'pending', request_id = NULL, attempts = 0, "
                "submitted_at = NULL, images_received = NULL, started_at = NULL, "
                "completed_at = NULL WHERE idx = ?",
                (idx,),
            )
        db.execute("DELETE FROM outputs WHERE job_idx = ?", (idx,))
    for image in (folder / "images").glob(f"{stem}-*"):
        image.unlink()


def test_offline_resume_finishes_an_accepted_job(tmp_path: Path) -> None:
    folder = finished_offline_run(tmp_path)
    rewind(folder, 0, keep_request_id=True)
    resumed = invoke("resume", str(folder), "-q")
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [job["state"] for job in manifest["jobs"]] == ["completed"] * 4


def test_offline_resume_never_gives_one_job_another_jobs_images(tmp_path: Path) -> None:
    folder = finished_offline_run(tmp_path)
    rewind(folder, 0, keep_request_id=True)  # accepted before the crash
    rewind(folder, 3, keep_request_id=False)  # never sent before the crash
    invoke("resume", str(folder), "-q")
    manifest = json.loads((folder / "manifest.json").read_text())
    request_ids = [job["request_id"] for job in manifest["jobs"] if job["request_id"]]
    assert len(request_ids) == len(set(request_ids)), "two jobs share one request id"
    digests = [
        hashlib.sha256((folder / out["path"]).read_bytes()).hexdigest()
        for job in manifest["jobs"]
        for out in job["outputs"]
    ]
    assert len(digests) == len(set(digests)), "two jobs with different prompts share images"
