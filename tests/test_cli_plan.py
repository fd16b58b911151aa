"""The CLI of pipelines: validate, plan, init, models, schema (through click's test runner)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
from click.testing import CliRunner, Result

from seedflow.cli import cli
from seedflow.cli.pipeline_cmds import commands

ROOT = Path(__file__).parent.parent
SUNSET = ROOT / "pipelines" / "sunset-study.yaml"
BAD = dedent(
    """\
    version: 1
    name: bad
    model: bytedance/seedream-4-0/sequential
    input:
      text: "Generate {{ count }} images of a {{ mood }} sunset"
      sequential_image_generation_options: "{{ count }}"
      image_size: "{{ size }}"
    matrix:
      mood: [calm]
      size: ["16:9"]
      count: [3]
    """
)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def sunset(tmp_path: Path) -> Path:
    path = tmp_path / "sunset-study.yaml"
    shutil.copy(SUNSET, path)
    return path


def test_every_command_has_help_and_an_example() -> None:
    assert {c.name for c in commands} == {"validate", "plan", "init", "models", "schema"}
    for command in commands:
        assert command.help and "Example" in command.help, command.name
        assert run(command.name or "", "--help").exit_code == 0


def test_validate_ok() -> None:
    result = run("validate", str(SUNSET))
    assert result.exit_code == 0
    assert "ok, 8 jobs, 26 images, estimated 0.70 USD" in result.output


def test_validate_reports_located_errors_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = run("validate", str(path))
    assert result.exit_code == 1
    assert f"{path}:10:10: error in job 'calm-16-9-3-" in result.output
    assert "field 'input.image_size': '16:9' is not an allowed image_size" in result.output
    assert "did you mean '2560:1440 (16:9)'?" in result.output
    assert "Traceback" not in result.output


def test_the_console_script_exits_1_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"version: 1\nname: x\x80\n")
    proc = subprocess.run([sys.executable, "-m", "seedflow.cli", "validate", str(path)],
                          capture_output=True, text=True, check=False)
    if "No module named seedflow.cli.__main__" in proc.stderr:
        proc = subprocess.run(["seedflow", "validate", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert f"{path}:2:8" in proc.stderr and "not UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plan_table() -> None:
    result = run("plan", str(SUNSET))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["#", "job", "variables", "images", "seed"]
    assert "stormy-1440-2560-9-16-s101" in lines[8] and "mood=stormy" in lines[8] and lines[8].split()[-2:] == ["4", "101"]
    assert "sunset-study: 8 jobs, 26 images, estimated 0.70 USD" in result.output


def test_plan_json_and_set() -> None:
    result = run("plan", str(SUNSET), "--format", "json", "--set", "mood=stormy", "--set", "seeds=[5]")
    data = json.loads(result.output)
    assert data["totals"]["jobs"] == 3 and data["overrides"] == {"mood": "stormy", "seeds": [5]}
    assert {j["variables"]["mood"] for j in data["jobs"]} == {"stormy"}


def test_plan_jsonl_streams_one_job_per_line() -> None:
    result = run("plan", str(SUNSET), "--format", "jsonl")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 8 and rows[0]["name"] == "beautiful-2560-1440-16-9-s100"
    assert rows[0]["input"]["seed"] == 100 and rows[0]["id"].startswith("j")


def test_plan_jsonl_of_an_invalid_pipeline_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.replace('["16:9"]', '["2048:2048 (1:1)", "16:9"]'))  # one good job, one bad
    result = CliRunner().invoke(cli, ["plan", str(path), "--format", "jsonl"])
    assert result.exit_code == 1 and "is not an allowed image_size" in result.output
    assert '"id"' not in result.output  # no job of an invalid pipeline is printed


def test_limits_refuse_a_plan() -> None:
    result = run("plan", str(SUNSET), "--max-images", "20")
    assert result.exit_code == 1 and "26 images, more than --max-images 20" in result.output
    result = run("plan", str(SUNSET), "--max-cost", "0.5", "--format", "jsonl")
    assert result.exit_code == 1 and "0.70 USD" in result.output and '"id"' not in result.output
    result = run("plan", str(SUNSET), "--max-jobs", "4")
    assert result.exit_code == 1 and "the sweep has 8 jobs" in result.output
    assert run("plan", str(SUNSET), "--max-images", "26", "--max-cost", "1").exit_code == 0


def test_lock_and_locked(sunset: Path) -> None:
    result = run("plan", str(sunset), "--lock")
    assert result.exit_code == 0 and "sunset-study.lock.json" in result.output
    assert (sunset.parent / "sunset-study.lock.json").exists()
    assert run("validate", str(sunset), "--locked").exit_code == 0
    sunset.write_text(sunset.read_text().replace("count: 2}", "count: 3}"))
    result = run("validate", str(sunset), "--locked")
    assert result.exit_code == 1 and "no longer expands" in result.output and "4 new" in result.output


def test_init_writes_a_starter_that_validates(tmp_path: Path) -> None:
    result = run("init", "my-study", "--dir", str(tmp_path))
    path = tmp_path / "my-study.yaml"
    assert result.exit_code == 0 and path.exists()
    assert run("validate", str(path)).exit_code == 0
    again = run("init", "my-study", "--dir", str(tmp_path))
    assert again.exit_code == 2 and "--force" in again.output
    assert run("init", "my-study", "--dir", str(tmp_path), "--force").exit_code == 0


@pytest.mark.parametrize(("given", "written"), [("x.yaml", "x.yaml"), ("x.yml", "x.yml"), ("x", "x.yaml")])
def test_init_accepts_a_file_name(tmp_path: Path, given: str, written: str) -> None:
    result = run("init", given, "--dir", str(tmp_path))
    assert result.exit_code == 0 and [p.name for p in tmp_path.iterdir()] == [written]
    text = (tmp_path / written).read_text()
    assert "name: x\n" in text
    assert run("validate", str(tmp_path / written)).exit_code == 0


def test_init_into_a_folder_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = run("init", "demo", "--dir", str(tmp_path / "afile" / "sub"))
    assert result.exit_code == 2 and "cannot write" in result.output and "--dir" in result.output


def test_lock_commands_with_a_folder_in_place_of_the_lock_file(tmp_path: Path) -> None:
    sunset = tmp_path / "sunset.yaml"
    shutil.copy(SUNSET, sunset)
    (tmp_path / "sunset.lock.json").mkdir()
    result = run("validate", str(sunset), "--locked")
    assert result.exit_code == 1 and "is a folder, not a lock file" in result.output
    result = run("plan", str(sunset), "--lock")
    assert result.exit_code == 2 and "cannot write the lock file" in result.output


def test_models_and_schema() -> None:
    result = run("models")
    assert "bytedance/seedream-4-0/sequential" in result.output and "0.027" in result.output
    assert json.loads(run("models", "--json").output)[0]["fields"][0] == "text"
    result = run("schema", "bytedance/seedream-4-0/sequential")
    assert "image_size  (string)" in result.output and '"2560:1440 (16:9)"' in result.output
    assert "default: 3" in result.output and "text  (string, required)" in result.output
    schema = json.loads(run("schema", "bytedance/seedream-4-0/sequential", "--json").output)
    assert schema["required"] == ["text"]
    result = run("schema", "bytedance/seedream-4-0/sequencial")
    assert result.exit_code == 1 and "did you mean 'bytedance/seedream-4-0/sequential'" in result.output


def test_validate_checks_every_file_and_fails_if_one_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = CliRunner().invoke(cli, ["validate", str(bad), str(SUNSET)])
    assert result.exit_code == 1
    assert "is not an allowed image_size" in result.output
    assert f"{SUNSET}: ok" in result.output


def test_plan_table_shows_groups() -> None:
    result = run("plan", str(ROOT / "pipelines" / "product-shots.yaml"))
    header, first = result.output.splitlines()[:2]
    assert header.split()[:3] == ["#", "group", "job"] and first.split()[1] == "hero"


def test_bad_set_values_and_pipeline_errors_are_printed_together(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    for command in ("validate", "plan"):
        result = run(command, str(path), "--set", "mod=x")
        assert result.exit_code == 1
        assert "--set mod: nothing named 'mod'" in result.output and "did you mean 'mood'?" in result.output
        assert f"{path}:10:10: error" in result.output and "field 'input.image_size'" in result.output
        assert "2 errors" in result.output


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_file_and_set_usage_errors_say_it_once(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run(command, str(missing))
    assert result.exit_code == 2
    assert result.output.splitlines()[0] == f"error: {missing}: no such file"
    result = run(command, str(SUNSET), "--set", "foo")
    assert result.exit_code == 2 and "<pipeline>" not in result.output
    assert result.output.splitlines()[0] == "error: --set 'foo': expected KEY=VALUE (e.g. --set mood=stormy)"


def test_plan_only(tmp_path: Path) -> None:
    jobs = json.loads(run("plan", str(SUNSET), "--format", "json").output)["jobs"]
    result = run("plan", str(SUNSET), "--only", jobs[2]["name"], "--only", jobs[4]["id"][:8])
    assert result.exit_code == 0, result.output
    assert jobs[2]["name"] in result.output and jobs[4]["name"] in result.output
    assert jobs[0]["name"] not in result.output and "2 jobs" in result.output
    lines = run("plan", str(SUNSET), "--only", jobs[4]["id"], "--format", "jsonl").output.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [jobs[4]["id"]]
    missing = run("plan", str(SUNSET), "--only", jobs[2]["name"] + "-x")
    assert missing.exit_code == 1 and f"did you mean '{jobs[2]['name']}'" in missing.output
    assert run("plan", str(SUNSET), "--only", jobs[2]["name"], "--lock").exit_code == 2


def test_locked_reapplies_the_set_values_recorded_in_the_lock(sunset: Path) -> None:
    made = run("plan", str(sunset), "--lock", "--set", "mood=stormy", "--set", "place='7'")
    assert made.exit_code == 0, made.output
    lock = json.loads((sunset.parent / "sunset-study.lock.json").read_text())
    assert lock["overrides"] == {"mood": "stormy", "place": "7"}
    result = run("validate", str(sunset), "--locked")  # no --set repeated
    assert result.exit_code == 0, result.output
    assert "matches its lock file" in result.output and '(--set mood="stormy" place="7")' in result.output
    # a --set given on the command line applies after the recorded ones
    changed = run("validate", str(sunset), "--locked", "--set", "place=lake")
    assert changed.exit_code == 1 and "changed" in changed.output
    # without --locked, nothing is read from the lock
    assert "(--set" not in run("validate", str(sunset)).output
