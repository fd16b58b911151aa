"""The run folder and its journal.

A run lives in ``<root>/<pipeline name>/<run id>/``::

    pipeline.yaml     copy of the pipeline as read
    plan.json         the resolved plan
    journal.sqlite    the journal: the source of truth (SQLite, WAL)
    images/           downloaded files, named from the job name and output index
    manifest.json     derived from the journal, rewritten atomically

Every state change and every downloaded file is committed as it happens. The commits that
guard money (a job journaled before its submit, the request id the moment it is known) are
made with ``synchronous=FULL`` so they survive a power cut, not only a crash; the rest use
``NORMAL``, which in WAL mode survives the process being killed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit

from typing_extensions import Self

from .errors import RunError

__all__ = [
    "FINAL_STATES",
    "JOB_STATES",
    "JobRecord",
    "OutputRecord",
    "RunInfo",
    "RunStore",
    "find_run",
    "git_commit_of",
    "list_runs",
    "new_run_id",
    "sanitize_name",
    "utc_now",
]

#: Every state a job can be in (see the manifest schema for their meaning).
JOB_STATES = (
    "pending",
    "submitting",
    "unknown",
    "queued",
    "running",
    "completed",
    "partial",
    "failed",
    "cancelled",
    "reused",
)
#: States after which nothing more happens to a job in this run.
FINAL_STATES = frozenset({"completed", "partial", "failed", "cancelled", "reused"})
#: States whose request the service has accepted and may still be working on.
IN_FLIGHT_STATES = frozenset({"queued", "running"})

JOURNAL = "journal.sqlite"
MANIFEST = "manifest.json"
IMAGES = "images"
MANIFEST_VERSION = 1
_LOCK = ".lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL            -- JSON
);
CREATE TABLE IF NOT EXISTS jobs (
    idx              INTEGER PRIMARY KEY,
    job_id           TEXT NOT NULL,
    name             TEXT NOT NULL,
    stem             TEXT NOT NULL,   -- sanitised, unique file-name stem
    grp              TEXT,
    model            TEXT NOT NULL,
    variables        TEXT NOT NULL,   -- JSON
    input            TEXT NOT NULL,   -- JSON: the exact body sent
    seed             INTEGER,
    images_requested INTEGER NOT NULL,
    images_received  INTEGER,
    request_id       TEXT,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    submitted_at     TEXT,
    started_at       TEXT,
    completed_at     TEXT,
    error            TEXT,
    reused_from      TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_job_id ON jobs(job_id);
CREATE TABLE IF NOT EXISTS outputs (
    job_idx      INTEGER NOT NULL REFERENCES jobs(idx),
    out_index    INTEGER NOT NULL,
    url          TEXT NOT NULL,
    path         TEXT,               -- relative to the run folder, POSIX
    sha256       TEXT,
    bytes        INTEGER,
    width        INTEGER,
    height       INTEGER,
    content_type TEXT,
    PRIMARY KEY (job_idx, out_index)
);
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    job_idx INTEGER,
    kind    TEXT NOT NULL,
    data    TEXT                    -- JSON
);
"""


# --- small pure helpers ---------------------------------------------------------------------


def utc_now() -> str:
    """The current time as ISO 8601 UTC with millisecond precision (``...Z``)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A run id sortable by start time: ``20261125T170000Z-3f9a``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


_RUN_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-z]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str, *, max_length: int = 80) -> str:
    """A file-name-safe version of ``name``: ASCII letters, digits, ``.``, ``_`` and ``-``.

    Never empty, never starts with a dot (no hidden files, no ``..``), bounded length.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", ascii_name).strip("._-")
    cleaned = cleaned[:max_length].rstrip("._-")
    return cleaned or "job"


def _ext_from(url: str, content_type: str | None = None) -> str:
    if content_type:
        kind = content_type.split(";")[0].strip().lower()
        by_type = {
            "image/png": ".png",
            "image/jpeg": ".jpg",
            "image/webp": ".webp",
            "image/gif": ".gif",
            "video/mp4": ".mp4",
        }
        if kind in by_type:
            return by_type[kind]
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    if suffix in {".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm"}:
        return ".jpg" if suffix == ".jpeg" else suffix
    return ".png"


