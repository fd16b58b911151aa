"""`seedflow run / resume / runs / status` from the command line."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from seedflow.cli import cli
from seedflow.emulator import EmulatorHandle
from seedflow.models import load_bundled_schema

ROOT = Path(__file__).parent.parent
SUNSET = ROOT / "pipelines" / "sunset-study.yaml"
SECRET = "cli-secret-token-7e21"


def invoke(
    *args: str, env: Mapping[str, str | None] | None = None, input: str | None = None
) -> Any:
    runner = CliRunner(mix_stderr=False) if _has_mix_stderr() else CliRunner()
    base_env: dict[str, str | None] = {"RUNCOMFY_API_TOKEN": None, "RUNCOMFY_TOKEN": None,
                                       "RUNCOMFY_BASE_URL": None}  # fmt: skip
    return runner.invoke(cli, list(args), env={**base_env, **(env or {})}, input=input)


def _has_mix_stderr() -> bool:
    import inspect

    return "mix_stderr" in inspect.signature(CliRunner.__init__).parameters


def only_run(root: Path) -> Path:
    runs = list(root.glob("*/*/journal.sqlite"))
    assert len(runs) == 1, runs
    return runs[0].parent


def valid_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    jsonschema.Draft202012Validator(load_bundled_schema("manifest.schema.json")).validate(manifest)
    return manifest


def test_offline_quick_start_makes_real_pngs(tmp_path: Path) -> None:
    result = invoke("run", str(SUNSET), "--offline", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output + result.stderr
    folder = only_run(tmp_path)
    assert result.stderr.count(f"run folder: {folder}") == 2  # at start and at the end
    manifest = valid_manifest(folder)
    assert manifest["offline"] is True and manifest["status"] == "completed"
    pngs = sorted((folder / "images").glob("*.png"))
    assert len(pngs) == manifest["totals"]["images"] == 26
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    listed = invoke("runs", "--out", str(tmp_path))
    assert listed.exit_code == 0 and folder.name in listed.output and "completed" in listed.output
    as_json = json.loads(invoke("runs", "--out", str(tmp_path), "--json").output)
    assert as_json[0]["run_id"] == folder.name and as_json[0]["images"] == 26

    status = invoke("status", folder.name, "--out", str(tmp_path))
    assert status.exit_code == 0
    assert "status:    completed" in status.output and "26 of 26" in status.output
    by_path = invoke("status", str(folder), "--json")
    assert json.loads(by_path.output)["totals"]["jobs"] == 8


def test_status_of_an_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("status", "20991231T000000Z-zzzz", "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "no run '20991231T000000Z-zzzz'" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_guards_refuse_before_anything_is_sent(tmp_path: Path, emulator: EmulatorHandle) -> None:
    env = {"RUNCOMFY_API_TOKEN": SECRET}
    common = ("--out", str(tmp_path), "--base-url", emulator.base_url)
    over = invoke("run", str(SUNSET), *common, "--max-images", "10", env=env)
    assert over.exit_code == 1 and "more than --max-images 10; nothing was sent" in over.stderr
    dear = invoke("run", str(SUNSET), *common, "--max-cost", "0.5", env=env)
    assert dear.exit_code == 1 and "--max-cost" in dear.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nmodel: bytedance/seedream-4-0/sequential\n"
                   "input: {image_size: huge}\n")  # fmt: skip
    invalid = invoke("run", str(bad), *common, env=env)
    assert invalid.exit_code == 1 and "bad.yaml" in invalid.stderr
    assert "Traceback" not in invalid.stderr
    wrong_set = invoke("run", str(SUNSET), *common, "--set", "novalue", env=env)
    assert wrong_set.exit_code == 2 and "KEY=VALUE" in wrong_set.stderr
    no_token = invoke("run", str(SUNSET), *common)
    assert no_token.exit_code != 0 and "RUNCOMFY_API_TOKEN" in no_token.stderr
    assert emulator.stats.submit_calls == 0
    assert not list(tmp_path.glob("*/*/journal.sqlite"))


def test_large_run_asks_first_on_a_terminal(
    tmp_path: Path, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedflow.cli import run_cmds

    monkeypatch.setattr(run_cmds, "_stdin_is_terminal", lambda: True)
    monkeypatch.setattr(run_cmds, "CONFIRM_COST", 0.1)
    env = {"RUNCOMFY_API_TOKEN": SECRET}
    common = ("--out", str(tmp_path), "--base-url", emulator.base_url, "-q")
    refused = invoke("run", str(SUNSET), *common, env=env, input="n\n")
    assert refused.exit_code == 2 and "nothing was sent" in refused.stderr
    assert "estimated 0.70 USD" in refused.stderr
    assert emulator.stats.submit_calls == 0
    accepted = invoke("run", str(SUNSET), *common, "--yes", env=env)
    assert accepted.exit_code == 0, accepted.stderr
    assert emulator.stats.submits == 8


def test_failures_are_summarised_with_reasons_and_retried(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    emulator.config.faults.add("job", "fail", next=1)
    env = {"RUNCOMFY_API_TOKEN": SECRET}
    common = ("--out", str(tmp_path), "--base-url", emulator.base_url)
    result = invoke("run", str(SUNSET), *common, "--concurrency", "1", env=env)
    assert result.exit_code == 1
    assert "1 job(s) failed:" in result.stderr
    assert "[failed]: generation failed" in result.stderr
    assert "--retry-failed" in result.stderr
    folder = only_run(tmp_path)
    again = invoke("resume", folder.name, "--out", str(tmp_path), "--retry-failed", env=env)
    assert again.exit_code == 0, again.stderr
    assert valid_manifest(folder)["totals"]["by_state"] == {"completed": 8}
    for output in (result.output, result.stderr, again.output, again.stderr):
        assert SECRET not in output


def test_json_events_one_per_line(tmp_path: Path, emulator: EmulatorHandle) -> None:
    env = {"RUNCOMFY_API_TOKEN": SECRET}
    result = invoke("run", str(SUNSET), "--out", str(tmp_path), "--base-url", emulator.base_url,
                    "--json", env=env)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.output.splitlines()]
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_finished"
    assert sum(e["event"] == "image_downloaded" for e in events) == 26
    assert events[-1]["data"]["exit_code"] == 0
    assert SECRET not in result.output


def test_quiet_and_json_together_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("run", str(SUNSET), "--offline", "-q", "--json", "--out", str(tmp_path))
    assert result.exit_code == 2


def _event(kind: str, **kw: Any) -> Any:
    from seedflow.executor import RunEvent

    base: dict[str, Any] = {
        "kind": kind, "run_id": "r", "elapsed": 10.0, "images": 4, "images_expected": 12,
        "jobs": 6, "counts": {"completed": 2, "running": 1, "queued": 1, "pending": 2},
    }  # fmt: skip
    return RunEvent(**{**base, **kw})


def test_progress_plain_lines_eta_and_secret_masking() -> None:
    import io

    from seedflow.progress import Progress, format_duration

    out = io.StringIO()
    progress = Progress("plain", stream=out, secret=SECRET, plain_interval=0)
    with progress:
        progress(_event("job_failed", job="j1", job_index=0, message=f"boom {SECRET}"))
        progress(_event("run_finished"))
    text = out.getvalue()
    assert "failed j1: boom ***" in text and SECRET not in text
    # 2 of 6 done in 10 s: 4 more take about 20 s
    assert "2/6 done" in text and "ETA 20s" in text and "images 4/12" in text
    assert [format_duration(s) for s in (5, 65, 3725, None)] == ["5s", "1m05s", "1h02m", "?"]


def test_progress_live_renders_counts() -> None:
    import io

    from seedflow.progress import Progress

    out = io.StringIO()
    with Progress("live", stream=out) as progress:
        progress(_event("job_submitted", job="j1", job_index=0))
        progress._live.refresh()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # without terminal codes
    assert "2/6 done" in text and "1 running" in text and "ETA 20s" in text
    assert "[bold]" not in text


def test_run_with_report_leaves_a_finished_report_of_every_job(tmp_path: Path) -> None:
    result = invoke("run", str(SUNSET), "--offline", "--out", str(tmp_path), "--report")
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "sunset-study").iterdir()
    page = folder / "report.html"
    assert f"report: {page}" in result.stderr
    html = page.read_text(encoding="utf-8")
    assert "location.reload()" not in html  # the run ended: the last write is the static page
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    for job in manifest["jobs"]:
        assert job["name"] in html


def test_only_runs_exactly_the_selected_jobs_with_their_ids_in_the_whole_plan(
    tmp_path: Path,
) -> None:
    from seedflow.plan import plan_file

    full = plan_file(SUNSET, overrides={"place": "quiet lake"})
    by_name = {job.name: job for job in full.jobs}
    picked = [full.jobs[5], full.jobs[2]]  # one by name, one by id prefix
    selectors = ("--only", picked[0].name, "--only", picked[1].id[:8])
    result = invoke("run", str(SUNSET), "--set", "place=quiet lake", *selectors, "--offline",
                    "-q", "--out", str(tmp_path))  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    manifest = valid_manifest(only_run(tmp_path))
    ran = {job["name"]: job for job in manifest["jobs"]}
    assert sorted(ran) == sorted(job.name for job in picked)
    for name, job in ran.items():
        assert job["id"] == by_name[name].id and job["input"] == by_name[name].input
        assert job["state"] == "completed" and len(job["outputs"]) == by_name[name].images
    assert manifest["totals"]["jobs"] == 2


def test_only_with_no_match_is_a_clear_error_and_sends_nothing(tmp_path: Path) -> None:
    result = invoke("run", str(SUNSET), "--only", "stormy-2560-1440-16-9-s10", "--offline",
                    "--out", str(tmp_path))  # fmt: skip
    assert result.exit_code != 0
    assert "--only 'stormy-2560-1440-16-9-s10' selects no job" in result.stderr
    assert "stormy-2560-1440-16-9-s100" in result.stderr  # a close name
    assert "Traceback" not in result.output + result.stderr
    assert not list(tmp_path.glob("*/*/journal.sqlite"))


def _unfinished_run(root: Path) -> Path:
    """A run that was created and never driven (as one killed at once would be left)."""
    from seedflow.plan import plan_file
    from seedflow.store import RunStore

    with RunStore.create(root, plan_file(SUNSET), base_url="http://127.0.0.1:1") as store:
        return store.path


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_run_nobody_drives_shows_as_interrupted_with_the_resume_hint(tmp_path: Path) -> None:
    folder = _unfinished_run(tmp_path)
    before = _snapshot(folder)
    listed = invoke("runs", "--out", str(tmp_path))
    assert listed.exit_code == 0, listed.stderr
    assert re.search(rf"{folder.name}\s+sunset-study\s+interrupted", listed.stdout)
    assert f"seedflow resume {folder.name} --out {tmp_path}" in listed.stderr
    status = invoke("status", str(folder))
    assert status.exit_code == 0, status.stderr
    assert "status:    interrupted" in status.stdout
    assert f"seedflow resume {folder}" in status.stderr
    as_json = json.loads(invoke("status", str(folder), "--json").stdout)
    assert as_json["status"] == "interrupted"
    assert _snapshot(folder) == before  # looking wrote nothing into the run folder


def test_looking_at_an_empty_journal_leaves_it_empty(tmp_path: Path) -> None:
    folder = _unfinished_run(tmp_path)
    (folder / "journal.sqlite").write_bytes(b"")
    assert invoke("runs", "--out", str(tmp_path)).exit_code == 0
    status = invoke("status", str(folder))
    assert status.exit_code == 1 and "is empty" in status.stderr and "restore" in status.stderr
    assert (folder / "journal.sqlite").stat().st_size == 0


@pytest.mark.parametrize("command", ["run", "resume"])
def test_an_empty_base_url_is_an_error_not_the_real_api(tmp_path: Path, command: str) -> None:
    target = str(SUNSET) if command == "run" else str(_unfinished_run(tmp_path))
    result = invoke(command, target, "--base-url", "", "--out", str(tmp_path),
                    env={"RUNCOMFY_API_TOKEN": SECRET})  # fmt: skip
    assert result.exit_code == 2 and "--base-url is empty" in result.stderr
    assert len(list(tmp_path.glob("*/*/journal.sqlite"))) == (command == "resume")


def test_a_large_resume_asks_first_on_a_terminal_and_yes_skips_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seedflow.cli import run_cmds
    from seedflow.errors import RunError

    folder = _unfinished_run(tmp_path)
    reached: list[str] = []

    def fake_resume(run: str, **_kw: Any) -> Any:
        reached.append(run)
        raise RunError("resume reached")

    monkeypatch.setattr(run_cmds, "_stdin_is_terminal", lambda: True)
    monkeypatch.setattr(run_cmds, "CONFIRM_IMAGES", 20)  # the run has 26 images left to send
    monkeypatch.setattr(run_cmds, "resume_run", fake_resume)
    refused = invoke("resume", str(folder), "-q", input="n\n")
    assert refused.exit_code == 2 and "nothing was sent" in refused.stderr
    assert "Resuming sends 8 jobs for 26 images" in refused.stderr and reached == []
    for flag in ("--yes", "-y"):
        accepted = invoke("resume", str(folder), "-q", flag)
        assert "Continue?" not in accepted.stderr and "resume reached" in accepted.stderr
    assert reached == [str(folder), str(folder)]
    monkeypatch.setattr(run_cmds, "CONFIRM_IMAGES", 200)
    small = invoke("resume", str(folder), "-q")  # below the thresholds: no question
    assert "Continue?" not in small.stderr and len(reached) == 3
