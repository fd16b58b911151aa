"""Reports of a run: a grid of its images laid out by two sweep axes.

Data flows one way: ``manifest.json`` → :func:`build_grid` (pure layout, no I/O) →
:func:`make_thumbnails` (Pillow, cached by sha256 in ``thumbs/``) → :func:`render_html` /
:func:`write_sheet`. :func:`write_report` does all of it for a run folder and is cheap enough to
call after every finished job, so a page can fill in while a run goes on.

Every link the page holds is relative to the run folder, so the folder can be zipped and mailed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import jinja2
import jsonschema

from .errors import RunError, UsageError
from .models import load_bundled_schema

__all__ = [
    "REPORT_NAME",
    "THUMBS_DIR",
    "Cell",
    "Entry",
    "Grid",
    "LiveReport",
    "Page",
    "Tile",
    "build_grid",
    "default_axes",
    "find_run_dir",
    "load_manifest",
    "make_thumbnails",
    "render_html",
    "reproduce_command",
    "value_label",
    "write_report",
    "write_sheet",
]

REPORT_NAME = "report.html"
THUMBS_DIR = "thumbs"
MANIFEST_NAME = "manifest.json"
THUMB_SIZE = 320  # longest side in pixels: sharp at ~160 CSS px on a 2x screen
NO_VALUE = "—"  # label of a job that does not have the axis at all
SEED_AXIS = "seed"
JOB_AXIS = "job"  # pseudo axis used when a run has no sweep axis at all

# Cell statuses, in the order a legend lists them.
STATUSES = ("ok", "partial", "failed", "cancelled", "unknown", "missing", "waiting", "empty")
_WAITING_STATES = {"pending", "submitting", "queued", "running"}


# --------------------------------------------------------------------------- grid model


@dataclass(frozen=True)
class Tile:
    """One output slot of a job: an image that came back, or the reason it is not there."""

    index: int
    path: str | None  # relative to the run folder, POSIX
    status: str  # "ok" | "missing" (file not in the run folder) | "not_returned" | "unreadable"
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    url: str | None = None
    thumb: str | None = None  # relative path of the thumbnail, filled by make_thumbnails


@dataclass(frozen=True)
class Entry:
    """One job placed in a cell, with everything the detail view shows."""

    job: Mapping[str, Any]
    status: str  # one of STATUSES
    reason: str | None  # why the cell is not a plain success, for people
    tiles: tuple[Tile, ...]

    @property
    def id(self) -> str:
        return str(self.job.get("id", ""))

    @property
    def name(self) -> str:
        return str(self.job.get("name", ""))

    @property
    def label(self) -> str:
        """The word on the cell's badge: the job's own state while it waits or runs."""
        return str(self.job.get("state", "waiting")) if self.status == "waiting" else self.status


@dataclass(frozen=True)
class Cell:
    """The intersection of a column and a row: the jobs (normally one) with those values."""

    x: str  # value key (canonical JSON) of the column
    y: str
    entries: tuple[Entry, ...]

    @property
    def status(self) -> str:
        """The status shown for the cell: its worst entry's, or ``empty`` with no job."""
        if not self.entries:
            return "empty"
        return max((e.status for e in self.entries), key=_status_rank)


@dataclass(frozen=True)
class AxisValue:
    """A value of an axis: its key (canonical JSON) and its label for people."""

    key: str
    label: str
    note: str = ""  # values of axes that follow from this one, e.g. "count=4"


@dataclass(frozen=True)
class Page:
    """One grid: the jobs sharing a job group and the values of every axis not on x or y."""

    key: str
    title: str  # e.g. "style=oil · seed=7", "" when the run has a single page
    fixed: tuple[tuple[str, str], ...]  # (axis or "group", label) pairs shared by the page
    columns: tuple[AxisValue, ...]
    rows: tuple[AxisValue, ...]
    cells: tuple[tuple[Cell, ...], ...]  # cells[row][column]

    def entries(self) -> Iterable[Entry]:
        """Every job of the page, row by row."""
        for row in self.cells:
            for cell in row:
                yield from cell.entries


@dataclass(frozen=True)
class Grid:
    """The layout of a whole run: pages of rows × columns of cells."""

    x: str | None
    y: str | None
    page_axes: tuple[str, ...]
    pages: tuple[Page, ...]
    jobs: int = 0
    problems: tuple[str, ...] = field(default=())  # things the layout had to guess about

    def entries(self) -> Iterable[Entry]:
        for page in self.pages:
            yield from page.entries()

    def tiles(self) -> Iterable[Tile]:
        for entry in self.entries():
            yield from entry.tiles


def _status_rank(status: str) -> int:
    # Worse statuses win when several jobs share one cell.
    order = ("empty", "ok", "waiting", "partial", "missing", "unknown", "cancelled", "failed")
    return order.index(status) if status in order else len(order)


# --------------------------------------------------------------------------- values and axes


def value_key(value: Any) -> str:
    """A canonical, hashable key for a variable's value (JSON, keys sorted)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def value_label(value: Any) -> str:
    """How a value is written for people: strings bare, everything else as YAML would show it."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


_MISSING = object()


def _job_value(job: Mapping[str, Any], axis: str) -> Any:
    if axis == JOB_AXIS:
        return job.get("name")
    variables = job.get("variables") or {}
    if axis in variables:
        return variables[axis]
    if axis == SEED_AXIS and job.get("seed") is not None:
        return job["seed"]
    return _MISSING


