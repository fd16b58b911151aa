"""Reading pipelines: YAML with positions, structural errors with line, field and fix."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from textwrap import dedent

import jsonschema
import pytest

from seedflow.errors import PipelineError, Problem, UsageError
from seedflow.pipeline import (
    installed_schema_comment,
    load_pipeline,
    parse_pipeline,
    pipeline_schema,
    read_text,
    starter_pipeline,
)
from seedflow.plan import plan_pipeline

GOOD = dedent(
    """\
    version: 1
    name: demo
    model: bytedance/seedream-4-0/sequential
    vars: {place: sea}
    input:
      text: "Generate {{ count }} images of {{ place }}"
      sequential_image_generation_options: "{{ count }}"
    matrix:
      count: [1, 2]
    """
)


def problems_of(text: str, file: str = "p.yaml") -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text, file)
    return info.value.problems


def reading_problems(text: str, file: str = "p.yaml") -> list[Problem]:
    """Problems found while reading, whether they stopped the reading or not."""
    try:
        pipeline = parse_pipeline(text, file)
    except PipelineError as exc:
        return exc.problems
    return list(pipeline.problems)


def plan_problems(text: str, file: str = "p.yaml") -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        plan_pipeline(parse_pipeline(text, file))
    return info.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [p.format() for p in problems]
    return problems[0]


def test_positions_point_at_each_value() -> None:
    pipeline = parse_pipeline(GOOD, "p.yaml")
    assert pipeline.positions.line(("input", "text")) == 6
    assert pipeline.positions.line(("matrix", "count", 1)) == 9
    assert pipeline.positions.column(("matrix", "count", 1)) == 14
    # an unknown path falls back to its nearest known parent
    assert pipeline.positions.line(("input", "text", "nowhere")) == 6


def test_block_scalars_point_at_their_first_content_line() -> None:
    text = GOOD.replace('  text: "Generate {{ count }} images of {{ place }}"\n',
                        "  text: |\n    Generate {{ count }} images\n    of {{ place }}\n")
    pipeline = parse_pipeline(text, "p.yaml")
    assert pipeline.positions.line(("input", "text")) == 7


def test_a_good_pipeline_becomes_plain_data() -> None:
    pipeline = parse_pipeline(GOOD, "p.yaml")
    (group,) = pipeline.groups
    assert pipeline.name == "demo" and group.name is None
    assert group.model == "bytedance/seedream-4-0/sequential"
    assert group.vars == {"place": "sea"}
    assert group.matrix.axes == {"count": (1, 2)}
    assert group.seeds.values is None  # derived per job
    assert len(pipeline.sha256) == 64 and pipeline.text == GOOD


def test_duplicate_keys_are_errors_with_both_lines_and_the_last_value_is_used() -> None:
    text = GOOD.replace("vars: {place: sea}\n", "vars: {place: sea}\nvars: {place: lake}\n")
    pipeline = parse_pipeline(text, "p.yaml")  # reading goes on, as PyYAML does
    assert pipeline.groups[0].vars == {"place": "lake"}
    assert pipeline.positions.line(("vars", "place")) == 5
    problem = only(list(pipeline.problems))
    assert problem.line == 5 and problem.field == "vars"
    assert "duplicate key 'vars'" in problem.message and "line 4" in problem.message
    assert "the value on line 5 is used" in problem.message
    assert "p.yaml:5" in problem.format()
    # and it is an error of the plan: the pipeline is invalid
    assert only(plan_problems(text)).message == problem.message


def test_a_duplicate_key_does_not_hide_the_problems_of_planning() -> None:
    text = dedent(
        """\
        version: 1
        name: demo
        model: bytedance/seedream-4-0/sequential
        input:
          text: "Generate {{ count }} images of {{ plcae }}"
          sequential_image_generation_options: "{{ count }}"
          promt_extra: x
        matrix:
          count: [1]
          count: [2]
          place: [sea]
        """
    )
    problems = plan_problems(text)
    by_field = {p.field: p for p in problems}
    assert by_field["matrix.count"].line == 10 and "duplicate key" in by_field["matrix.count"].message
    undefined = by_field["input.text"]
    assert undefined.line == 5 and "'plcae'" in undefined.message
    assert undefined.hint == "did you mean 'place'?"
    unknown = by_field["input.promt_extra"]
    assert unknown.line == 7 and "sequential_image_generation_options" in (unknown.hint or "")
    assert len([p for p in problems if p.severity == "error"]) == 3


def test_unknown_keys_do_not_stop_the_planning_of_the_rest() -> None:
    text = GOOD.replace("name: demo\n", "name: demo\ndescripton: typo\n").replace(
        "{{ place }}", "{{ placee }}")
    problems = plan_problems(text)
    assert [(p.line, p.field) for p in problems] == [(3, "descripton"), (7, "input.text")]
    assert problems[0].hint == "did you mean 'description'?"
    assert "'placee'" in problems[1].message


def test_other_structural_problems_stop_before_planning() -> None:
    # an axis that is not a list cannot be expanded: only the structure is reported
    text = GOOD.replace("count: [1, 2]", "count: 3") + "matrx: {}\n"
    problems = problems_of(text)
    assert {p.field for p in problems} == {"matrix.count", "matrx"}


def test_nested_duplicate_keys_and_other_problems_are_all_reported() -> None:
    text = GOOD.replace("  text:", "  image_size: x\n  image_size: y\n  text:") + "matrx: {}\n"
    problems = reading_problems(text)
    messages = [p.message for p in problems]
    assert any("duplicate key 'image_size'" in m for m in messages)
    assert any("unknown key 'matrx'" in m for m in messages)
    dup = next(p for p in problems if "duplicate" in p.message)
    assert dup.line == 7 and dup.field == "input.image_size"


def test_malformed_yaml_names_the_line() -> None:
    text = GOOD.replace("matrix:\n  count: [1, 2]", "matrix:\n  count: [1, 2\n")
    problem = only(problems_of(text))
    assert problem.message.startswith("malformed YAML")
    assert problem.line is not None and problem.line >= 9
    assert problem.hint


def test_tabs_get_a_specific_hint() -> None:
    problem = only(problems_of("version: 1\nname: x\ninput:\n\ttext: hi\n"))
    assert problem.line == 4 and "tab" in (problem.hint or "")


def test_unknown_keys_suggest_the_closest(tmp_path: Path) -> None:
    text = GOOD.replace("vars:", "varz:").replace("matrix:", "matirx:")
    problems = reading_problems(text)
    by_key = {p.field: p for p in problems}
    assert by_key["varz"].line == 4 and by_key["varz"].hint == "did you mean 'vars'?"
    assert by_key["matirx"].line == 8 and by_key["matirx"].hint == "did you mean 'matrix'?"


def test_model_fields_at_the_top_level_hint_at_input() -> None:
    problem = only(reading_problems(GOOD + "image_size: x\n"))
    assert problem.field == "image_size" and "input" in (problem.hint or "")


def test_empty_axis_is_an_error_at_its_line() -> None:
    problem = only(reading_problems(GOOD.replace("count: [1, 2]", "count: [1, 2]\n  mood: []")))
    assert problem.line == 10 and problem.field == "matrix.mood"
    assert "axis 'mood' is empty" in problem.message


def test_wrong_types_and_missing_keys() -> None:
    problems = problems_of("version: 2\nmodel: m\ninput: hello\nseeds: 3\n")
    text = "\n".join(p.format() for p in problems)
    assert "missing key 'name'" in text
    assert "p.yaml:1" in text and "unsupported version 2" in text
    assert "p.yaml:3" in text and "'input' must be a mapping, not str" in text
    assert "p.yaml:4" in text and "seeds must be a list" in text


def test_exclude_naming_an_unknown_axis() -> None:
    text = GOOD + "  exclude: [{cuont: 1}]\n"
    problem = only(reading_problems(text))
    assert problem.line == 10 and problem.hint == "did you mean 'count'?"


def test_a_model_is_required_somewhere() -> None:
    problem = only(problems_of(GOOD.replace("model: bytedance/seedream-4-0/sequential\n", "")))
    assert problem.field == "model" and "no model" in problem.message


def test_non_utf8_file_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("sea", "mer très belle").encode("latin-1"))
    with pytest.raises(PipelineError) as info:
        plan_pipeline(load_pipeline(path))
    problem = only(info.value.problems)
    assert problem.line == 4 and problem.column is not None
    assert "not UTF-8" in problem.message and "UTF-8" in (problem.hint or "")
    assert f"{path}:4" in info.value.format_message()


def test_a_file_that_is_not_utf8_is_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    text = GOOD.replace("sea", "mer très belle").replace("count: [1, 2]", "count: []") + "matrx: {}\n"
    path.write_bytes(text.encode("latin-1"))
    problems = load_pipeline(path).problems  # found while reading; planning raises them
    assert [(p.line, p.field) for p in problems] == [(4, None), (9, "matrix.count"), (10, "matrx")]
    assert "not UTF-8" in problems[0].message
    with pytest.raises(PipelineError, match="not UTF-8"):
        plan_pipeline(load_pipeline(path))
    with pytest.raises(PipelineError, match="not UTF-8"):
        read_text(path)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nope.yaml: no such file"):
        load_pipeline(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(PipelineError, match="empty"):
        load_pipeline(tmp_path / "empty.yaml")


def test_a_list_is_not_a_pipeline() -> None:
    problem = only(problems_of("- a\n- b\n"))
    assert "mapping" in problem.message


def test_yaml_is_read_safely() -> None:
    problems = problems_of(GOOD + "x: !!python/object/apply:os.system ['echo hi']\n")
    assert problems[0].message.startswith("malformed YAML")


def test_groups_inherit_the_top_level() -> None:
    text = GOOD + dedent(
        """\
        jobs:
          a:
            vars: {extra: 1}
          b:
            input: {image_size: "2048:2048 (1:1)"}
            matrix: {count: [3]}
            seeds: [7]
        """
    )
    pipeline = parse_pipeline(text, "p.yaml")
    a, b = pipeline.groups
    assert a.name == "a" and a.vars == {"place": "sea", "extra": 1}
    assert a.matrix.axes == {"count": (1, 2)} and a.model == "bytedance/seedream-4-0/sequential"
    assert b.input["image_size"] == "2048:2048 (1:1)" and "text" in b.input
    assert b.matrix.axes == {"count": (3,)} and b.seeds.values == (7,)
    # each setting remembers where it is written
    assert b.origins["input.image_size"] == ("jobs", "b", "input", "image_size")
    assert b.origins["input.text"] == ("input", "text")
    assert pipeline.positions.line(b.origins["seeds"]) == 16


def test_group_keys_are_checked_too() -> None:
    problem = only(reading_problems(GOOD + "jobs:\n  a:\n    sedes: [1]\n"))
    assert problem.line == 12 and problem.hint == "did you mean 'seeds'?"


def test_seed_ranges() -> None:
    pipeline = parse_pipeline(GOOD + "seeds: {start: 10, count: 3, step: 5}\n")
    assert tuple(pipeline.groups[0].seeds.values or ()) == (10, 15, 20)


def test_the_schema_is_valid_and_describes_every_recipe() -> None:
    schema = pipeline_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    recipes = sorted(Path(__file__).parent.parent.joinpath("pipelines").glob("*.yaml"))
    assert recipes
    for path in recipes:
        load_pipeline(path)  # raises on any structural problem


def test_starter_pipeline_validates_and_plans() -> None:
    text = starter_pipeline("my-study")
    first = text.splitlines()[0]
    assert first == installed_schema_comment()
    # the comment names a real file: the installed copy of the pipeline schema
    uri = first.split("$schema=", 1)[1]
    assert uri.startswith("file://")
    schema_file = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    assert json.loads(schema_file.read_text(encoding="utf-8")) == pipeline_schema()
    plan = plan_pipeline(parse_pipeline(text, "my-study.yaml"))
    assert plan.pipeline_name == "my-study" and len(plan.jobs) == 4
    assert not plan.warnings


def test_starter_pipeline_refuses_a_bad_name() -> None:
    with pytest.raises(UsageError):
        starter_pipeline("../escape")


def test_structural_and_semantic_problems_are_reported_together() -> None:
    text = GOOD.replace("vars:", "varz:") + "  exclude: [{cuont: 1}]\n"
    fields = {p.field for p in reading_problems(text)}
    assert fields == {"varz", "matrix.exclude[0].cuont"}


def test_structure_errors_that_stop_planning_keep_the_other_reading_problems() -> None:
    text = (GOOD.replace("count: [1, 2]", "count: 2\n  count: 3") + "  exclude: [{cuont: 1}]\n"
            + "matrx: {}\n")
    problems = problems_of(text)
    assert [(p.line, p.field) for p in problems] == [
        (10, "matrix.count"),  # duplicate (the last value is the one checked)
        (10, "matrix.count"),  # not a list: planning stops here
        (11, "matrix.exclude[0].cuont"),
        (12, "matrx"),
    ]
    first_two = " | ".join(p.message for p in problems[:2])
    assert "duplicate key 'count'" in first_two and "'matrix.count' must be a list" in first_two


def test_invalid_names_of_variables_and_groups() -> None:
    problems = problems_of(GOOD.replace("place: sea", "my place: sea") + "jobs:\n  bad group: {}\n")
    by_field = {p.field: p for p in problems}
    assert by_field["vars.my place"].line == 4 and "identifiers" in by_field["vars.my place"].message
    assert by_field["jobs.bad group"].line == 11 and "group names" in by_field["jobs.bad group"].message


def test_an_axis_that_is_not_a_list() -> None:
    problem = only(problems_of(GOOD.replace("count: [1, 2]", "count: 2")))
    assert problem.line == 9 and problem.field == "matrix.count"
    assert problem.hint == "an axis is a list of values: count: [2]"


# --- documents seedflow refuses to read ----------------------------------------------------------


def test_a_control_character_is_located_not_a_traceback() -> None:
    (problem,) = problems_of("version: 1\nname: x\nmodel: \x01\n")
    assert (problem.line, problem.column) == (3, 8)
    assert "#x01" in problem.message and "text file" in problem.message


def test_deep_nesting_is_refused_with_its_line() -> None:
    (problem,) = problems_of("version: 1\nname: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    assert problem.line == 3 and "nested too deeply" in problem.message


def test_nesting_within_the_limit_is_read() -> None:
    from seedflow.pipeline import MAX_DEPTH

    depth = MAX_DEPTH - 2  # the document and vars are levels too
    text = GOOD.replace("vars: {place: sea}", "vars: {place: sea, deep: " + "[" * depth + "]" * depth + "}")
    value = parse_pipeline(text).groups[0].vars["deep"]
    for _ in range(depth - 1):
        (value,) = value
    assert value == []
    with pytest.raises(PipelineError, match="nested too deeply"):
        parse_pipeline(text.replace("deep: [", "deep: [["))


def billion_laughs(levels: int) -> str:
    lines = ["version: 1", "name: bomb", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit() -> None:
    # 12 lines standing for 9**8 values: counted, never expanded
    (problem,) = problems_of(billion_laughs(7))
    assert "expand to more than 1,000,000 values" in problem.message
    # a5 stands for 597,871 values, a0 to a5 for 672,603: the first *a5 of a6 crosses the limit
    assert (problem.line, problem.column) == (9, 10)
    assert problem.hint and "alias" in problem.hint


def test_a_recursive_alias_is_refused() -> None:
    (problem,) = problems_of("version: 1\nname: r\nx: &x [1, *x]\n")
    assert problem.line == 3 and problem.column == 11 and "recursive" in problem.message


def test_aliases_and_merge_keys_still_read_and_locate_at_the_alias() -> None:
    text = dedent(
        """\
        version: 1
        name: demo
        model: bytedance/seedream-4-0/sequential
        vars: &common {place: sea, mood: calm}
        input:
          text: "Generate {{ count }} images of {{ place }}"
          sequential_image_generation_options: "{{ count }}"
        matrix:
          count: &counts [1, 2]
        jobs:
          a: {vars: {<<: *common, mood: stormy}}
          b:
            matrix:
              count: *counts
        """
    )
    pipeline = parse_pipeline(text)
    assert pipeline.groups[0].vars == {"place": "sea", "mood": "stormy"}
    assert pipeline.groups[1].matrix.axes["count"] == (1, 2)
    assert pipeline.positions.line(("jobs", "b", "matrix", "count")) == 14
    assert pipeline.positions.line(("jobs", "b", "matrix", "count", 1)) == 14
    assert pipeline.positions.line(("matrix", "count", 1)) == 9


def test_an_empty_axis_is_reported_and_the_rest_still_planned() -> None:
    text = GOOD.replace("count: [1, 2]", "count: [1, 2]\n  colour: []").replace(
        "images of {{ place }}", "images of {{ place }} in {{ colour }}\"\n  image_size: \"16:9"
    )
    problems = plan_problems(text)
    messages = [p.message for p in problems]
    assert "axis 'colour' is empty" in messages
    assert any("'16:9' is not an allowed image_size" in m for m in messages)
    # the empty axis is not reported a second time as an undefined variable
    assert not any("undefined variable 'colour'" in m for m in messages)
