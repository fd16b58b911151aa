"""Expansion: matrix semantics, zipped axes, seeds, overrides and template rendering."""

from __future__ import annotations

import itertools
from textwrap import dedent
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError

from seedflow.errors import UsageError
from seedflow.expand import (
    Expander,
    apply_overrides,
    compile_template,
    derived_seed,
    expand_matrix,
    make_environment,
    parse_overrides,
    slug,
)
from seedflow.pipeline import Matrix, parse_pipeline

ENV = make_environment()


def combos(matrix: Matrix) -> list[dict[str, Any]]:
    return [c.values for c in expand_matrix(matrix)]


def test_github_actions_include_example() -> None:
    # the example of GitHub's documentation ("Expanding or adding matrix configurations")
    matrix = Matrix(
        axes={"fruit": ("apple", "pear"), "animal": ("cat", "dog")},
        include=(
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ),
    )
    assert combos(matrix) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_exclude_then_include() -> None:
    matrix = Matrix(
        axes={"os": ("mac", "win"), "v": (1, 2)},
        exclude=({"os": "win", "v": 1},),
        include=({"os": "win", "v": 1, "extra": True},),
    )
    # exclude runs first; the include entry extends none of what is left, so it is added back
    assert combos(matrix) == [
        {"os": "mac", "v": 1}, {"os": "mac", "v": 2}, {"os": "win", "v": 2},
        {"os": "win", "v": 1, "extra": True},
    ]


def test_the_sunset_example_expands_as_documented() -> None:
    matrix = Matrix(
        axes={"mood": ("beautiful", "stormy"), "size": ("2560:1440 (16:9)", "2048:2048 (1:1)"),
              "count": (3,)},
        include=({"mood": "stormy", "size": "1440:2560 (9:16)", "count": 4},),
        exclude=({"mood": "beautiful", "size": "2048:2048 (1:1)"},),
    )
    got = [(c["mood"], c["size"], c["count"]) for c in combos(matrix)]
    assert got == [("beautiful", "2560:1440 (16:9)", 3), ("stormy", "2560:1440 (16:9)", 3),
                   ("stormy", "2048:2048 (1:1)", 3), ("stormy", "1440:2560 (9:16)", 4)]


def test_zipped_axes_contribute_their_keys() -> None:
    matrix = Matrix(axes={"shot": ({"n": 1, "cam": "wide"}, {"n": 2, "cam": "close"}), "k": ("a", "b")},
                    exclude=({"shot": {"n": 2}, "k": "b"},))
    assert combos(matrix) == [
        {"n": 1, "cam": "wide", "k": "a"}, {"n": 1, "cam": "wide", "k": "b"}, {"n": 2, "cam": "close", "k": "a"},
    ]
    first = next(expand_matrix(matrix))
    assert first.origins == {"n": ("matrix", "shot", 0, "n"), "cam": ("matrix", "shot", 0, "cam"),
                             "k": ("matrix", "k", 0)}


def test_exclude_can_name_a_zipped_key() -> None:
    matrix = Matrix(axes={"shot": ({"n": 1}, {"n": 2}), "k": ("a", "b")}, exclude=({"n": 2, "k": "a"},))
    assert combos(matrix) == [{"n": 1, "k": "a"}, {"n": 1, "k": "b"}, {"n": 2, "k": "b"}]


def test_booleans_do_not_match_numbers() -> None:
    matrix = Matrix(axes={"x": (1, True)}, exclude=({"x": True},))
    assert combos(matrix) == [{"x": 1}]


def test_include_only_matrix() -> None:
    assert combos(Matrix(include=({"a": 1}, {"a": 2, "b": 3}))) == [{"a": 1}, {"a": 2, "b": 3}]
    assert combos(Matrix()) == [{}]


# --- property tests of the matrix ---------------------------------------------------------------

axis_values = st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True)
axes_strategy = st.dictionaries(st.sampled_from(["a", "b", "c"]), axis_values, min_size=1, max_size=3)


@st.composite
def matrices(draw: Any) -> Matrix:
    axes = draw(axes_strategy)
    entry = st.dictionaries(st.sampled_from([*axes, "z"]), st.integers(0, 4), min_size=1, max_size=3)
    exclude = draw(st.lists(st.dictionaries(st.sampled_from(list(axes)), st.integers(0, 3), min_size=1),
                            max_size=2))
    include = draw(st.lists(entry, max_size=3))
    return Matrix(axes={k: tuple(v) for k, v in axes.items()}, include=tuple(include), exclude=tuple(exclude))


