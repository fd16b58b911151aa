"""Planning: a pipeline becomes concrete, schema-checked jobs before anything is sent or paid for.

:func:`plan_file` is the entry point; :func:`iter_jobs` streams the same jobs without keeping
them (``seedflow plan --format jsonl`` on huge sweeps). Every problem of a pipeline is collected
and raised together as one :class:`~seedflow.errors.PipelineError`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema

from .errors import (
    LimitExceeded,
    LockMismatch,
    PipelineError,
    Problem,
    UnknownModelError,
    UsageError,
)
from .expand import Expander, RenderedJob, apply_overrides, canonical_json, parse_overrides
from .models import ModelSpec, get_model, stated_image_count
from .pipeline import Group, Pipeline, YamlPath, did_you_mean, load_pipeline

__all__ = [
    "DEFAULT_MAX_JOBS",
    "Job",
    "Plan",
    "Planner",
    "Totals",
    "check_limits",
    "check_lock",
    "iter_jobs",
    "job_id",
    "lock_path",
    "plan_file",
    "plan_locked",
    "plan_pipeline",
    "write_lock",
]

#: A sweep larger than this needs ``--max-jobs``: a typo in a matrix should not plan 10^6 jobs.
DEFAULT_MAX_JOBS = 1000
_EXACT_COUNT_LIMIT = 1_000_000  # above this, a refused sweep's size is only bounded

_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
)


@dataclass(frozen=True, slots=True)
class Job:
    """One planned job: the exact body to send, and where it came from."""

    id: str
    name: str
    index: int
    group: str | None
    model: str
    variables: Mapping[str, Any]
    input: Mapping[str, Any]
    seed: int
    images: int

    def to_dict(self) -> dict[str, Any]:
        """The job as plain JSON-able data."""
        return {
            "id": self.id,
            "name": self.name,
            "index": self.index,
            "group": self.group,
            "model": self.model,
            "variables": dict(self.variables),
            "input": dict(self.input),
            "seed": self.seed,
            "images": self.images,
        }


@dataclass(frozen=True)
class Plan:
    """Every job of a pipeline, in order, with warnings and sweep axes."""

    pipeline_path: str | None
    pipeline_name: str
    pipeline_text: str
    pipeline_sha256: str
    jobs: tuple[Job, ...]
    warnings: tuple[Problem, ...] = ()
    axes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    only: tuple[str, ...] = ()  # job selectors: the plan holds only the jobs they select

    @property
    def total_images(self) -> int:
        return sum(j.images for j in self.jobs)

    @property
    def estimated_cost(self) -> float:
        """Estimated price of every requested image (an estimate: see the model's price_note)."""
        return _cost(self.jobs)

    @property
    def currency(self) -> str:
        return _currency(self.jobs)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(j.model for j in self.jobs))

    def totals(self) -> Totals:
        """Jobs, images and estimated cost."""
        return Totals.of(self.jobs)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data (``seedflow plan --format json``)."""
        return {
            "pipeline": {"path": self.pipeline_path, "name": self.pipeline_name,
                         "sha256": self.pipeline_sha256},
            "overrides": dict(self.overrides),
            "only": list(self.only),
            "totals": {"jobs": len(self.jobs), "images": self.total_images,
                       "estimated_cost": self.estimated_cost, "currency": self.currency},
            "axes": {k: list(v) for k, v in self.axes.items()},
            "warnings": [w.to_dict() for w in self.warnings],
            "jobs": [j.to_dict() for j in self.jobs],
        }


@dataclass(frozen=True)
class Totals:
    """How big a plan is: jobs, requested images and their estimated cost."""

    jobs: int
    images: int
    estimated_cost: float
    currency: str

    @property
    def total_images(self) -> int:
        return self.images

    @classmethod
    def of(cls, jobs: Iterable[Job]) -> Totals:
        """Totals of ``jobs`` (consumed one by one: nothing is kept)."""
        count = 0
        images: dict[str, int] = {}
        for job in jobs:
            count += 1
            images[job.model] = images.get(job.model, 0) + job.images
        cost = round(sum(get_model(m).estimate_cost(n) for m, n in images.items()), 6)
        currency = get_model(next(iter(images))).currency if images else "USD"
        return cls(count, sum(images.values()), cost, currency)


def _cost(jobs: Sequence[Job]) -> float:
    total = 0.0
    for model, images in _images_by_model(jobs).items():
        total += get_model(model).estimate_cost(images)
    return round(total, 6)


def _currency(jobs: Sequence[Job]) -> str:
    models = _images_by_model(jobs)
    return get_model(next(iter(models))).currency if models else "USD"


def _images_by_model(jobs: Sequence[Job]) -> dict[str, int]:
    out: dict[str, int] = {}
    for j in jobs:
        out[j.model] = out.get(j.model, 0) + j.images
    return out


def job_id(model: str, input: Mapping[str, Any]) -> str:
    """The stable id of a job: the same model and input give the same id anywhere."""
    text = canonical_json({"input": input, "model": model})
    return "j" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- checking inputs against the model ---------------------------------------------------------


def _compile_predicate(schema: Mapping[str, Any]) -> Callable[[Any], bool] | None:
    """A fast check for the common subschema keywords, or None when jsonschema must decide."""
    keys = set(schema) - _ANNOTATIONS
    if not keys <= {"type", "enum", "maxLength", "minLength", "minimum", "maximum"}:
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        return None
    checks: dict[str | None, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer()),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        None: lambda v: True,
    }
    type_ok = checks.get(kind)
    if type_ok is None:
        return None
    enum = schema.get("enum")
    if enum is not None and not all(isinstance(e, (str, int, float)) for e in enum):
        return None
    allowed = {(type(e) is bool, e) for e in enum} if enum is not None else None
    max_len, min_len = schema.get("maxLength"), schema.get("minLength")
    lo, hi = schema.get("minimum"), schema.get("maximum")

    def check(value: Any) -> bool:
        if not type_ok(value):
            return False
        if allowed is not None:
            try:
                if (type(value) is bool, value) not in allowed:
                    return False
            except TypeError:
                return False
        if isinstance(value, str):
            if max_len is not None and len(value) > max_len:
                return False
            if min_len is not None and len(value) < min_len:
                return False
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo:
                return False
            if hi is not None and value > hi:
                return False
        return True

    return check


class _InputChecker:
    """Checks job inputs against a model's input schema, fast for the common case.

    Each field is checked with a compiled predicate of its property subschema; only when that
    fails (or the schema is not simple) does jsonschema validate the whole input, so the
    messages stay jsonschema's detailed ones.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.validator = spec.validator()
        schema = spec.input_schema
        simple_top = set(schema) - _ANNOTATIONS <= {"type", "properties", "required", "additionalProperties"}
        self.predicates: dict[str, Callable[[Any], bool]] | None = {}
        for name, sub in spec.properties.items():
            predicate = _compile_predicate(sub) if isinstance(sub, dict) else None
            if predicate is None or not simple_top:
                self.predicates = None
                break
            self.predicates[name] = predicate

    def errors(
        self, input: Mapping[str, Any], fields: Sequence[str] | None = None
    ) -> list[jsonschema.ValidationError]:
        """Every schema error of ``input`` (empty when valid).

        ``fields``: only these fields can be wrong (the others were checked already).
        """
        predicates = self.predicates
        if predicates is not None:
            for name in input if fields is None else fields:
                predicate = predicates.get(name)
                if predicate is not None and not predicate(input[name]):
                    break
            else:
                return []  # required keys and unknown fields are checked once per group
        return list(self.validator.iter_errors(input))


