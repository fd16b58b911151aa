"""Planning: jobs, ids, model validation with located errors, the count rule, limits, locks."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedflow import Job, Plan, plan_file
from seedflow.errors import LimitExceeded, LockMismatch, PipelineError, Problem
from seedflow.pipeline import parse_pipeline
from seedflow.plan import (
    Totals,
    _IdMaker,
    check_limits,
    check_lock,
    iter_jobs,
    job_id,
    lock_path,
    plan_pipeline,
    write_lock,
)

MODEL = "bytedance/seedream-4-0/sequential"
SUNSET = Path(__file__).parent.parent / "pipelines" / "sunset-study.yaml"

BASE = dedent(
    """\
    version: 1
    name: planned
    model: bytedance/seedream-4-0/sequential
    vars: {place: calm ocean}
    input:
      text: "Generate {{ count }} images of a {{ mood }} sunset over a {{ place }}."
      sequential_image_generation_options: "{{ count }}"
      image_size: "{{ size }}"
    matrix:
      mood: [beautiful, stormy]
      size: ["2560:1440 (16:9)", "2048:2048 (1:1)"]
      count: [3]
    seeds: [1, 2]
    """
)


def plan_text(text: str, **kw: Any) -> Plan:
    return plan_pipeline(parse_pipeline(text, "p.yaml"), **kw)


def errors_of(text: str, **kw: Any) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        plan_text(text, **kw)
    return info.value.errors


def test_the_issue_example_plans_exactly() -> None:
    plan = plan_file(SUNSET)
    assert [j.name for j in plan.jobs] == [
        "beautiful-2560-1440-16-9-s100", "beautiful-2560-1440-16-9-s101",
        "stormy-2560-1440-16-9-s100", "stormy-2560-1440-16-9-s101",
        "stormy-2048-2048-1-1-s100", "stormy-2048-2048-1-1-s101",
        "stormy-1440-2560-9-16-s100", "stormy-1440-2560-9-16-s101",
    ]
    last = plan.jobs[-1]
    assert last.input == {
        "text": "Generate 4 images of a stormy sunset over a calm ocean.",
        "sequential_image_generation_options": 4,
        "image_size": "1440:2560 (9:16)",
        "optimize_prompt_options": "fast",  # defaults are filled in
        "sequential_image_generation": "auto",
        "seed": 101,
    }
    assert last.images == 4 and last.seed == 101 and last.index == 7 and last.group is None
    assert last.variables == {"place": "calm ocean", "mood": "stormy", "size": "1440:2560 (9:16)",
                              "count": 4, "seed": 101}
    assert plan.total_images == 6 * 3 + 2 * 4
    assert plan.estimated_cost == pytest.approx(26 * 0.027)
    assert plan.currency == "USD"
    assert plan.axes == {
        "mood": ("beautiful", "stormy"),
        "size": ("2560:1440 (16:9)", "2048:2048 (1:1)", "1440:2560 (9:16)"),
        "count": (3, 4),
        "seed": (100, 101),
    }
    assert plan.pipeline_text == SUNSET.read_text() and plan.pipeline_name == "sunset-study"


def test_job_ids_hash_model_and_exact_input() -> None:
    plan = plan_text(BASE)
    ids = [j.id for j in plan.jobs]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("j") and len(i) == 17 for i in ids)
    for job in plan.jobs:
        assert job.id == job_id(job.model, job.input)
    # the same input gives the same id in another pipeline, whatever the job is called
    other = plan_text(BASE.replace("name: planned", "name: other") + "job_name: x{{ seed }}\n")
    assert {j.id for j in other.jobs} == set(ids)
    # known value: sha256 of the canonical JSON, so every machine agrees
    assert job_id(MODEL, {"text": "a", "seed": 1}) == "j" + __import__("hashlib").sha256(
        b'{"input":{"seed":1,"text":"a"},"model":"bytedance/seedream-4-0/sequential"}').hexdigest()[:16]


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5),
       st.dictionaries(st.text(max_size=6), json_values, max_size=3))
def test_fast_ids_equal_job_id(shared: dict[str, Any], own: dict[str, Any]) -> None:
    body = {**shared, **own}
    maker = _IdMaker(MODEL, body, list(own))
    assert maker(body) == job_id(MODEL, body)


def test_job_to_dict_round_trips_through_json() -> None:
    job = plan_text(BASE).jobs[0]
    data = json.loads(json.dumps(job.to_dict()))
    assert Job(**data) == job


def test_plan_to_dict() -> None:
    data = plan_text(BASE).to_dict()
    assert data["totals"] == {"jobs": 8, "images": 24, "estimated_cost": pytest.approx(0.648), "currency": "USD"}
    assert data["pipeline"]["name"] == "planned" and len(data["jobs"]) == 8
    assert data["axes"]["seed"] == [1, 2]


def test_derived_seeds_are_in_the_input_and_not_an_axis() -> None:
    plan = plan_text(BASE.replace("seeds: [1, 2]\n", ""))
    assert all(j.input["seed"] == j.seed for j in plan.jobs)
    assert "seed" not in plan.axes


def test_a_seed_written_in_the_input_wins() -> None:
    plan = plan_text(BASE.replace("  image_size:", "  seed: 42\n  image_size:"))
    assert {j.seed for j in plan.jobs} == {42}


# --- errors: every one located --------------------------------------------------------------------


def test_an_invalid_enum_value_points_at_the_matrix_value() -> None:
    (problem,) = errors_of(BASE.replace('"2048:2048 (1:1)"]', '"16:9"]'))
    assert problem.message == "'16:9' is not an allowed image_size (in 4 jobs)"
    assert problem.hint == "did you mean '2560:1440 (16:9)'?"
    assert problem.line == 11 and problem.column == 30 and problem.field == "input.image_size"
    assert problem.job == "beautiful-16-9-3-s1" and problem.variables is not None
    assert problem.variables["size"] == "16:9"
    assert "p.yaml:11:30" in problem.format()


@pytest.mark.parametrize(("wrong", "meant"), [
    ("2048:2048", "2048:2048 (1:1)"), ("3:2", "2496:1664 (3:2)"), ("2560:1440 (16:10)", "2560:1440 (16:9)"),
])
def test_enum_suggestions_match_the_ratio_or_the_size(wrong: str, meant: str) -> None:
    (problem,) = errors_of(BASE.replace('"2048:2048 (1:1)"]', f'"{wrong}"]'))
    assert problem.hint == f"did you mean {meant!r}?"


def test_every_error_of_a_pipeline_is_reported_together() -> None:
    text = BASE.replace('"2048:2048 (1:1)"]', '"16:9"]').replace("count: [3]", "count: [3, 20]")
    problems = errors_of(text)
    fields = sorted((p.field, p.line) for p in problems)
    assert fields == [("input.image_size", 11), ("input.sequential_image_generation_options", 12)]
    count = next(p for p in problems if "20" in p.message)
    assert count.message.startswith("20 is not an allowed sequential_image_generation_options")
    assert count.hint == "allowed: 1 to 15"


def test_a_literal_value_error_points_at_the_input_line() -> None:
    (problem,) = errors_of(BASE.replace('"{{ size }}"', '"square"'))
    assert problem.line == 8 and problem.field == "input.image_size"


def test_type_errors_explain_the_template_rule() -> None:
    (problem,) = errors_of(BASE.replace('sequential_image_generation_options: "{{ count }}"',
                                        'sequential_image_generation_options: "n{{ count }}"'))
    assert problem.field == "input.sequential_image_generation_options" and problem.line == 7
    assert "must be an integer" in problem.message and problem.hint == "use a whole number"
    (problem,) = errors_of(BASE.replace('sequential_image_generation_options: "{{ count }}"',
                                        'sequential_image_generation_options: "{{ count }} "'))
    assert "exactly one" in (problem.hint or "")


def test_a_too_long_prompt() -> None:
    (problem,) = errors_of(BASE.replace("calm ocean", "x" * 600))
    assert problem.field == "input.text" and problem.line == 6 and "600 allowed" in problem.message


def test_unknown_input_fields_suggest_the_closest() -> None:
    problems = errors_of(BASE.replace("  image_size:", "  image_siz: x\n  image_size:"))
    (problem,) = problems
    assert problem.field == "input.image_siz" and problem.line == 8
    assert problem.hint == "did you mean 'image_size'?"


def test_unknown_model() -> None:
    (problem,) = errors_of(BASE.replace("sequential\n", "sequencial\n", 1))
    assert problem.field == "model" and problem.line == 3
    assert problem.hint == f"did you mean '{MODEL}'?"


def test_the_count_rule_mismatch_is_an_error() -> None:
    text = BASE.replace("Generate {{ count }} images", "Generate four images")
    (problem,) = errors_of(text)
    assert problem.field == "input.text" and problem.line == 6
    assert problem.message == "the prompt asks for 4 images but sequential_image_generation_options is 3 (in 8 jobs)"
    assert "sequential_image_generation_options: 4" in (problem.hint or "")


def test_the_count_rule_uses_the_default_count() -> None:
    text = BASE.replace('  sequential_image_generation_options: "{{ count }}"\n', "")
    text = text.replace("Generate {{ count }}", "Generate 2")
    (problem,) = errors_of(text)
    assert "is 3 (its default)" in problem.message


def test_a_prompt_without_a_number_is_a_warning() -> None:
    plan = plan_text(BASE.replace("Generate {{ count }} images of", "Paint"))
    (warning,) = plan.warnings
    assert warning.severity == "warning" and warning.line == 6 and warning.field == "input.text"
    assert "does not state how many images" in warning.message
    assert len(plan.jobs) == 8


def test_the_count_rule_per_seed_when_the_prompt_reads_the_seed() -> None:
    text = BASE.replace("Generate {{ count }} images", "Generate {{ count + seed - 1 }} images")
    (problem,) = errors_of(text)  # seed 1 agrees, seed 2 asks for one more
    assert "asks for 4 images" in problem.message and "(in 4 jobs)" in problem.message


def test_max_jobs_refuses_a_large_sweep_with_its_position() -> None:
    (problem,) = errors_of(BASE, max_jobs=5)
    assert "8 jobs" in problem.message and "5" in problem.message
    assert problem.line == 9 and problem.field == "matrix" and "--max-jobs 8" in (problem.hint or "")
    assert len(plan_text(BASE, max_jobs=8).jobs) == 8


def test_max_jobs_counts_exactly_when_excludes_shrink_the_sweep() -> None:
    text = BASE + "  exclude: [{mood: stormy}]\n"
    assert len(plan_text(text.replace("seeds: [1, 2]\n", "") , max_jobs=2).jobs) == 2


def test_problems_in_several_groups_name_each_job() -> None:
    text = BASE + dedent(
        """\
        jobs:
          good: {}
          bad:
            input: {optimize_prompt_options: turbo}
        """
    )
    (problem,) = errors_of(text)
    assert problem.line == 17 and problem.field == "input.optimize_prompt_options"
    assert problem.job is not None and "allowed" in (problem.hint or "")


def test_overrides_apply_and_unknown_ones_fail() -> None:
    plan = plan_text(BASE, overrides=["mood=stormy", "seeds=[9]"])
    assert [j.name for j in plan.jobs] == ["stormy-2560-1440-16-9-3-s9", "stormy-2048-2048-1-1-3-s9"]
    assert plan.overrides == {"mood": "stormy", "seeds": [9]}
    (problem,) = errors_of(BASE, overrides=["moood=x"])
    assert problem.hint == "did you mean 'mood'?"


# --- streaming, limits, locks ----------------------------------------------------------------


def test_iter_jobs_streams_the_same_jobs() -> None:
    planner = iter_jobs(SUNSET)
    streamed = list(planner.jobs())
    planner.raise_for_errors()
    assert tuple(streamed) == plan_file(SUNSET).jobs
    assert Totals.of(streamed) == plan_file(SUNSET).totals()


def test_limits() -> None:
    plan = plan_file(SUNSET)
    check_limits(plan, max_images=26, max_cost=1.0)
    with pytest.raises(LimitExceeded, match="26 images"):
        check_limits(plan, max_images=25)
    with pytest.raises(LimitExceeded, match="0.70 USD"):
        check_limits(plan.totals(), max_cost=0.5)


def test_lock_files(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(BASE)
    plan = plan_file(path)
    with pytest.raises(LockMismatch, match="no lock file"):
        check_lock(plan)
    written = write_lock(plan)
    assert written == lock_path(path) == tmp_path / "study.lock.json"
    locked = json.loads(written.read_text())
    assert [j["id"] for j in locked["jobs"]] == [j.id for j in plan.jobs]
    check_lock(plan_file(path))  # unchanged: passes
    path.write_text(BASE.replace("[beautiful, stormy]", "[beautiful, calm]"))
    with pytest.raises(LockMismatch) as info:
        check_lock(plan_file(path))
    message = info.value.format_message()
    assert "4 new" in message and "4 gone" in message and "seedflow plan --lock" in message
    path.write_text(BASE.replace("calm ocean", "quiet lake"))
    with pytest.raises(LockMismatch, match="8 changed"):
        check_lock(plan_file(path))
    written.write_text("{not json")
    with pytest.raises(LockMismatch, match="not a seedflow lock file: Expecting"):
        check_lock(plan_file(path))
    written.write_text('{"jobs": [{"id": "j1"}]}')
    with pytest.raises(LockMismatch) as info:
        check_lock(plan_file(path))
    assert info.value.message == f"{written} is not a seedflow lock file: missing key 'name'"


def test_a_bad_value_given_with_set_is_located_on_the_command_line() -> None:
    (problem,) = errors_of(BASE, overrides=["size=16:9"])
    assert problem.file == "--set size" and problem.line is None
    assert problem.hint == "did you mean '2560:1440 (16:9)'?"
    (problem,) = errors_of(BASE, overrides=["seeds=[-1]"])
    assert "non-negative" in problem.message and problem.field == "seeds"


def test_an_unquoted_ratio_gets_a_quoting_hint() -> None:
    (problem,) = errors_of(BASE.replace('"2048:2048 (1:1)"]', "16:9]"))
    assert "must be a string, not int 969" in problem.message and "quotes" in (problem.hint or "")
    assert problem.line == 11


def test_a_huge_sweep_is_refused_without_being_expanded() -> None:
    text = BASE.replace("seeds: [1, 2]", "seeds: {start: 0, count: 1000000000}")
    # no include/exclude: counted arithmetically, exactly, however large
    (problem,) = errors_of(text.replace("count: [3]", "count: [3]\n  k: [1, 2, 3]"))
    assert "the sweep has 12,000,000,000 jobs" in problem.message
    # an exclude must be expanded to be counted: only up to a million combinations
    excluded = text.replace("count: [3]", "count: [3]\n  k: [1, 2, 3]\n  exclude: [{k: 1}]")
    (problem,) = errors_of(excluded)
    assert "more than 1,000,000 jobs (up to 12,000,000,000)" in problem.message
    (problem,) = errors_of(BASE.replace("seeds: [1, 2]", "seeds: {start: 0, count: 600}"))
    assert "2,400 jobs" in problem.message


def test_a_sweep_without_include_or_exclude_is_counted_without_expanding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from seedflow import expand

    def never(*_: Any) -> Any:
        raise AssertionError("the matrix was expanded to be counted")

    big = "\n  ".join(f"a{i}: [{', '.join(map(str, range(20)))}]" for i in range(5))  # 3.2M
    text = BASE.replace("count: [3]", "count: [3]\n  " + big)
    monkeypatch.setattr(expand, "expand_matrix", never)
    planner = iter_jobs(parse_pipeline(text, "p.yaml"), max_jobs=10)
    assert planner.expander.count_jobs(stop=100) == (4 * 20**5 * 2, True)


def test_an_empty_job_name_is_an_error() -> None:
    (problem,) = errors_of(BASE + "job_name: '{{ \"\" }}'\n")
    assert problem.field == "job_name" and "empty" in problem.message and problem.line == 14
    assert "fixed text" in (problem.hint or "")


# --- one problem does not hide the others ---------------------------------------------------------

BAD = dedent(
    """\
    version: 1
    name: bad
    model: bytedance/seedream-4-0/sequential
    input:
      text: "Generate {{ count }} images of a {{ mood }} sunset over {{ plcae }}."
      sequential_image_generation_options: 4
      image_size: "{{ size }}"
      promt_extra: x
    matrix:
      mood: [a, b]
      mood: [c]
      size: ["16:9", "2048:2048 (1:1)"]
      count: [3]
    """
)


def located(problems: list[Problem]) -> list[tuple[int | None, str | None]]:
    return [(p.line, p.field) for p in problems]


def test_every_problem_of_a_pipeline_is_reported_together() -> None:
    problems = errors_of(BAD)
    assert located(problems) == [
        (5, "input.text"),
        (6, "input.sequential_image_generation_options"),
        (8, "input.promt_extra"),
        (11, "matrix.mood"),
        (12, "input.image_size"),
    ]
    undefined, count, unknown, duplicate, size = problems
    assert "undefined variable 'plcae'" in undefined.message
    assert "known: count, mood, seed, size" in (undefined.hint or "")
    assert count.message == ("the prompt asks for 3 images but sequential_image_generation_options is 4"
                             " (in 2 jobs)")
    assert "fields: text, sequential_image_generation_options" in (unknown.hint or "")
    assert "duplicate key 'mood'" in duplicate.message and "line 11 is used" in duplicate.message
    assert size.message.startswith("'16:9' is not an allowed image_size")
    assert size.hint == "did you mean '2560:1440 (16:9)'?" and size.variables is not None
    assert size.variables["mood"] == "c"  # the last of the duplicate keys is used
    # with the variable fixed, the others remain: nothing was hiding behind it
    fixed = errors_of(BAD.replace("plcae", "mood"))
    assert located(fixed) == located(problems)[1:]


def test_an_undefined_variable_hides_only_the_checks_that_need_its_field() -> None:
    text = BASE.replace('image_size: "{{ size }}"', 'image_size: "{{ sise }}"').replace(
        "count: [3]", "count: [3, 16]")
    problems = errors_of(text)
    assert located(problems) == [(8, "input.image_size"), (12, "input.sequential_image_generation_options")]
    assert "undefined variable 'sise'" in problems[0].message and problems[0].hint == "did you mean 'size'?"
    assert "16 is not an allowed sequential_image_generation_options" in problems[1].message


def test_the_count_rule_reads_the_part_of_a_prompt_that_renders() -> None:
    # the prompt cannot be rendered (mod is undefined), but its number can be read: 3 != 4
    text = BASE.replace("{{ mood }}", "{{ mod }}").replace('"{{ count }}"\n', "4\n", 1)
    problems = errors_of(text)
    assert located(problems) == [(6, "input.text"), (7, "input.sequential_image_generation_options")]
    assert "asks for 3 images but sequential_image_generation_options is 4" in problems[1].message
    # where the number itself is what cannot be rendered, the count rule says nothing (no warning)
    with pytest.raises(PipelineError) as info:
        plan_text(BASE.replace("Generate {{ count }}", "Generate {{ cuont }}"))
    assert located(info.value.problems) == [(6, "input.text")]


def test_a_field_that_fails_to_render_does_not_hide_the_other_fields() -> None:
    text = BASE.replace("sunset over a {{ place }}.", "sunset over a {{ place[99] }}.").replace(
        '"2048:2048 (1:1)"', '"1:1"')
    problems = errors_of(text)
    assert located(problems) == [(6, "input.text"), (11, "input.image_size")]
    assert problems[0].message.startswith("template error") and "(1:1)" in (problems[1].hint or "")


def test_a_job_name_that_fails_does_not_hide_the_input_problems() -> None:
    text = BASE.replace('"2048:2048 (1:1)"', '"1:1"') + "job_name: '{{ mood }}-{{ 1 // (seed - 1) }}'\n"
    problems = errors_of(text)
    assert located(problems) == [(11, "input.image_size"), (14, "job_name")]
    assert "(in 4 jobs)" in problems[0].message  # both seeds of both moods, the failing name too


def test_a_template_that_does_not_compile_does_not_hide_the_rest_of_its_group() -> None:
    text = BASE.replace('"Generate {{ count }}', '"Generate {{ count }').replace(
        '"2048:2048 (1:1)"', '"1:1"') + "job_name: '{{ mood | slg }}'\n"
    problems = errors_of(text)
    assert located(problems) == [(6, "input.text"), (11, "input.image_size"), (14, "job_name")]
    assert [p.message.split(":")[0] for p in (problems[0], problems[2])] == ["template syntax error"] * 2


def test_set_errors_are_reported_with_the_problems_of_the_pipeline() -> None:
    text = BASE.replace('"2048:2048 (1:1)"', '"1:1"')
    problems = errors_of(text, overrides=["mod=stormy", "seeds=[-1]", "count=4"])
    messages = [p.message for p in problems]
    assert messages[:2] == [
        "--set mod: nothing named 'mod' in the pipeline",
        ("--set seeds=[-1]: seeds are a list of non-negative integers or {start, count[, step]}: "
         "--set seeds=7, --set 'seeds=[1, 2]' or --set 'seeds={start: 0, count: 10}'"),
    ]
    assert problems[0].hint == "did you mean 'mood'?" and problems[1].field == "seeds"
    assert problems[1].file is not None  # located in the pipeline, never a made-up place
    # the good --set still applies (count=4), and the file's own problem is reported with its line
    assert located(problems[2:]) == [(11, "input.image_size")]
    assert problems[2].variables is not None and problems[2].variables["count"] == 4


def test_an_item_that_is_not_key_value_is_a_usage_error() -> None:
    from seedflow.errors import UsageError

    with pytest.raises(UsageError) as info:
        plan_text(BASE, overrides=["novalue"])
    assert info.value.message == "--set 'novalue': expected KEY=VALUE (e.g. --set mood=stormy)"


@pytest.mark.parametrize(
    ("value", "seeds"),
    [("7", [7]), ("[1, 2]", [1, 2]), ("{start: 0, count: 3}", [0, 1, 2]),
     ("{start: 10, count: 2, step: 5}", [10, 15])],
)
def test_set_seeds_accepts_every_form_of_the_file(value: str, seeds: list[int]) -> None:
    plan = plan_text(BASE, overrides=[f"seeds={value}", "mood=stormy", "size=2048:2048 (1:1)"])
    assert sorted({j.seed for j in plan.jobs}) == seeds


@pytest.mark.parametrize("value", ["{start: 0}", "{start: -1, count: 2}", "[]", "x", "true"])
def test_set_seeds_refuses_what_the_file_refuses(value: str) -> None:
    (problem,) = errors_of(BASE, overrides=[f"seeds={value}"])
    assert problem.field == "seeds" and "seeds are a list of non-negative integers" in problem.message


def test_a_set_value_that_is_not_yaml_is_text_with_a_warning() -> None:
    plan = plan_text(BASE, overrides=["place=[unclosed"])
    assert all("[unclosed" in j.input["text"] for j in plan.jobs)
    (warning,) = [w for w in plan.warnings if "--set" in w.message]
    assert warning.severity == "warning" and warning.field == "place" and warning.file == "p.yaml"
    assert "not valid YAML and is taken as the text '[unclosed'" in warning.message


def test_a_sweep_over_the_limit_still_reports_the_problems_of_its_first_jobs() -> None:
    text = BASE.replace("{{ place }}", "{{ plase }}").replace('"2048:2048 (1:1)"', '"1:1"')
    problems = errors_of(text, max_jobs=5)
    assert located(problems) == [(6, "input.text"), (9, "matrix"), (11, "input.image_size")]
    assert "8 jobs, more than the limit of 5" in problems[1].message


def test_the_problems_of_every_group_are_reported_together() -> None:
    text = dedent(
        """\
        version: 1
        name: groups
        model: bytedance/seedream-4-0/sequential
        input:
          text: "Generate 2 images of {{ subject }}"
          sequential_image_generation_options: 2
        jobs:
          a:
            model: bytedance/seedream-4-0/sequentail
            vars: {subject: a cat}
            input: {text: "Generate 2 images of {{ subjet }}"}
          b:
            vars: {subject: a dog}
            input: {image_size: "4:3"}
          c:
            vars: {subject: a fox}
            input: {sequential_image_generation_options: 3}
        """
    )
    problems = errors_of(text)
    assert located(problems) == [
        (9, "model"),
        (11, "input.text"),
        (14, "input.image_size"),
        (17, "input.sequential_image_generation_options"),
    ]
    assert [(p.job or "").split("-")[0] for p in problems] == ["jobs.a", "a", "b", "c"]
    assert problems[0].hint == "did you mean 'bytedance/seedream-4-0/sequential'?"
    assert "undefined variable 'subjet'" in problems[1].message
    assert problems[2].hint == "did you mean '2304:1728 (4:3)'?"
    assert "asks for 2 images but sequential_image_generation_options is 3" in problems[3].message


# --- selecting jobs -----------------------------------------------------------------------------


def test_only_selects_jobs_by_id_id_prefix_and_name() -> None:
    whole = plan_text(BASE)
    first, second, third = whole.jobs[0], whole.jobs[1], whole.jobs[5]
    selected = plan_text(BASE, only=[first.id, second.id[:7], third.name])
    assert [j.id for j in selected.jobs] == [first.id, second.id, third.id]
    assert [j.index for j in selected.jobs] == [0, 1, 5]  # jobs keep their place in the whole plan
    assert selected.jobs[2] == third and selected.only == (first.id, second.id[:7], third.name)
    assert selected.totals().jobs == 3 and selected.total_images == 9
    assert plan_text(BASE, only=[third.name, third.id]).jobs == (third,)  # a job is kept once


def test_only_with_a_selector_that_selects_nothing_names_close_jobs() -> None:
    whole = plan_text(BASE)
    name = whole.jobs[0].name
    problems = errors_of(BASE, only=[name + "x", whole.jobs[0].id[:4], whole.jobs[1].name])
    assert [p.field for p in problems] == ["only", "only"]
    assert problems[0].message == f"--only '{name}x' selects no job"
    assert f"did you mean '{name}'" in (problems[0].hint or "") and problems[0].location() == f"--only {name}x"
    assert "at least 6 characters" in (problems[1].hint or "")


def test_only_still_checks_the_whole_pipeline() -> None:
    text = BASE.replace('"2048:2048 (1:1)"', '"1:1"')
    name = plan_text(BASE).jobs[0].name
    (problem,) = errors_of(text, only=[name])
    assert problem.field == "input.image_size"


def test_only_is_a_keyword_of_plan_file_and_the_streaming_planner(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE)
    job = plan_file(path).jobs[3]
    assert plan_file(path, only=[job.id]).jobs == (job,)
    planner = iter_jobs(path, only=[job.name])
    assert list(planner.jobs()) == [job]
    planner.raise_for_errors()


def test_plan_locked_uses_the_recorded_set_values(tmp_path: Path) -> None:
    from seedflow.plan import plan_locked

    path = tmp_path / "p.yaml"
    path.write_text(BASE)
    locked = plan_file(path, overrides=["mood=[stormy]", "count=4", "place='16:9'"])
    write_lock(locked)
    again = plan_locked(path)
    assert again.jobs == locked.jobs and dict(again.overrides) == {"mood": ["stormy"], "count": 4,
                                                                  "place": "16:9"}
    with pytest.raises(LockMismatch, match="no longer expands"):
        check_lock(plan_file(path))  # the same pipeline without the recorded values differs
    with pytest.raises(LockMismatch, match="no longer expands"):
        plan_locked(path, overrides=["count=3"])  # the command line wins
    with pytest.raises(LockMismatch, match="no lock file"):
        plan_locked(tmp_path / "other.yaml")


def test_a_job_name_failing_in_its_per_combination_part_does_not_hide_the_input_problems() -> None:
    text = BASE.replace('"2048:2048 (1:1)"', '"1:1"') + "job_name: '{{ 1 // (count - 3) }}-s{{ seed }}'\n"
    problems = errors_of(text)
    assert located(problems) == [(11, "input.image_size"), (14, "job_name")]
    assert "(in 4 jobs)" in problems[0].message and "division" in problems[1].message


def test_a_value_the_model_refuses_does_not_hide_the_count_rule_of_the_same_jobs() -> None:
    text = BASE.replace('"2048:2048 (1:1)"', '"1:1"').replace('"2560:1440 (16:9)"', '"16:9"').replace(
        '"{{ count }}"\n', "4\n", 1)
    problems = errors_of(text)  # every job has a bad size: the count rule is still checked
    assert located(problems) == [(7, "input.sequential_image_generation_options"),
                                 (11, "input.image_size"), (11, "input.image_size")]
    assert problems[0].message.endswith("is 4 (in 8 jobs)")


def test_a_lock_file_that_is_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    from seedflow.errors import UsageError
    from seedflow.plan import plan_locked

    path = tmp_path / "study.yaml"
    path.write_text(BASE)
    lock_path(path).mkdir()
    with pytest.raises(LockMismatch, match="is a folder, not a lock file"):
        plan_locked(path)
    with pytest.raises(UsageError, match="cannot write the lock file"):
        write_lock(plan_file(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.lock.json", "study.yaml"]


def test_write_lock_is_atomic_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    path = tmp_path / "study.yaml"
    path.write_text(BASE)
    plan = plan_file(path)
    written = write_lock(plan)
    before = written.read_bytes()
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    write_lock(plan)
    assert synced, "the lock file is synced before it replaces the old one"

    def fail(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    from seedflow.errors import UsageError

    with pytest.raises(UsageError, match="No space left on device"):
        write_lock(plan)
    assert written.read_bytes() == before  # the old lock file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.lock.json", "study.yaml"]
