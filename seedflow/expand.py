"""Expansion: matrix, include/exclude, seeds, ``--set`` overrides and Jinja2 rendering.

Pure: no I/O, no clock, no unseeded randomness. Given a :class:`~seedflow.pipeline.Pipeline`,
:class:`Expander` yields one :class:`RenderedJob` per job, in a deterministic order (groups in
file order, then matrix combinations, then seeds), and collects every problem it meets.

Speed matters for large sweeps, so each template is compiled once and split into its literal
text and its ``{{ expressions }}``; each expression is evaluated once per distinct value of the
variables it actually reads (``jinja2.meta.find_undeclared_variables``) and cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError, meta, nodes
from jinja2.environment import TemplateExpression
from jinja2.sandbox import SandboxedEnvironment

from .errors import Problem, UsageError
from .pipeline import Group, Matrix, Pipeline, YamlPath, did_you_mean, seeds_of, seeds_valid

__all__ = [
    "Combination",
    "Expander",
    "RenderedJob",
    "Template",
    "Unrendered",
    "apply_overrides",
    "canonical_json",
    "compile_template",
    "derived_seed",
    "expand_matrix",
    "make_environment",
    "parse_overrides",
    "slug",
]

_CACHE_LIMIT = 8192  # distinct values per expression kept: bounded memory on any sweep size
_SEED_LIMIT = 2**31 - 1


# --- small pure helpers ------------------------------------------------------------------------


def slug(value: Any) -> str:
    """A file-name-safe form of ``value``: ``"2560:1440 (16:9)"`` -> ``"2560-1440-16-9"``."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: the same data always gives the same text."""
    return _CANONICAL.encode(value)