# --- the planner -------------------------------------------------------------------------------


class _Problems:
    """Collects problems; the same problem met in many jobs is reported once, with a count."""

    def __init__(self) -> None:
        self._items: dict[tuple[Any, ...], list[Any]] = {}

    def seen(self, key: tuple[Any, ...]) -> bool:
        """True (and one more job counted) when this problem was reported already."""
        entry = self._items.get(key)
        if entry is None:
            return False
        entry[1] += 1
        return True

    def add(self, key: tuple[Any, ...], problem: Problem) -> None:
        """Report a new problem (see :meth:`seen`)."""
        self._items[key] = [problem, 1]

    def bump(self, key: tuple[Any, ...]) -> None:
        """Count one more job with an already reported problem."""
        self.seen(key)

    def extend(self, problems: Sequence[Problem]) -> None:
        for p in problems:
            self.add(("plain", len(self._items)), p)

    def all(self) -> list[Problem]:
        out = []
        for problem, count in self._items.values():
            if count > 1:
                problem = replace(problem, message=f"{problem.message} (in {count} jobs)")
            out.append(problem)
        return out


@dataclass
class _GroupState:
    group: Group
    spec: ModelSpec
    checker: _InputChecker
    defaults: dict[str, Any]
    ok: bool = True
    make_id: _IdMaker | None = None
    defaults_checked: bool = False  # the defaults of the model are valid: checked once


_encode = canonical_json
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _fast_json(value: Any) -> str:
    kind = value.__class__
    if kind is int:
        return str(value)
    if kind is str:
        return _encode_str(value)
    return _encode(value)


