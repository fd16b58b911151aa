"""Reading pipelines: YAML with line numbers, checked against ``schemas/pipeline.schema.json``.

This module turns the text of a recipe into plain data classes and reports every structural
problem at once (with its line). It renders no template: that is :mod:`seedflow.expand`'s job.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import yaml

from .errors import PipelineError, Problem, UsageError

__all__ = [
    "SCHEMA_COMMENT",
    "Group",
    "Matrix",
    "Pipeline",
    "Positions",
    "Seeds",
    "YamlPath",
    "did_you_mean",
    "installed_schema_comment",
    "load_pipeline",
    "parse_pipeline",
    "pipeline_schema",
    "read_text",
    "seeds_of",
    "seeds_valid",
    "starter_pipeline",
]

#: A position inside the YAML document: mapping keys and sequence indexes from the root.
YamlPath = tuple[Any, ...]

#: The comment that points editors (yaml-language-server) at the pipeline schema, as the
#: recipes in the repository's ``pipelines/`` write it (``schemas/`` stands beside it).
SCHEMA_COMMENT = "# yaml-language-server: $schema=../schemas/pipeline.schema.json"


def installed_schema_comment() -> str:
    """The editor comment naming the installed seedflow's copy of the pipeline schema.

    A new recipe may live in any repository, so it points at the schema that ships with the
    seedflow that wrote it, which exists on this machine for certain.
    """
    schema = Path(str(resources.files("seedflow").joinpath("schemas", "pipeline.schema.json")))
    return f"# yaml-language-server: $schema={schema.resolve().as_uri()}"

_GROUP_FIELDS = ("description", "model", "vars", "input", "matrix", "seeds", "seed_base", "job_name")


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Positions:
    """Where each value (and each mapping key) of a YAML document starts: 1-based lines."""

    values: Mapping[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: Mapping[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def line(self, path: YamlPath | None) -> int | None:
        """The line of the value at ``path``, or of its nearest enclosing value that is known."""
        return self._lookup(self.values, path, 0)

    def column(self, path: YamlPath | None) -> int | None:
        """The column of the value at ``path`` (same fallback as :meth:`line`)."""
        return self._lookup(self.values, path, 1)

    def key_line(self, path: YamlPath) -> int | None:
        """The line of the key that names ``path`` (falls back to the value's line)."""
        if path in self.keys:
            return self.keys[path][0]
        return self.line(path)

    @staticmethod
    def _lookup(table: Mapping[YamlPath, tuple[int, int]], path: YamlPath | None, i: int) -> int | None:
        if path is None:
            return None
        while True:
            found = table.get(path)
            if found is not None:
                return found[i]
            if not path:
                return None
            path = path[:-1]


@dataclass(frozen=True)
class Matrix:
    """A sweep: axes (name -> values), plus GitHub Actions-style include and exclude entries."""

    axes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    include: tuple[Mapping[str, Any], ...] = ()
    exclude: tuple[Mapping[str, Any], ...] = ()
    path: YamlPath | None = None  # where the matrix is written (None: no matrix)
    overridden: frozenset[str] = frozenset()  # axes whose values came from --set
    empty: frozenset[str] = frozenset()  # axes written empty (reported, planned without them)


@dataclass(frozen=True)
class Seeds:
    """The seeds of a group: explicit ``values``, or ``None`` to derive one per job from ``base``."""

    values: Sequence[int] | None = None  # a tuple, or a range (never materialised)
    base: str | int | None = None
    path: YamlPath | None = None


@dataclass(frozen=True)
class Group:
    """One independent group of jobs, with the top level already inherited.

    ``origins`` says where each setting was written (``"input.text"``, ``"vars.place"``,
    ``"model"``, ``"job_name"``, ...) so errors can point at the right line.
    """

    name: str | None
    model: str | None
    vars: Mapping[str, Any]
    input: Mapping[str, Any]
    matrix: Matrix
    seeds: Seeds
    job_name: str | None
    description: str | None = None
    origins: Mapping[str, YamlPath] = field(default_factory=dict)


@dataclass(frozen=True)
class Pipeline:
    """A parsed, structurally valid pipeline (templates not rendered yet)."""

    path: str | None
    text: str
    sha256: str
    name: str
    version: int
    groups: tuple[Group, ...]
    positions: Positions
    description: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: Problems found while reading that did not stop it (duplicate keys, unknown keys, ...):
    #: planning reports them with its own, so one mistake does not hide the others.
    problems: tuple[Problem, ...] = field(default=(), compare=False)

    def problem(self, message: str, path: YamlPath | None = None, **kw: Any) -> Problem:
        """A :class:`Problem` located at ``path`` in this pipeline's file."""
        return Problem(
            message,
            file=self.path,
            line=self.positions.line(path),
            column=self.positions.column(path),
            **kw,
        )


# --- YAML with positions -----------------------------------------------------------------------


#: Deepest nesting of lists and mappings a pipeline may use (recipes need a handful).
MAX_DEPTH = 100

#: Most values a pipeline may hold once its aliases (``*name``) are expanded: a few lines of
#: nested aliases can otherwise stand for billions of values ("billion laughs").
MAX_VALUES = 1_000_000


class _Refused(Exception):
    """A document seedflow will not read (too deep, too many values): a message and a mark."""

    def __init__(self, message: str, mark: tuple[int, int] | None, hint: str) -> None:
        super().__init__(message)
        self.message, self.mark, self.hint = message, mark, hint


class _EventSource(Protocol):
    """What :func:`_next_mark` needs of a loader (PyYAML's stubs leave ``peek_event`` untyped)."""

    def peek_event(self) -> yaml.Event: ...


def _next_mark(loader: _EventSource) -> yaml.Mark:
    """Where the next event of ``loader`` starts."""
    mark = loader.peek_event().start_mark
    # the pure-Python parser behind SafeLoader marks every event with a yaml.Mark
    assert isinstance(mark, yaml.Mark), mark
    return mark


class _MarkedLoader(yaml.SafeLoader):
    """A safe loader that records where every value starts and reports duplicate keys.

    PyYAML silently keeps the last of two equal keys; a recipe with a repeated key almost always
    has a mistake in it, so seedflow reports it (every occurrence, not only the first).

    An alias (``*name``) is built once, shared (as ``yaml.safe_load`` does) and located at the
    alias: positions are not recorded again under it, and the values it stands for are counted
    so that a document expanding to more than :data:`MAX_VALUES` values is refused.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.values: dict[YamlPath, tuple[int, int]] = {}
        self.keys: dict[YamlPath, tuple[int, int]] = {}
        self.duplicates: list[tuple[YamlPath, int, int, int]] = []  # path, line, column, first line
        self._depth = 0
        self._alias_marks: dict[tuple[int, Any], yaml.Mark] = {}  # (parent node, index) -> alias
        self._built: dict[yaml.Node, Any] = {}
        self._building: set[yaml.Node] = set()
        self._sizes: dict[yaml.Node, int] = {}
        self._count = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # PyYAML's composer and _build recurse per level: refuse depth before Python does
        if self.check_event(yaml.AliasEvent):
            mark = _next_mark(self)
            node = super().compose_node(parent, index)
            if parent is not None and index is not None:
                self._alias_marks[_child_key(parent, index)] = mark
            return node
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = _next_mark(self)
                raise _Refused(
                    f"the YAML is nested too deeply (more than {MAX_DEPTH} levels of lists "
                    "and mappings)", (mark.line + 1, mark.column + 1),
                    "a pipeline needs only a few levels: check for unclosed or repeated brackets",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def load_with_positions(self) -> Any:
        """Compose the single document and build plain Python data from it."""
        node = self.get_single_node()
        if node is None:
            return None
        return self._build(node, ())

    def _build(self, node: yaml.Node, path: YamlPath, alias: yaml.Mark | None = None) -> Any:
        if node in self._built or node in self._building:
            return self._reuse(node, path, alias)
        self.values[path] = _start(node)
        self._count += 1
        if node.tag not in (_MAP_TAG, _SEQ_TAG):
            # scalars, and tagged collections (!!set, or !!python/... which raises here)
            result = self._built[node] = self.construct_object(node, deep=True)
            return result
        self._building.add(node)
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merge keys (<<) as PyYAML's safe loader does
            mapping: dict[Any, Any] = {}
            first_seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (list, dict)):
                    key = str(key)
                child = (*path, key)
                line, column = _start(key_node)
                if key in first_seen:
                    # PyYAML keeps the last value; so does seedflow, and says so
                    self.duplicates.append((child, line, column, first_seen[key]))
                    self._forget(child)
                else:
                    first_seen[key] = line
                self.keys[child] = (line, column)
                at = self._alias_marks.get(_child_key(node, key_node))
                mapping[key] = self._build(value_node, child, at)
            result = mapping
        else:
            result = [
                self._build(item, (*path, i), self._alias_marks.get(_child_key(node, i)))
                for i, item in enumerate(node.value)
            ]
        self._building.discard(node)
        self._built[node] = result
        return result

    def _reuse(self, node: yaml.Node, path: YamlPath, alias: yaml.Mark | None) -> Any:
        """The value of an alias: built once, shared, counted, located at the alias."""
        where = (alias.line + 1, alias.column + 1) if alias is not None else _start(node)
        self.values[path] = where
        if node in self._building:
            raise _Refused("an alias refers to the value that contains it (a recursive structure)",
                           where, "a pipeline is a tree: copy the value instead of aliasing it")
        self._count += self._size(node)
        if self._count > MAX_VALUES:
            raise _Refused(
                f"the aliases (*name) of this pipeline expand to more than {MAX_VALUES:,} values",
                where, "write the values out, or use fewer nested aliases",
            )
        return self._built[node]

    def _size(self, node: yaml.Node) -> int:
        """How many values ``node`` stands for with every alias in it expanded."""
        size = self._sizes.get(node)
        if size is None:
            size = 1
            if node.tag == _MAP_TAG and isinstance(node, yaml.MappingNode):
                size += sum(self._size(value) for _, value in node.value)
            elif node.tag == _SEQ_TAG and isinstance(node, yaml.SequenceNode):
                size += sum(self._size(item) for item in node.value)
            self._sizes[node] = size
        return size

    def _forget(self, path: YamlPath) -> None:
        """Drop the positions recorded under ``path`` (a duplicate key replaces its value)."""
        n = len(path)
        for table in (self.values, self.keys):
            for known in [p for p in table if p[:n] == path]:
                del table[known]


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def _child_key(parent: yaml.Node, index: Any) -> tuple[int, Any]:
    """Identify a child slot: a sequence index, or the key node of a mapping value."""
    return id(parent), index if isinstance(index, int) else id(index)


def _start(node: yaml.Node) -> tuple[int, int]:
    """1-based line and column where a node's content starts (block scalars: the next line)."""
    mark = node.start_mark
    line = mark.line + 1
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        return line + 1, 1
    return line, mark.column + 1


def _parse_yaml(text: str, file: str | None) -> tuple[Any, Positions, list[Problem]]:
    loader: _MarkedLoader | None = None
    try:
        # the reader checks every character as it is built: inside the try
        loader = _MarkedLoader(text)
        data = loader.load_with_positions()
    except yaml.reader.ReaderError as exc:
        return None, Positions(), [_unreadable(exc, text, file)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        hint = "check indentation, quotes and colons near this line"
        if "'\\t'" in message or "tab" in message:
            hint = "YAML does not allow tabs for indentation: use spaces"
        problem = Problem(
            f"malformed YAML: {message}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            hint=hint,
        )
        return None, Positions(), [problem]
    except _Refused as exc:
        line, column = exc.mark or (None, None)
        return None, Positions(), [Problem(exc.message, file=file, line=line, column=column,
                                           hint=exc.hint)]
    except RecursionError:
        # only when called with little stack left: MAX_DEPTH normally stops it first
        return None, Positions(), [Problem("the YAML is nested too deeply", file=file,
                                           hint="a pipeline needs only a few levels of nesting")]
    except yaml.YAMLError as exc:
        return None, Positions(), [Problem(f"malformed YAML: {exc}", file=file)]
    finally:
        if loader is not None:
            loader.dispose()
    positions = Positions(loader.values, loader.keys)
    problems = [
        Problem(
            f"duplicate key '{path[-1]}' (first defined on line {first}); the value on line "
            f"{line} is used",
            file=file,
            line=line,
            column=column,
            field=_dotted(path),
            hint="YAML keeps only one value per key: remove or rename one of them",
        )
        for path, line, column, first in loader.duplicates
    ]
    return data, positions, problems


def _unreadable(exc: yaml.reader.ReaderError, text: str, file: str | None) -> Problem:
    """A character YAML does not allow (a binary file, a control character), with its place."""
    at = max(0, min(exc.position, len(text)))
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return Problem(
        f"the file contains a character YAML does not allow (#x{ord(char):02x}): is it a "
        "pipeline (a text file)?",
        file=file, line=line, column=column,
        hint="remove control characters; a pipeline is YAML text (start from `seedflow init NAME`)",
    )


# --- schema ------------------------------------------------------------------------------------


@cache
def pipeline_schema() -> Mapping[str, Any]:
    """The JSON Schema of the pipeline format (also used by editors)."""
    text = resources.files("seedflow").joinpath("schemas", "pipeline.schema.json").read_text("utf-8")
    schema: Mapping[str, Any] = json.loads(text)
    return schema


@cache
def _schema_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(pipeline_schema())


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest of ``choices``, or None if none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _dotted(path: YamlPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problems(
    data: Any, positions: Positions, file: str | None
) -> tuple[list[Problem], list[YamlPath] | None]:
    """Every structural problem, as a person would want to read it (sorted by line).

    Also the unknown keys and empty axes to drop when they are the only problems (then the
    rest of the pipeline can still be planned and checked), or None when some other problem
    is structural.
    """
    problems: list[Problem] = []
    unknown: list[YamlPath] | None = []
    for error in _schema_validator().iter_errors(data):
        problems.extend(_explain(error, positions, file))
        if unknown is not None and _is_unknown_keys(error):
            unknown.extend((*error.absolute_path, k) for k in _unknown_keys(error))
        elif unknown is not None and _is_empty_axis(error):
            # planned without the axis, so the other problems of the file are found too
            unknown.append(tuple(error.absolute_path))
        else:
            unknown = None
    problems.sort(key=lambda p: (p.line or 0, p.column or 0, p.message))
    return _dedupe(problems), unknown


def _is_unknown_keys(error: jsonschema.ValidationError) -> bool:
    return (error.validator == "additionalProperties" and error.validator_value is False
            and isinstance(error.instance, dict))


def _is_empty_axis(error: jsonschema.ValidationError) -> bool:
    path = tuple(error.absolute_path)
    return (error.validator == "minItems" and error.instance == [] and len(path) >= 2
            and path[-2] == "matrix" and path[-1] not in ("include", "exclude"))


def _schema_properties(error: jsonschema.ValidationError) -> Mapping[str, Any]:
    """The ``properties`` the failing schema names (none when that schema is a bare boolean)."""
    schema = error.schema
    return schema.get("properties", {}) if isinstance(schema, Mapping) else {}


def _unknown_keys(error: jsonschema.ValidationError) -> list[Any]:
    """The keys of the mapping an ``additionalProperties`` error is about that its schema lacks."""
    known = _schema_properties(error)
    instance = error.instance
    return [k for k in instance if k not in known] if isinstance(instance, dict) else []


def _drop(data: dict[Any, Any], paths: Iterable[YamlPath]) -> None:
    """Remove the values at ``paths`` (unknown keys) from ``data``, in place."""
    for path in paths:
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        parent.pop(path[-1], None)


def _explain(error: jsonschema.ValidationError, positions: Positions, file: str | None) -> list[Problem]:
    path: YamlPath = tuple(error.absolute_path)
    where = _dotted(path) or None

    def at(message: str, p: YamlPath = path, hint: str | None = None, key: bool = False) -> Problem:
        line = positions.key_line(p) if key else positions.line(p)
        return Problem(message, file=file, line=line, field=_dotted(p) or None, hint=hint)

    validator = error.validator
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(_schema_properties(error))
        extras = _unknown_keys(error)
        return [at(f"unknown key '{k}'", (*path, k), _unknown_hint(k, known), key=True) for k in extras]
    if "propertyNames" in error.absolute_schema_path:
        return [_explain_name(error, path, positions, file)]
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [at(f"missing key '{missing}'", hint=_required_hint(missing))]
    if validator == "minItems" and len(path) >= 2 and "matrix" in path:
        return [at(f"axis '{path[-1]}' is empty", hint="give the axis at least one value, or remove it")]
    if validator == "const" and path == ("version",):
        return [at(f"unsupported version {error.instance!r}", hint="this seedflow reads `version: 1`")]
    if validator == "oneOf" and path and path[-1] == "seeds":
        return [at("seeds must be a list of integers or a mapping {start, count[, step]}",
                   hint="e.g. `seeds: [1, 2, 3]` or `seeds: {start: 100, count: 4}`")]
    if validator == "type":
        expected = error.validator_value
        shown = " or ".join(expected) if isinstance(expected, list) else str(expected)
        got = type(error.instance).__name__ if error.instance is not None else "nothing"
        hint = None
        if expected == "array" and len(path) >= 2 and "matrix" in path:
            hint = f"an axis is a list of values: {path[-1]}: [{error.instance}]"
        return [at(f"'{where or 'pipeline'}' must be {_article(shown)}, not {got}", hint=hint)]
    if validator == "pattern" and path and path[-1] == "name":
        return [at(f"invalid pipeline name {error.instance!r}",
                   hint="use letters, digits, '.', '_' and '-' (it names the run folder)")]
    return [at(error.message)]


def _explain_name(error: jsonschema.ValidationError, path: YamlPath, positions: Positions,
                  file: str | None) -> Problem:
    """A key of a mapping that is not a valid name (the key itself is ``error.instance``)."""
    bad = error.instance
    rule = (
        "group names use letters, digits, '.', '_' and '-'" if path and path[-1] == "jobs"
        else "names of variables and axes are identifiers (letters, digits and '_', not "
        "starting with a digit)"
    )
    return Problem(f"invalid name {bad!r}: {rule}", file=file,
                   line=positions.key_line((*path, bad)), field=_dotted((*path, bad)))


def _article(noun: str) -> str:
    nouns = {"object": "a mapping", "array": "a list", "integer": "an integer", "string": "a string"}
    return nouns.get(noun, f"a {noun}")


def _unknown_hint(key: str, known: Sequence[str]) -> str:
    suggestion = did_you_mean(key, known)
    if suggestion:
        return suggestion
    if key in {"text", "prompt", "image_size", "seed"}:
        return f"model inputs go under `input:` (input.{key})"
    return f"known keys: {', '.join(known)}"


def _required_hint(key: str) -> str:
    examples = {"version": "add `version: 1` at the top", "name": "add `name: my-pipeline`"}
    return examples.get(key, f"add `{key}:`")


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in problems:
        key = (p.line, p.field, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# --- building the data classes -----------------------------------------------------------------


def _matrix(data: Any, path: YamlPath, dropped: Iterable[YamlPath] = ()) -> Matrix:
    if not isinstance(data, dict):
        return Matrix()
    axes = {k: tuple(v) for k, v in data.items() if k not in ("include", "exclude")}
    return Matrix(
        axes=axes,
        include=tuple(data.get("include") or ()),
        exclude=tuple(data.get("exclude") or ()),
        path=path,
        empty=frozenset(p[-1] for p in dropped if p[:-1] == path),
    )


def seeds_valid(data: Any) -> bool:
    """Whether ``data`` is a value the pipeline format accepts for ``seeds``."""
    schema = pipeline_schema()["$defs"]["seeds"]
    return data is not None and jsonschema.Draft202012Validator(schema).is_valid(data)


def seeds_of(data: Any, base: Any = None, path: YamlPath | None = None) -> Seeds:
    """The :class:`Seeds` a valid ``seeds`` value stands for (a list, or start/count/step)."""
    return _seeds(data, base, path)


def _seeds(data: Any, base: Any, path: YamlPath | None) -> Seeds:
    if isinstance(data, list):
        return Seeds(values=tuple(data), base=base, path=path)
    if isinstance(data, dict):
        start, count, step = data["start"], data["count"], data.get("step", 1)
        return Seeds(values=range(start, start + count * step, step), base=base, path=path)
    return Seeds(values=None, base=base, path=path)


def _group(name: str | None, top: Mapping[str, Any], own: Mapping[str, Any],
           dropped: Iterable[YamlPath] = ()) -> Group:
    """A group with the top level inherited: vars/input merged per key, the rest replaced."""
    prefix: YamlPath = ("jobs", name) if name is not None else ()
    origins: dict[str, YamlPath] = {}

    def merged(key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for source, base in ((top, ()), (own, prefix)):
            for k, v in (source.get(key) or {}).items():
                out[k] = v
                origins[f"{key}.{k}"] = (*base, key, k)
        return out

    def pick(key: str) -> Any:
        if name is not None and key in own:
            origins[key] = (*prefix, key)
            return own[key]
        if key in top:
            origins[key] = (key,)
            return top[key]
        return None

    vars_, input_ = merged("vars"), merged("input")
    matrix_data, seeds_data, seed_base = pick("matrix"), pick("seeds"), pick("seed_base")
    return Group(
        name=name,
        model=pick("model"),
        vars=vars_,
        input=input_,
        matrix=_matrix(matrix_data, origins.get("matrix", ("matrix",)), dropped),
        seeds=_seeds(seeds_data, seed_base, origins.get("seeds")),
        job_name=pick("job_name"),
        description=own.get("description") if name is not None else top.get("description"),
        origins=origins,
    )


def _semantic_problems(
    data: Mapping[str, Any], positions: Positions, file: str | None
) -> tuple[list[Problem], list[Problem]]:
    """Checks the schema cannot express: a model for every group, include/exclude keys.

    Returns the problems that stop planning, then those that do not (an exclude entry that
    names no axis excludes nothing; the jobs can still be checked).
    """
    problems: list[Problem] = []
    tolerable: list[Problem] = []
    groups = data.get("jobs") or {}
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        return problems, tolerable  # the schema check reports it
    if "model" not in data and (not groups or any("model" not in g for g in groups.values())):
        missing = [f"jobs.{n}" for n, g in groups.items() if "model" not in g] or ["pipeline"]
        problems.append(Problem(
            f"no model given for {', '.join(missing)}",
            file=file, line=positions.line(("jobs",) if groups else ()), field="model",
            hint="add `model: bytedance/seedream-4-0/sequential` at the top (or in each group)",
        ))
    for prefix, own in [((), data), *((("jobs", n), g) for n, g in groups.items())]:
        matrix = own.get("matrix")
        if not isinstance(matrix, dict) or not isinstance(matrix.get("exclude") or [], list):
            continue
        axes = [k for k in matrix if k not in ("include", "exclude")]
        for i, entry in enumerate(matrix.get("exclude") or []):
            if not isinstance(entry, dict):
                continue
            for key in entry:
                if key not in axes and not _names_a_zipped_key(matrix, key):
                    hint = did_you_mean(key, axes) or f"axes: {', '.join(axes) or '(none)'}"
                    path = (*prefix, "matrix", "exclude", i, key)
                    tolerable.append(Problem(
                        f"exclude names '{key}', which is not an axis of the matrix",
                        file=file, line=positions.key_line(path), field=_dotted(path), hint=hint,
                    ))
    return problems, tolerable


def _names_a_zipped_key(matrix: Mapping[str, Any], key: str) -> bool:
    for name, values in matrix.items():
        if name in ("include", "exclude") or not isinstance(values, list):
            continue
        if any(isinstance(v, dict) and key in v for v in values):
            return True
    return False


# --- entry points ------------------------------------------------------------------------------


def parse_pipeline(text: str, path: str | None = None) -> Pipeline:
    """Parse a pipeline from its text; raise :class:`PipelineError` with every problem found."""
    data, positions, problems = _parse_yaml(text, path)
    if data is None and not problems:
        problems.append(Problem("the pipeline is empty", file=path, line=1,
                                hint="start from `seedflow init NAME`"))
    if data is None:
        raise PipelineError(problems, file=path)
    if not isinstance(data, dict):
        raise PipelineError([*problems, Problem(
            f"a pipeline is a mapping of keys (version, name, model, input, ...), not a "
            f"{type(data).__name__}", file=path, line=1, hint="start from `seedflow init NAME`",
        )], file=path)
    # Duplicate keys, unknown keys and excludes of no axis do not stop the reading: the
    # pipeline is still planned so that every problem of the file is reported at once.
    structural, unknown = _schema_problems(data, positions, path)
    fatal, tolerable = _semantic_problems(data, positions, path)
    problems = sorted(problems + structural + tolerable, key=_by_position)
    if unknown is None or fatal:
        raise PipelineError(sorted(problems + fatal, key=_by_position), file=path)
    _drop(data, unknown)
    groups = data.get("jobs")
    built = (
        tuple(_group(name, data, own, unknown) for name, own in groups.items())
        if groups
        else (_group(None, data, data, unknown),)
    )
    return Pipeline(
        path=path,
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        name=data["name"],
        version=data["version"],
        groups=built,
        positions=positions,
        description=data.get("description"),
        data=data,
        problems=tuple(problems),
    )


def _by_position(problem: Problem) -> tuple[int, int]:
    return problem.line or 0, problem.column or 0


def read_text(path: str | os.PathLike[str]) -> str:
    """A pipeline file's text; a file that is not UTF-8 is an error that names the line."""
    text, problems = _read(path)
    if problems:
        raise PipelineError(problems, file=str(path))
    return text


def _read(path: str | os.PathLike[str]) -> tuple[str, list[Problem]]:
    """The text of a file, and a problem if it is not UTF-8 (then bad bytes read as U+FFFD,
    so the rest of the file can still be checked)."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{file}: no such file", hint="check the path (recipes live in pipelines/)") from None
    except OSError as exc:
        raise UsageError(f"{file}: cannot read the file: {exc.strerror or exc}") from None
    problems = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.append(Problem(
            f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            file=file, line=line, column=column,
            hint="save the file as UTF-8 (most editors: 'Save with encoding')",
        ))
        text = raw.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff"), problems  # a UTF-8 byte order mark is harmless


def load_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """Read and parse a pipeline file (see :func:`parse_pipeline`).

    A file that is not UTF-8 is still read (so its other problems are found too); the
    encoding problem is one of :attr:`Pipeline.problems`, which makes planning fail.
    """
    text, problems = _read(path)
    try:
        pipeline = parse_pipeline(text, str(path))
    except PipelineError as exc:
        if not problems:
            raise
        raise PipelineError([*problems, *exc.problems], file=str(path)) from None
    return replace(pipeline, problems=(*problems, *pipeline.problems)) if problems else pipeline




_STARTER = """{comment}
# A seedflow pipeline. Reference: docs/pipeline-format.md
# Check it:  seedflow validate {file}     Plan it:  seedflow plan {file}
version: 1
name: {name}
model: bytedance/seedream-4-0/sequential   # `seedflow schema MODEL` lists its input fields

# Variables every template can use.
vars:
  subject: a lighthouse on a cliff

# The model input. Every string is a Jinja2 template; a value that is exactly one
# {{{{ expression }}}} keeps its type (so the count below is an integer).
# Seedream's rule: the prompt must say how many images, and that number must equal
# sequential_image_generation_options (the price follows that field).
input:
  text: "Generate {{{{ count }}}} images of {{{{ subject }}}} at {{{{ time }}}}, cinematic light."
  sequential_image_generation_options: "{{{{ count }}}}"
  image_size: "{{{{ size }}}}"

# The sweep: every combination of the axes becomes a job (include/exclude work as in
# GitHub Actions).
matrix:
  time: [dawn, dusk]
  size: ["2560:1440 (16:9)", "2048:2048 (1:1)"]
  count: [3]

# Every job runs once per seed; leave seeds out to get one seed per job derived from the name.
seeds: [1]

job_name: "{{{{ time }}}}-{{{{ size | slug }}}}-s{{{{ seed }}}}"
"""


def starter_pipeline(name: str) -> str:
    """The text of a commented starter pipeline called ``name`` (it validates as is)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or len(name) > 100:
        raise UsageError(f"invalid pipeline name {name!r}",
                         hint="use letters, digits, '.', '_' and '-' (it names the run folder)")
    return _STARTER.format(
        comment=installed_schema_comment(), name=name, file=f"pipelines/{name}.yaml"
    )