def git_commit_of(path: str | os.PathLike[str] | None) -> tuple[str | None, bool | None]:
    """(HEAD commit, file has uncommitted changes) of the git repo holding ``path``.

    ``(None, None)`` when the file is not in a repository or git is unavailable: a run never
    fails because of this.
    """
    if path is None:
        return None, None
    file = Path(path).resolve()
    where = file.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--verify", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if head.returncode != 0:
            return None, None
        commit = head.stdout.strip() or None
        dirty_check = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", file.name],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        dirty = bool(dirty_check.stdout.strip()) if dirty_check.returncode == 0 else None
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never half of one."""
    # not mkstemp: its files are 0600, and a run folder is shared like its images (0666 less
    # the umask)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        # the rename itself is durable only once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --- records --------------------------------------------------------------------------------


@dataclass
class OutputRecord:
    """One output file of a job, as journaled."""

    index: int
    url: str
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    content_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "url": self.url,
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
            "content_type": self.content_type,
        }


@dataclass
class JobRecord:
    """One job as journaled: what to send and everything that happened to it."""

    index: int
    id: str
    name: str
    stem: str
    group: str | None
    model: str
    variables: dict[str, Any]
    input: dict[str, Any]
    seed: int | None
    images_requested: int
    images_received: int | None
    request_id: str | None
    state: str
    attempts: int
    submitted_at: str | None
    started_at: str | None
    completed_at: str | None
    error: str | None
    reused_from: str | None
    outputs: list[OutputRecord] = field(default_factory=list)

    @property
    def missing_outputs(self) -> list[OutputRecord]:
        """Outputs whose URL is known but whose file is not (yet) downloaded."""
        return [o for o in self.outputs if o.path is None]

    def to_dict(self) -> dict[str, Any]:
        """The job as the manifest shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "index": self.index,
            "group": self.group,
            "model": self.model,
            "variables": self.variables,
            "input": self.input,
            "seed": self.seed,
            "images_requested": self.images_requested,
            "images_received": self.images_received,
            "request_id": self.request_id,
            "reused_from": self.reused_from,
            "state": self.state,
            "attempts": self.attempts,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "error": self.error,
            "outputs": [o.to_dict() for o in self.outputs],
        }