class _IdMaker:
    """Builds :func:`job_id` for inputs that differ only in a few known fields.

    The canonical JSON of the unchanging fields is encoded once; per job only the changing
    values are encoded and spliced in. The result is identical to :func:`job_id`.
    """

    def __init__(self, model: str, body: Mapping[str, Any], own: Sequence[str]) -> None:
        own_set = set(own)
        segments: list[str | tuple[str]] = []
        text = '{"input":{'
        for i, key in enumerate(sorted({*body, *own_set})):
            text += ("," if i else "") + _encode_str(key) + ":"
            if key in own_set:
                segments.append(text)
                segments.append((key,))
                text = ""
            else:
                text += _fast_json(body[key])
        segments.append(text + '},"model":' + _encode_str(model) + "}")
        self.segments = segments

    def __call__(self, body: Mapping[str, Any]) -> str:
        text = "".join([s if s.__class__ is str else _fast_json(body[s[0]]) for s in self.segments])
        return "j" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class _Combo:
    """Per matrix combination work, done once for all of its seeds."""

    shared: dict[str, Any]
    body: dict[str, Any]
    own_keys: tuple[str, ...]
    fill_seed: str | None
    make_id: _IdMaker
    images: int | None
    count_shared: bool
    count_checked: bool | None = None
    count_key: tuple[Any, ...] | None = None
    failed: list[tuple[Any, ...]] = field(default_factory=list)
    rendered_keys: tuple[str, ...] = ()

    @classmethod
    def start(cls, state: _GroupState, rendered: RenderedJob) -> _Combo:
        spec = state.spec
        body = {**state.defaults, **rendered.shared}
        own = list(rendered.own)
        fill_seed = None
        if spec.seed_field and spec.seed_field not in body and spec.seed_field not in own:
            fill_seed = spec.seed_field
            own.append(fill_seed)
        count_own = spec.count_field in own
        images = None if count_own else _image_count(spec, body)
        count_shared = not count_own and spec.prompt_field not in own
        if state.make_id is None:
            # one id maker per group: the fields a pipeline renders vary, the defaults do not
            varying = [*state.group.input, *([fill_seed] if fill_seed else [])]
            state.make_id = _IdMaker(spec.model_id, {**body, **rendered.own, **dict.fromkeys(own, 0)}, varying)
        return cls(rendered.shared, body, tuple(own), fill_seed, state.make_id, images, count_shared,
                   rendered_keys=(*rendered.shared, *own))