def _axis_value(job: Mapping[str, Any], axis: str) -> AxisValue:
    value = _job_value(job, axis)
    if value is _MISSING:
        return AxisValue(key="\x00missing", label=NO_VALUE)
    return AxisValue(key=value_key(value), label=value_label(value))


def _available_axes(manifest: Mapping[str, Any]) -> list[str]:
    """Axes a grid can use: the manifest's sweep axes, then any variable that varies."""
    names = list((manifest.get("axes") or {}).keys())
    jobs = manifest.get("jobs") or []
    seen: dict[str, set[str]] = {}
    for job in jobs:
        for name, value in (job.get("variables") or {}).items():
            seen.setdefault(name, set()).add(value_key(value))
    for name, values in seen.items():
        if name not in names and len(values) > 1:
            names.append(name)
    if SEED_AXIS not in names and len({value_key(j.get("seed")) for j in jobs}) > 1:
        names.append(SEED_AXIS)
    return names


def _ranked_axes(manifest: Mapping[str, Any]) -> list[str]:
    """Sweep axes with more than one value, best grid axes first.

    Most values first (ties keep pipeline order); seeds last: a seed sweep is usually
    something to page through, a parameter sweep something to compare side by side.
    """
    axes: Mapping[str, Sequence[Any]] = manifest.get("axes") or {}
    varying = [a for a in axes if len(axes[a]) > 1]
    return sorted(varying, key=lambda a: (a == SEED_AXIS, -len(axes[a])))