def _matches(combo: dict[str, Any], rule: dict[str, Any]) -> bool:
    return all(k in combo and combo[k] == v for k, v in rule.items())


@settings(max_examples=200, deadline=None)
@given(matrices())
def test_matrix_properties(matrix: Matrix) -> None:
    result = combos(matrix)
    names = list(matrix.axes)
    product = [dict(zip(names, p)) for p in itertools.product(*matrix.axes.values())]
    kept = [c for c in product if not any(_matches(c, r) for r in matrix.exclude)]
    originals = [{k: c[k] for k in names} for c in result[: len(kept)]]
    # 1. the product minus the excluded combinations, in order, come first
    assert originals == kept
    # 2. include never changes an original value; it extends every combination it does not contradict
    for combo, original in zip(result, kept):
        for entry in matrix.include:
            if all(original.get(k, v) == v for k, v in entry.items() if k in names):
                assert all(k in combo for k in entry)
    # 3. an include entry that extends nothing becomes a combination of its own
    standalone = [e for e in matrix.include
                  if not any(all(c[k] == v for k, v in e.items() if k in names) for c in kept)]
    assert result[len(kept):] == [dict(e) for e in standalone]
    assert len(result) == len(kept) + len(standalone)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30), st.one_of(st.none(), st.text(max_size=5)), st.dictionaries(
    st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3))
def test_derived_seeds_are_deterministic_and_in_range(base: str, group: str | None, values: dict[str, Any]) -> None:
    seed = derived_seed(base, group, values)
    assert seed == derived_seed(base, group, dict(reversed(list(values.items()))))
    assert 0 <= seed < 2**31


# --- templates ---------------------------------------------------------------------------------


def test_single_expression_keeps_its_type() -> None:
    assert compile_template(ENV, "{{ count }}").render({"count": 3}) == 3
    assert compile_template(ENV, "{{ count * 2 }}").render({"count": 3}) == 6
    assert compile_template(ENV, "{{ flags }}").render({"flags": [1, 2]}) == [1, 2]
    assert compile_template(ENV, " {{ count }}").render({"count": 3}) == " 3"
    assert compile_template(ENV, "{{ a }}{{ b }}").render({"a": 1, "b": 2}) == "12"
    assert compile_template(ENV, "plain text").render({}) == "plain text"


def test_templates_with_control_structures() -> None:
    template = compile_template(ENV, "{% if n > 1 %}{{ n }} images{% else %}one image{% endif %}")
    assert template.render({"n": 3}) == "3 images" and template.render({"n": 1}) == "one image"
    assert template.names == {"n"}


def test_trailing_newlines_are_kept() -> None:
    assert compile_template(ENV, "a {{ x }}\n").render({"x": 1}) == "a 1\n"


def test_undefined_variables_are_errors() -> None:
    template = compile_template(ENV, "{{ job.nme }}")
    with pytest.raises(UndefinedError):
        template.render({"job": {"index": 1}})
    assert compile_template(ENV, "a {{ b }} {{ c | slug }}").names == {"b", "c"}


def test_the_sandbox_refuses_unsafe_access() -> None:
    template = compile_template(ENV, "{{ x.__class__.__mro__ }}")
    with pytest.raises(SecurityError):
        template.render({"x": "s"})


def test_syntax_errors_carry_the_line() -> None:
    with pytest.raises(TemplateSyntaxError) as info:
        compile_template(ENV, "line one\n{{ oops }")
    assert info.value.lineno == 2


@pytest.mark.parametrize(("value", "expected"), [
    ("2560:1440 (16:9)", "2560-1440-16-9"), ("Crème brûlée!", "creme-brulee"), (3, "3"), ("--", ""),
])
def test_slug(value: Any, expected: str) -> None:
    assert slug(value) == expected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(st.text(alphabet="ab -:", max_size=4), st.sampled_from(["{{ x }}", "{{ seed }}",
             "{{ x | slug }}", "{{ seed * 2 }}", "{{ job.index }}"])), min_size=1, max_size=6),
    st.text(max_size=6), st.integers(0, 10**6), st.integers(0, 50),
)
def test_partial_rendering_equals_full_rendering(pieces: list[str], x: str, seed: int, index: int) -> None:
    source = "".join(pieces)
    template = compile_template(ENV, source)
    context = {"x": x, "seed": seed, "job": {"index": index}}
    assert template.partial({"x": x}).render(context) == template.render(context)
    assert template.render(context) == ENV.from_string(source).render(context) or template.single


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.text(max_size=3), st.booleans()), min_size=1, max_size=20))
def test_expression_cache_never_mixes_values(values: list[Any]) -> None:
    template = compile_template(ENV, "{{ v }}")
    for v in values:
        got = template.render({"v": v})
        assert got == v and type(got) is type(v)