class Planner:
    """Plans a pipeline job by job; :meth:`jobs` streams, :attr:`problems` holds what was found.

    Memory stays flat while streaming: nothing per job is kept except the names already used
    (names must be unique) and bounded caches.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        overrides: Mapping[str, Any] | Sequence[str] | None = None,
        max_jobs: int = DEFAULT_MAX_JOBS,
        only: Sequence[str] | None = None,
    ) -> None:
        self._problems = _Problems()
        self.only = tuple(only or ())
        self._problems.extend(pipeline.problems)  # found while reading, planned anyway
        # a bad --set is reported with the rest; the good ones still apply
        self.overrides, problems = _overrides(overrides)
        self._problems.extend([replace(p, file=p.file or pipeline.path) for p in problems])
        pipeline, problems = apply_overrides(pipeline, self.overrides)
        self._problems.extend(problems)
        self.pipeline = pipeline
        self.max_jobs = max_jobs
        self.expander = Expander(pipeline)
        self.axes: dict[str, list[Any]] = {}
        self._seen_axis_values: dict[str, set[Any]] = {}
        self._states = {id(g): self._group_state(g) for g in pipeline.groups}
        self._count_cache: dict[str, int | None] = {}
        self._axis_keys: dict[int, dict[str, int]] = {}
        self._combo: _Combo | None = None
        # the combination of the last job that could not be rendered, and its problems
        self._incomplete: tuple[dict[str, Any], list[tuple[Any, ...]]] | None = None
        self._combo_count_key: tuple[Any, ...] | None = None  # set by the last count check

    # problems -----------------------------------------------------------------------------

    @property
    def problems(self) -> list[Problem]:
        """Every problem found so far: expansion's and planning's, errors and warnings, in
        the order of the file (problems of the command line first)."""
        found = [*self.expander.problems, *self._problems.all()]
        return sorted(found, key=lambda p: (p.line or 0, p.column or 0))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def raise_for_errors(self) -> None:
        """Raise :class:`PipelineError` with every problem if any of them is an error."""
        if self.errors:
            raise PipelineError(self.problems, file=self.pipeline.path)

    # per group ----------------------------------------------------------------------------

    def _where(self, path: YamlPath | None) -> dict[str, Any]:
        if path and path[0] == "--set":  # the value came from the command line, not the file
            return {"file": f"--set {path[1]}", "line": None, "column": None}
        positions = self.pipeline.positions
        return {"file": self.pipeline.path, "line": positions.line(path), "column": positions.column(path)}

    def _group_state(self, group: Group) -> _GroupState | None:
        try:
            spec = get_model(group.model or "")
        except UnknownModelError as exc:
            self._problems.extend([Problem(
                exc.message, field="model", job=_label(group), hint=exc.hint,
                **self._where(group.origins.get("model")),
            )])
            return None
        state = _GroupState(group, spec, _InputChecker(spec), spec.defaults())
        known = list(spec.properties)
        for name in group.input:
            if name not in spec.properties:
                path = group.origins.get(f"input.{name}")
                self._problems.extend([Problem(
                    f"'{name}' is not an input field of {spec.model_id}",
                    field=f"input.{name}", job=_label(group),
                    hint=did_you_mean(name, known) or f"fields: {', '.join(known)}",
                    file=self.pipeline.path, line=self.pipeline.positions.key_line(path or ()),
                )])
                # keep checking the other fields: every problem is reported at once
        for name in spec.input_schema.get("required", []):
            if name not in group.input and name not in state.defaults:
                self._problems.extend([Problem(
                    f"missing required input field '{name}' of {spec.model_id}",
                    field=f"input.{name}", job=_label(group), hint=f"add `{name}:` under `input:`",
                    **self._where(("input",) if group.input else None),
                )])
        return state

    # jobs ---------------------------------------------------------------------------------

    def _check_size(self) -> bool:
        bound = self.expander.count_bound()
        if bound <= self.max_jobs:
            return True
        # arithmetic where the matrices allow; a sweep with include/exclude is expanded (never
        # rendered) only up to _EXACT_COUNT_LIMIT, and above that only bounded
        stop = max(_EXACT_COUNT_LIMIT, self.max_jobs)
        count, exact = self.expander.count_jobs(stop=stop)
        if count <= self.max_jobs:
            return True
        size = f"{count:,} jobs" if exact else f"more than {stop:,} jobs (up to {bound:,})"
        group = self.pipeline.groups[0]
        path = group.matrix.path if group.matrix.axes else group.seeds.path
        self._problems.extend([Problem(
            f"the sweep has {size}, more than the limit of {self.max_jobs:,}",
            field="matrix", hint="narrow the matrix or seeds, or raise the limit with "
            f"--max-jobs {count if exact else bound}", file=self.pipeline.path,
            line=self.pipeline.positions.key_line(path) if path else None,
        )])
        return False

    def jobs(self) -> Iterator[Job]:
        """Every valid job in plan order; problems are collected in :attr:`problems`.

        Call :meth:`raise_for_errors` after the last job (the jobs of an invalid pipeline
        must not be run).
        """
        rendered_jobs = self.expander.jobs()
        if not self._check_size():
            # too many jobs to plan, but the first ones are still checked: their problems
            # are likely those of the whole sweep, and fixing both at once saves a round
            return _drain(self._plan(itertools.islice(rendered_jobs, self.max_jobs)))
        if self.only:
            return self._select(self._plan(rendered_jobs))
        return self._plan(rendered_jobs)

    def _select(self, jobs: Iterable[Job]) -> Iterator[Job]:
        """The jobs an ``only`` selector names: by id, id prefix (6+ characters) or name.

        The whole pipeline is still checked; a selector that selects nothing is an error
        naming the closest job names (so the names are kept while selecting).
        """
        wanted = set(self.only)
        prefixes = [s for s in self.only if len(s) >= _MIN_ID_PREFIX]
        matched: set[str] = set()
        names: list[str] = []
        for job in jobs:
            names.append(job.name)
            hits = {s for s in (job.id, job.name) if s in wanted}
            hits.update(p for p in prefixes if job.id.startswith(p))
            if hits:
                matched |= hits
                yield job
        for selector in self.only:
            if selector not in matched:
                self._problems.extend([_unmatched(selector, names)])

    def _plan(self, rendered_jobs: Iterable[RenderedJob]) -> Iterator[Job]:
        states = self._states
        explicit_seeds = any(g.seeds.values and len(g.seeds.values) > 1 for g in self.pipeline.groups)
        last_combo: Any = None
        for rendered in rendered_jobs:
            state = states[id(rendered.group)]
            if rendered.combination is not last_combo:
                last_combo = rendered.combination
                self._record_axes(rendered, explicit_seeds)
            elif explicit_seeds:
                self._add_axis_value("seed", rendered.seed)
            if state is None or not state.ok:
                continue
            if rendered.unrendered is not None:
                self._check_incomplete(state, rendered)
                continue
            job = self._job(state, rendered)
            if job is not None:
                yield job

    def _job(self, state: _GroupState, rendered: RenderedJob) -> Job | None:
        combo = self._combo
        if combo is None or combo.shared is not rendered.shared:
            combo = self._combo = _Combo.start(state, rendered)
            first = True
        else:
            first = False
        if combo.failed:  # a field shared by the whole combination is wrong: counted, not re-reported
            for key in combo.failed:
                self._problems.bump(key)
            return None
        spec = state.spec
        body = combo.body.copy()
        if rendered.own:
            body.update(rendered.own)
        seed = rendered.seed
        if combo.fill_seed:
            body[combo.fill_seed] = seed
        elif spec.seed_field:
            given = body.get(spec.seed_field)
            if isinstance(given, int) and not isinstance(given, bool):
                seed = given
        if not first:
            errors = state.checker.errors(body, combo.own_keys)
        elif state.defaults_checked:
            errors = state.checker.errors(body, combo.rendered_keys)
        else:
            errors = state.checker.errors(body)
            state.defaults_checked = True
        if errors:
            keys = self._report_schema_errors(state, rendered, body, errors)
            count_key = self._count_beside(state, rendered, body, errors)
            if first:
                combo.failed = [k for k, name in keys if name not in combo.own_keys]
                if combo.failed and count_key is not None and combo.count_shared:
                    combo.failed.append(count_key)  # counted for the other seeds too
            return None
        images = combo.images if combo.images is not None else _image_count(spec, body)
        if spec.count_must_match_prompt:
            if combo.count_checked is None or not combo.count_shared:
                combo.count_checked = self._check_count(state, rendered, body, images)
            if not combo.count_checked:
                if combo.count_shared and combo.count_key is not None and not first:
                    self._problems.bump(combo.count_key)
                return None
        return Job(
            combo.make_id(body), rendered.name, rendered.index, rendered.group.name,
            spec.model_id, rendered.variables, body, seed, images,
        )

    def _check_incomplete(self, state: _GroupState, rendered: RenderedJob) -> None:
        """Check the fields that did render of a job that cannot run.

        Checks that need a field that could not be rendered are skipped; the count rule still
        runs when the prompt's number could be read from the parts that did render.
        """
        self._combo = None
        last = self._incomplete
        if last is not None and last[0] is rendered.shared and not rendered.own:
            for key in last[1]:  # another seed of the same combination: the same problems
                self._problems.bump(key)
            return
        unrendered = rendered.unrendered
        assert unrendered is not None
        spec = state.spec
        missing = unrendered.fields
        body = {k: v for k, v in state.defaults.items() if k not in missing}
        body.update(rendered.shared)
        body.update(rendered.own)
        if spec.seed_field and spec.seed_field not in body and spec.seed_field not in missing:
            body[spec.seed_field] = rendered.seed
        errors = [e for e in state.checker.errors(body) if e.validator != "required"
                  and not (e.absolute_path and e.absolute_path[0] in missing)]
        keys = [k for k, _ in self._report_schema_errors(state, rendered, body, errors)] if errors else []
        prompt_field = spec.prompt_field or ""
        if (spec.count_field or "") not in missing:
            prompt = unrendered.partial.get(prompt_field) if prompt_field in missing else None
            count_key = self._count_beside(state, rendered, body, errors, prompt=prompt,
                                           complete=prompt_field not in missing)
            if count_key is not None:
                keys.append(count_key)
        self._incomplete = (rendered.shared, keys)

    def _count_beside(
        self, state: _GroupState, rendered: RenderedJob, body: Mapping[str, Any],
        errors: Sequence[jsonschema.ValidationError], *, prompt: str | None = None, complete: bool = True,
    ) -> tuple[Any, ...] | None:
        """The count rule for a job with other problems, when neither side is wrong itself;
        the key of the mismatch reported (None: none)."""
        spec = state.spec
        if not spec.count_must_match_prompt:
            return None
        sides = {spec.prompt_field or "", spec.count_field or ""}
        if any(not e.absolute_path or str(e.absolute_path[0]) in sides for e in errors):
            return None
        if prompt is None and not complete:
            return None  # nothing of the prompt rendered
        self._check_count(state, rendered, body, _image_count(spec, body), prompt=prompt, complete=complete)
        return self._combo_count_key

    # the count rule ------------------------------------------------------------------------

    def _stated(self, prompt: str) -> int | None:
        cache = self._count_cache
        if prompt in cache:
            return cache[prompt]
        if len(cache) > 4096:
            cache.clear()
        cache[prompt] = found = stated_image_count(prompt)
        return found

    def _check_count(
        self, state: _GroupState, rendered: RenderedJob, body: Mapping[str, Any], images: int,
        *, prompt: str | None = None, complete: bool = True,
    ) -> bool:
        """Check the count rule; ``prompt``: the prompt's text when it is not in ``body`` (as
        far as it rendered: ``complete`` False, then a prompt without a number says nothing)."""
        spec = state.spec
        self._combo_count_key = None
        if prompt is None:
            prompt = body.get(spec.prompt_field or "")
        if not isinstance(prompt, str):
            return True
        stated = self._stated(prompt)
        group = rendered.group
        prompt_path = group.origins.get(f"input.{spec.prompt_field}")
        count_field = spec.count_field or ""
        key: tuple[Any, ...]
        if stated is None and not complete:
            return True
        if stated is None:
            key = ("no-count", group.name, prompt_path)
            if self._problems.seen(key):
                return True
            self._problems.add(key, Problem(
                f"the prompt does not state how many images to make (the job asks for {images})",
                job=rendered.name, variables=rendered.variables, field=f"input.{spec.prompt_field}",
                hint=f"say it in the prompt, e.g. 'Generate {images} images of ...'; this model "
                "makes as many images as the prompt asks for, up to " + count_field,
                severity="warning", **self._where(prompt_path),
            ))
            return True
        if stated == images:
            return True
        in_input = count_field in rendered.input
        key = ("count", group.name, stated, images)
        self._combo_count_key = key
        if self._combo is not None:
            self._combo.count_key = key
        if self._problems.seen(key):
            return False
        # point at the number written as is: a count typed into the input, else the prompt
        written = group.input.get(count_field)
        fixed_count = in_input and written is not None and not isinstance(written, str)
        where = group.origins.get(f"input.{count_field}") if fixed_count else prompt_path
        self._problems.add(key, Problem(
            f"the prompt asks for {stated} image{'' if stated == 1 else 's'} but {count_field} is {images}"
            + ("" if in_input else " (its default)"),
            job=rendered.name, variables=rendered.variables,
            field=f"input.{count_field if fixed_count else spec.prompt_field}",
            hint=f"make them agree: write '{images}' in the prompt or set {count_field}: {stated} "
            "(the price follows that field)",
            **self._where(where),
        ))
        return False

    # schema errors -------------------------------------------------------------------------

    def _report_schema_errors(
        self, state: _GroupState, rendered: RenderedJob, body: Mapping[str, Any],
        errors: list[jsonschema.ValidationError],
    ) -> list[tuple[tuple[Any, ...], str | None]]:
        group = rendered.group
        keys = []
        typed = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
        for error in errors:
            if error.validator != "type" and tuple(error.absolute_path) in typed:
                continue  # "must be an integer" says it all; "not one of 1..15" adds noise
            path = list(error.absolute_path)
            name = str(path[0]) if path else None
            field_ = f"input.{name}" if name else "input"
            value = error.instance
            same = _hashable(value) if error.validator in ("enum", "type", "const") else None
            key = ("schema", group.name, field_, error.validator, same)
            keys.append((key, name))
            if self._problems.seen(key):
                continue
            origin = self._value_origin(state, rendered, name)
            self._problems.add(key, Problem(
                _schema_message(error, name, value),
                job=rendered.name, variables=rendered.variables, field=field_,
                hint=_schema_hint(error, value),
                **self._where(origin),
            ))
        return keys

    def _value_origin(self, state: _GroupState, rendered: RenderedJob, name: str | None) -> YamlPath | None:
        """Where the bad value is written: the variable's value for ``"{{ var }}"``, else the
        template itself."""
        if name is None:
            return rendered.group.origins.get("model")
        compiled = next(c for c in self.expander.groups if c.group is rendered.group)
        template = compiled.fields.get(name)
        bare = getattr(template, "bare_name", None)
        origins = rendered.origins
        if bare and bare in origins:
            return origins[bare]
        return rendered.group.origins.get(f"input.{name}")

    # axes ----------------------------------------------------------------------------------

    def _record_axes(self, rendered: RenderedJob, explicit_seeds: bool) -> None:
        keys = self._axis_keys.get(id(rendered.group))
        if keys is None:
            keys = self._axis_keys[id(rendered.group)] = _matrix_keys(rendered.group)
        variables = rendered.variables
        for name, size in list(keys.items()):
            if name in variables:
                self._add_axis_value(name, variables[name])
                if len(self.axes[name]) >= size:
                    del keys[name]  # every value seen: nothing more to record for this key
        if explicit_seeds:
            self._add_axis_value("seed", rendered.seed)

    def _add_axis_value(self, name: str, value: Any) -> None:
        seen = self._seen_axis_values.setdefault(name, set())
        key = _hashable(value)
        if key not in seen:
            seen.add(key)
            self.axes.setdefault(name, []).append(value)


_MIN_ID_PREFIX = 6


def _drain(jobs: Iterator[Job]) -> Iterator[Job]:
    """Run ``jobs`` to the end for their problems, yielding none of them."""
    for _ in jobs:
        pass
    yield from ()


def _unmatched(selector: str, names: Sequence[str]) -> Problem:
    close = difflib.get_close_matches(selector, names, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(f"'{n}'" for n in close) + "?"
    elif selector.startswith("j") and len(selector) < _MIN_ID_PREFIX:
        hint = f"an id prefix needs at least {_MIN_ID_PREFIX} characters"
    else:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        hint = f"select a job by its id, an id prefix of {_MIN_ID_PREFIX}+ characters or its name: {shown}"
    return Problem(f"--only {selector!r} selects no job", file=f"--only {selector}",
                   field="only", hint=hint)


def _image_count(spec: ModelSpec, body: Mapping[str, Any]) -> int:
    """How many images ``body`` asks for (its defaults are filled in already)."""
    if spec.count_field is None:
        return 1
    value = body.get(spec.count_field)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _matrix_keys(group: Group) -> dict[str, int]:
    """The variables a group's matrix sets, in the order they are written, with an upper
    bound of how many distinct values each takes."""
    values: dict[str, set[Any]] = {}
    for axis, axis_values in group.matrix.axes.items():
        for v in axis_values:
            for key, value in (v.items() if isinstance(v, dict) else ((axis, v),)):
                values.setdefault(key, set()).add(_hashable(value))
    for entry in group.matrix.include:
        for key, value in entry.items():
            values.setdefault(key, set()).add(_hashable(value))
    return {key: len(found) for key, found in values.items()}


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return (type(value).__name__, value)
    except TypeError:
        return canonical_json(value)


def _label(group: Group) -> str | None:
    return f"jobs.{group.name}" if group.name else None


_RATIO = re.compile(r"\(([^()]*)\)\s*$")


def _closest_allowed(value: Any, allowed: Sequence[Any]) -> Any | None:
    """The allowed value a person most likely meant, matching the ratio in parentheses too."""
    text = str(value).strip()
    for option in allowed:
        match = _RATIO.search(str(option))
        if match and text.replace(" ", "") in (match.group(1).replace(" ", ""), str(option).split(" ")[0]):
            return option
    if all(isinstance(a, str) for a in allowed):
        close = difflib.get_close_matches(text, [str(a) for a in allowed], n=1, cutoff=0.5)
        return close[0] if close else None
    return None


def _schema_message(error: jsonschema.ValidationError, name: str | None, value: Any) -> str:
    if name is None:
        return f"the input is invalid: {error.message}"
    if error.validator == "enum":
        return f"{value!r} is not an allowed {name}"
    if error.validator == "type":
        return f"{name} must be {_article(error.validator_value)}, not {type(value).__name__} {value!r}"
    if error.validator == "maxLength" and isinstance(value, str):
        return f"{name} is {len(value)} characters long, more than the {error.validator_value} allowed"
    return f"{name}: {error.message}"


def _article(kind: Any) -> str:
    names = {"integer": "an integer", "string": "a string", "object": "a mapping", "array": "a list"}
    if isinstance(kind, list):
        return " or ".join(names.get(str(k), str(k)) for k in kind)
    return names.get(kind, f"a {kind}")


def _schema_hint(error: jsonschema.ValidationError, value: Any) -> str | None:
    # JSON Schema requires enum to be a list: the isinstance check only narrows the type
    if error.validator == "enum" and isinstance(error.validator_value, list):
        allowed = list(error.validator_value)
        close = _closest_allowed(value, allowed)
        if close is not None:
            return f"did you mean {close!r}?"
        if all(isinstance(a, int) for a in allowed):
            return f"allowed: {min(allowed)} to {max(allowed)}"
        return "allowed: " + ", ".join(repr(a) for a in allowed)
    if error.validator == "type" and error.validator_value == "integer" and isinstance(value, str):
        if value.strip().lstrip("-").isdigit():
            return ("a template keeps its type only when it is exactly one '{{ expression }}': "
                    "remove the text around it, or write a plain number")
        return "use a whole number"
    if error.validator == "type" and error.validator_value == "string" and isinstance(value, (int, float)):
        return ("write the value in quotes in the YAML: unquoted, YAML reads 16:9 as the number 969 "
                "(base 60) and 1e3 as 1000.0")
    if error.validator == "maxLength":
        return "shorten the prompt"
    return None


# --- entry points ------------------------------------------------------------------------------


def iter_jobs(
    pipeline: Pipeline | str | os.PathLike[str],
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS,
    only: Sequence[str] | None = None,
) -> Planner:
    """A :class:`Planner` whose :meth:`~Planner.jobs` streams the jobs (nothing is kept).

    ``only``: job selectors (id, id prefix of 6+ characters, or name); see :func:`plan_file`.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline)
    return Planner(pipeline, overrides=overrides, max_jobs=max_jobs, only=only)