def default_axes(manifest: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The x and y axes a report uses unless told: the two sweep axes with most values.

    An axis whose value follows from x (an ``include`` that ties a count to a size, the other
    keys of a zipped axis) would only add empty cells, so y is the best axis that does not.
    """
    ranked = _ranked_axes(manifest)
    jobs = manifest.get("jobs") or []
    if not ranked:
        return (JOB_AXIS if len(jobs) > 1 else None), None
    x = ranked[0]
    return x, _best_other(ranked, x, jobs)


def _best_other(ranked: Sequence[str], given: str, jobs: Sequence[Mapping[str, Any]]) -> str | None:
    return next((a for a in ranked if a != given and not _determined(a, (given,), jobs)), None)


def _determined(axis: str, by: Sequence[str], jobs: Sequence[Mapping[str, Any]]) -> bool:
    """True when the value of ``axis`` follows from the values of ``by`` in every job."""
    seen: dict[tuple[str, ...], str] = {}
    for job in jobs:
        key = tuple(_axis_value(job, name).key for name in by)
        value = _axis_value(job, axis).key
        if seen.setdefault(key, value) != value:
            return False
    return True


def _check_axis(name: str | None, option: str, available: Sequence[str]) -> None:
    if name is None or name == JOB_AXIS or name in available:
        return
    shown = ", ".join(available) if available else "none (every job has the same variables)"
    raise UsageError(
        f"{option} {name!r}: the run has no such axis",
        hint=f"axes of this run: {shown}",
    )


# --------------------------------------------------------------------------- cells


def _reason(job: Mapping[str, Any], status: str, tiles: Sequence[Tile]) -> str | None:
    state = job.get("state")
    error = job.get("error")
    if status == "ok":
        return None
    if status == "missing":
        gone = sum(1 for t in tiles if t.status in ("missing", "unreadable"))
        return f"{gone} of {len(tiles)} image file(s) missing from the run folder"
    if status == "partial":
        received = sum(1 for t in tiles if t.status != "not_returned")
        requested = job.get("images_requested")
        text = f"{received} of {requested} images came back"
        return f"{text}: {error}" if error and text not in error else (error or text)
    if status == "waiting":
        return {"pending": "not sent yet", "submitting": "being submitted",
                "queued": "in the queue", "running": "running"}.get(str(state), str(state))
    if status == "unknown":
        return error or "submit outcome unknown: it may have been accepted and billed"
    if status == "cancelled":
        return error or "cancelled"
    return error or str(state or "failed")


def _tiles(job: Mapping[str, Any], exists: Callable[[str], bool]) -> list[Tile]:
    tiles: list[Tile] = []
    for out in sorted(job.get("outputs") or [], key=lambda o: int(o.get("index", 0))):
        path = out.get("path")
        safe = _safe_relative(path)
        status = "ok" if safe is not None and exists(safe) else "missing"
        tiles.append(
            Tile(
                index=int(out.get("index", len(tiles))),
                path=safe,
                status=status,
                sha256=out.get("sha256"),
                bytes=out.get("bytes"),
                width=out.get("width"),
                height=out.get("height"),
                url=out.get("url"),
            )
        )
    return tiles


def _entry(job: Mapping[str, Any], exists: Callable[[str], bool]) -> Entry:
    """Place one job: its tiles in output order and the status its cell shows."""
    state = str(job.get("state", "pending"))
    tiles = _tiles(job, exists)
    requested = int(job.get("images_requested") or 0)
    if state in ("completed", "reused", "partial"):
        # Sequential outputs may be fewer than requested: keep a slot for each one that did
        # not come back so the grid stays aligned and the gap is visible.
        if state == "partial" or len(tiles) < requested:
            for i in range(len(tiles), requested):
                tiles.append(Tile(index=i, path=None, status="not_returned"))
        if any(t.status in ("missing", "unreadable") for t in tiles):
            status = "missing"
        elif any(t.status == "not_returned" for t in tiles) or state == "partial":
            status = "partial"
        else:
            status = "ok"
    elif state in _WAITING_STATES:
        status = "waiting"
    elif state == "unknown":
        status = "unknown"
    elif state == "cancelled":
        status = "cancelled"
    else:
        status = "failed"
    return Entry(job=job, status=status, reason=_reason(job, status, tiles), tiles=tuple(tiles))


def _safe_relative(path: Any) -> str | None:
    """``path`` if it stays inside the run folder, else None (never link outside it)."""
    if not isinstance(path, str) or not path or "\\" in path:
        return None
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or ":" in pure.parts[0]:
        return None
    return pure.as_posix()


# --------------------------------------------------------------------------- layout


def build_grid(
    manifest: Mapping[str, Any],
    *,
    x: str | None = None,
    y: str | None = None,
    exists: Callable[[str], bool] | None = None,
    plan_jobs: Sequence[Mapping[str, Any]] = (),
) -> Grid:
    """Lay out a run's jobs: columns by ``x``, rows by ``y``, a page per group of the rest.

    Pure: ``exists`` answers whether a relative output path is present (default: assume so).
    ``plan_jobs`` are jobs of the plan, so a job the manifest lacks still gets a cell, marked
    missing. Raises :class:`UsageError` for an axis the run does not have.
    """
    available = _available_axes(manifest)
    _check_axis(x, "--x", available)
    _check_axis(y, "--y", available)
    if x is not None and x == y:
        raise UsageError(f"--x and --y are both {x!r}", hint="choose two different axes")
    if x is None and y is None:
        x, y = default_axes(manifest)
    jobs = _all_jobs(manifest, plan_jobs)
    if (x is None) != (y is None):
        # One axis given: the best remaining sweep axis takes the other side.
        given = x or y
        assert given is not None
        other = _best_other(_ranked_axes(manifest), given, jobs)
        x, y = (x, other) if x is not None else (other, y)

    # Axes that follow from x and y would split nothing: they make no pages.
    on_grid = tuple(a for a in (x, y) if a is not None)
    page_axes = tuple(
        a for a in available if a not in on_grid and not _determined(a, on_grid, jobs)
    )
    check = exists or (lambda _path: True)

    pages: dict[str, list[tuple[Mapping[str, Any], Entry]]] = {}
    fixed_of: dict[str, tuple[tuple[str, str], ...]] = {}
    for job in jobs:
        fixed = _page_fixed(job, page_axes)
        key = value_key(fixed)
        pages.setdefault(key, []).append((job, _entry(job, check)))
        fixed_of[key] = fixed

    axes_values: Mapping[str, Sequence[Any]] = manifest.get("axes") or {}
    # Axes that follow from x (or y) alone are shown beside its labels, e.g. "count=4".
    hidden = [a for a in available if a not in on_grid and a not in page_axes]
    followers: dict[str | None, Sequence[str]] = {
        axis: [a for a in hidden if _determined(a, (axis,), jobs)] for axis in on_grid
    }
    built = tuple(
        _page(key, fixed_of[key], members, x, y, axes_values, followers)
        for key, members in pages.items()
    )
    problems = tuple(
        f"job {j.get('name')!r} is in the plan but not in the manifest"
        for j in jobs
        if j.get("state") == "__absent__"
    )
    return Grid(x=x, y=y, page_axes=page_axes, pages=built, jobs=len(jobs), problems=problems)


def _all_jobs(
    manifest: Mapping[str, Any], plan_jobs: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    jobs: list[Mapping[str, Any]] = list(manifest.get("jobs") or [])
    known = {j.get("id") for j in jobs}
    for planned in plan_jobs:
        if planned.get("id") not in known:
            # A planned job the manifest lost: show it, never drop it.
            jobs.append({**planned, "state": "__absent__", "outputs": [],
                         "error": "in the plan but not in the manifest"})
    return sorted(jobs, key=lambda j: int(j.get("index", 0)))


def _page_fixed(job: Mapping[str, Any], page_axes: Sequence[str]) -> tuple[tuple[str, str], ...]:
    fixed: list[tuple[str, str]] = []
    if job.get("group") is not None:
        fixed.append(("group", str(job["group"])))
    for axis in page_axes:
        value = _job_value(job, axis)
        if value is not _MISSING:
            fixed.append((axis, value_label(value)))
    return tuple(fixed)


def _ordered_values(
    axis: str | None,
    jobs: Sequence[Mapping[str, Any]],
    axes_values: Mapping[str, Sequence[Any]],
    followers: Sequence[str] = (),
) -> list[AxisValue]:
    """The values of ``axis`` present among ``jobs``: pipeline order first, then as met.

    Each is noted with the values of ``followers``, the axes whose value follows from it.
    """
    if axis is None:
        return [AxisValue(key="", label="")]
    present: dict[str, AxisValue] = {}
    for job in jobs:
        value = _axis_value(job, axis)
        if value.key not in present:
            notes = [f"{name}={_axis_value(job, name).label}" for name in followers
                     if _job_value(job, name) is not _MISSING]
            present[value.key] = AxisValue(value.key, value.label, " · ".join(notes))
    ordered: list[AxisValue] = []
    for value in axes_values.get(axis, ()):
        key = value_key(value)
        if key in present:
            ordered.append(present.pop(key))
    ordered.extend(present.values())
    return ordered


def _page(
    key: str,
    fixed: tuple[tuple[str, str], ...],
    members: Sequence[tuple[Mapping[str, Any], Entry]],
    x: str | None,
    y: str | None,
    axes_values: Mapping[str, Sequence[Any]],
    followers: Mapping[str | None, Sequence[str]],
) -> Page:
    jobs = [job for job, _ in members]
    columns = _ordered_values(x, jobs, axes_values, followers.get(x, ()))
    rows = _ordered_values(y, jobs, axes_values, followers.get(y, ()))
    slots: dict[tuple[str, str], list[Entry]] = {}
    for job, entry in members:
        cx = _axis_value(job, x).key if x else ""
        cy = _axis_value(job, y).key if y else ""
        slots.setdefault((cy, cx), []).append(entry)
    cells = tuple(
        tuple(Cell(x=c.key, y=r.key, entries=tuple(slots.get((r.key, c.key), ()))) for c in columns)
        for r in rows
    )
    title = " · ".join(f"{name}={label}" for name, label in fixed)
    return Page(key=key, title=title, fixed=fixed, columns=tuple(columns), rows=tuple(rows),
                cells=cells)


# --------------------------------------------------------------------------- reproduction


def reproduce_command(
    manifest: Mapping[str, Any], job: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> str:
    """A one-line shell command that runs exactly this job again.

    ``seedflow run PIPELINE [--set KEY=VALUE ...] --only JOB_ID``: the pipeline the run was
    planned from, the ``--set`` values it was planned with (``overrides``, as ``plan.json``
    records them) and the job's id, which names one job of any pipeline, job groups included.
    The path is the original one when relative, else the run folder's copy ``pipeline.yaml``
    (no path of this machine leaks into a shared report).
    """
    info = manifest.get("pipeline") or {}
    path = info.get("path")
    if not isinstance(path, str) or _safe_relative(path) is None:
        path = "pipeline.yaml"
    parts = ["seedflow", "run", path]
    for name, value in (overrides or {}).items():
        parts += ["--set", f"{name}={_set_value(value)}"]
    parts += ["--only", str(job.get("id", ""))]
    return " ".join(shlex.quote(p) for p in parts)


def _set_value(value: Any) -> str:
    # --set values are read as YAML: strings bare when YAML reads them back as the same
    # string, everything else as JSON (which YAML reads too).
    if isinstance(value, str) and _yaml_reads_as(value, value):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _yaml_reads_as(text: str, expected: Any) -> bool:
    import yaml

    try:
        return bool(yaml.safe_load(text) == expected) if text.strip() else False
    except yaml.YAMLError:
        return False


# --------------------------------------------------------------------------- run folder I/O


def load_manifest(run_dir: Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a run folder (raises :class:`RunError`)."""
    path = Path(run_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(
            f"{path}: no manifest.json here",
            hint="give a run folder (runs/<pipeline>/<run id>) or a run id",
        ) from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    error = jsonschema.exceptions.best_match(_manifest_validator().iter_errors(data))
    if error is not None:
        where = error.json_path
        raise RunError(
            f"{path}: not a seedflow manifest: at {where}: {error.message}",
            hint="was it written by another version of seedflow?",
        )
    assert isinstance(data, dict)
    return data


def _manifest_validator() -> jsonschema.protocols.Validator:
    schema = load_bundled_schema("manifest.schema.json")
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def find_run_dir(run: str | os.PathLike[str], out: str | os.PathLike[str] = "runs") -> Path:
    """The run folder meant by ``run``: a folder holding a manifest (also an unzipped copy
    without its journal), else a run folder or run id as :func:`seedflow.store.find_run`
    understands it."""
    given = Path(run)
    if (given / MANIFEST_NAME).is_file():
        return given
    from .store import find_run

    try:
        return find_run(run, out)
    except RunError:
        # A copied run folder may have left its journal behind: its manifest is enough.
        copies = sorted(Path(out).glob(f"*/{given.name}/{MANIFEST_NAME}"))
        if len(given.parts) == 1 and len(copies) == 1:
            return copies[0].parent
        raise


@dataclass(frozen=True)
class _PlanFacts:
    """What a report takes from ``plan.json``: its jobs (a job the manifest misses still
    shows), its axis names in pipeline order, and the ``--set`` values it was planned with."""

    jobs: list[Mapping[str, Any]] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)


def _read_plan(run_dir: Path) -> _PlanFacts:
    """The facts of the run folder's ``plan.json``; none when it is absent or unreadable."""
    try:
        data = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _PlanFacts()
    if not isinstance(data, dict):
        return _PlanFacts()
    jobs, axes, overrides = data.get("jobs"), data.get("axes"), data.get("overrides")
    return _PlanFacts(
        jobs=[j for j in jobs if isinstance(j, dict) and "id" in j] if isinstance(jobs, list) else [],
        axes=list(axes) if isinstance(axes, dict) else [],
        overrides=dict(overrides) if isinstance(overrides, dict) else {},
    )


def _in_order(axes: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``axes`` with the names in ``order`` first, in that order (the rest after them)."""
    first = {name: axes[name] for name in order if name in axes}
    return {**first, **{k: v for k, v in axes.items() if k not in first}}


def _atomic_write(path: Path, data: bytes) -> None:
    # A browser reloading mid-write must see the old page or the new one, never half of one.
    # Not mkstemp: its files are 0600, and a report is meant to be shared like the images
    # beside it (0666 less the umask, as any other file written).
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- thumbnails


def _thumb_name(sha256: str, size: int) -> str:
    return f"{THUMBS_DIR}/{sha256}-{size}.jpg"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_thumbnails(run_dir: Path, grid: Grid, *, size: int = THUMB_SIZE) -> Grid:
    """Make (or reuse) a JPEG thumbnail for every present image; return the grid with them.

    Thumbnails are named by the image's sha256, so identical images share one and a report
    written again after each job only makes the new ones. An image Pillow cannot read gets
    status ``unreadable`` and its cell is marked, not dropped.
    """
    from concurrent.futures import ThreadPoolExecutor

    run_dir = Path(run_dir)
    (run_dir / THUMBS_DIR).mkdir(exist_ok=True)
    wanted: dict[str, str] = {}  # image path -> thumbnail name
    for tile in grid.tiles():
        if tile.status == "ok" and tile.path is not None and tile.path not in wanted:
            sha = tile.sha256 or _file_sha256(run_dir / tile.path)
            wanted[tile.path] = _thumb_name(sha, size)
    missing = {p: n for p, n in wanted.items() if not (run_dir / n).is_file()}

    def make(item: tuple[str, str]) -> tuple[str, bool]:
        path, name = item
        return path, _thumbnail(run_dir / path, run_dir / name, size)

    # Pillow decodes and resizes without the GIL: threads use every core.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        failed = {path for path, ok in pool.map(make, missing.items()) if not ok}

    def convert(tile: Tile) -> Tile:
        if tile.path not in wanted or tile.status != "ok":
            return tile
        if tile.path in failed:
            return _replace(tile, status="unreadable")
        name = wanted[tile.path]
        return _replace(tile, thumb=name, sha256=name[len(THUMBS_DIR) + 1:].rsplit("-", 1)[0])

    return _map_entries(grid, lambda e: _with_tiles(e, tuple(convert(t) for t in e.tiles)))


def _thumbnail(source: Path, target: Path, size: int) -> bool:
    """Write a JPEG thumbnail of ``source``; False when it is not an image Pillow can read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            image.draft("RGB", (size, size))  # JPEG decodes at a lower scale: much faster
            # Shrink first (a box into a square box: orientation does not matter), then turn
            # the small copy upright: the full-size image is never copied.
            image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            flat = _flatten(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError, ValueError):
        return False
    from io import BytesIO

    buffer = BytesIO()
    flat.save(buffer, "JPEG", quality=82, optimize=True, progressive=True)
    _atomic_write(target, buffer.getvalue())
    return True


def _flatten(image: Any) -> Any:
    """RGB on white: JPEG has no alpha, and a checkerboard would distract."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _replace(tile: Tile, **changes: Any) -> Tile:
    from dataclasses import replace

    return replace(tile, **changes)


def _with_tiles(entry: Entry, tiles: tuple[Tile, ...]) -> Entry:
    status = entry.status
    if status == "ok" and any(t.status == "unreadable" for t in tiles):
        status = "missing"
    reason = entry.reason
    if status != entry.status:
        reason = f"{sum(t.status == 'unreadable' for t in tiles)} image file(s) unreadable"
    return Entry(job=entry.job, status=status, reason=reason, tiles=tiles)


def _map_entries(grid: Grid, change: Callable[[Entry], Entry]) -> Grid:
    pages = tuple(
        Page(
            key=p.key, title=p.title, fixed=p.fixed, columns=p.columns, rows=p.rows,
            cells=tuple(
                tuple(Cell(x=c.x, y=c.y, entries=tuple(change(e) for e in c.entries)) for c in row)
                for row in p.cells
            ),
        )
        for p in grid.pages
    )
    return Grid(x=grid.x, y=grid.y, page_axes=grid.page_axes, pages=pages, jobs=grid.jobs,
                problems=grid.problems)


# --------------------------------------------------------------------------- HTML


def _template() -> jinja2.Template:
    text = resources.files("seedflow").joinpath("templates", "report.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["href"] = _href
    return env.from_string(text)


def _href(path: str | None) -> str:
    """A relative URL for a run-folder path (percent-encoded, so any file name works)."""
    return quote(path or "", safe="/")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _prompt_field(model: str) -> str | None:
    from .errors import UnknownModelError
    from .models import get_model

    try:
        return get_model(model).prompt_field
    except UnknownModelError:
        return None


def _summary(manifest: Mapping[str, Any], now: datetime | None) -> dict[str, Any]:
    """The header's facts, as text."""
    totals = manifest.get("totals") or {}
    started = _parse_time(manifest.get("started_at"))
    ended = _parse_time(manifest.get("ended_at"))
    end = ended or now
    duration = _duration((end - started).total_seconds()) if started and end else "?"
    cost = totals.get("estimated_cost")
    currency = totals.get("currency", "")
    by_state = {k: v for k, v in (totals.get("by_state") or {}).items() if v}
    return {
        "pipeline": (manifest.get("pipeline") or {}).get("name", ""),
        "model": manifest.get("model", ""),
        "run_id": manifest.get("run_id", ""),
        "status": manifest.get("status", ""),
        "stop_reason": manifest.get("stop_reason"),
        "offline": bool(manifest.get("offline")),
        "jobs": totals.get("jobs", len(manifest.get("jobs") or [])),
        "by_state": by_state,
        "images": totals.get("images", 0),
        "images_requested": totals.get("images_requested"),
        "cost": f"{cost:.2f} {currency}".strip() if isinstance(cost, (int, float)) else "?",
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC") if started else "?",
        "duration": duration if ended else f"{duration} so far",
        "ended": ended is not None,
        "seedflow_version": manifest.get("seedflow_version", ""),
        "git_commit": (manifest.get("pipeline") or {}).get("git_commit"),
    }


def _detail(
    manifest: Mapping[str, Any],
    entry: Entry,
    prompt_field: str | None,
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What the detail view shows for one job (embedded as JSON in the page)."""
    job = entry.job
    inputs = job.get("input") or {}
    prompt = inputs.get(prompt_field) if prompt_field else None
    return {
        "id": entry.id,
        "name": entry.name,
        "group": job.get("group"),
        "state": job.get("state"),
        "status": entry.status,
        "reason": entry.reason,
        "prompt": prompt if isinstance(prompt, str) else None,
        "variables": {k: value_label(v) for k, v in (job.get("variables") or {}).items()},
        "seed": job.get("seed"),
        "request_id": job.get("request_id"),
        "model": job.get("model"),
        "attempts": job.get("attempts"),
        "submitted_at": job.get("submitted_at"),
        "completed_at": job.get("completed_at"),
        "reused_from": job.get("reused_from"),
        "input": inputs,
        "command": reproduce_command(manifest, job, overrides),
        "command_note": _command_note(manifest),
        "tiles": [
            {"index": t.index, "path": _href(t.path) if t.path else None, "status": t.status,
             "sha256": t.sha256, "bytes": t.bytes, "width": t.width, "height": t.height}
            for t in entry.tiles
        ],
    }


def _command_note(manifest: Mapping[str, Any]) -> str:
    path = (manifest.get("pipeline") or {}).get("path")
    if isinstance(path, str) and _safe_relative(path) is not None:
        return "from the folder the run was started in"
    return "from this run folder: pipeline.yaml is its copy of the pipeline"


def _script_json(data: Any) -> str:
    # Safe inside <script>: no "</script>", no "<!--", no HTML entity surprises.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    manifest: Mapping[str, Any],
    grid: Grid,
    *,
    live: bool | None = None,
    now: datetime | None = None,
    refresh_seconds: int = 5,
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """The report page as text. ``live`` (default: the run has not ended) makes it reload;
    ``overrides`` (the ``--set`` values the run was planned with) go into the reproduce
    commands."""
    if live is None:
        live = manifest.get("ended_at") is None and manifest.get("status") == "running"
    prompt_field = _prompt_field(str(manifest.get("model", "")))
    details = {e.id: _detail(manifest, e, prompt_field, overrides) for e in grid.entries()}
    max_tiles = max((len(e.tiles) for e in grid.entries()), default=1) or 1
    return _template().render(
        summary=_summary(manifest, now or datetime.now(timezone.utc)),
        grid=grid,
        statuses=STATUSES,
        details_json=_script_json(details),
        live=live,
        refresh_seconds=refresh_seconds,
        max_tiles=max_tiles,
        generated=(now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    x: str | None = None,
    y: str | None = None,
    sheet: str | os.PathLike[str] | None = None,
    live: bool | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` (and thumbnails) into a run folder; return the page's path.

    Cheap to call after every finished job: thumbnails are cached by sha256 and the page is
    replaced atomically. ``live`` makes the page reload itself every few seconds (default:
    while the manifest says the run has not ended). ``manifest`` skips reading the file when
    the caller holds it already. ``sheet`` also writes a labelled contact sheet PNG there.
    """
    folder = Path(run_dir)
    data = dict(manifest) if manifest is not None else load_manifest(folder)
    plan = _read_plan(folder)
    data["axes"] = _in_order(data.get("axes") or {}, plan.axes)
    grid = build_grid(
        data,
        x=x,
        y=y,
        exists=lambda rel: (folder / rel).is_file(),
        plan_jobs=plan.jobs,
    )
    page = folder / REPORT_NAME
    try:
        grid = make_thumbnails(folder, grid)
        html = render_html(data, grid, live=live, overrides=plan.overrides)
        _atomic_write(page, html.encode("utf-8"))
    except OSError as exc:
        raise RunError(
            f"cannot write the report into {folder}: {_os_reason(exc)}",
            hint="check that the run folder is writable and the disk is not full",
        ) from None
    if sheet is not None:
        write_sheet(folder, grid, Path(sheet), title=_sheet_title(data))
    return page


# --------------------------------------------------------------------------- contact sheet


def _sheet_title(manifest: Mapping[str, Any]) -> str:
    summary = _summary(manifest, None)
    return f"{summary['pipeline']} · {summary['model']} · run {summary['run_id']}"


_SHEET_COLORS = {
    "background": (250, 250, 248),
    "text": (30, 30, 30),
    "muted": (110, 110, 110),
    "header": (236, 236, 232),
    "failed": (253, 226, 226),
    "cancelled": (235, 235, 235),
    "unknown": (255, 240, 214),
    "missing": (255, 240, 214),
    "partial": (255, 248, 225),
    "waiting": (232, 240, 252),
    "empty": (244, 244, 242),
    "ok": (255, 255, 255),
    "slot": (225, 225, 222),
}


def write_sheet(
    run_dir: Path, grid: Grid, out: Path, *, title: str = "", tile: int = 160
) -> Path:
    """Draw the grid as one labelled PNG contact sheet (pages stacked), return its path."""
    from PIL import Image, ImageDraw

    run_dir = Path(run_dir)
    fonts = _fonts()
    blocks = [_sheet_page(run_dir, page, grid, tile, fonts) for page in grid.pages]
    pad = 16
    title_h = 40 if title else 0
    width = max([b.width for b in blocks] + [400]) + 2 * pad
    height = title_h + sum(b.height + pad for b in blocks) + pad
    sheet = Image.new("RGB", (width, height), _SHEET_COLORS["background"])
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 12), title, fill=_SHEET_COLORS["text"], font=fonts["title"])
    top = title_h + pad
    for block in blocks:
        sheet.paste(block, (pad, top))
        top += block.height + pad
    buffer = _png_bytes(sheet)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(out, buffer)
    except OSError as exc:
        raise UsageError(
            f"cannot write the contact sheet {out}: {_os_reason(exc)}",
            hint="give --sheet a path in a folder you can write (missing folders are made)",
        ) from None
    return out


def _os_reason(exc: OSError) -> str:
    """Why an OS call failed, naming the file it failed on (not a Python traceback)."""
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason


def _png_bytes(image: Any) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _fonts() -> dict[str, Any]:
    from PIL import ImageFont

    # Pillow's bundled font: labels look the same on every machine, no system font needed.
    return {
        "title": ImageFont.load_default(size=20),
        "label": ImageFont.load_default(size=14),
        "small": ImageFont.load_default(size=12),
    }


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw: Any, text: str, font: Any, width: int, lines: int) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width:
            line = trial
            continue
        if line:
            out.append(line)
        line = word
        if len(out) == lines:
            break
    if line and len(out) < lines:
        out.append(line)
    if len(out) == lines and " ".join(out) != " ".join(words):
        out[-1] = _fit(draw, out[-1] + " …", font, width)
    return [_fit(draw, item, font, width) for item in out]


