"""Problems of a pipeline that one other problem still hides (all should be reported together)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from seedflow.cli import cli

RECIPE = """\
version: 1
name: hidden
model: bytedance/seedream-4-0/sequential
input:
  text: "Generate {{ count }} images of a {{ mood }} cat {% if %}."
  sequential_image_generation_options: "{{ count }}"
  image_size: "16:9"
matrix:
  mood: [calm]
  count: [3]
  colour: []
"""


def test_empty_axis_does_not_hide_other_problems(tmp_path: Path) -> None:
    path = tmp_path / "hidden.yaml"
    path.write_text(RECIPE)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1
    assert "axis 'colour' is empty" in result.output
    assert "template syntax error" in result.output
    assert "'16:9' is not an allowed image_size" in result.output