def _overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> tuple[dict[str, Any], list[Problem]]:
    """``--set`` values, and the problems of those that cannot be read."""
    if overrides is None:
        return {}, []
    if isinstance(overrides, Mapping):
        # values given as text on a command line are read as YAML ("3" -> 3, "[a, b]" -> list)
        items = [f"{k}={v}" if isinstance(v, str) else None for k, v in overrides.items()]
        parsed, problems = parse_overrides([i for i in items if i is not None])
        parsed.update({k: v for k, v in overrides.items() if not isinstance(v, str)})
    else:
        parsed, problems = parse_overrides(overrides)
    return parsed, problems


def plan_pipeline(
    pipeline: Pipeline,
    *,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS,
    only: Sequence[str] | None = None,
) -> Plan:
    """Plan a parsed pipeline; raise :class:`PipelineError` carrying every problem."""
    planner = iter_jobs(pipeline, overrides=overrides, max_jobs=max_jobs, only=only)
    jobs = tuple(planner.jobs())
    planner.raise_for_errors()
    return Plan(
        pipeline_path=pipeline.path,
        pipeline_name=pipeline.name,
        pipeline_text=pipeline.text,
        pipeline_sha256=pipeline.sha256,
        jobs=jobs,
        warnings=tuple(planner.warnings),
        axes={k: tuple(v) for k, v in planner.axes.items()},
        overrides=planner.overrides,
        only=planner.only,
    )