def _tile_width(item: Tile, tile: int) -> int:
    """Width of a tile drawn ``tile`` pixels high: the image's shape, within sane bounds."""
    if item.status == "ok" and item.width and item.height:
        return int(tile * min(max(item.width / item.height, 0.4), 2.4))
    return int(tile * 0.75)


def _cell_width(cell: Cell, tile: int, gap: int) -> int:
    widths = [sum(_tile_width(t, tile) + gap for t in e.tiles) - gap for e in cell.entries]
    return max([w for w in widths if w > 0] + [tile])


def _sheet_page(run_dir: Path, page: Page, grid: Grid, tile: int, fonts: Mapping[str, Any]) -> Any:
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    gap, pad = 4, 8
    # Each column as wide as its widest cell: tiles keep their shape at a fixed height.
    col_w = [
        max(_cell_width(row[c], tile, gap) for row in page.cells) + 2 * pad
        for c in range(len(page.columns))
    ]
    jobs_per_cell = max((len(c.entries) for row in page.cells for c in row), default=1) or 1
    cell_h = jobs_per_cell * (tile + gap) - gap + 2 * pad + 18  # + caption line
    label_w = 0
    if grid.y:
        texts = [probe.textlength(r.label, font=fonts["label"]) for r in page.rows]
        texts += [probe.textlength(r.note, font=fonts["small"]) for r in page.rows]
        label_w = int(min(max(texts + [probe.textlength(grid.y, font=fonts["small"])]), 220)) + 20
    notes = any(c.note for c in page.columns)
    title_h = 30 if page.title else 0
    head_h = (62 if notes else 44) if grid.x else 0
    width = label_w + sum(col_w)
    height = title_h + head_h + len(page.rows) * cell_h
    block = Image.new("RGB", (int(width), int(height)), _SHEET_COLORS["background"])
    draw = ImageDraw.Draw(block)
    if page.title:
        draw.text((0, 4), page.title, fill=_SHEET_COLORS["text"], font=fonts["label"])
    top = title_h
    lefts = [label_w + sum(col_w[:i]) for i in range(len(col_w))]
    if grid.x:
        draw.text((label_w, top + 2), grid.x, fill=_SHEET_COLORS["muted"], font=fonts["small"])
        for column, left, w in zip(page.columns, lefts, col_w):
            draw.rectangle([left, top + 18, left + w - 2, top + head_h - 2],
                           fill=_SHEET_COLORS["header"])
            text = _fit(draw, column.label, fonts["label"], w - 12)
            draw.text((left + 6, top + 22), text, fill=_SHEET_COLORS["text"], font=fonts["label"])
            if column.note:
                draw.text((left + 6, top + 42), _fit(draw, column.note, fonts["small"], w - 12),
                          fill=_SHEET_COLORS["muted"], font=fonts["small"])
        top += head_h
    if grid.y and title_h + head_h > 16:
        draw.text((2, top - 18), grid.y, fill=_SHEET_COLORS["muted"], font=fonts["small"])
    for r, row in enumerate(page.cells):
        row_top = top + r * cell_h
        if grid.y:
            draw.rectangle([0, row_top, label_w - 4, row_top + cell_h - 2],
                           fill=_SHEET_COLORS["header"])
            lines = _wrap(draw, page.rows[r].label, fonts["label"], label_w - 14, 4)
            for n, line in enumerate(lines):
                draw.text((6, row_top + 8 + 18 * n), line, fill=_SHEET_COLORS["text"],
                          font=fonts["label"])
            if page.rows[r].note:
                draw.text((6, row_top + 8 + 18 * len(lines)),
                          _fit(draw, page.rows[r].note, fonts["small"], label_w - 14),
                          fill=_SHEET_COLORS["muted"], font=fonts["small"])
        for cell, left, w in zip(row, lefts, col_w):
            _sheet_cell(block, draw, run_dir, cell, (left, row_top, w - 2, cell_h - 2),
                        tile, gap, pad, fonts)
    return block