# --- expansion of a whole pipeline -------------------------------------------------------------

BASE = dedent(
    """\
    version: 1
    name: exp
    model: bytedance/seedream-4-0/sequential
    vars: {place: sea}
    input:
      text: "Generate {{ count }} images of {{ mood }} {{ place }}"
      sequential_image_generation_options: "{{ count }}"
    matrix:
      mood: [calm, wild]
      count: [2]
    """
)


def expand(text: str, overrides: dict[str, Any] | None = None) -> tuple[list[Any], Expander]:
    """The complete jobs (those that can run), and the expander with its problems."""
    jobs, expander = expand_all(text, overrides)
    return [j for j in jobs if j.unrendered is None], expander


def expand_all(text: str, overrides: dict[str, Any] | None = None) -> tuple[list[Any], Expander]:
    """Every job, with those that could not be completely rendered."""
    pipeline = parse_pipeline(text, "p.yaml")
    if overrides:
        pipeline, problems = apply_overrides(pipeline, overrides)
        assert not problems
    expander = Expander(pipeline)
    return list(expander.jobs()), expander


def test_every_job_gets_a_seed_derived_from_the_pipeline() -> None:
    jobs, _ = expand(BASE)
    assert [j.name for j in jobs] == [f"calm-2-s{jobs[0].seed}", f"wild-2-s{jobs[1].seed}"]
    assert jobs[0].seed != jobs[1].seed
    again, _ = expand(BASE)
    assert [j.seed for j in again] == [j.seed for j in jobs]
    rebased, _ = expand(BASE + "seed_base: other\n")
    assert [j.seed for j in rebased] != [j.seed for j in jobs]
    # adding a job does not change the seeds of the others
    more, _ = expand(BASE.replace("[calm, wild]", "[calm, wild, still]"))
    assert [j.seed for j in more[:2]] == [j.seed for j in jobs]


def test_seeds_multiply_jobs_and_job_index_is_in_scope() -> None:
    text = BASE + "seeds: [5, 6]\njob_name: '{{ mood }}-{{ job.index }}-{{ seed }}'\n"
    jobs, _ = expand(text)
    assert [j.name for j in jobs] == ["calm-0-5", "calm-1-6", "wild-2-5", "wild-3-6"]
    assert jobs[1].variables == {"place": "sea", "mood": "calm", "count": 2, "seed": 6}
    assert jobs[1].input == {"text": "Generate 2 images of calm sea", "sequential_image_generation_options": 2}


def test_names_are_made_unique() -> None:
    jobs, _ = expand(BASE + "seeds: [1, 2]\njob_name: same\n")
    assert [j.name for j in jobs] == ["same", "same-2", "same-3", "same-4"]


def test_groups_expand_in_order() -> None:
    text = BASE + dedent(
        """\
        jobs:
          first: {seeds: [1]}
          second:
            vars: {place: lake}
            matrix: {mood: [odd], count: [1]}
            seeds: [2]
        """
    )
    jobs, _ = expand(text)
    assert [(j.group.name, j.index, j.seed, j.input["text"]) for j in jobs] == [
        ("first", 0, 1, "Generate 2 images of calm sea"),
        ("first", 1, 1, "Generate 2 images of wild sea"),
        ("second", 2, 2, "Generate 1 images of odd lake"),
    ]


def test_set_overrides_axes_vars_and_input() -> None:
    jobs, _ = expand(BASE + "seeds: [1]\n", {"mood": "wild", "place": "lake", "input.image_size": "2048:2048 (1:1)"})
    assert [j.input["text"] for j in jobs] == ["Generate 2 images of wild lake"]
    assert jobs[0].input["image_size"] == "2048:2048 (1:1)"
    jobs, _ = expand(BASE + "seeds: [1]\n", {"mood": ["a", "b", "c"], "seeds": [7, 8]})
    assert len(jobs) == 6 and {j.seed for j in jobs} == {7, 8}


def test_set_of_an_axis_drops_contradicting_includes() -> None:
    text = BASE + "  include: [{mood: odd, count: 3}]\nseeds: [1]\n"
    jobs, _ = expand(text)
    assert len(jobs) == 3
    jobs, _ = expand(text, {"mood": "calm"})
    assert [j.variables["mood"] for j in jobs] == ["calm"]


def test_unknown_override_suggests_a_name() -> None:
    pipeline = parse_pipeline(BASE, "p.yaml")
    _, problems = apply_overrides(pipeline, {"mod": "x"})
    assert problems[0].hint == "did you mean 'mood'?" and problems[0].field == "mod"
    _, problems = apply_overrides(pipeline, {"mood": []})
    assert "at least one value" in problems[0].message and problems[0].field == "mood"