def plan_file(
    path: str | os.PathLike[str],
    *,
    overrides: Mapping[str, str] | Sequence[str] | None = None,
    max_jobs: int = DEFAULT_MAX_JOBS,
    only: Sequence[str] | None = None,
) -> Plan:
    """Read, expand and check a pipeline file: the jobs to run, or every problem at once.

    ``only`` keeps the jobs that a selector names: a job id (``j3f9c...``), an id prefix of
    at least 6 characters, or a job name. The whole pipeline is still checked (a problem
    anywhere fails the plan), and a selector that selects no job is an error that names the
    closest job names. Jobs keep their index in the whole plan.
    """
    return plan_pipeline(load_pipeline(path), overrides=overrides, max_jobs=max_jobs, only=only)


def check_limits(plan: Plan | Totals, *, max_images: int | None = None, max_cost: float | None = None) -> None:
    """Refuse a plan that asks for more images or money than the user allows."""
    if max_images is not None and plan.total_images > max_images:
        raise LimitExceeded(
            f"the plan asks for {plan.total_images:,} images, more than --max-images "
            f"{max_images:,}; nothing was sent",
            hint="narrow the sweep or raise --max-images",
        )
    if max_cost is not None and plan.estimated_cost > max_cost:
        raise LimitExceeded(
            f"the plan is estimated at {plan.estimated_cost:.2f} {plan.currency}, more than "
            f"--max-cost {max_cost:.2f}; nothing was sent",
            hint="narrow the sweep or raise --max-cost (the price is an estimate)",
        )


