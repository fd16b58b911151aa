"""CLI commands: validate, plan, init, models, schema.

Thin: each command parses its options and calls :mod:`seedflow.plan`, :mod:`seedflow.pipeline`
or :mod:`seedflow.models`; errors are :class:`~seedflow.errors.SeedflowError` s that the group
prints without a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import Problem, SeedflowError, UsageError
from ..models import ModelSpec, get_model, list_models, schema_path
from ..pipeline import starter_pipeline
from ..plan import (
    DEFAULT_MAX_JOBS,
    Plan,
    Totals,
    check_limits,
    iter_jobs,
    plan_file,
    plan_locked,
    write_lock,
)

_set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a matrix axis, a var, input.FIELD, seeds or seed_base for this run "
    "(value read as YAML: --set count=4, --set 'mood=[calm, stormy]'). Repeatable.",
)
_max_jobs_option = click.option(
    "--max-jobs", type=click.IntRange(min=1), default=DEFAULT_MAX_JOBS, show_default=True,
    help="Refuse a sweep with more jobs than this.",
)


def _echo_warnings(problems: Iterable[Problem]) -> None:
    for problem in problems:
        click.echo(problem.format(), err=True)


# --- validate ----------------------------------------------------------------------------------


@click.command()
@click.argument("pipelines", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_set_option
@_max_jobs_option
@click.option("--locked", is_flag=True, help="Also fail if the pipeline no longer expands to its lock file "
              "(planned with the --set values recorded in the lock; any --set given applies after them).")
def validate(pipelines: Sequence[str], overrides: Sequence[str], max_jobs: int, locked: bool) -> None:
    """Check pipelines without sending anything: structure, templates, model schema, count rule.

    \b
    Every problem is reported (file:line, job, field, fix); exit status 1 if any is an error.
    Example:
      seedflow validate pipelines/*.yaml
    """
    failed = 0
    for path in pipelines:
        try:
            if locked:
                plan = plan_locked(path, overrides=list(overrides), max_jobs=max_jobs)
            else:
                plan = plan_file(path, overrides=list(overrides), max_jobs=max_jobs)
            _echo_warnings(plan.warnings)
        except SeedflowError as exc:
            if len(pipelines) == 1:
                raise
            click.echo(f"error: {exc.format_message()}", err=True)  # and go on with the next file
            failed += 1
            continue
        click.echo(f"{path}: ok, {_summary(plan.totals())}" + (", matches its lock file" if locked else "")
                   + _with_sets(plan.overrides))
    if failed:
        raise click.exceptions.Exit(1)


def _with_sets(overrides: Mapping[str, Any]) -> str:
    if not overrides:
        return ""
    shown = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in overrides.items())
    return f" (--set {shown})"


def _summary(totals: Totals) -> str:
    jobs = "job" if totals.jobs == 1 else "jobs"
    return (f"{totals.jobs} {jobs}, {totals.images} images, "
            f"estimated {totals.estimated_cost:.2f} {totals.currency}")


# --- plan --------------------------------------------------------------------------------------


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@_set_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl"]), default="table",
              show_default=True, help="table for people; json (the whole plan) or jsonl (one job "
              "per line, streamed) for machines.")
@_max_jobs_option
@click.option("--max-images", type=click.IntRange(min=0), default=None, help="Refuse a plan with more images.")
@click.option("--max-cost", type=click.FloatRange(min=0), default=None,
              help="Refuse a plan whose estimated cost is higher.")
@click.option("--lock", is_flag=True, help="Write <pipeline>.lock.json beside the pipeline.")
@click.option("--only", "only", multiple=True, metavar="SELECTOR",
              help="Keep only the jobs with this id, id prefix (6+ characters) or name; the whole "
              "pipeline is still checked. Repeatable.")
def plan(
    pipeline: str,
    overrides: Sequence[str],
    fmt: str,
    max_jobs: int,
    max_images: int | None,
    max_cost: float | None,
    lock: bool,
    only: Sequence[str],
) -> None:
    """Expand a pipeline into jobs and show them with totals (nothing is sent).

    \b
    Examples:
      seedflow plan pipelines/sunset-study.yaml
      seedflow plan pipelines/sunset-study.yaml --set mood=stormy --format json
      seedflow plan pipelines/sunset-study.yaml --lock
      seedflow plan pipelines/sunset-study.yaml --only stormy-2560-1440-16-9-s1
    """
    if lock and only:
        raise UsageError("a lock file records the whole plan: use --lock without --only")
    if fmt == "jsonl":
        if lock:
            raise UsageError("--lock needs the whole plan: use it with --format table or json")
        _stream_jsonl(pipeline, overrides, max_jobs, max_images, max_cost, only)
        return
    result = plan_file(pipeline, overrides=list(overrides), max_jobs=max_jobs, only=list(only))
    check_limits(result.totals(), max_images=max_images, max_cost=max_cost)
    _echo_warnings(result.warnings)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        _print_table(result)
    if lock:
        path = write_lock(result)
        click.echo(f"wrote {path}", err=fmt == "json")


def _stream_jsonl(
    pipeline: str, overrides: Sequence[str], max_jobs: int, max_images: int | None, max_cost: float | None,
    only: Sequence[str] = (),
) -> None:
    """One job per line, in constant memory.

    A first pass checks the whole pipeline (and the limits) without printing or keeping
    anything, so an invalid or refused plan prints no job at all; the second pass prints.
    """
    checking = iter_jobs(pipeline, overrides=list(overrides), max_jobs=max_jobs, only=list(only))
    totals = Totals.of(checking.jobs())
    _echo_warnings(checking.warnings)
    checking.raise_for_errors()
    check_limits(totals, max_images=max_images, max_cost=max_cost)
    planner = iter_jobs(checking.pipeline, overrides=None, max_jobs=max_jobs, only=list(only))
    write = sys.stdout.write
    dumps = json.JSONEncoder(ensure_ascii=False, default=str).encode
    for job in planner.jobs():
        write(dumps(job.to_dict()))
        write("\n")
    sys.stdout.flush()
    planner.raise_for_errors()


def _print_table(result: Plan) -> None:
    axes = [a for a in result.axes if a != "seed"]
    grouped = any(j.group for j in result.jobs)
    rows = [("#", *(["group"] if grouped else []), "job", "variables", "images", "seed")]
    for job in result.jobs:
        shown = " ".join(f"{a}={_short(job.variables[a])}" for a in axes if a in job.variables)
        group = [job.group or ""] if grouped else []
        rows.append((str(job.index), *group, job.name, shown, str(job.images), str(job.seed)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {0, len(widths) - 2, len(widths) - 1}
    for row in rows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        click.echo("  ".join(cells).rstrip())
    totals = result.totals()
    click.echo(f"\n{result.pipeline_name}: {_summary(totals)}")
    models = {get_model(j.model).price_note for j in result.jobs}
    for note in sorted(n for n in models if n):
        click.echo(f"  ({note})")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# --- init --------------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default="pipelines",
              show_default=True, help="Where to write NAME.yaml.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(name: str, directory: str, force: bool) -> None:
    """Write a commented starter pipeline NAME.yaml that validates (NAME may end in .yaml or .yml).

    \b
    Example:
      seedflow init product-shots && seedflow plan pipelines/product-shots.yaml
    """
    # `seedflow init x.yaml` means the file x.yaml, not x.yaml.yaml
    stem, suffix = (name[:-5], ".yaml") if name.endswith(".yaml") else (
        (name[:-4], ".yml") if name.endswith(".yml") else (name, ".yaml"))
    text = starter_pipeline(stem)
    path = Path(directory) / f"{stem}{suffix}"
    if path.exists() and not force:
        raise UsageError(f"{path} exists", hint="choose another NAME, or pass --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}",
                         hint="choose a folder you can write to with --dir") from None
    click.echo(f"wrote {path}; next: seedflow plan {path}")


# --- models and schema -------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models(as_json: bool) -> None:
    """List the bundled models: id, price estimate and input fields.

    \b
    Example:
      seedflow models
    """
    specs = list_models()
    if as_json:
        data = [{"model": s.model_id, "title": s.title, "price_per_image": s.price_per_image,
                 "currency": s.currency, "fields": list(s.properties)} for s in specs]
        click.echo(json.dumps(data, indent=2))
        return
    for spec in specs:
        click.echo(f"{spec.model_id}  {spec.title}")
        click.echo(f"  price: ~{spec.price_per_image} {spec.currency} per image ({spec.price_note})")
        click.echo(f"  fields: {', '.join(spec.properties)}")
        click.echo(f"  details: seedflow schema {spec.model_id}")


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the input JSON Schema itself.")
def schema(model: str, as_json: bool) -> None:
    """Show a model's input fields: type, allowed values, default, whether required.

    \b
    Example:
      seedflow schema bytedance/seedream-4-0/sequential
    """
    spec = get_model(model)
    if as_json:
        click.echo(json.dumps(spec.input_schema, indent=2, ensure_ascii=False))
        return
    click.echo(f"{spec.model_id}  {spec.title}")
    click.echo(f"input schema: {schema_path(spec.files[1])}" if len(spec.files) > 1 else "")
    for line in describe_fields(spec):
        click.echo(line)


def describe_fields(spec: ModelSpec) -> list[str]:
    """One block of text per input field of ``spec``."""
    required = set(spec.input_schema.get("required", []))
    roles = {spec.prompt_field: "the prompt", spec.count_field: "the image count (billed)",
             spec.seed_field: "the seed (seedflow fills it in)", spec.size_field: "the image size"}
    lines = []
    for name, sub in spec.properties.items():
        kind = sub.get("type", "any")
        head = f"\n{name}  ({kind}{', required' if name in required else ''})"
        if name in roles:
            head += f"  - {roles[name]}"
        lines.append(head)
        if sub.get("description"):
            lines.append(f"  {sub['description']}")
        if "enum" in sub:
            lines.append("  allowed: " + ", ".join(json.dumps(v, ensure_ascii=False) for v in sub["enum"]))
        for key in ("minimum", "maximum", "minLength", "maxLength"):
            if key in sub:
                lines.append(f"  {key}: {sub[key]}")
        if "default" in sub:
            lines.append(f"  default: {json.dumps(sub['default'], ensure_ascii=False)}")
    return lines


commands: list[click.Command] = [validate, plan, init, models, schema]