class _PlanJob(Protocol):
    """What the store reads of a planned job (``seedflow.plan.Job``)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def index(self) -> int: ...
    @property
    def group(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def variables(self) -> Mapping[str, Any]: ...
    @property
    def input(self) -> Mapping[str, Any]: ...
    @property
    def seed(self) -> int: ...
    @property
    def images(self) -> int: ...


class _Plan(Protocol):
    """What the store reads of a plan (``seedflow.plan.Plan``)."""

    @property
    def pipeline_path(self) -> str | None: ...
    @property
    def pipeline_name(self) -> str: ...
    @property
    def pipeline_text(self) -> str: ...
    @property
    def pipeline_sha256(self) -> str: ...
    @property
    def axes(self) -> Mapping[str, Sequence[Any]]: ...
    @property
    def jobs(self) -> Sequence[_PlanJob]: ...
    @property
    def estimated_cost(self) -> float: ...
    @property
    def currency(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RunInfo:
    """A one-line summary of a run (for ``seedflow runs``)."""

    run_id: str
    path: Path
    pipeline: str
    started_at: str | None
    ended_at: str | None
    status: str
    jobs: int
    by_state: dict[str, int]
    images: int


# --- the store ------------------------------------------------------------------------------


def _json(value: Any) -> str:
    # key order kept: the axes' order is the pipeline's, and a report lays out its grid by it
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RunStore:
    """A run folder and its journal. Not thread-safe: one event loop owns it."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock_handle: Any = None
        self._durable = False
        self._in_batch = False

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        plan: _Plan,
        *,
        base_url: str,
        offline: bool = False,
        seedflow_version: str | None = None,
        run_id: str | None = None,
    ) -> RunStore:
        """Create a new run folder for ``plan`` under ``root`` and journal every job as pending."""
        from . import __version__

        run_id = run_id or new_run_id()
        final = Path(root) / sanitize_name(plan.pipeline_name) / run_id
        # built under a hidden name and renamed when complete: a crash while creating leaves
        # no half-made run behind (nothing has been sent yet)
        folder = final.with_name(f".{run_id}.creating")
        try:
            folder.mkdir(parents=True, exist_ok=False)
            (folder / IMAGES).mkdir()
        except OSError as exc:
            raise RunError(f"cannot create the run folder {final}: {exc.strerror or exc}") from exc
        _atomic_write(folder / "pipeline.yaml", plan.pipeline_text.encode("utf-8"))
        plan_json = json.dumps(plan.to_dict(), indent=2, ensure_ascii=False, default=str)
        _atomic_write(folder / "plan.json", plan_json.encode("utf-8"))

        store = cls._connect(folder)
        commit, dirty = git_commit_of(plan.pipeline_path)
        models = sorted({job.model for job in plan.jobs})
        meta = {
            "run_id": run_id,
            "seedflow_version": seedflow_version or __version__,
            "pipeline": {
                "path": plan.pipeline_path,
                "name": plan.pipeline_name,
                "sha256": plan.pipeline_sha256,
                "git_commit": commit,
                "git_dirty": dirty,
            },
            "model": plan.jobs[0].model if plan.jobs else (models[0] if models else ""),
            "models": models,
            "base_url": base_url,
            "offline": offline,
            "started_at": utc_now(),
            "ended_at": None,
            "stop_reason": None,
            "axes": {k: list(v) for k, v in plan.axes.items()},
            "estimated_cost": float(plan.estimated_cost),
            "currency": plan.currency,
        }
        with store._transaction(durable=True):
            for key, value in meta.items():
                store._conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?)", (key, _json(value))
                )
            stems: set[str] = set()
            for job in plan.jobs:
                stem = sanitize_name(job.name)
                if stem in stems:  # two names that sanitise alike: keep files apart
                    stem = f"{stem}-{job.id[:9]}"
                stems.add(stem)
                store._conn.execute(
                    "INSERT INTO jobs(idx, job_id, name, stem, grp, model, variables, input, seed,"
                    " images_requested, state) VALUES (?,?,?,?,?,?,?,?,?,?, 'pending')",
                    (
                        job.index, job.id, job.name, stem, job.group, job.model,
                        _json(dict(job.variables)), _json(dict(job.input)), job.seed, job.images,
                    ),
                )  # fmt: skip
        store.add_event("run_created", data={"jobs": len(plan.jobs)})
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store._conn.close()
        try:
            os.rename(folder, final)
        except OSError as exc:
            raise RunError(f"cannot create the run folder {final}: {exc.strerror or exc}") from exc
        store = cls._connect(final)
        store.write_manifest()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False) -> RunStore:
        """Open an existing run folder; ``readonly`` never writes to it (for looking only)."""
        folder = Path(path)
        if not (folder / JOURNAL).is_file():
            raise RunError(
                f"{folder} is not a seedflow run folder (no {JOURNAL})",
                hint="pass a run folder or run id; `seedflow runs` lists them",
            )
        return cls._connect(folder, readonly=readonly, existing=True)

    @classmethod
    def _connect(cls, folder: Path, *, readonly: bool = False, existing: bool = False) -> RunStore:
        journal = folder / JOURNAL
        conn: sqlite3.Connection | None = None
        try:
            # autocommit mode: transactions are opened explicitly in _transaction()
            # one thread at a time uses it, but not always the same one (the executor commits
            # from a writer thread so the event loop never waits for an fsync)
            target = _readonly_uri(journal) if readonly else str(journal)
            conn = sqlite3.connect(
                target, isolation_level=None, timeout=30, check_same_thread=False, uri=readonly
            )
            if existing:  # before the schema below would turn any file into an empty journal
                _check_journal(conn, journal)
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, RunError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, RunError):
                raise
            raise RunError(f"the journal {journal} cannot be used: {exc}") from exc
        return cls(folder, conn)

    def close(self) -> None:
        """Release the lock and close the journal."""
        self.unlock()
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self) -> None:
        """Take the run's exclusive lock, so two processes never drive the same run."""
        import fcntl

        handle = open(self.path / _LOCK, "a+")  # noqa: SIM115 - held until unlock()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RunError(
                f"run {self.run_id} is being run by another seedflow process",
                hint="wait for it to finish, or stop it first",
            ) from None
        self._lock_handle = handle

    def is_driven(self) -> bool:
        """Whether a live process (this one included) holds the run's lock, i.e. drives it now.

        A run whose journal says it has not ended but whose lock nobody holds was interrupted
        (killed, crashed, stopped at once): it continues only with ``seedflow resume``.
        """
        import fcntl

        if self._lock_handle is not None:
            return True
        try:
            fd = os.open(self.path / _LOCK, os.O_RDONLY)  # never created here: looking only
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops the probe's shared lock at once
        return False

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    @contextlib.contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        """Group the changes made inside into one transaction (one commit, one fsync).

        Each change is still all-or-nothing; a caller that batches promises ``durable`` when
        any change inside needs it. Used by the executor to commit concurrent jobs' changes
        together (group commit).
        """
        with self._transaction(durable=durable):
            self._in_batch = True
            try:
                yield
            finally:
                self._in_batch = False

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[None]:
        if self._in_batch:  # part of an enclosing batch: it commits
            yield
            return
        # synchronous=FULL only where money is at stake: it costs an fsync per commit
        if durable != self._durable:
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- metadata --------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        """Run metadata (run id, pipeline, base URL, times, ...)."""
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        return {key: json.loads(value) for key, value in rows}

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id", self.path.name))

    def set_meta(self, **values: Any) -> None:
        """Update metadata keys (committed at once)."""
        with self._transaction():
            for key, value in values.items():
                self._conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, _json(value)),
                )

    # -- reading jobs ----------------------------------------------------------------------

    _JOB_COLUMNS = (
        "idx, job_id, name, stem, grp, model, variables, input, seed, images_requested,"
        " images_received, request_id, state, attempts, submitted_at, started_at, completed_at,"
        " error, reused_from"
    )

    def _row_to_job(self, row: Sequence[Any], outputs: list[OutputRecord]) -> JobRecord:
        return JobRecord(
            index=row[0], id=row[1], name=row[2], stem=row[3], group=row[4], model=row[5],
            variables=json.loads(row[6]), input=json.loads(row[7]), seed=row[8],
            images_requested=row[9], images_received=row[10], request_id=row[11], state=row[12],
            attempts=row[13], submitted_at=row[14], started_at=row[15], completed_at=row[16],
            error=row[17], reused_from=row[18], outputs=outputs,
        )  # fmt: skip

    def _outputs_by_job(self, job_idx: int | None = None) -> dict[int, list[OutputRecord]]:
        sql = (
            "SELECT job_idx, out_index, url, path, sha256, bytes, width, height, content_type"
            " FROM outputs"
        )
        args: tuple[Any, ...] = ()
        if job_idx is not None:
            sql += " WHERE job_idx = ?"
            args = (job_idx,)
        grouped: dict[int, list[OutputRecord]] = {}
        for row in self._conn.execute(sql + " ORDER BY job_idx, out_index", args):
            grouped.setdefault(row[0], []).append(OutputRecord(*row[1:]))
        return grouped

    def jobs(self) -> list[JobRecord]:
        """Every job, in plan order, with its outputs."""
        outputs = self._outputs_by_job()
        rows = self._conn.execute(f"SELECT {self._JOB_COLUMNS} FROM jobs ORDER BY idx")
        return [self._row_to_job(row, outputs.get(row[0], [])) for row in rows]

    def job(self, index: int) -> JobRecord:
        """One job by its plan index."""
        row = self._conn.execute(
            f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            raise RunError(f"run {self.run_id} has no job #{index}")
        return self._row_to_job(row, self._outputs_by_job(index).get(index, []))

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {state: n for state, n in rows}

    def images_downloaded(self) -> int:
        """Number of output files present (downloaded or reused)."""
        row = self._conn.execute("SELECT COUNT(*) FROM outputs WHERE path IS NOT NULL").fetchone()
        return int(row[0])

    # -- state changes (each one committed at once) ----------------------------------------

    def _update(self, index: int, *, durable: bool = False, **columns: Any) -> None:
        names = ", ".join(f"{name} = ?" for name in columns)
        with self._transaction(durable=durable):
            self._conn.execute(f"UPDATE jobs SET {names} WHERE idx = ?", (*columns.values(), index))

    def mark_submitting(self, index: int) -> None:
        """Journal that a submit is about to be sent (durably, before it is sent)."""
        with self._transaction(durable=True):
            self._conn.execute(
                "UPDATE jobs SET state = 'submitting', attempts = attempts + 1, request_id = NULL,"
                " submitted_at = NULL, started_at = NULL, completed_at = NULL, error = NULL,"
                " images_received = NULL WHERE idx = ?",
                (index,),
            )
            self._conn.execute("DELETE FROM outputs WHERE job_idx = ?", (index,))

    def record_submission(self, index: int, request_id: str) -> None:
        """Commit the request id the moment the service answered (durably)."""
        self._update(
            index, durable=True, state="queued", request_id=request_id, submitted_at=utc_now()
        )

    def mark_unknown(self, index: int, error: str) -> None:
        """The submit's answer was lost: it may have been accepted (and billed)."""
        self._update(index, durable=True, state="unknown", error=error)

    def mark_pending(self, index: int, error: str | None = None) -> None:
        """Back to not-sent (a submit the service refused before accepting it)."""
        self._update(index, state="pending", request_id=None, error=error)

    def mark_running(self, index: int) -> None:
        """The service started working on the job."""
        self._update(index, state="running", started_at=utc_now())

    def record_outputs(self, index: int, urls: Sequence[str]) -> None:
        """Journal the output URLs a result named (before downloading them)."""
        with self._transaction():
            self._conn.execute(
                "UPDATE jobs SET images_received = ? WHERE idx = ?", (len(urls), index)
            )
            for out_index, url in enumerate(urls):
                self._conn.execute(
                    "INSERT INTO outputs(job_idx, out_index, url) VALUES (?, ?, ?) "
                    "ON CONFLICT(job_idx, out_index) DO UPDATE SET url = excluded.url",
                    (index, out_index, url),
                )

    def record_download(self, index: int, output: OutputRecord) -> None:
        """Commit one downloaded file."""
        with self._transaction():
            self._conn.execute(
                "UPDATE outputs SET url = ?, path = ?, sha256 = ?, bytes = ?, width = ?, height = ?,"
                " content_type = ? WHERE job_idx = ? AND out_index = ?",
                (
                    output.url, output.path, output.sha256, output.bytes, output.width,
                    output.height, output.content_type, index, output.index,
                ),
            )  # fmt: skip

    def finish(self, index: int, state: str, error: str | None = None) -> None:
        """Set a job's final state (completed, partial, failed, cancelled)."""
        if state not in FINAL_STATES:
            raise ValueError(f"not a final state: {state}")
        self._update(index, state=state, error=error, completed_at=utc_now())

    def set_error(self, index: int, error: str | None) -> None:
        """Record an error without changing the state (e.g. polling gave up)."""
        self._update(index, error=error)

    def record_reused(self, index: int, from_run: str, outputs: Sequence[OutputRecord]) -> None:
        """The job's outputs were taken from an earlier run instead of submitting it."""
        now = utc_now()
        with self._transaction():
            self._conn.execute("DELETE FROM outputs WHERE job_idx = ?", (index,))
            for out in outputs:
                self._conn.execute(
                    "INSERT INTO outputs(job_idx, out_index, url, path, sha256, bytes, width,"
                    " height, content_type) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        index, out.index, out.url, out.path, out.sha256, out.bytes, out.width,
                        out.height, out.content_type,
                    ),
                )  # fmt: skip
            self._conn.execute(
                "UPDATE jobs SET state = 'reused', reused_from = ?, images_received = ?,"
                " completed_at = ?, error = NULL WHERE idx = ?",
                (from_run, len(outputs), now, index),
            )

    def add_event(self, kind: str, job_index: int | None = None, data: Any = None) -> None:
        """Append to the run's event log (what happened, for later inspection)."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO events(at, job_idx, kind, data) VALUES (?, ?, ?, ?)",
                (utc_now(), job_index, kind, None if data is None else _json(data)),
            )

    def events(self) -> list[dict[str, Any]]:
        """The event log, oldest first."""
        rows = self._conn.execute("SELECT seq, at, job_idx, kind, data FROM events ORDER BY seq")
        return [
            {"seq": s, "at": at, "job": j, "kind": k, "data": None if d is None else json.loads(d)}
            for s, at, j, k, d in rows
        ]

    # -- files -----------------------------------------------------------------------------

    def output_path(
        self, job: JobRecord, out_index: int, url: str, content_type: str | None = None
    ) -> Path:
        """Where output ``out_index`` of ``job`` is stored; refuses anything outside the run."""
        name = f"{job.stem}-{out_index:02d}{_ext_from(url, content_type)}"
        # the stem is sanitised already; still, only a plain file name may come out of it
        if os.path.basename(name) != name or name.startswith(".") or "\x00" in name:
            raise RunError(f"refusing to write outside the run folder: {IMAGES}/{name}")
        return self._images_dir / name

    @functools.cached_property
    def _base(self) -> Path:
        return self.path.resolve()

    @functools.cached_property
    def _images_dir(self) -> Path:
        # resolved once per run (every image goes here): resolving per file costs syscalls
        return self.resolve_inside(IMAGES)

    def resolve_inside(self, relative: str | os.PathLike[str]) -> Path:
        """``relative`` resolved under the run folder; RunError if it would leave it."""
        base = self._base
        target = (base / relative).resolve()
        if target == base or not target.is_relative_to(base):
            raise RunError(f"refusing to write outside the run folder: {relative}")
        return target

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder, with POSIX separators."""
        path = Path(path)
        if not path.is_absolute():
            path = path.resolve()
        try:
            return path.relative_to(self._base).as_posix()
        except ValueError:
            return path.resolve().relative_to(self._base).as_posix()

    def remove_partial_files(self) -> int:
        """Delete temporary files an interrupted download or write left behind."""
        removed = 0
        for folder in (self.path, self.path / IMAGES):
            for leftover in folder.glob(".*"):
                if leftover.is_file() and leftover.name.endswith((".part", ".tmp")):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
                        removed += 1
        return removed

    # -- manifest --------------------------------------------------------------------------

    def status(self, counts: Mapping[str, int] | None = None) -> str:
        """Overall state of the run, from the journal."""
        meta = self.meta
        counts = counts if counts is not None else self.counts()
        if meta.get("ended_at") is None:
            return "running"
        unfinished = sum(counts.get(s, 0) for s in ("pending", "submitting", "queued", "running"))
        if meta.get("stop_reason") and unfinished:
            return "stopped"
        if set(counts) <= {"completed", "reused"}:
            return "completed"
        return "finished_with_errors"

    def live_status(self, counts: Mapping[str, int] | None = None) -> str:
        """:meth:`status`, but "interrupted" for a run that has not ended and that no live
        process drives (the manifest keeps "running": it is written by the run itself)."""
        status = self.status(counts)
        if status == "running" and not self.is_driven():
            return "interrupted"
        return status

    def manifest(self) -> dict[str, Any]:
        """The manifest as data, derived from the journal."""
        meta = self.meta
        jobs = self.jobs()
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        images = sum(1 for job in jobs for out in job.outputs if out.path is not None)
        return {
            "manifest_version": MANIFEST_VERSION,
            "run_id": meta["run_id"],
            "seedflow_version": meta["seedflow_version"],
            "pipeline": meta["pipeline"],
            "model": meta["model"],
            "models": meta.get("models", []),
            "base_url": meta["base_url"],
            "offline": bool(meta.get("offline", False)),
            "started_at": meta["started_at"],
            "ended_at": meta.get("ended_at"),
            "updated_at": utc_now(),
            "status": self.status(counts),
            "stop_reason": meta.get("stop_reason"),
            "totals": {
                "jobs": len(jobs),
                "by_state": counts,
                "images": images,
                "images_requested": sum(job.images_requested for job in jobs),
                "estimated_cost": meta.get("estimated_cost", 0.0),
                "currency": meta.get("currency", "USD"),
            },
            "axes": meta.get("axes", {}),
            "jobs": [job.to_dict() for job in jobs],
        }

    def write_manifest(self) -> Path:
        """Derive manifest.json from the journal and write it atomically."""
        path = self.path / MANIFEST
        _atomic_write(path, _manifest_text(self.manifest()).encode("utf-8"))
        return path

    def info(self) -> RunInfo:
        """A one-line summary of this run."""
        meta = self.meta
        counts = self.counts()
        return RunInfo(
            run_id=meta.get("run_id", self.path.name),
            path=self.path,
            pipeline=meta.get("pipeline", {}).get("name", self.path.parent.name),
            started_at=meta.get("started_at"),
            ended_at=meta.get("ended_at"),
            status=self.live_status(counts),
            jobs=sum(counts.values()),
            by_state=counts,
            images=self.images_downloaded(),
        )