# --- lock files --------------------------------------------------------------------------------

_LOCK_VERSION = 1


def lock_path(pipeline_path: str | os.PathLike[str]) -> Path:
    """``pipelines/x.yaml`` -> ``pipelines/x.lock.json``."""
    path = Path(pipeline_path)
    stem = path.name
    for suffix in (".yaml", ".yml"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return path.with_name(f"{stem}.lock.json")


def _lock_data(plan: Plan) -> dict[str, Any]:
    return {
        "lock_version": _LOCK_VERSION,
        "pipeline": plan.pipeline_name,
        "overrides": dict(plan.overrides),
        "totals": {"jobs": len(plan.jobs), "images": plan.total_images},
        "jobs": [{"id": j.id, "name": j.name, "model": j.model, "input": dict(j.input)} for j in plan.jobs],
    }


def write_lock(plan: Plan) -> Path:
    """Write the plan's resolved jobs next to its pipeline (for version control)."""
    if plan.pipeline_path is None:
        raise LockMismatch("a plan read from text has no file to lock beside")
    if plan.only:
        raise UsageError("a lock file records the whole plan: lock it without --only")
    path = lock_path(plan.pipeline_path)
    text = json.dumps(_lock_data(plan), indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    try:
        _atomic_write(path, text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write the lock file {path}: {exc.strerror or exc}",
                         hint="check that the pipeline's folder is writable and that "
                         f"{path.name} is not a folder") from None
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader (or a crash) sees the old file or the new one.

    The temporary file is created like any other file (0666 less the umask, not mkstemp's
    0600): a lock file is committed and shared.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):
        # the rename itself is durable only once the folder is synced (not possible everywhere)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _read_lock(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The jobs of a lock file by name, and the ``--set`` values it was made with."""
    try:
        locked = json.loads(path.read_text(encoding="utf-8"))
        locked_jobs = {j["name"]: j for j in locked["jobs"]}
        overrides = dict(locked.get("overrides") or {})
    except FileNotFoundError:
        raise LockMismatch(f"no lock file {path}", hint="create it with `seedflow plan --lock`") from None
    except IsADirectoryError:
        raise LockMismatch(f"{path} is a folder, not a lock file",
                           hint="move the folder away, then `seedflow plan --lock`") from None
    except OSError as exc:
        raise LockMismatch(f"cannot read the lock file {path}: {exc.strerror or exc}") from None
    except KeyError as exc:
        raise LockMismatch(f"{path} is not a seedflow lock file: missing key {exc.args[0]!r}",
                           hint="recreate it with `seedflow plan --lock`") from None
    except ValueError as exc:
        raise LockMismatch(f"{path} is not a seedflow lock file: {exc}",
                           hint="recreate it with `seedflow plan --lock`") from None
    except TypeError:
        raise LockMismatch(f"{path} is not a seedflow lock file: it is not a mapping with a list "
                           "of jobs", hint="recreate it with `seedflow plan --lock`") from None
    return locked_jobs, overrides


def plan_locked(
    path: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> Plan:
    """Plan a pipeline with the ``--set`` values recorded in its lock file, then check that
    it still expands to that lock (raise :class:`LockMismatch` if not).

    ``overrides`` (``KEY=VALUE``) apply after the recorded ones, so they win.
    """
    _, recorded = _read_lock(lock_path(path))
    # JSON is YAML: the values read back exactly as they were recorded ("3" stays text)
    items = [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in recorded.items()]
    plan = plan_file(path, overrides=[*items, *overrides], max_jobs=max_jobs)
    check_lock(plan)
    return plan


def check_lock(plan: Plan) -> None:
    """Raise :class:`LockMismatch` when the pipeline no longer expands to its lock file."""
    if plan.pipeline_path is None:
        raise LockMismatch("a plan read from text has no lock file")
    path = lock_path(plan.pipeline_path)
    locked_jobs, _ = _read_lock(path)
    current = {j.name: j for j in plan.jobs}
    added = [n for n in current if n not in locked_jobs]
    removed = [n for n in locked_jobs if n not in current]
    changed = [n for n, j in current.items() if n in locked_jobs and locked_jobs[n].get("id") != j.id]
    if added or removed or changed:
        parts = []
        for label, names in (("new", added), ("gone", removed), ("changed", changed)):
            if names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                parts.append(f"{len(names)} {label} ({shown})")
        raise LockMismatch(
            f"{plan.pipeline_path} no longer expands to {path.name}: " + "; ".join(parts),
            hint="review the change, then update the lock with `seedflow plan --lock`",
        )
