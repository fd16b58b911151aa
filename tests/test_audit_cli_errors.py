"""User mistakes that still end in a Python traceback instead of a seedflow error message.

Each test is an ``xfail(strict=True)`` until the bug it shows is fixed: the suite stays green,
and the fix turns the test into a plain pass (then drop the marker).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from seedflow.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SUNSET = ROOT / "pipelines" / "sunset-study.yaml"


def invoke(*args: str, token: str = "") -> Result:
    """Run the CLI in-process, as a user would (without a token unless given)."""
    return CliRunner().invoke(cli, list(args), env={"RUNCOMFY_API_TOKEN": token})


def assert_user_error(result: Result) -> None:
    """A user mistake: exit status 1 or 2 and a message, never an uncaught exception."""
    unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
    assert unexpected is None, f"traceback for a user mistake: {unexpected!r}"
    assert result.exit_code in (1, 2)


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_binary_pipeline_file_is_a_message(tmp_path: Path, command: str) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    assert_user_error(invoke(command, str(path)))


def test_deeply_nested_yaml_is_a_message(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\nname: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_user_error(invoke("validate", str(path)))


def test_init_into_a_path_under_a_file_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    assert_user_error(invoke("init", "demo", "--dir", str(tmp_path / "afile" / "sub")))


def test_report_sheet_into_missing_folder_is_a_message(tmp_path: Path) -> None:
    ran = invoke("run", str(SUNSET), "--offline", "-q", "--out", str(tmp_path / "runs"))
    assert ran.exit_code == 0, ran.output
    folder = next((tmp_path / "runs" / "sunset-study").iterdir())
    (tmp_path / "afile").write_text("")
    sheet = tmp_path / "afile" / "x.png"  # a folder that cannot exist (its parent is a file)
    assert_user_error(invoke("report", str(folder), "--sheet", str(sheet)))


@pytest.mark.parametrize("command", ["status", "resume"])
def test_empty_journal_is_a_message(tmp_path: Path, command: str) -> None:
    ran = invoke("run", str(SUNSET), "--offline", "-q", "--out", str(tmp_path / "runs"))
    assert ran.exit_code == 0, ran.output
    folder = next((tmp_path / "runs" / "sunset-study").iterdir())
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "journal.sqlite").write_bytes(b"")
    # resume needs an API to talk to before it reads the journal; nothing listens on port 1
    extra = ("--base-url", "http://127.0.0.1:1") if command == "resume" else ()
    assert_user_error(invoke(command, str(copy), *extra, token="audit-token"))


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_emulator_port_out_of_range_is_a_message(port: str) -> None:
    assert_user_error(invoke("emulator", "--port", port))