def _sheet_cell(
    block: Any, draw: Any, run_dir: Path, cell: Cell, box: tuple[int, int, int, int],
    tile: int, gap: int, pad: int, fonts: Mapping[str, Any],
) -> None:
    from PIL import Image, ImageOps

    left, top, width, height = box
    draw.rectangle([left, top, left + width, top + height], fill=_SHEET_COLORS[cell.status])
    if not cell.entries:
        draw.text((left + pad, top + pad), "no job", fill=_SHEET_COLORS["muted"],
                  font=fonts["small"])
        return
    for j, entry in enumerate(cell.entries):
        y = top + pad + j * (tile + gap)
        x = left + pad
        for item in entry.tiles:
            w = _tile_width(item, tile)
            if item.thumb and item.status == "ok":
                with Image.open(run_dir / item.thumb) as thumb:
                    fitted = ImageOps.contain(thumb, (w, tile))  # small images grow to fit
                    block.paste(fitted, (x + (w - fitted.width) // 2,
                                         y + (tile - fitted.height) // 2))
            else:
                draw.rectangle([x, y, x + w - 1, y + tile - 1], outline=_SHEET_COLORS["slot"],
                               width=2)
                label = {"not_returned": "not returned", "missing": "file missing",
                         "unreadable": "unreadable"}.get(item.status, item.status)
                draw.text((x + 8, y + 8), label, fill=_SHEET_COLORS["muted"], font=fonts["small"])
            x += w + gap
        if not entry.tiles:
            draw.text((left + pad, y), entry.label.upper(), fill=_SHEET_COLORS["text"],
                      font=fonts["label"])
            for n, line in enumerate(_wrap(draw, entry.reason or "", fonts["small"],
                                           width - 2 * pad, 6)):
                draw.text((left + pad, y + 22 + 16 * n), line, fill=_SHEET_COLORS["text"],
                          font=fonts["small"])
    first = cell.entries[0]
    if first.tiles:
        caption = first.name if cell.status == "ok" else f"{first.label}: {first.reason}"
        draw.text((left + pad, top + height - 18),
                  _fit(draw, caption or "", fonts["small"], width - 2 * pad),
                  fill=_SHEET_COLORS["muted"], font=fonts["small"])


# --------------------------------------------------------------------------- live refresh


class LiveReport:
    """Keeps ``report.html`` current during a run: an ``on_event`` callback for
    :func:`seedflow.executor.run_pipeline` and :func:`~seedflow.executor.resume_run`.

    ::

        live = LiveReport(chain=show_progress)   # chain: another callback to call first
        run_pipeline("pipelines/x.yaml", on_event=live)

    The page is written when the run starts, at most every ``min_interval`` seconds while jobs
    finish and images arrive, and once more at the end (then without self-reload). Writing
    happens on a background thread, so making thumbnails never stalls the run's event loop;
    a failure to write the report is kept in ``errors`` and never stops the run.
    """

    _TRIGGERS = frozenset({
        "job_completed", "job_partial", "job_failed", "job_cancelled", "job_unknown",
        "job_reused", "image_downloaded", "job_started", "job_submitted",
    })

    def __init__(
        self,
        *,
        x: str | None = None,
        y: str | None = None,
        min_interval: float = 2.0,
        chain: Callable[[Any], None] | None = None,
    ) -> None:
        import threading

        self.x, self.y, self.min_interval, self.chain = x, y, min_interval, chain
        self.run_dir: Path | None = None
        self.page: Path | None = None
        self.errors: list[str] = []
        self._wake = threading.Condition()
        self._pending = False
        self._final = False
        self._thread: threading.Thread | None = None

    def __call__(self, event: Any) -> None:
        if self.chain is not None:
            self.chain(event)
        kind = getattr(event, "kind", "")
        if kind == "run_started" and getattr(event, "message", None):
            self.run_dir = Path(event.message)
            self._start()
        if self.run_dir is None:
            return
        if kind in ("run_finished", "run_aborted"):
            self.close()
        elif kind in self._TRIGGERS:
            self._request()

    def _start(self) -> None:
        import threading

        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="seedflow-report",
                                            daemon=True)
            self._thread.start()
        self._request()

    def _request(self) -> None:
        with self._wake:
            self._pending = True
            self._wake.notify()

    def close(self) -> None:
        """Write the final page (no self-reload) and stop the writer thread."""
        with self._wake:
            self._final = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:

        while True:
            with self._wake:
                while not (self._pending or self._final):
                    self._wake.wait()
                final, self._pending = self._final, False
            self._write(live=not final)
            if final:
                return
            # Coalesce: whatever arrives meanwhile goes into the next write.
            with self._wake:
                self._wake.wait_for(lambda: self._final, timeout=self.min_interval)

    def _write(self, *, live: bool) -> None:
        assert self.run_dir is not None
        try:
            self.page = write_report(self.run_dir, x=self.x, y=self.y, live=live)
        except Exception as exc:  # noqa: BLE001 - a report must never break a paid run
            self.errors.append(f"{type(exc).__name__}: {exc}")
