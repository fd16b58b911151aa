"""The API token must never reach a message or a file, even when it is malformed."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from seedflow.cli import cli
from seedflow.emulator import EmulatorHandle

ROOT = Path(__file__).resolve().parents[1]
STORYBOARD = ROOT / "pipelines" / "storyboard.yaml"
SECRET = "audit-SECRET-7f3c"


def test_malformed_token_never_written(emulator: EmulatorHandle, tmp_path: Path) -> None:
    token = f"{SECRET}\r\nX-Other: 1"  # e.g. a token file with a second line, read whole
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        cli,
        ["run", str(STORYBOARD), "--base-url", emulator.base_url, "-y", "-q", "--out", str(out)],
        env={"RUNCOMFY_API_TOKEN": token},
    )
    assert SECRET not in result.output
    assert SECRET not in repr(result.exception)
    written = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert written == []