def derived_seed(base: str | int, group: str | None, values: Mapping[str, Any]) -> int:
    """A seed derived from the pipeline (``base``), the group and the job's variables.

    Deterministic, so a run can be repeated; it depends only on the job itself, so adding
    another job to the sweep does not change the seeds of the others.
    """
    digest = hashlib.sha256(canonical_json([base, group, values]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_LIMIT


def make_environment() -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment templates run in (undefined variables are errors)."""
    env = SandboxedEnvironment(
        undefined=StrictUndefined,
        keep_trailing_newline=True,  # a value keeps exactly the text YAML gave it
        autoescape=False,
    )
    env.filters["slug"] = slug
    return env


# --- templates ---------------------------------------------------------------------------------


class _Expression:
    """One ``{{ expression }}``: evaluated to a native value, cached per distinct input."""

    __slots__ = ("_cache", "_cacheable", "_call", "names")

    def __init__(self, env: SandboxedEnvironment, node: nodes.Expr) -> None:
        body = [nodes.Assign(nodes.Name("result", "store"), node, lineno=node.lineno)]
        tree = nodes.Template(body, lineno=1)
        tree.set_environment(env)
        self.names = tuple(sorted(meta.find_undeclared_variables(tree)))
        self._call = TemplateExpression(env.from_string(tree), undefined_to_none=False)
        self._cache: dict[Any, Any] = {}
        # `job` changes with every job: caching on it would only fill memory
        self._cacheable = "job" not in self.names

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        if not self._cacheable:
            return self._evaluate(context)
        values = tuple([context[n] for n in self.names])
        key = (values, tuple(map(type, values)))  # 1, 1.0 and True are equal keys in Python
        try:
            return self._cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value (a list or mapping variable)
            return self._evaluate(context)
        result = self._evaluate(context)
        if len(self._cache) >= _CACHE_LIMIT:
            # too many distinct values for a cache to pay off: stop caching, keep memory flat
            self._cacheable = False
            self._cache.clear()
        else:
            self._cache[key] = result
        return result

    def _evaluate(self, context: Mapping[str, Any]) -> Any:
        result = self._call(context)
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()
        return result


class _Lookup:
    """A variable, perhaps through plain filters (``{{ size | slug }}``), evaluated in Python.

    Exactly what Jinja2 computes (a context lookup, then each filter called on the value),
    without the cost of a Jinja2 render context; most templates of a sweep are only this.
    """

    __slots__ = ("_cache", "_filters", "_name", "names")

    def __init__(self, name: str, filters: list[Callable[[Any], Any]]) -> None:
        self.names = (name,)
        self._name = name
        self._filters = filters
        self._cache: dict[Any, Any] | None = {} if filters else None

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        try:
            value = context[self._name]
        except KeyError:
            raise UndefinedError(f"'{self._name}' is undefined") from None
        cache = self._cache
        if cache is None:
            return value
        key = (value, value.__class__)  # 1, 1.0 and True are equal keys in Python
        try:
            return cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value
            return self._apply(value)
        result = cache[key] = self._apply(value)
        if len(cache) >= _CACHE_LIMIT:
            self._cache = {}  # bounded memory: start over
        return result

    def _apply(self, value: Any) -> Any:
        for apply in self._filters:
            value = apply(value)
        return value


def _expression(env: SandboxedEnvironment, node: nodes.Expr) -> _Expression | _Lookup:
    """The cheapest exact evaluator of ``node``."""
    original = node
    filters: list[Callable[[Any], Any]] = []
    while isinstance(node, nodes.Filter):
        function = env.filters.get(node.name)
        plain = (
            function is not None
            and not node.args and not node.kwargs and node.dyn_args is None and node.dyn_kwargs is None
            and getattr(function, "jinja_pass_arg", None) is None
        )
        if function is None or not plain or node.node is None:
            return _Expression(env, original)
        filters.insert(0, function)
        node = node.node
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name not in env.globals:
        return _Lookup(node.name, filters)
    return _Expression(env, original)


class _Whole:
    """A template with control structures ({% if %}, {% for %}): rendered as a whole."""

    __slots__ = ("_render", "names")

    def __init__(self, env: SandboxedEnvironment, tree: nodes.Template, names: tuple[str, ...]) -> None:
        self.names = names
        self._render: Callable[..., str] = env.from_string(tree).render

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        return self._render(context)


#: Variables that change from one job to the next within a matrix combination.
PER_JOB = frozenset({"seed", "job"})


@dataclass(frozen=True)
class Template:
    """A compiled value template.

    ``names`` are the variables it reads; ``single`` is True when the value is exactly one
    ``{{ expression }}`` (its result keeps its type); ``bare_name`` is the variable when that
    expression is a plain variable (so errors can point at where the variable's value is written).
    """

    source: str
    path: YamlPath | None
    names: frozenset[str]
    parts: tuple[Any, ...]  # str (literal text) or an expression
    single: bool
    bare_name: str | None = None
    # the rendered text per distinct value of the variables read: a sweep usually repeats them
    _cache: dict[Any, str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        text = not self.single and len(self.parts) > 1 and "job" not in self.names
        object.__setattr__(self, "_cache", {} if text else None)
        object.__setattr__(self, "_order", tuple(sorted(self.names)))

    @property
    def per_job(self) -> bool:
        """True when the value can differ between jobs of one combination (reads seed or job)."""
        return not self.names.isdisjoint(PER_JOB)

    def render(self, context: Mapping[str, Any]) -> Any:
        """The template's value in ``context`` (raises Jinja2's errors)."""
        if self.single:
            return self.parts[0].evaluate(context)
        cache = self._cache
        if cache is None:
            return self._join(context)
        try:
            values = tuple([context[n] for n in self._order])  # type: ignore[attr-defined]
            key = (values, tuple([v.__class__ for v in values]))
            return cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable value
            return self._join(context)
        text = cache[key] = self._join(context)
        if len(cache) >= _CACHE_LIMIT:
            # mostly distinct values: a cache would not pay off; keep memory flat
            object.__setattr__(self, "_cache", None)
        return text

    def _join(self, context: Mapping[str, Any]) -> str:
        return "".join([p if p.__class__ is str else str(p.evaluate(context)) for p in self.parts])

    def best_effort(self, context: Mapping[str, Any]) -> str | None:
        """The text with every part that cannot be rendered left blank (None: not text).

        Lets the rest of a value be checked when one of its variables is undefined.
        """
        if self.single or isinstance(self.parts[0], _Whole):
            return None
        out = []
        for part in self.parts:
            if part.__class__ is str:
                out.append(part)
                continue
            try:
                out.append(str(part.evaluate(context)))
            except Exception:  # noqa: BLE001 - the part's own problem is reported already
                out.append(" ")
        return "".join(out)

    def partial(self, context: Mapping[str, Any]) -> Template | _Partial:
        """This template with every part that does not read a per-job variable rendered.

        Rendering the result per job then only evaluates the ``seed``/``job`` parts.
        """
        if self.single or not self.per_job:
            return self
        parts: list[Any] = []
        for part in self.parts:
            if part.__class__ is not str and PER_JOB.isdisjoint(part.names):
                part = str(part.evaluate(context))
            if part.__class__ is str and parts and parts[-1].__class__ is str:
                parts[-1] += part
            else:
                parts.append(part)
        return _Partial(parts)


class _Partial:
    """A text template with its per-combination parts already rendered."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def render(self, context: Mapping[str, Any]) -> str:
        return "".join([p if p.__class__ is str else str(p.evaluate(context)) for p in self.parts])


def compile_template(env: SandboxedEnvironment, source: str, path: YamlPath | None = None) -> Template:
    """Compile ``source`` once (raises ``TemplateSyntaxError`` with Jinja2's line number)."""
    if "{" not in source:  # no Jinja2 syntax at all: the fast, common case of constant text
        return Template(source, path, frozenset(), (source,), single=False)
    tree = env.parse(source)
    names = frozenset(meta.find_undeclared_variables(tree))
    if not all(isinstance(n, nodes.Output) for n in tree.body):
        return Template(source, path, names, (_Whole(env, tree, tuple(sorted(names))),), False)
    parts: list[Any] = []
    for output in tree.body:
        assert isinstance(output, nodes.Output)
        for node in output.nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append(node.data)
            else:
                parts.append(_expression(env, node))
    single = len(parts) == 1 and not isinstance(parts[0], str)
    bare = None
    if single:
        only = tree.body[0].nodes[0]  # type: ignore[attr-defined]
        bare = only.name if isinstance(only, nodes.Name) else None
    if not parts:
        parts = [""]
    return Template(source, path, names, tuple(parts), single, bare)


# --- the matrix --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Combination:
    """One point of a sweep: variable values, and where each value is written in the YAML.

    ``axis_values`` keeps each axis' own value (a mapping for a zipped axis) for exclude.
    """

    values: dict[str, Any]
    origins: dict[str, YamlPath] = field(default_factory=dict)
    axis_values: dict[str, Any] = field(default_factory=dict)


def _same(a: Any, b: Any) -> bool:
    # YAML `true` must not match `1`: compare like JSON does
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _axis_choices(matrix: Matrix) -> list[list[tuple[str, Any, dict[str, Any], dict[str, YamlPath]]]]:
    base = matrix.path or ("matrix",)
    choices = []
    for axis, values in matrix.axes.items():
        options = []
        prefix: YamlPath = ("--set",) if axis in matrix.overridden else base
        for i, value in enumerate(values):
            if isinstance(value, dict):  # a zipped axis: every key is a variable
                origins = {k: (*prefix, axis, i, k) for k in value}
                options.append((axis, value, dict(value), origins))
            else:
                options.append((axis, value, {axis: value}, {axis: (*prefix, axis, i)}))
        choices.append(options)
    return choices


def _excluded(combo: Combination, rules: tuple[Mapping[str, Any], ...]) -> bool:
    for rule in rules:
        for key, wanted in rule.items():
            own = combo.axis_values.get(key, _MISSING)
            if isinstance(own, dict) and isinstance(wanted, dict):
                if not all(k in own and _same(own[k], v) for k, v in wanted.items()):
                    break
            elif key in combo.values:
                if not _same(combo.values[key], wanted):
                    break
            else:
                break
        else:
            return True
    return False


_MISSING = object()


def expand_matrix(matrix: Matrix) -> Iterator[Combination]:
    """The combinations of a matrix, with GitHub Actions' ``include``/``exclude`` semantics.

    The product of the axes (first axis outermost); ``exclude`` drops every combination matching
    all keys of one of its entries; each ``include`` entry then extends every combination whose
    original values it does not contradict (values added by earlier includes may be overwritten),
    and becomes a new combination, after all the others, when it extends none.
    """
    base = matrix.path or ("matrix",)
    include_origins = [
        {k: (*base, "include", i, k) for k in entry} for i, entry in enumerate(matrix.include)
    ]
    if not matrix.axes:
        for entry, where in zip(matrix.include, include_origins):
            yield Combination(dict(entry), dict(where), {})
        if not matrix.include:
            yield Combination({}, {}, {})
        return
    used = [False] * len(matrix.include)
    for picks in itertools.product(*_axis_choices(matrix)):
        values: dict[str, Any] = {}
        origins: dict[str, YamlPath] = {}
        axis_values: dict[str, Any] = {}
        for axis, raw, contributed, where in picks:
            values.update(contributed)
            origins.update(where)
            axis_values[axis] = raw
        combo = Combination(values, origins, axis_values)
        if matrix.exclude and _excluded(combo, matrix.exclude):
            continue
        if matrix.include:
            original = dict(values)
            for i, entry in enumerate(matrix.include):
                if all(_same(original[k], v) for k, v in entry.items() if k in original):
                    for k, v in entry.items():
                        if k not in original:
                            values[k] = v
                            origins[k] = include_origins[i][k]
                    used[i] = True
        yield combo
    for i, entry in enumerate(matrix.include):
        if not used[i]:
            yield Combination(dict(entry), dict(include_origins[i]), {})


def matrix_size(matrix: Matrix) -> int | None:
    """The exact number of combinations when arithmetic gives it (no ``include`` or
    ``exclude``: the product of the axes), else None (the matrix must be expanded)."""
    if matrix.include or matrix.exclude:
        return None
    return math.prod(len(values) for values in matrix.axes.values())


def matrix_size_bound(matrix: Matrix) -> int:
    """An upper bound of the number of combinations, computed without expanding."""
    size = 1
    for values in matrix.axes.values():
        size *= len(values)
    return (size if matrix.axes else 0) + len(matrix.include) + (0 if matrix.axes or matrix.include else 1)


# --- overrides ---------------------------------------------------------------------------------


def parse_overrides(items: Iterable[str]) -> tuple[dict[str, Any], list[Problem]]:
    """``["mood=stormy", "size=[a, b]"]`` -> values (parsed as YAML: numbers, lists...).

    Also warnings: a value that is not valid YAML is taken as text, and said so. An item
    that is not ``KEY=VALUE`` at all is a :class:`UsageError`.
    """
    out: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE (e.g. --set mood=stormy)",
                             hint="a list of values: --set 'mood=[calm, stormy]'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
            problems.append(Problem(
                f"--set {key}={raw}: the value is not valid YAML and is taken as the text {raw!r}",
                field=key, severity="warning",
                hint="quote it to mean text (--set 'mood=\"[x\"'), or close the brackets for a list",
            ))
        if isinstance(value, (int, float)) and ":" in raw:
            value = raw  # YAML 1.1 reads 16:9 as 969 (base 60): nobody means that on a command line
        out[key] = raw if value is None else value
    return out, problems


class _BadOverride(ValueError):
    """A --set value that cannot be used."""


def _override_group(group: Group, key: str, value: Any) -> Group | None:
    """``group`` with ``key`` set to ``value``, or None when the group has no such setting."""
    where: YamlPath = ("--set", key)
    if key in group.matrix.axes:
        values = tuple(value) if isinstance(value, list) else (value,)
        if not values:
            raise _BadOverride("an axis needs at least one value")
        # an include entry naming another value of this axis would bring it back: drop it
        include = tuple(
            e for e in group.matrix.include
            if key not in e or any(_same(e[key], v) for v in values)
        )
        axes = {**group.matrix.axes, key: values}
        overridden = group.matrix.overridden | {key}
        return replace(group, matrix=replace(group.matrix, axes=axes, include=include, overridden=overridden))
    if key in group.vars:
        return replace(group, vars={**group.vars, key: value},
                       origins={**group.origins, f"vars.{key}": where})
    if key.startswith("input.") and len(key) > 6:
        name = key[6:]
        return replace(group, input={**group.input, name: value},
                       origins={**group.origins, f"input.{name}": where})
    if key == "seeds":
        # every form the file accepts (a list, or {start, count[, step]}), and one seed
        seeds = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not seeds_valid(seeds):
            raise _BadOverride("seeds are a list of non-negative integers or {start, count[, step]}: "
                               "--set seeds=7, --set 'seeds=[1, 2]' or "
                               "--set 'seeds={start: 0, count: 10}'")
        return replace(group, seeds=seeds_of(seeds, group.seeds.base, where))
    if key == "seed_base":
        return replace(group, seeds=replace(group.seeds, base=value))
    return None


def apply_overrides(pipeline: Pipeline, overrides: Mapping[str, Any]) -> tuple[Pipeline, list[Problem]]:
    """The pipeline with ``--set`` values applied: to a matrix axis, a var, ``input.FIELD``,
    ``seeds`` or ``seed_base``, in every group that has it. Unknown keys are problems."""
    groups = list(pipeline.groups)
    problems: list[Problem] = []
    for key, value in overrides.items():
        hit = False
        for i, group in enumerate(groups):
            try:
                changed = _override_group(group, key, value)
            except _BadOverride as exc:
                problems.append(Problem(f"--set {key}={value!r}: {exc}", file=pipeline.path, field=key))
                hit = True
                break
            if changed is not None:
                groups[i], hit = changed, True
        if not hit:
            known = sorted({*itertools.chain.from_iterable(
                (*g.matrix.axes, *g.vars) for g in groups)} | {"seeds", "seed_base"})
            hint = did_you_mean(key, known) or (
                f"--set works on matrix axes, vars, input.FIELD, seeds and seed_base; "
                f"this pipeline has: {', '.join(known)}"
            )
            problems.append(Problem(f"--set {key}: nothing named '{key}' in the pipeline",
                                    file=pipeline.path, field=key, hint=hint))
    return replace(pipeline, groups=tuple(groups)), problems


# --- jobs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unrendered:
    """What could not be rendered for a job (its problems are reported already).

    Such a job is never run; it is still handed on so the fields that did render are checked
    (one undefined variable must not hide the other mistakes of the same jobs).
    """

    fields: frozenset[str]  # input fields that could not be rendered
    name: bool  # True when the job name could not be rendered
    partial: Mapping[str, str]  # unrendered text fields, with the parts that failed left blank


@dataclass(frozen=True, slots=True)
class RenderedJob:
    """A job with its templates rendered, before model validation (see :mod:`seedflow.plan`).

    ``shared`` holds the input fields that are the same for every job of the combination (the
    very same dict object for all of them, so later stages can do per-combination work once);
    ``own`` the fields that read ``seed`` or ``job``.
    """

    index: int
    group: Group
    name: str
    variables: dict[str, Any]
    shared: dict[str, Any]
    own: dict[str, Any]
    seed: int
    combination: Combination
    unrendered: Unrendered | None = None  # None: complete, the job can run

    @property
    def origins(self) -> dict[str, YamlPath]:
        """Where each variable's value is written (for error messages)."""
        return _variable_origins(self.group, self.combination)

    @property
    def input(self) -> dict[str, Any]:
        """The rendered input (without the model's defaults)."""
        return {**self.shared, **self.own}


@dataclass
class _JobInfo:
    """What templates see as ``job``."""

    index: int
    group: str | None


@dataclass
class _CompiledGroup:
    group: Group
    fields: dict[str, Any]  # input field -> Template | nested structure | constant
    name: Template | None
    # templates that do not compile: these fields (and the name) are never rendered
    broken_fields: set[str] = field(default_factory=set)
    broken_name: bool = False
    shared_fields: list[tuple[str, Any]] = field(default_factory=list)  # not reading seed or job


class Expander:
    """Expands a pipeline into rendered jobs; problems are collected in :attr:`problems`."""

    def __init__(self, pipeline: Pipeline, *, env: SandboxedEnvironment | None = None) -> None:
        self.pipeline = pipeline
        self.env = env or make_environment()
        self.problems: list[Problem] = []
        self.groups = [self._compile_group(g) for g in pipeline.groups]
        self._reported: set[tuple[Any, ...]] = set()

    # compile ------------------------------------------------------------------------------

    def _compile_group(self, group: Group) -> _CompiledGroup:
        compiled = _CompiledGroup(group, {}, None)
        for name, value in group.input.items():
            path = group.origins.get(f"input.{name}")
            reported = len(self.problems)
            compiled.fields[name] = self._compile_value(compiled, value, path, f"input.{name}")
            if len(self.problems) > reported:
                compiled.broken_fields.add(name)
        if group.job_name is not None:
            compiled.name = self._compile(compiled, group.job_name, group.origins.get("job_name"), "job_name")
            compiled.broken_name = compiled.name is None
        compiled.shared_fields = [(f, v) for f, v in compiled.fields.items()
                                  if f not in compiled.broken_fields and not _per_job(v)]
        return compiled

    def _compile_value(self, compiled: _CompiledGroup, value: Any, path: YamlPath | None, field_: str) -> Any:
        if isinstance(value, str):
            return self._compile(compiled, value, path, field_)
        if isinstance(value, dict):
            return {k: self._compile_value(compiled, v, _sub(path, k), f"{field_}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._compile_value(compiled, v, _sub(path, i), f"{field_}[{i}]") for i, v in enumerate(value)]
        return _Constant(value)

    def _compile(self, compiled: _CompiledGroup, source: str, path: YamlPath | None, field_: str) -> Template | None:
        try:
            return compile_template(self.env, source, path)
        except TemplateSyntaxError as exc:
            line = self.pipeline.positions.line(path)
            if line is not None and exc.lineno:
                line += exc.lineno - 1
            self.problems.append(Problem(
                f"template syntax error: {exc.message}",
                file=self.pipeline.path, line=line, job=_group_label(compiled.group),
                field=field_, hint=self._syntax_hint(exc, source),
            ))
            return None

    def _syntax_hint(self, exc: TemplateSyntaxError, source: str) -> str:
        message = exc.message or ""
        match = re.search(r"No filter named '([^']+)'", message)
        if match:
            return did_you_mean(match.group(1), self.env.filters) or "see the filters in docs/pipeline-format.md"
        if source.count("{{") != source.count("}}"):
            return "every '{{' needs a matching '}}'"
        return "check the Jinja2 syntax: {{ variable }}, {{ value | filter }}, {% if ... %}...{% endif %}"

    # expand -------------------------------------------------------------------------------

    def combinations(self, compiled: _CompiledGroup) -> Iterator[Combination]:
        """The group's matrix combinations."""
        return expand_matrix(compiled.group.matrix)

    def count_bound(self) -> int:
        """An upper bound of the number of jobs, without expanding anything."""
        total = 0
        for compiled in self.groups:
            seeds = compiled.group.seeds.values
            total += matrix_size_bound(compiled.group.matrix) * (len(seeds) if seeds else 1)
        return total

    def count(self, stop: int | None = None) -> int:
        """The exact number of jobs (renders nothing); counting ends as soon as it passes
        ``stop``. See :meth:`count_jobs`."""
        return self.count_jobs(stop)[0]

    def count_jobs(self, stop: int | None = None) -> tuple[int, bool]:
        """The number of jobs, and whether it is exact.

        A matrix without ``include``/``exclude`` is counted arithmetically (the product of its
        axes); the others are expanded (nothing rendered), and counting ends, inexact, as soon
        as the total passes ``stop``.
        """
        total = 0
        enumerated: list[tuple[_CompiledGroup, int]] = []
        for compiled in self.groups:
            seeds = compiled.group.seeds.values
            per_combination = len(seeds) if seeds else 1
            size = matrix_size(compiled.group.matrix)
            if size is None:
                enumerated.append((compiled, per_combination))
            else:
                total += size * per_combination
        for compiled, per_combination in enumerated:
            for _ in self.combinations(compiled):
                total += per_combination
                if stop is not None and total > stop:
                    return total, False
        return total, True

    def jobs(self) -> Iterator[RenderedJob]:
        """Every job, rendered, in plan order, and the problems met on the way.

        A job with a field that cannot be rendered comes with :attr:`RenderedJob.unrendered`
        set: it must not run, but its other fields can still be checked.
        """
        index = 0
        names = _Names()
        distinct = names_are_distinct([c.group for c in self.groups if not c.broken_name],
                                      [c.name for c in self.groups if not c.broken_name])
        for compiled in self.groups:
            group = compiled.group
            claim = _same_name if distinct else names.claim
            checked_keysets: dict[frozenset[str] | None, tuple[frozenset[str], bool]] = {}
            base = group.seeds.base if group.seeds.base is not None else self.pipeline.name
            own_fields = [(f, v) for f, v in compiled.fields.items()
                          if _per_job(v) and f not in compiled.broken_fields]
            uses_job = any("job" in t.names for _, _, t in _templates(compiled))
            same_keys = not group.matrix.include  # then every combination has the same variables
            for combo in self.combinations(compiled):
                keyset = None if same_keys else frozenset(combo.values)
                missing = checked_keysets.get(keyset)
                if missing is None:
                    missing = checked_keysets[keyset] = self._check_names(compiled, combo)
                skip, name_fine = missing
                variables = {**group.vars, **combo.values}
                seeds = group.seeds.values or (derived_seed(base, group.name, variables),)
                shared_input, name_template, name_prefix, failed = self._render_shared(
                    compiled, variables, len(seeds) > 1, skip, name_fine)
                # a name template that failed for this combination leaves no name to render
                name_fine = name_fine and (name_template is not None or compiled.name is None)
                renders = [(f, v) for f, v in own_fields if f not in skip] if skip else own_fields
                for seed in seeds:
                    job_vars = {**variables, "seed": seed}
                    own: dict[str, Any] = {}
                    bad = failed
                    context = job_vars
                    if uses_job:
                        context = {**job_vars, "job": _JobInfo(index, group.name)}
                    for field_, value in renders:
                        try:
                            own[field_] = _render(value, context)
                        except Exception as exc:  # noqa: BLE001 - a user's template may raise anything
                            self._report_render_error(compiled, field_, exc, job_vars)
                            bad = (*bad, field_)
                    name: str | None
                    if name_template is not None:
                        try:
                            name = str(name_template.render(context))
                        except Exception as exc:  # noqa: BLE001 - a user's template may raise anything
                            self._report_render_error(compiled, "job_name", exc, job_vars)
                            name = None
                    else:
                        name = f"{name_prefix}s{seed}" if name_fine else None
                    if name is not None and not name.strip():
                        self._report_render_error(compiled, "job_name", _EmptyName(
                            "the job name is empty"), job_vars)
                        name = None
                    if bad or name is None:
                        yield RenderedJob(
                            index, group, name or f"{_combo_label(group, combo)}-s{seed}",
                            job_vars, shared_input, own, seed, combo,
                            Unrendered(frozenset(bad), name is None, self._partial(compiled, bad, context)),
                        )
                        continue
                    yield RenderedJob(index, group, claim(name), job_vars,
                                      shared_input, own, seed, combo)
                    index += 1

    def _partial(
        self, compiled: _CompiledGroup, fields: Iterable[str], context: Mapping[str, Any]
    ) -> dict[str, str]:
        out = {}
        for name in fields:
            value = compiled.fields.get(name)
            if isinstance(value, Template):
                text = value.best_effort(context)
                if text is not None:
                    out[name] = text
        return out

    def _render_shared(
        self, compiled: _CompiledGroup, variables: dict[str, Any], many_seeds: bool,
        skip: frozenset[str], name_fine: bool,
    ) -> tuple[dict[str, Any], Template | _Partial | None, str, tuple[str, ...]]:
        """Render, once per combination, everything that does not read ``seed`` or ``job``.

        Also returns the fields that could not be rendered (``skip``: known not to render);
        each field is rendered on its own, so one failing does not hide the others.
        """
        name_template: Template | _Partial | None = compiled.name if name_fine else None
        if compiled.name is not None and name_fine and many_seeds:
            try:
                name_template = compiled.name.partial(variables)
            except Exception as exc:  # noqa: BLE001 - a user's template may raise anything
                self._report_render_error(compiled, "job_name", exc, variables)
                name_template = None
        prefix = "" if compiled.name else _default_name_prefix(compiled.group, variables)
        shared: dict[str, Any] = {}
        failed = tuple(skip) if skip else ()
        for field_, value in compiled.shared_fields:
            if skip and field_ in skip:
                continue
            try:
                shared[field_] = _render(value, variables)
            except Exception as exc:  # noqa: BLE001 - a user's template may raise anything
                self._report_render_error(compiled, field_, exc, variables)
                failed = (*failed, field_)
        return shared, name_template, prefix, failed

    def _check_names(self, compiled: _CompiledGroup, combo: Combination) -> tuple[frozenset[str], bool]:
        """Report variables that templates use but this combination does not define.

        Returns the input fields that cannot be rendered (undefined variables, or templates
        that do not compile), and whether the job name can be.
        """
        group = compiled.group
        available = {*group.vars, *combo.values, "seed", "job", *self.env.globals}
        unrenderable = set(compiled.broken_fields)
        name_ok = not compiled.broken_name
        for field_, top, template in _templates(compiled):
            for missing in sorted(template.names - available):
                if top is None:
                    name_ok = False
                else:
                    unrenderable.add(top)
                key = ("undefined", group.name, field_, missing)
                if key in self._reported or missing in group.matrix.empty:
                    continue  # an empty axis is reported where it is written
                self._reported.add(key)
                known = sorted(available - set(self.env.globals) - {"job"})
                included = [o for o in combo.origins.values() if "include" in o]
                if missing in group.matrix.axes and included:
                    line = self.pipeline.positions.line(included[0][:-1])
                    hint = (f"this combination comes from the `include` entry on line {line}, "
                            f"which does not set '{missing}': add it to the entry")
                else:
                    hint = None
                hint = hint or did_you_mean(missing, known) or (
                    f"define '{missing}' under `vars:` or as a matrix axis (known: {', '.join(known)})"
                )
                self.problems.append(Problem(
                    f"undefined variable '{missing}' in template {template.source!r}",
                    file=self.pipeline.path, line=self.pipeline.positions.line(template.path),
                    job=_combo_label(group, combo), variables=dict(combo.values) or None,
                    field=field_, hint=hint,
                ))
        return frozenset(unrenderable), name_ok

    def _report_render_error(
        self, compiled: _CompiledGroup, field_: str, exc: Exception, variables: dict[str, Any]
    ) -> None:
        group = compiled.group
        key = ("render", group.name, field_, type(exc).__name__, str(exc))
        if key in self._reported:
            return
        self._reported.add(key)
        path = group.origins.get("job_name" if field_ == "job_name" else f"input.{field_}")
        message = getattr(exc, "message", None) or str(exc)
        self.problems.append(Problem(
            f"template error: {message}",
            file=self.pipeline.path, line=self.pipeline.positions.line(path),
            job=_group_label(group), variables=variables, field=field_ if field_ == "job_name" else f"input.{field_}",
            hint="give job_name some fixed text, or variables that are never empty"
            if isinstance(exc, _EmptyName) else "check the variable names and filters of this template",
        ))


class _EmptyName(ValueError):
    """A job_name that rendered to nothing."""


class _Constant:
    """A non-string input value: used as is."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _render(value: Any, context: Mapping[str, Any]) -> Any:
    if value.__class__ is Template:
        return value.render(context)
    if value is None:
        raise ValueError("the template did not compile")
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, _Constant):
        return value.value
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    return [_render(v, context) for v in value]


def _templates(compiled: _CompiledGroup) -> Iterator[tuple[str, str | None, Template]]:
    """Every template of a group: (field as written, input field or None for the name, template)."""
    def walk(value: Any, name: str, top: str) -> Iterator[tuple[str, str | None, Template]]:
        if isinstance(value, Template):
            yield name, top, value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, f"{name}.{k}", top)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, f"{name}[{i}]", top)

    for name, value in compiled.fields.items():
        yield from walk(value, f"input.{name}", name)
    if compiled.name is not None:
        yield "job_name", None, compiled.name


def _variable_origins(group: Group, combo: Combination) -> dict[str, YamlPath]:
    origins = {k: group.origins[f"vars.{k}"] for k in group.vars if f"vars.{k}" in group.origins}
    origins.update(combo.origins)
    if group.seeds.path is not None:
        origins["seed"] = group.seeds.path
    return origins


def _default_name_prefix(group: Group, variables: Mapping[str, Any]) -> str:
    """The name of a job when the pipeline gives no ``job_name``, up to the seed."""
    parts = [group.name] if group.name else []
    parts += [slug(v) for k, v in variables.items() if k not in group.vars
              and not isinstance(v, (dict, list))]
    return "".join(f"{p}-" for p in parts if p)


def _per_job(value: Any) -> bool:
    if isinstance(value, Template):
        return value.per_job
    if isinstance(value, dict):
        return any(_per_job(v) for v in value.values())
    if isinstance(value, list):
        return any(_per_job(v) for v in value)
    return False


def _same_name(name: str) -> str:
    return name


# --- names that are distinct by construction ---------------------------------------------------
#
# Making names unique needs the set of names used so far, which grows with the plan. Most
# job_name templates make distinct names by construction, though ("{{ mood }}-{{ size | slug }}-
# s{{ seed }}"); proving it from the (finite) values of the variables lets a streamed plan keep
# no per-job memory at all. The proof is conservative: when in doubt, the set is used.

_DIGITS = "0123456789"
_ANY_NUMBER = ["<digits>"]  # what a derived seed prints: any non-negative integer


def _variable_domains(group: Group) -> dict[str, list[Any]] | None:
    """Every value each variable can take in the group, or None if a combination repeats."""
    domains: dict[str, list[Any]] = {}
    for axis, values in group.matrix.axes.items():
        if len({canonical_json(v) for v in values}) != len(values):
            return None  # a repeated value makes two identical jobs
        for value in values:
            for k, v in (value.items() if isinstance(value, dict) else ((axis, value),)):
                domains.setdefault(k, []).append(v)
    include = [canonical_json(e) for e in group.matrix.include]
    if len(set(include)) != len(include):
        return None
    for entry in group.matrix.include:
        for k, v in entry.items():
            domains.setdefault(k, []).append(v)
    for k, v in group.vars.items():  # a combination without the key keeps the var's value
        domains.setdefault(k, []).append(v)
    return {k: list({canonical_json(v): v for v in vs}.values()) for k, vs in domains.items()}


def _part_outputs(part: Any, name: str, domain: list[Any] | None) -> list[str] | None:
    """Every text a part prints over ``domain`` (None: unknown, or two values print the same).

    ``domain`` None stands for derived seeds: a bare ``{{ seed }}`` prints digits only.
    """
    if domain is None:
        return _ANY_NUMBER if isinstance(part, _Lookup) and not part._filters else None
    try:
        rendered = [str(part.evaluate({name: v})) for v in domain]
    except Exception:  # noqa: BLE001 - the rendering itself reports errors later
        return None
    return rendered if len(set(rendered)) == len(rendered) else None


def _ends_at_next(outputs: list[str], literal: str) -> bool:
    """Reading left to right, a part ends where ``literal`` first appears after its start."""
    if outputs is _ANY_NUMBER:
        return bool(literal) and literal[0] not in _DIGITS
    return bool(literal) and all((out + literal).find(literal) == len(out) for out in outputs)


def _starts_after_previous(outputs: list[str], literal: str) -> bool:
    """Reading right to left, a part starts where ``literal`` last appears before its end."""
    if outputs is _ANY_NUMBER:
        return bool(literal) and literal[-1] not in _DIGITS
    return bool(literal) and all((literal + out).rfind(literal) == 0 for out in outputs)


def _decodable(parts: tuple[Any, ...], outputs: list[list[str]]) -> bool:
    """True when a rendered name splits back into its parts in exactly one way.

    Reading from the left, each part must end where the text after it first appears; from
    the right, each must start where the text before it last appears; one part in between
    may print anything.
    """
    literals: list[str] = [""]
    for part in parts:
        if part.__class__ is str:
            literals[-1] += part
        else:
            literals.append("")
    k = len(outputs)
    for free in range(k):
        if all(_ends_at_next(outputs[i], literals[i + 1]) for i in range(free)) and all(
            _starts_after_previous(outputs[i], literals[i]) for i in range(free + 1, k)
        ):
            return True
    return k == 0


def _zipped_along(group: Group, read: frozenset[str]) -> set[str]:
    """Keys of zipped axes that a name identifies through another key of the same axis.

    A name that reads one key whose value differs in every entry of the axis (and that no
    ``include`` entry sets) tells the entries apart, so the other keys need not be in it.
    """
    covered: set[str] = set()
    included = {k for entry in group.matrix.include for k in entry}
    for values in group.matrix.axes.values():
        if not values or not all(isinstance(v, dict) for v in values):
            continue
        keys = set().union(*values)
        if keys & included:
            continue
        for key in read & keys:
            column = [canonical_json(v.get(key, _MISSING_KEY)) for v in values]
            if all(key in v for v in values) and len(set(column)) == len(column):
                covered |= keys
                break
    return covered


_MISSING_KEY = "\x00missing"


def _group_names_distinct(group: Group, template: Template | None) -> bool:
    if template is None or "job" in template.names:
        return False
    domains = _variable_domains(group)
    seeds = group.seeds.values
    if domains is None or (seeds is not None and not isinstance(seeds, range) and len(set(seeds)) != len(seeds)):
        return False
    varying = {k for k, vs in domains.items() if len(vs) > 1} | ({"seed"} if seeds and len(seeds) > 1 else set())
    if not varying <= template.names | _zipped_along(group, template.names):
        return False
    outputs = []
    for part in template.parts:
        if part.__class__ is str:
            continue
        if isinstance(part, _Whole) or len(part.names) != 1:
            return False
        (name,) = part.names
        if name == "seed":
            # seeds are distinct non-negative integers (checked above): a bare {{ seed }}
            # prints digits; anything else is tried on every seed
            bare = isinstance(part, _Lookup) and not part._filters
            domain = None if bare or not seeds else list(seeds)
        else:
            domain = domains.get(name)
            if domain is None:
                return False
        found = _part_outputs(part, name, domain)
        if found is None:
            return False
        outputs.append(found)
    return _decodable(template.parts, outputs)


def names_are_distinct(groups: list[Group], templates: list[Template | None]) -> bool:
    """True when every job name of these groups is distinct by construction."""
    if not all(_group_names_distinct(g, t) for g, t in zip(groups, templates)):
        return False
    if len(groups) < 2:
        return True
    prefixes = []
    for template in templates:
        assert template is not None
        first = template.parts[0]
        if first.__class__ is not str or not first:
            return False
        prefixes.append(first)
    # groups must not make the same name: their fixed beginnings must differ
    return not any(a.startswith(b) for a, b in itertools.permutations(prefixes, 2))


class _Names:
    """The job names used so far, to make every name unique (``-2``, ``-3`` on a clash).

    Kept as 64-bit digests rather than the names: streaming a huge plan keeps ~50 bytes per
    job here instead of the whole name (uniqueness cannot be checked in less than that).
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def claim(self, name: str) -> str:
        """``name``, or ``name-N`` for the smallest N >= 2 not taken yet."""
        if self._take(name):
            return name
        n = 2
        while not self._take(f"{name}-{n}"):
            n += 1
        return f"{name}-{n}"

    def _take(self, name: str) -> bool:
        key = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _sub(path: YamlPath | None, key: Any) -> YamlPath | None:
    return None if path is None else (*path, key)


def _combo_label(group: Group, combo: Combination) -> str:
    """A name for a job whose own name could not be rendered."""
    return _default_name_prefix(group, {**group.vars, **combo.values}).rstrip("-") or "(first job)"


def _group_label(group: Group) -> str | None:
    return f"jobs.{group.name}" if group.name else None