def _readonly_uri(journal: Path) -> str:
    """An SQLite URI that reads ``journal`` without writing anything into its folder."""
    uri = f"{journal.resolve().as_uri()}?mode=ro"
    if not journal.with_name(journal.name + "-wal").exists():
        # No open writer (it would have a -wal file). A read-only reader of a WAL journal
        # would still create -wal and -shm files: reading it as immutable creates nothing.
        # A writer that opens meanwhile writes into its -wal, never the file read here.
        uri += "&immutable=1"
    return uri


def _check_journal(conn: sqlite3.Connection, journal: Path) -> None:
    """Refuse a journal that is empty or not seedflow's (it would fail later, obscurely)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone()
    except sqlite3.DatabaseError:
        row = None
    if row is None:
        empty = journal.stat().st_size == 0
        raise RunError(
            f"the journal {journal} is "
            + ("empty" if empty else "not a seedflow journal")
            + ": this run's record is lost or was never written here",
            hint="restore journal.sqlite from a backup or the original run folder (a copy made "
            "while the run was going may be incomplete); manifest.json beside it still lists "
            "the jobs and request ids; otherwise start again with `seedflow run`",
        )


def _manifest_text(manifest: Mapping[str, Any]) -> str:
    """Indented JSON with one job per line.

    Readable and diff-friendly, and fast: ``indent`` makes json fall back to its pure-Python
    encoder, which for thousands of jobs costs seconds per write.
    """
    head = {k: v for k, v in manifest.items() if k != "jobs"}
    text = json.dumps(head, indent=2, ensure_ascii=False)
    jobs = [json.dumps(job, ensure_ascii=False) for job in manifest.get("jobs", [])]
    body = "[]" if not jobs else "[\n    " + ",\n    ".join(jobs) + "\n  ]"
    return text[:-2] + f',\n  "jobs": {body}\n}}\n'


# --- finding runs ---------------------------------------------------------------------------


def _run_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob(f"*/*/{JOURNAL}") if not p.parent.name.startswith(".")]
    return sorted(found, key=lambda p: (p.name, str(p)))


def list_runs(root: str | os.PathLike[str]) -> list[RunInfo]:
    """Every run under ``root``, oldest first; a folder whose journal cannot be read is listed
    with status ``unreadable`` (``seedflow status`` on it says why)."""
    infos = []
    for folder in _run_folders(Path(root)):
        try:
            with RunStore.open(folder, readonly=True) as store:
                infos.append(store.info())
        except (RunError, sqlite3.DatabaseError):
            infos.append(RunInfo(
                run_id=folder.name, path=folder, pipeline=folder.parent.name, started_at=None,
                ended_at=None, status="unreadable", jobs=0, by_state={}, images=0,
            ))  # fmt: skip
    return infos


def find_run(ref: str | os.PathLike[str], root: str | os.PathLike[str] = "runs") -> Path:
    """A run folder from a path or a run id (a unique prefix of one is enough)."""
    candidate = Path(ref)
    if (candidate / JOURNAL).is_file():
        return candidate
    text = str(ref)
    if "/" not in text and os.sep not in text:
        matches = [p for p in _run_folders(Path(root)) if p.name.startswith(text)]
        exact = [p for p in matches if p.name == text]
        if len(exact) == 1 or len(matches) == 1:
            return (exact or matches)[0]
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches[:5])
            raise RunError(f"run id '{text}' is ambiguous under {root}: {names}")
    raise RunError(
        f"no run '{text}' (neither a run folder nor a run id under {root})",
        hint="`seedflow runs --out DIR` lists the runs under DIR",
    )


def copy_or_link(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (same file system), else copy it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    try:
        os.link(source, dest)
    except OSError:
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copy2(source, tmp)
        os.replace(tmp, dest)


def is_run_id(text: str) -> bool:
    """True when ``text`` looks like a run id."""
    return bool(_RUN_ID_RE.match(text))