def test_override_values_are_read_as_yaml() -> None:
    values, problems = parse_overrides(["count=4", "mood=[a, b]", "place=the sea", "empty="])
    assert values == {"count": 4, "mood": ["a", "b"], "place": "the sea", "empty": ""}
    assert problems == []
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_overrides(["novalue"])
    values, (warning,) = parse_overrides(["mood=[unclosed"])
    assert values == {"mood": "[unclosed"} and warning.severity == "warning"


def test_undefined_variables_are_reported_once_with_line_and_field() -> None:
    jobs, expander = expand_all(BASE.replace("{{ place }}", "{{ plaec }}"))
    assert len(jobs) == 2 and all(j.unrendered is not None for j in jobs)
    # the other fields are rendered, and the text as far as it can be (for the count rule)
    assert jobs[0].shared == {"sequential_image_generation_options": 2}
    assert jobs[0].unrendered.fields == {"text"} and not jobs[0].unrendered.name
    assert jobs[0].unrendered.partial == {"text": "Generate 2 images of calm  "}
    (problem,) = expander.problems
    assert problem.line == 6 and problem.field == "input.text"
    assert "undefined variable 'plaec'" in problem.message and problem.hint == "did you mean 'place'?"
    assert problem.job == "calm-2" and problem.variables == {"mood": "calm", "count": 2}


def test_variables_missing_only_in_an_include_combination() -> None:
    every, expander = expand_all(BASE + "  include: [{mood: odd}]\n")
    jobs = [j for j in every if j.unrendered is None]
    assert len(jobs) == 2  # the include combination has no `count`
    assert every[2].unrendered.fields == {"text", "sequential_image_generation_options"}
    text_problem, count_problem = expander.problems
    assert "undefined variable 'count'" in text_problem.message
    assert text_problem.variables == {"mood": "odd"} and text_problem.line == 6
    assert count_problem.field == "input.sequential_image_generation_options" and count_problem.line == 7
    assert "`include` entry on line 11" in (text_problem.hint or "")


def test_template_syntax_errors_name_the_yaml_line() -> None:
    text = BASE.replace('"Generate {{ count }} images of {{ mood }} {{ place }}"',
                        "|\n    Generate {{ count }} images\n    of {{ mood }"
                        )
    jobs, expander = expand_all(text)
    # the field that does not compile is never rendered; the others are
    assert [j.unrendered.fields for j in jobs] == [{"text"}, {"text"}]
    assert jobs[0].shared == {"sequential_image_generation_options": 2}
    (problem,) = expander.problems
    assert problem.field == "input.text" and problem.line == 8
    assert "template syntax error" in problem.message


def test_unknown_filters_suggest_a_known_one() -> None:
    _, expander = expand(BASE + "job_name: '{{ mood | slg }}'\n")
    (problem,) = expander.problems
    assert problem.field == "job_name" and problem.line == 11 and problem.hint == "did you mean 'slug'?"


def test_render_errors_are_reported_with_the_job_variables() -> None:
    jobs, expander = expand_all(BASE + "job_name: '{{ mood.upper() ~ (1 / (count - 2)) }}'\n")
    assert [(j.unrendered.name, j.unrendered.fields) for j in jobs] == [(True, set())] * 2
    assert jobs[0].shared["text"] == "Generate 2 images of calm sea"  # the input is still checked
    (problem,) = expander.problems
    assert problem.field == "job_name" and "division" in problem.message and problem.line == 11


# --- names distinct by construction (no per-job memory while streaming) ---------------------------


def test_simple_job_names_are_proven_distinct() -> None:
    from seedflow.expand import names_are_distinct

    def proven(job_name: str, extra: str = "seeds: [1, 2]\n") -> bool:
        expander = Expander(parse_pipeline(BASE + extra + f"job_name: '{job_name}'\n", "p.yaml"))
        return names_are_distinct([c.group for c in expander.groups], [c.name for c in expander.groups])

    assert proven("{{ mood }}-s{{ seed }}")
    assert proven("{{ mood }}-{{ seed }}")
    assert not proven("{{ mood }}")  # two seeds, one name
    assert not proven("{{ mood }}{{ seed }}")  # nothing separates the parts
    assert proven("{{ mood }}", extra="")  # derived seeds: one job per combination
    assert not proven("{{ mood }}", extra="seeds: [1, 1]\n")
    assert not proven("{{ mood }}-{{ job.index }}")
    assert not proven("x", extra="")
    zipped = "  shot: [{n: 1, beat: a}, {n: 2, beat: b}]\n"
    assert proven("{{ mood }}-{{ n }}-s{{ seed }}", extra=zipped + "seeds: [1, 2]\n")
    assert not proven("{{ mood }}-{{ beat }}-s{{ seed }}", extra=zipped.replace("beat: b", "beat: a")
                      + "seeds: [1, 2]\n")


