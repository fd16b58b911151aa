"""Every recipe in pipelines/ validates, plans, stays small, and is accepted by the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from seedflow.cli import cli
from seedflow.emulator import EmulatorHandle
from seedflow.pipeline import SCHEMA_COMMENT, load_pipeline, pipeline_schema
from seedflow.plan import plan_file

ROOT = Path(__file__).parent.parent
RECIPES = sorted((ROOT / "pipelines").glob("*.yaml"))
IDS = [p.stem for p in RECIPES]


def test_there_are_real_recipes() -> None:
    names = {p.stem for p in RECIPES}
    assert len(names) >= 4
    assert {"sunset-study", "storyboard", "aspect-ratios", "style-grid", "seed-exploration"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_validates_and_plans(path: Path) -> None:
    plan = plan_file(path)
    assert plan.pipeline_name == path.stem  # the run folder is named after the file
    assert not plan.warnings, [w.format() for w in plan.warnings]
    # small enough to run end to end in tests
    assert 1 <= len(plan.jobs) <= 12
    assert all(j.images <= 4 for j in plan.jobs)
    assert len({j.name for j in plan.jobs}) == len(plan.jobs)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_points_editors_at_the_schema(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    if first == SCHEMA_COMMENT:
        return
    # or at the repository's copy of the schema, by a path relative to the recipe
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix), first
    target = (path.parent / first[len(prefix):]).resolve()
    assert json.loads(target.read_text(encoding="utf-8")) == pipeline_schema()


def test_the_recipes_cover_the_format() -> None:
    pipelines = [load_pipeline(p) for p in RECIPES]
    groups = [g for p in pipelines for g in p.groups]
    assert any(len(p.groups) > 1 for p in pipelines), "a recipe with `jobs:` groups"
    assert any(any(isinstance(v, dict) for vs in g.matrix.axes.values() for v in vs) for g in groups), \
        "a recipe with a zipped axis"
    assert any(g.matrix.include for g in groups) and any(g.matrix.exclude for g in groups)
    assert any(g.seeds.values is None for g in groups), "a recipe with derived seeds"
    assert any(g.seeds.values and len(g.seeds.values) > 3 for g in groups), "a seed exploration"


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_every_planned_input_is_accepted_by_the_emulator(path: Path, emulator: EmulatorHandle) -> None:
    plan = plan_file(path)
    with httpx.Client(base_url=emulator.base_url, headers={"Authorization": "Bearer t"}) as client:
        for job in plan.jobs:
            answer = client.post(f"/v1/models/{job.model}", json=dict(job.input))
            assert answer.status_code == 200, (job.name, answer.text)
            assert answer.json()["request_id"]


def test_the_only_example_of_the_docs_selects_the_jobs_it_names() -> None:
    docs = (ROOT / "docs" / "pipeline-format.md").read_text()
    example = next(line for line in docs.splitlines() if line.startswith("plan = plan_file(") and "only=" in line)
    selectors = json.loads(example.split("only=", 1)[1].rstrip(")"))
    for selector in selectors:
        plan = plan_file(ROOT / "pipelines" / "sunset-study.yaml", only=[selector])
        assert len(plan.jobs) == 1, f"the docs' --only example {selector!r} selects {len(plan.jobs)} jobs"
