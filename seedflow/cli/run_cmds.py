"""CLI commands: run, resume, runs, status.

Thin wrappers: planning, guards and running live in :mod:`seedflow.executor`
(``run_pipeline``, ``resume_run``) and :mod:`seedflow.store` (``list_runs``, ``find_run``).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..executor import (
    CONFIRM_COST,
    CONFIRM_IMAGES,
    DEFAULT_CONCURRENCY,
    RunEvent,
    RunSummary,
    resume_run,
    run_pipeline,
)
from ..plan import check_limits
from ..progress import Progress, choose_mode
from ..store import RunStore, find_run, list_runs
from .options import base_url_option

_OUT_HELP = "Root folder of runs (runs live in DIR/<pipeline name>/<run id>/)."


def _echo(text: str) -> None:
    click.echo(text, err=True)


def _parse_sets(values: tuple[str, ...]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set place=forest")
        overrides[key.strip()] = value
    return overrides


def _progress_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--json", "json_lines", is_flag=True,
                        help="Print one JSON event per line on stdout instead of progress.")(func)  # fmt: skip
    func = click.option("--quiet", "-q", is_flag=True, help="No progress display.")(func)
    func = click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY,
                        show_default=True, help="Jobs in flight at once.")(func)  # fmt: skip
    func = click.option("--max-rps", type=click.FloatRange(min=0.1), default=None, metavar="N",
                        help="Cap on API requests per second (default: the client's, 20).")(func)  # fmt: skip
    func = click.option("--report", "live_report", is_flag=True,
                        help="Keep report.html in the run folder current while the run goes on "
                        "(open it in a browser: it fills in as images arrive).")(func)  # fmt: skip
    return func


def _with_live_report(
    on_event: Callable[[RunEvent], None], live_report: bool
) -> tuple[Callable[[RunEvent], None], Any]:
    """Chain a LiveReport after the progress callback when --report is given."""
    if not live_report:
        return on_event, None
    from ..report import LiveReport

    live = LiveReport(chain=on_event)
    return live, live


def _report_errors(live: Any) -> None:
    if live is None:
        return
    if live.page is not None:
        _echo(f"report: {live.page}")
    for error in live.errors:
        _echo(f"warning: the live report could not be written: {error}")


def _display(
    quiet: bool, json_lines: bool, secret: str | None
) -> tuple[Progress, Callable[[RunEvent], None]]:
    """The progress display, and an event callback that also prints what must always show."""
    if quiet and json_lines:
        raise UsageError("--quiet and --json cannot be used together")
    mode = choose_mode(quiet=quiet, json_lines=json_lines, stream=sys.stderr)
    progress = Progress(mode, secret=secret)

    def on_event(event: RunEvent) -> None:
        if event.kind == "run_started" and mode != "json":
            _echo(f"run folder: {event.message}")
        progress(event)
        # Ctrl-C must be acknowledged even when progress is off
        if event.kind == "stopping" and mode == "quiet":
            _echo(event.message or "stopping")

    return progress, on_event


def _report(summary: RunSummary, *, json_lines: bool) -> None:
    """The end-of-run summary: failures with reasons, then where the run is."""
    if json_lines:
        return  # the run_finished event carries the summary
    for label, items in (
        ("failed", summary.failures),
        ("partial", summary.partial),
        ("not finished", summary.unfinished),
    ):
        if items:
            _echo(f"{len(items)} job(s) {label}:")
            for item in items[:50]:
                reason = f": {item.error}" if item.error else ""
                _echo(f"  {item.name} [{item.state}]{reason}")
            if len(items) > 50:
                _echo(f"  ... and {len(items) - 50} more (see manifest.json)")
    states = ", ".join(f"{n} {s}" for s, n in sorted(summary.by_state.items()))
    _echo(f"{states}; {summary.images} images")
    if summary.stop_reason:
        _echo(f"stopped: {summary.stop_reason}")
    _echo(f"run folder: {summary.path}")
    if not summary.ok:
        unknown = [f for f in summary.failures if f.state == "unknown"]
        hint = f"seedflow resume {summary.path}"
        if any(f.state == "failed" for f in summary.failures):
            hint += " [--retry-failed]"
        if unknown:
            hint += " [--resend-unknown]"
        _echo(f"to continue: {hint}")
        if unknown:
            _echo(
                f"{len(unknown)} job(s) have an unknown submit outcome: they may have been "
                "accepted and billed; --resend-unknown sends them again"
            )


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _check_base_url(base_url: str | None) -> None:
    """An empty --base-url is a mistake (an unset variable in a script), not "the default"."""
    if base_url is not None and not base_url.strip():
        raise UsageError(
            "--base-url is empty",
            hint="give the API's address (e.g. http://127.0.0.1:8000 for `seedflow emulator`),"
            " or leave the option out to use RUNCOMFY_BASE_URL or RunComfy's own",
        )


def _confirm_resume(
    run: str, out: str, *, yes: bool, retry_failed: bool, resend_unknown: bool,
    base_url: str | None,
) -> None:  # fmt: skip
    """Ask before a resume that would send a large amount of work, as `run` does."""
    if yes or not _stdin_is_terminal():
        return
    with RunStore.open(find_run(run, out), readonly=True) as store:
        meta, jobs = store.meta, store.jobs()
    if meta.get("offline") and base_url is None:
        return  # resumes against the built-in emulator: nothing is paid
    to_send = {"pending"} | ({"failed"} if retry_failed else set())
    if resend_unknown:
        to_send |= {"unknown", "submitting"}
    sent = [j for j in jobs if j.state in to_send and not (j.state == "pending" and j.request_id)]
    images = sum(j.images_requested for j in sent)
    total = sum(j.images_requested for j in jobs) or 1
    cost = float(meta.get("estimated_cost") or 0.0) * images / total
    if cost < CONFIRM_COST and images < CONFIRM_IMAGES:
        return
    question = (
        f"Resuming sends {len(sent)} jobs for {images} images, estimated "
        f"{cost:.2f} {meta.get('currency', 'USD')}. Continue?"
    )
    if not click.confirm(question, default=False, err=True):
        raise UsageError("not confirmed; nothing was sent", hint="pass --yes to skip this question")


def _confirm_large(plan: Any, *, yes: bool, offline: bool) -> None:
    large = plan.estimated_cost >= CONFIRM_COST or plan.total_images >= CONFIRM_IMAGES
    if yes or offline or not large or not _stdin_is_terminal():
        return
    question = (
        f"This run sends {len(plan.jobs)} jobs for {plan.total_images} images, estimated "
        f"{plan.estimated_cost:.2f} {plan.currency}. Continue?"
    )
    if not click.confirm(question, default=False, err=True):
        raise UsageError("not confirmed; nothing was sent", hint="pass --yes to skip this question")


@click.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help=_OUT_HELP)  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a pipeline variable (repeatable).")  # fmt: skip
@click.option("--only", "only", multiple=True, metavar="SELECTOR",
              help="Run only the jobs with this id, id prefix (6+ characters) or name "
              "(repeatable); they keep the ids they have in the whole plan.")  # fmt: skip
@click.option("--max-images", type=click.IntRange(min=0), default=None,
              help="Refuse to start if the plan asks for more images.")  # fmt: skip
@click.option("--max-cost", type=click.FloatRange(min=0), default=None,
              help="Refuse to start if the estimated cost is higher.")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a large run.")
@click.option("--offline", is_flag=True,
              help="Run against the built-in emulator on loopback (no token needed).")  # fmt: skip
@click.option("--reuse", is_flag=True,
              help="Take outputs of identical jobs from earlier completed runs under --out.")  # fmt: skip
@_progress_options
@base_url_option
def run_command(
    pipeline: Path, out: str, sets: tuple[str, ...], only: tuple[str, ...], max_images: int | None,
    max_cost: float | None, yes: bool, offline: bool, reuse: bool, concurrency: int,
    max_rps: float | None, live_report: bool, quiet: bool, json_lines: bool,
    base_url: str | None,
) -> None:  # fmt: skip
    """Run a pipeline: plan it, send every job, download every image, write a manifest.

    \b
    Examples:
      seedflow run pipelines/sunset-study.yaml --offline
      seedflow run pipelines/sunset-study.yaml --set place=forest --max-cost 2
      seedflow run pipelines/sunset-study.yaml --only stormy-2560-1440-16-9-s1 --offline
    """
    from ..client import resolve_token
    from ..plan import plan_file

    _check_base_url(base_url)
    if offline and base_url:
        raise UsageError("--offline and --base-url cannot be used together")
    plan = plan_file(pipeline, overrides=_parse_sets(sets), only=list(only) or None)
    for warning in plan.warnings:
        _echo(warning.format())
    check_limits(plan, max_images=max_images, max_cost=max_cost)
    _confirm_large(plan, yes=yes, offline=offline)
    progress, on_event = _display(quiet, json_lines, resolve_token())
    on_event, live = _with_live_report(on_event, live_report)
    with progress:
        summary = run_pipeline(
            plan, out=out, concurrency=concurrency, base_url=base_url, offline=offline,
            reuse=reuse, on_event=on_event, handle_signals=True, max_requests_per_second=max_rps,
        )  # fmt: skip
    _report(summary, json_lines=json_lines)
    _report_errors(live)
    sys.exit(summary.exit_code)


@click.command("resume")
@click.argument("run")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where to look up a run id.")  # fmt: skip
@click.option("--retry-failed", is_flag=True, help="Submit failed jobs again.")
@click.option("--resend-unknown", is_flag=True,
              help="Submit again jobs whose first submit's outcome is unknown (may pay twice).")  # fmt: skip
@click.option("--reuse", is_flag=True,
              help="Take outputs of identical jobs from earlier completed runs.")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="Do not ask before sending a large amount of work.")
@_progress_options
@base_url_option
def resume_command(
    run: str, out: str, retry_failed: bool, resend_unknown: bool, reuse: bool, yes: bool,
    concurrency: int,
    max_rps: float | None, live_report: bool, quiet: bool, json_lines: bool,
    base_url: str | None,
) -> None:  # fmt: skip
    """Continue an interrupted run (a run folder or run id).

    Jobs already accepted are polled, never sent again; missing images are downloaded; jobs
    never sent are sent.

    \b
    Examples:
      seedflow resume runs/sunset-study/20261125T170000Z-3f9a
      seedflow resume 20261125T170000Z-3f9a --retry-failed
    """
    from ..client import resolve_token

    _check_base_url(base_url)
    _confirm_resume(
        run, out, yes=yes, retry_failed=retry_failed, resend_unknown=resend_unknown,
        base_url=base_url,
    )  # fmt: skip
    progress, on_event = _display(quiet, json_lines, resolve_token())
    on_event, live = _with_live_report(on_event, live_report)
    with progress:
        summary = resume_run(
            run, root=out, retry_failed=retry_failed, resend_unknown=resend_unknown,
            concurrency=concurrency, base_url=base_url, reuse=reuse, on_event=on_event,
            handle_signals=True, max_requests_per_second=max_rps,
        )  # fmt: skip
    _report(summary, json_lines=json_lines)
    _report_errors(live)
    sys.exit(summary.exit_code)


@click.command("runs")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help=_OUT_HELP)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def runs_command(out: str, as_json: bool) -> None:
    """List the runs under --out, oldest first.

    \b
    Example:
      seedflow runs --out runs
    """
    infos = list_runs(out)
    if as_json:
        click.echo(json.dumps([
            {"run_id": i.run_id, "path": str(i.path), "pipeline": i.pipeline, "status": i.status,
             "started_at": i.started_at, "ended_at": i.ended_at, "jobs": i.jobs,
             "by_state": i.by_state, "images": i.images}
            for i in infos
        ], indent=2))  # fmt: skip
        return
    if not infos:
        _echo(f"no runs under {out}")
        return
    click.echo(f"{'RUN ID':<24} {'PIPELINE':<20} {'STATUS':<20} {'DONE':>9} {'IMAGES':>7}  STARTED")
    for i in infos:
        done = sum(i.by_state.get(s, 0) for s in ("completed", "partial", "reused"))
        click.echo(
            f"{i.run_id:<24} {i.pipeline[:20]:<20} {i.status:<20} {f'{done}/{i.jobs}':>9} "
            f"{i.images:>7}  {i.started_at or ''}"
        )
    interrupted = [i for i in infos if i.status == "interrupted"]
    if interrupted:
        _echo(
            f"{len(interrupted)} run(s) interrupted (no seedflow process drives them): "
            "continue one with `seedflow resume RUN`, e.g. seedflow resume "
            + interrupted[-1].run_id
            + ("" if out == "runs" else f" --out {shlex.quote(out)}")
        )


@click.command("status")
@click.argument("run")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where to look up a run id.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the manifest's summary as JSON.")
def status_command(run: str, out: str, as_json: bool) -> None:
    """Summarise one run (a run folder or run id).

    \b
    Example:
      seedflow status 20261125T170000Z-3f9a
    """
    with RunStore.open(find_run(run, out), readonly=True) as store:
        manifest = store.manifest()
        # the journal says "running" until the run ends; only the lock tells a live run from
        # one that was killed, crashed or stopped at once
        manifest["status"] = store.live_status(manifest["totals"]["by_state"])
        path = store.path
    problems = [
        j for j in manifest["jobs"] if j["state"] in ("failed", "unknown", "cancelled", "partial")
    ]
    if as_json:
        keys = ("run_id", "status", "stop_reason", "started_at", "ended_at", "base_url", "totals")
        data = {k: manifest[k] for k in keys}
        data["path"] = str(path)
        data["problems"] = [
            {"job": j["name"], "state": j["state"], "error": j["error"]} for j in problems
        ]
        click.echo(json.dumps(data, indent=2))
        return
    totals = manifest["totals"]
    states = ", ".join(f"{n} {s}" for s, n in sorted(totals["by_state"].items()))
    lines = [
        f"run:       {manifest['run_id']}",
        f"folder:    {path}",
        f"pipeline:  {manifest['pipeline']['name']} ({manifest['pipeline']['path']})",
        f"api:       {manifest['base_url']}",
        f"started:   {manifest['started_at']}",
        f"ended:     {manifest['ended_at'] or '-'}",
        f"status:    {manifest['status']}"
        + (f" ({manifest['stop_reason']})" if manifest["stop_reason"] else ""),
        f"jobs:      {totals['jobs']} ({states})",
        f"images:    {totals['images']} of {totals['images_requested']} requested",
        f"estimate:  {totals['estimated_cost']:.2f} {totals['currency']}",
    ]
    click.echo("\n".join(lines))
    for job in problems:
        click.echo(f"  {job['name']} [{job['state']}]: {job['error'] or ''}")
    if manifest["status"] == "interrupted":
        _echo(f"interrupted: no seedflow process drives this run; continue with: "
              f"seedflow resume {shlex.quote(str(path))}")  # fmt: skip


commands: list[click.Command] = [run_command, resume_command, runs_command, status_command]