name_variables = st.sampled_from(["{{ a }}", "{{ b | slug }}", "{{ a | slug }}", "{{ seed }}", "{{ b }}",
                                  "{{ p }}", "{{ q | slug }}"])
name_separators = st.sampled_from(["-", "_", "-s", "x", "", "__"])


@st.composite
def name_parts(draw: Any) -> list[str]:
    variables = draw(st.lists(name_variables, min_size=1, max_size=4))
    parts = [draw(name_separators)]
    for variable in variables:
        parts += [variable, draw(name_separators)]
    return parts


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "b"]), st.lists(st.text(alphabet="ab-_", max_size=3), min_size=1,
                    max_size=3), min_size=1, max_size=2),
    st.one_of(st.none(), st.lists(st.integers(0, 12), min_size=1, max_size=3)),
    name_parts(),
    st.lists(st.fixed_dictionaries({"p": st.sampled_from(["x", "y", "x-y"]), "q": st.text(alphabet="q-", max_size=2)}),
             max_size=3),
)
def test_names_proven_distinct_are_distinct(axes: dict[str, list[str]], seeds: list[int] | None,
                                            parts: list[str], zipped: list[dict[str, str]]) -> None:
    import yaml

    from seedflow.expand import names_are_distinct

    data: dict[str, Any] = {"version": 1, "name": "p", "model": "m", "input": {"text": "t"},
                            "matrix": {**axes, **({"z": zipped} if zipped else {})},
                            "job_name": "".join(parts)}
    if seeds is not None:
        data["seeds"] = seeds
    expander = Expander(parse_pipeline(yaml.safe_dump(data), "p.yaml"))
    proven = names_are_distinct([c.group for c in expander.groups], [c.name for c in expander.groups])
    names = [j.name for j in expander.jobs() if j.unrendered is None]
    if proven:
        assert len(set(names)) == len(names), names
    assert len(set(names)) == len(names)  # with or without the proof, names end up unique


# --- the fast paths agree with plain Jinja2 ------------------------------------------------------

template_pieces = st.sampled_from([
    "{{ a }}", "{{ b }}", "{{ a | slug }}", "{{ b | upper }}", "{{ seed }}", "{{ job.index }}",
    "{{ a ~ b }}", "{{ seed % 3 }}", "{% if seed > 5 %}big{% else %}small{% endif %}", " ", "-", "x",
])


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.text(alphabet="aB -:", max_size=3), min_size=1, max_size=3, unique=True),
    st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True),
    st.lists(st.integers(0, 12), min_size=1, max_size=3, unique=True),
    st.lists(template_pieces, min_size=1, max_size=5),
    st.lists(template_pieces, min_size=1, max_size=4),
)
def test_expansion_equals_plain_jinja_per_job(
    a_values: list[str], b_values: list[int], seeds: list[int], text: list[str], name: list[str]
) -> None:
    import yaml
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    data = {"version": 1, "name": "p", "model": "m", "matrix": {"a": a_values, "b": b_values},
            "seeds": seeds, "input": {"text": "".join(text), "n": "{{ b }}", "const": 3},
            "job_name": "j" + "".join(name)}
    expander = Expander(parse_pipeline(yaml.safe_dump(data), "p.yaml"))
    jobs = list(expander.jobs())
    assert not expander.problems
    plain = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    plain.filters["slug"] = slug
    expected_names: list[str] = []
    index = 0
    for a in a_values:
        for b in b_values:
            for seed in seeds:
                context = {"a": a, "b": b, "seed": seed, "job": {"index": index, "group": None}}
                job = jobs[index]
                # (a text that is one expression keeps its type: compare it as text)
                assert str(job.input["text"]) == plain.from_string(data["input"]["text"]).render(context)
                assert job.input["n"] == b and job.input["const"] == 3 and job.seed == seed
                expected_names.append(plain.from_string(data["job_name"]).render(context))
                index += 1
    assert len(jobs) == index
    # names: as rendered, with -2, -3 added to repeats
    seen: set[str] = set()
    for job, raw in zip(jobs, expected_names):
        assert job.name == raw or (job.name.startswith(raw + "-") and raw in seen)
        seen.add(job.name)
