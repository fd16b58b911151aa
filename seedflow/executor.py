"""Running a plan: an async loop over the journal.

The executor reads what is left to do from the journal (so a fresh run and a resumed one are
the same code), keeps at most ``concurrency`` jobs in flight, and writes every change back the
moment it happens::

    pending ─journal─▶ submitting ─answer─▶ queued ─▶ running ─▶ completed | partial
                            │                  │                    failed | cancelled
                            └─answer lost─▶ unknown (never resent unless asked)

A job holds one of the ``concurrency`` slots from its submit until the service says it is
finished; its files are then downloaded outside the slot so the next job can start at once.

Stopping: :meth:`StopControl.stop_submitting` (first Ctrl-C, no credit, bad token, unknown model)
sends nothing new; on Ctrl-C, jobs still queued on the service are cancelled while running ones
(already paid) are waited for. :meth:`StopControl.abort` (second Ctrl-C) stops at once: every
request id is already in the journal, so ``resume`` picks up where the run left off.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from .errors import (
    ApiError,
    AuthenticationError,
    InsufficientBalance,
    ModelRejected,
    RequestNotFound,
    RunError,
    SubmitOutcomeUnknown,
)
from .store import (
    FINAL_STATES,
    JobRecord,
    OutputRecord,
    RunStore,
    copy_or_link,
    utc_now,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "ClientLike",
    "Executor",
    "RunEvent",
    "RunSummary",
    "StopControl",
]

DEFAULT_CONCURRENCY = 16
#: Errors after which no job of this run can be accepted: stop sending.
STOP_ERRORS = (InsufficientBalance, AuthenticationError, ModelRejected)
#: Rounds of submits for a job the service certainly did not accept (429, 503, refused).
SUBMIT_ROUNDS = 4
#: States that count as "done" for progress.
DONE_STATES = frozenset({"completed", "partial", "reused"})
#: States that are reported as failures in the summary.
FAILURE_STATES = frozenset({"failed", "unknown", "cancelled"})


class ClientLike(Protocol):
    """What the executor needs of :class:`seedflow.client.Client`."""

    async def submit(self, model_id: str, input: Any) -> Any: ...
    async def cancel(self, request_id: str) -> Any: ...
    async def result(self, request_id: str) -> Any: ...
    async def wait(self, request_id: str, *, on_status: Any = None) -> Any: ...
    async def download(self, url: str, dest: Path) -> Any: ...


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunEvent:
    """Something that happened during a run, for progress displays and ``--json``.

    ``counts`` is the number of jobs per state after the event; ``images`` the files present.
    Never carries the token: only journal data and error messages (which the client redacts).
    """

    kind: str
    run_id: str
    elapsed: float
    counts: dict[str, int]
    images: int
    images_expected: int
    jobs: int
    job: str | None = None
    job_index: int | None = None
    state: str | None = None
    message: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain data (one line of ``--json``)."""
        out: dict[str, Any] = {
            "event": self.kind,
            "time": utc_now(),
            "run_id": self.run_id,
            "elapsed": round(self.elapsed, 3),
        }
        if self.job is not None:
            out.update(job=self.job, job_index=self.job_index, state=self.state)
        if self.message is not None:
            out["message"] = self.message
        if self.data:
            out["data"] = self.data
        out.update(
            counts=self.counts, images=self.images, images_expected=self.images_expected,
            jobs=self.jobs,
        )  # fmt: skip
        return out


EventCallback = Callable[[RunEvent], None]


@dataclass(frozen=True)
class Failure:
    """A job that did not complete, and why."""

    name: str
    index: int
    state: str
    error: str | None
    request_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.name, "index": self.index, "state": self.state, "error": self.error,
            "request_id": self.request_id,
        }  # fmt: skip


@dataclass(frozen=True)
class RunSummary:
    """How a run (or a resume) ended."""

    run_id: str
    path: Path
    by_state: dict[str, int]
    images: int
    failures: tuple[Failure, ...]
    partial: tuple[Failure, ...]
    unfinished: tuple[Failure, ...]
    stop_reason: str | None
    aborted: bool
    interrupted: bool
    elapsed: float

    @property
    def ok(self) -> bool:
        """True when every job completed (or was reused, or came back partial)."""
        return not (self.failures or self.unfinished or self.stop_reason or self.aborted)

    @property
    def exit_code(self) -> int:
        """0 when ok; 130 when interrupted by the user; 1 otherwise."""
        if self.interrupted or self.aborted:
            return 130
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "path": str(self.path),
            "by_state": self.by_state,
            "images": self.images,
            "failures": [f.to_dict() for f in self.failures],
            "partial": [f.to_dict() for f in self.partial],
            "unfinished": [f.to_dict() for f in self.unfinished],
            "stop_reason": self.stop_reason,
            "aborted": self.aborted,
            "elapsed": round(self.elapsed, 3),
            "exit_code": self.exit_code,
        }


# --- stopping -------------------------------------------------------------------------------


class StopControl:
    """How a run is asked to stop (from a signal handler, a test, or an error).

    Safe to call from the event loop's thread only (signal handlers installed with
    ``loop.add_signal_handler`` are).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.by_user = False
        self.aborted = False
        self._abort_event: asyncio.Event | None = None
        self._listeners: list[Callable[[str, bool], None]] = []

    @property
    def submitting_stopped(self) -> bool:
        return self.reason is not None

    def stop_submitting(self, reason: str, *, by_user: bool = False) -> None:
        """Send no new job; with ``by_user``, also cancel jobs still queued on the service."""
        first = self.reason is None
        if first:
            self.reason = reason
        if by_user and not self.by_user:
            self.by_user = True
            first = True
        if first:
            for listener in list(self._listeners):
                listener(reason, by_user)

    def abort(self) -> None:
        """Stop at once (jobs in flight stay in the journal for ``resume``)."""
        self.aborted = True
        if self.reason is None:
            self.reason = "stopped at once by the user"
        if self._abort_event is not None:
            self._abort_event.set()

    def interrupt(self) -> None:
        """What Ctrl-C does: the first time stop submitting, the second time abort."""
        if self.by_user:
            self.abort()
        else:
            self.stop_submitting("interrupted by the user (Ctrl-C)", by_user=True)

    def _bind(self) -> asyncio.Event:
        self._abort_event = asyncio.Event()
        if self.aborted:
            self._abort_event.set()
        return self._abort_event


# --- the executor ---------------------------------------------------------------------------


@dataclass
class _Work:
    """One unit of work for a worker: what to do with which job."""

    action: str  # "submit" | "wait" | "download"
    index: int


class LearnedPoll:
    """A poll policy that learns how long this run's jobs take, and polls when they finish.

    Until ``min_samples`` jobs have finished it is the client's policy. Then, while a job runs,
    the next poll is when a fraction ``share`` of the jobs still running at this age would have
    finished (from the durations seen so far), and at most ``running_interval`` after the
    last poll once the earliest completions (5th percentile) are reached. So nothing is asked
    before any job could be done, and a run of 30 s jobs is polled a handful of times instead
    of every second from the start. Queued jobs keep the client's queue-aware schedule.
    """

    def __init__(
        self, base: Any, *, share: float = 0.75, min_samples: int = 16, window: int = 256
    ) -> None:
        self.base = base
        self.share = share
        self.min_samples = min_samples
        self._window = window
        self._durations: list[float] = []
        self._sorted: list[float] = []
        self._started: dict[str, float] = {}
        self._last_poll: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:  # every other setting is the client's
        return getattr(self.base, name)

    # -- what the executor tells it --------------------------------------------------------

    def track(self, request_id: str) -> None:
        """A job was accepted (or is followed again after a resume) now."""
        self._started[request_id] = time.monotonic()

    def finished(self, request_id: str) -> None:
        """The status said the job is finished: learn how long it took."""
        started = self._started.pop(request_id, None)
        last = self._last_poll.pop(request_id, started)
        if started is None or last is None:
            return
        # it finished between the last poll that saw it running and now
        duration = ((last + time.monotonic()) / 2) - started
        self._durations.append(duration)
        if len(self._durations) > self._window:
            del self._durations[0]
        self._sorted = sorted(self._durations)

    # -- what the client asks ----------------------------------------------------------------

    def _quantile(self, q: float) -> float:
        ordered = self._sorted
        return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered))))]

    def _learned(self) -> bool:
        return len(self._sorted) >= self.min_samples

    @property
    def first_delay(self) -> float:
        base = float(self.base.first_delay)
        if not self._learned():
            return base
        return max(base, self._next_after(0.0))

    def _next_after(self, age: float) -> float:
        """Seconds from ``age`` to the next poll of a job still running at that age."""
        ordered = self._sorted
        done = bisect.bisect_right(ordered, age) / len(ordered)
        if done >= 1.0:  # older than every job seen so far: no data, the client's interval
            return float(self.base.running_interval)
        target = self._quantile(done + self.share * (1.0 - done))
        earliest = self._quantile(0.05)
        latest = max(earliest, age + float(self.base.running_interval))
        return max(0.02, min(target, latest) - age)

    def next_delay(
        self, status: Any, polls_in_state: int, drain_rate: float | None = None
    ) -> float:
        now = time.monotonic()
        self._last_poll[status.request_id] = now
        started = self._started.get(status.request_id)
        if status.state == "in_queue" or started is None or not self._learned():
            return float(self.base.next_delay(status, polls_in_state, drain_rate))
        return self._next_after(now - started)


class _Journal:
    """Commits the executor's journal changes from one writer thread, in order.

    The event loop never waits for SQLite or an fsync, and changes that arrive while a commit
    is in progress are committed together in the next one (group commit): with 64 jobs in
    flight, one fsync covers many of them. Awaiting a change means it is committed.
    """

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedflow-journal")
        self._pending: list[tuple[Callable[[], Any], bool, asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None

    def write(self, change: Callable[[], Any], *, durable: bool = False) -> asyncio.Future[Any]:
        """Queue ``change`` (a call on the store); the future resolves once it is committed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((change, durable, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return future

    async def drain(self) -> None:
        """Wait until every queued change is committed."""
        while self._drainer is not None and not self._drainer.done():
            await asyncio.shield(self._drainer)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            durable = any(d for _, d, _ in batch)
            outcomes = await loop.run_in_executor(
                self._pool, self._commit, [c for c, _, _ in batch], durable
            )
            for (_, _, future), (ok, value) in zip(batch, outcomes):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, changes: list[Callable[[], Any]], durable: bool) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with self._store.batch(durable=durable):
            for change in changes:
                try:
                    outcomes.append((True, change()))
                except Exception as exc:  # noqa: BLE001 - handed to whoever awaits it
                    outcomes.append((False, exc))
        return outcomes

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Executor:
    """Drives the jobs of one run folder to their final states."""

    def __init__(
        self,
        store: RunStore,
        client: ClientLike,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_event: EventCallback | None = None,
        stop: StopControl | None = None,
        resend_unknown: bool = False,
        retry_failed: bool = False,
        requests_lost: bool = False,
        reuse_from: Iterable[Path] = (),
        manifest_interval: float | None = None,
        download_concurrency: int = 8,
        poll_learner: LearnedPoll | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.client = client
        self.concurrency = concurrency
        self.stop = stop or StopControl()
        self.resend_unknown = resend_unknown
        self.retry_failed = retry_failed
        # The service that knew this run's requests is gone (an --offline run's private
        # emulator ended with its process): what it held is sent again, which costs nothing.
        self.requests_lost = requests_lost
        self.reuse_from = list(reuse_from)
        self._manifest_interval = manifest_interval
        self._on_event = on_event
        self._run_id = store.run_id
        self._started = time.monotonic()
        self._jobs: dict[int, JobRecord] = {}
        self._states: dict[int, str] = {}
        self._counts: Counter[str] = Counter()
        self._images = 0
        self._images_expected = 0
        self._queued_requests: dict[int, str] = {}  # jobs waiting on the service, cancellable
        self._cancel_tasks: set[asyncio.Task[None]] = set()
        self._download_tasks: set[asyncio.Task[None]] = set()
        self._download_slots = asyncio.Semaphore(max(1, download_concurrency))
        self._dirty = True
        self._journal = _Journal(store)
        self._learner = poll_learner

    def _commit(self, method: Callable[..., Any], *args: Any, durable: bool = False) -> Any:
        """Queue a store change; await the result to know it is committed."""
        return self._journal.write(partial(method, *args), durable=durable)

    # -- bookkeeping -----------------------------------------------------------------------

    def _emit(
        self,
        kind: str,
        index: int | None = None,
        message: str | None = None,
        **data: Any,
    ) -> None:
        if self._on_event is None:
            return
        job = self._jobs.get(index) if index is not None else None
        self._on_event(
            RunEvent(
                kind=kind,
                run_id=self._run_id,
                elapsed=time.monotonic() - self._started,
                counts={k: v for k, v in self._counts.items() if v},
                images=self._images,
                images_expected=self._images_expected,
                jobs=len(self._jobs),
                job=job.name if job else None,
                job_index=index,
                state=self._states.get(index) if index is not None else None,
                message=message,
                data=data,
            )
        )

    def _set(self, index: int, state: str) -> None:
        old = self._states.get(index)
        if old is not None:
            self._counts[old] -= 1
        self._states[index] = state
        self._counts[state] += 1
        self._dirty = True

    def _name(self, index: int) -> str:
        return self._jobs[index].name

    # -- planning the work from the journal ------------------------------------------------

    def _plan_work(self) -> list[_Work]:
        """What is left to do, read from the journal (fresh run and resume alike)."""
        waits: list[_Work] = []
        downloads: list[_Work] = []
        submits: list[_Work] = []
        for job in self.store.jobs():
            self._jobs[job.index] = job
            state = job.state
            if state == "submitting":
                # the process died between journaling a submit and hearing back
                state = "unknown"
                self.store.mark_unknown(
                    job.index,
                    "the run stopped while this job was being submitted: it may have been "
                    "accepted (and billed); resend it with `seedflow resume RUN --resend-unknown`",
                )
            self._set(job.index, state)
            self._images += sum(1 for o in job.outputs if o.path is not None)
            action = self._action_for(job, state)
            if action is not None:
                {"wait": waits, "download": downloads, "submit": submits}[action].append(
                    _Work(action, job.index)
                )
            if state in DONE_STATES or action == "download":
                self._images_expected += len(job.outputs)
            elif action is not None or state in ("queued", "running"):
                self._images_expected += job.images_requested
        # jobs already paid for first, then new ones in plan order
        return waits + downloads + submits

    def _action_for(self, job: JobRecord, state: str) -> str | None:
        if self.requests_lost and (
            state in ("queued", "running", "unknown", "submitting")
            or (job.request_id and job.missing_outputs)
        ):
            return "submit"
        if state in ("queued", "running") and job.request_id:
            return "wait"
        if job.request_id and job.missing_outputs and state in ("completed", "partial", "failed"):
            return "download"  # free: the job is already paid for
        if state in ("pending", "cancelled"):
            return "submit"
        if state == "unknown" and self.resend_unknown:
            return "submit"
        if state == "failed" and self.retry_failed:
            return "submit"
        return None

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Run every job that is left; return how the run ended. Resumable at any point."""
        abort_event = self.stop._bind()
        self.stop._listeners.append(self._on_stop)
        work = self._plan_work()
        self.store.remove_partial_files()  # nothing is writing them: the run is locked
        self.store.set_meta(ended_at=None, stop_reason=None)
        self.store.add_event("run_started", data={"work": len(work)})
        self.store.write_manifest()
        self._emit("run_started", message=str(self.store.path), work=len(work))
        unknown = [i for i, s in self._states.items() if s == "unknown"]
        if unknown and not self.resend_unknown:
            self._emit(
                "warning",
                message=f"{len(unknown)} job(s) have an unknown submit outcome and are not resent "
                "(use --resend-unknown to send them again)",
                jobs=[self._name(i) for i in unknown],
            )
        if self.stop.submitting_stopped:  # stopped before we began listening
            self._on_stop(self.stop.reason or "", self.stop.by_user)

        queue: asyncio.Queue[_Work] = asyncio.Queue()
        for item in work:
            queue.put_nowait(item)
        workers = [
            asyncio.create_task(self._worker(queue), name=f"seedflow-worker-{n}")
            for n in range(min(self.concurrency, max(1, len(work))))
        ]
        manifest_task = asyncio.create_task(self._manifest_loop())
        all_done = asyncio.ensure_future(self._finish_all(workers))
        abort_wait = asyncio.create_task(abort_event.wait())
        try:
            await asyncio.wait({all_done, abort_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted = not all_done.done()
            if aborted:
                all_done.cancel()
                for task in (*workers, *self._download_tasks, *self._cancel_tasks):
                    task.cancel()
                await asyncio.gather(
                    all_done, *workers, *self._download_tasks, *self._cancel_tasks,
                    return_exceptions=True,
                )  # fmt: skip
            abort_wait.cancel()
            manifest_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await manifest_task
            await self._journal.drain()  # every change committed before the summary is read
            self._journal.close()
            self.stop._listeners.remove(self._on_stop)
        if not aborted:
            all_done.result()  # a bug in a worker surfaces here, with its traceback
        return self._finalise(aborted)

    async def _finish_all(self, workers: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*workers)
        while self._download_tasks or self._cancel_tasks:
            await asyncio.gather(*self._download_tasks, *self._cancel_tasks)

    def _finalise(self, aborted: bool) -> RunSummary:
        reason = self.stop.reason
        if aborted:
            self.store.set_meta(stop_reason=reason)
        else:
            self.store.set_meta(ended_at=utc_now(), stop_reason=reason)
        self.store.add_event("run_aborted" if aborted else "run_finished", data={"reason": reason})
        self.store.write_manifest()
        summary = self._summary(aborted)
        self._emit(
            "run_aborted" if aborted else "run_finished",
            message=str(self.store.path),
            **summary.to_dict(),
        )
        return summary

    def _summary(self, aborted: bool) -> RunSummary:
        jobs = self.store.jobs()

        def failure(job: JobRecord) -> Failure:
            return Failure(job.name, job.index, job.state, job.error, job.request_id)

        failures = tuple(
            failure(j) for j in jobs
            if j.state in FAILURE_STATES or (j.state in DONE_STATES and j.missing_outputs)
        )  # fmt: skip
        partial = tuple(failure(j) for j in jobs if j.state == "partial" and not j.missing_outputs)
        unfinished = tuple(
            failure(j) for j in jobs if j.state in ("pending", "submitting", "queued", "running")
        )
        counts = Counter(j.state for j in jobs)
        return RunSummary(
            run_id=self._run_id,
            path=self.store.path,
            by_state=dict(counts),
            images=sum(1 for j in jobs for o in j.outputs if o.path is not None),
            failures=failures,
            partial=partial,
            unfinished=unfinished,
            stop_reason=self.stop.reason,
            aborted=aborted,
            interrupted=self.stop.by_user,
            elapsed=time.monotonic() - self._started,
        )

    async def _manifest_loop(self) -> None:
        # The manifest is O(jobs) to write: throttle it (1 s per 400 jobs); the journal has
        # every change at once, and the manifest is rewritten at the end.
        interval = self._manifest_interval or max(1.0, len(self._jobs) / 400)
        while True:
            await asyncio.sleep(interval)
            if self._dirty:
                self._dirty = False
                await self._commit(self.store.write_manifest)

    async def _worker(self, queue: asyncio.Queue[_Work]) -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item.action == "submit":
                await self._submit(item.index)
            elif item.action == "wait":
                await self._wait(item.index)
            else:
                await self._download(item.index, refresh=True)

    # -- stopping --------------------------------------------------------------------------

    def _on_stop(self, reason: str, by_user: bool) -> None:
        self._commit(
            partial(self.store.add_event, data={"reason": reason, "by_user": by_user}),
            "stop_submitting",
        )
        queued = dict(self._queued_requests)
        running = self._counts["running"]
        if by_user:
            message = (
                f"stopping: no new jobs will be sent; cancelling {len(queued)} queued job(s); "
                f"waiting for {running} running job(s) (already paid). "
                "Press Ctrl-C again to stop at once (the run stays resumable)."
            )
        else:
            message = f"stopped sending jobs: {reason}; jobs already accepted will finish"
        self._emit("stopping", message=message, reason=reason, cancelling=len(queued))
        if by_user:
            for index, request_id in queued.items():
                self._cancel_later(index, request_id)

    async def _cancel(self, index: int, request_id: str) -> None:
        try:
            outcome = await self.client.cancel(request_id)
        except ApiError as error:
            self._emit("warning", index, f"could not cancel: {error.message}")
            return
        await self._commit(self.store.add_event, "cancel", index, {"outcome": outcome.outcome})
        self._emit("cancel_requested", index, outcome=outcome.outcome)
        # the job's wait() sees the cancelled state and records it

    # -- one job ---------------------------------------------------------------------------

    async def _submit(self, index: int) -> None:
        if self.stop.submitting_stopped:
            return
        job = self._jobs[index]
        if self.reuse_from and await self._try_reuse(job):
            return
        await self._commit(self.store.mark_submitting, index, durable=True)
        self._set(index, "submitting")
        try:
            submission = await self._send(job)
        except asyncio.CancelledError:
            # aborted while the submit was on its way: it may have landed
            self._commit(
                self.store.mark_unknown,
                index,
                "the run was stopped while this job was being submitted",
                durable=True,
            )
            self._set(index, "unknown")
            raise
        except SubmitOutcomeUnknown as error:
            await self._commit(self.store.mark_unknown, index, error.message, durable=True)
            self._set(index, "unknown")
            self._commit(self.store.add_event, "unknown", index, {"error": error.message})
            self._emit("job_unknown", index, error.message)
            return
        except STOP_ERRORS as error:
            await self._commit(self.store.mark_pending, index, error.message)
            self._set(index, "pending")
            self.stop.stop_submitting(error.message)
            return
        except ApiError as error:
            await self._fail(index, error.message)
            return
        await self._commit(self.store.record_submission, index, submission.request_id, durable=True)
        job.request_id = submission.request_id
        self._set(index, "queued")
        self._emit("job_submitted", index, request_id=submission.request_id)
        await self._wait(index)

    async def _send(self, job: JobRecord) -> Any:
        """Submit a job, trying again later while the service certainly did not accept it.

        The client already retried each round; what still escapes it as a retryable error
        (429, 503, connection refused) was never accepted, so it is safe to send again rather
        than fail a job that cost nothing. Lost answers arrive as SubmitOutcomeUnknown instead.
        """
        for round_ in range(1, SUBMIT_ROUNDS + 1):
            try:
                return await self.client.submit(job.model, job.input)
            except SubmitOutcomeUnknown:
                raise
            except ApiError as error:
                if not error.retryable or round_ == SUBMIT_ROUNDS or self.stop.submitting_stopped:
                    raise
                await asyncio.sleep(min(30.0, 2.0**round_))
        raise AssertionError("unreachable")

    async def _wait(self, index: int) -> None:
        job = self._jobs[index]
        request_id = job.request_id
        assert request_id is not None
        if self._states[index] == "queued":
            self._queued_requests[index] = request_id
            if self.stop.by_user:  # resumed or submitted after Ctrl-C: cancel it too
                self._cancel_later(index, request_id)

        if self._learner is not None:
            self._learner.track(request_id)

        def on_status(status: Any) -> None:
            if status.terminal:
                if self._learner is not None:
                    self._learner.finished(request_id)
                self._emit("job_finished", index, service_state=status.state)
            elif status.state == "in_progress" and self._states[index] == "queued":
                self._queued_requests.pop(index, None)
                self._commit(self.store.mark_running, index)
                self._set(index, "running")
                self._emit("job_started", index)

        try:
            result = await self.client.wait(request_id, on_status=on_status)
        except RequestNotFound as error:
            self._queued_requests.pop(index, None)
            await self._fail(index, error.message)
            return
        except ApiError as error:
            if isinstance(error, STOP_ERRORS):
                self.stop.stop_submitting(error.message)
            # polling gave up (network down, ...): the job may still finish on the service
            self._queued_requests.pop(index, None)
            self._commit(self.store.set_error, index, f"could not follow the job: {error.message}")
            await self._commit(self.store.add_event, "wait_error", index, {"error": error.message})
            self._emit("job_error", index, error.message)
            return
        self._queued_requests.pop(index, None)
        if result.state == "completed":
            urls = [*result.outputs.images, *result.outputs.videos]
            await self._commit(self.store.record_outputs, index, urls)
            # a resumed job may have some files already: keep them
            had = {o.index: o for o in job.outputs if o.path is not None}
            job.outputs = [had.get(i) or OutputRecord(i, url) for i, url in enumerate(urls)]
            for out, url in zip(job.outputs, urls):
                out.url = url
            job.images_received = len(urls)
            self._images_expected += len(urls) - job.images_requested
            self._set(index, "running")
            self._emit("job_result", index, images=len(urls))
            task = asyncio.get_running_loop().create_task(self._download(index))
            self._download_tasks.add(task)
            task.add_done_callback(self._download_tasks.discard)
        elif result.state == "cancelled":
            await self._commit(self.store.finish, index, "cancelled", "cancelled on request")
            self._set(index, "cancelled")
            self._images_expected -= job.images_requested
            self._emit("job_cancelled", index)
        else:
            await self._fail(index, result.error or f"the job ended in state {result.state}")

    def _cancel_later(self, index: int, request_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._cancel(index, request_id))
        self._cancel_tasks.add(task)
        task.add_done_callback(self._cancel_tasks.discard)

    async def _fail(self, index: int, error: str) -> None:
        await self._commit(self.store.finish, index, "failed", error)
        self._set(index, "failed")
        self._images_expected -= self._jobs[index].images_requested
        self._commit(self.store.add_event, "failed", index, {"error": error})
        self._emit("job_failed", index, error)

    async def _download(self, index: int, *, refresh: bool = False) -> None:
        """Fetch every missing output of a finished job, then set its final state."""
        job = self._jobs[index]
        if refresh and job.request_id:
            await self._refresh_urls(job)
        missing = job.missing_outputs
        errors = await asyncio.gather(*(self._download_one(job, out) for out in missing))
        problems = [e for e in errors if e]
        received = len(job.outputs)
        if problems:
            state, error = "failed", "; ".join(problems)
        elif received < job.images_requested:
            state = "partial"
            error = f"received {received} of {job.images_requested} requested images"
        else:
            state, error = "completed", None
        await self._commit(self.store.finish, index, state, error)
        self._set(index, state)
        if error:  # the jobs table has the rest; the event log keeps what went wrong
            self._commit(self.store.add_event, state, index, {"error": error})
        self._emit(f"job_{state}", index, error, images=received)

    async def _refresh_urls(self, job: JobRecord) -> None:
        # resumed download: the stored URLs may have expired; ask for the result again
        assert job.request_id is not None
        try:
            result = await self.client.result(job.request_id)
        except ApiError:
            return  # keep the stored URLs; the download will say what is wrong
        urls = [*result.outputs.images, *result.outputs.videos]
        if result.state == "completed" and len(urls) == len(job.outputs):
            await self._commit(self.store.record_outputs, job.index, urls)
            for out, url in zip(job.outputs, urls):
                out.url = url

    async def _download_one(self, job: JobRecord, out: OutputRecord) -> str | None:
        """Download one output and journal it; an error message if it failed."""
        async with self._download_slots:
            dest = self.store.output_path(job, out.index, out.url)
            try:
                got = await self.client.download(out.url, dest)
            except ApiError as error:
                return f"output {out.index}: {error.message}"
        path = Path(got.path)
        wanted = self.store.output_path(job, out.index, out.url, got.content_type)
        if wanted != path:  # the file host says it is another format: name it so
            path.replace(wanted)
            path = wanted
        width, height = _image_size(path)
        out.path = self.store.relative(path)
        out.sha256, out.bytes, out.content_type = got.sha256, got.bytes, got.content_type
        out.width, out.height = width, height
        await self._commit(self.store.record_download, job.index, out)
        self._images += 1
        self._dirty = True
        self._emit("image_downloaded", job.index, path=out.path, bytes=got.bytes)
        return None

    # -- reuse -----------------------------------------------------------------------------

    async def _try_reuse(self, job: JobRecord) -> bool:
        source = self._reuse_index().get(job.id)
        if source is None:
            return False
        run_id, folder, outputs = source
        copied: list[OutputRecord] = []
        for out in outputs:
            assert out.path is not None
            src = folder / out.path
            if not src.is_file() or _sha256(src) != out.sha256:
                return False
            dest = self.store.output_path(job, out.index, out.path)
            copy_or_link(src, dest)
            copied.append(
                OutputRecord(
                    out.index, out.url, self.store.relative(dest), out.sha256, out.bytes,
                    out.width, out.height, out.content_type,
                )
            )  # fmt: skip
        await self._commit(self.store.record_reused, job.index, run_id, copied)
        job.outputs = copied
        self._set(job.index, "reused")
        self._images += len(copied)
        self._images_expected += len(copied) - job.images_requested
        self._emit("job_reused", job.index, from_run=run_id, images=len(copied))
        return True

    _reuse_cache: dict[str, tuple[str, Path, list[OutputRecord]]] | None = None

    def _reuse_index(self) -> dict[str, tuple[str, Path, list[OutputRecord]]]:
        """job id -> (run id, run folder, outputs) of completed jobs in earlier runs."""
        if self._reuse_cache is None:
            index: dict[str, tuple[str, Path, list[OutputRecord]]] = {}
            for folder in self.reuse_from:  # oldest first: later runs win
                if folder.resolve() == self.store.path.resolve():
                    continue
                try:
                    with RunStore.open(folder) as other:
                        run_id = other.run_id
                        for job in other.jobs():
                            if (
                                job.state in ("completed", "reused")
                                and job.outputs
                                and all(o.path for o in job.outputs)
                            ):
                                index[job.id] = (run_id, folder, job.outputs)
                except (RunError, sqlite3.DatabaseError, OSError, KeyError, ValueError):
                    continue  # an unreadable old run is not this run's problem
            self._reuse_cache = index
        return self._reuse_cache


def _image_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height of an image file; (None, None) when unknown."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError:
        return None, None
    # PNG (what the service sends) keeps its size at a fixed place: no need to open an image
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    try:
        from PIL import Image

        with Image.open(path) as image:
            return int(image.width), int(image.height)
    except Exception:  # noqa: BLE001 - not an image Pillow knows: the size is unknown
        return None, None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def final_states() -> frozenset[str]:
    """States after which nothing more happens to a job in a run."""
    return FINAL_STATES


# --- the public API: run a pipeline, resume a run -------------------------------------------

#: Above this estimated cost (or image count), the CLI asks before sending anything.
CONFIRM_COST = 5.0
CONFIRM_IMAGES = 200


@contextlib.contextmanager
def _api_target(offline: bool, base_url: str | None, token: str | None) -> Any:
    """(base URL, token) to talk to: the given API, or a private emulator when offline."""
    if not offline:
        yield base_url, token
        return
    import secrets

    from .emulator import EmulatorConfig, serve

    offline_token = "offline-" + secrets.token_hex(8)
    config = EmulatorConfig(
        queue_time=(0.0, 0.1), processing_time=(0.2, 0.6), concurrency=8, token=offline_token
    )
    with serve(config) as emulator:
        yield emulator.base_url, offline_token


async def _drive(
    store: RunStore,
    *,
    base_url: str | None,
    token: str | None,
    concurrency: int,
    on_event: EventCallback | None,
    stop: StopControl,
    handle_signals: bool,
    client_options: dict[str, Any],
    **executor_options: Any,
) -> RunSummary:
    import signal

    from .client import Client

    loop = asyncio.get_running_loop()
    installed = False
    if handle_signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, stop.interrupt)
            loop.add_signal_handler(signal.SIGTERM, stop.abort)
            installed = True
    learner = None
    if "poll" not in client_options:
        from .client import PollPolicy

        learner = LearnedPoll(PollPolicy())
        client_options = {**client_options, "poll": learner}
    try:
        async with Client(token, base_url=base_url, **client_options) as client:
            executor = Executor(
                store, client, concurrency=concurrency, on_event=on_event, stop=stop,
                poll_learner=learner, **executor_options,
            )  # fmt: skip
            return await executor.run()
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)


def _client_options(max_requests_per_second: float | None, poll: Any, retry: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if max_requests_per_second is not None:
        options["max_requests_per_second"] = max_requests_per_second
    if poll is not None:
        options["poll"] = poll
    if retry is not None:
        options["retry"] = retry
    return options


def _earlier_runs(root: Path, exclude: Path) -> list[Path]:
    from .store import _run_folders

    return [p for p in _run_folders(root) if p.resolve() != exclude.resolve()]


def run_pipeline(
    pipeline: Any,
    *,
    out: str | Path = "runs",
    overrides: dict[str, str] | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_images: int | None = None,
    max_cost: float | None = None,
    base_url: str | None = None,
    token: str | None = None,
    offline: bool = False,
    reuse: bool = False,
    on_event: EventCallback | None = None,
    stop: StopControl | None = None,
    handle_signals: bool = False,
    max_requests_per_second: float | None = None,
    poll: Any = None,
    retry: Any = None,
) -> RunSummary:
    """Plan ``pipeline`` (a path or a :class:`seedflow.plan.Plan`), then run it to the end.

    Validation and the limits are checked before anything is sent. The run folder is
    ``<out>/<pipeline name>/<run id>/``; the summary says how it ended (``summary.exit_code``).
    ``offline`` runs against a private emulator on loopback (no token needed).
    """
    from .plan import check_limits, plan_file

    plan = pipeline if hasattr(pipeline, "jobs") else plan_file(pipeline, overrides=overrides)
    check_limits(plan, max_images=max_images, max_cost=max_cost)
    root = Path(out)
    with _api_target(offline, base_url, token) as (target_url, target_token):
        from .client import Client, resolve_base_url

        if not offline and not (token or _token_from_env()):
            Client(token)  # raises the client's own error: no token, and how to set one
        resolved = resolve_base_url(target_url)
        store = RunStore.create(root, plan, base_url=resolved, offline=offline)
        try:
            store.lock()
            reuse_from = _earlier_runs(root, store.path) if reuse else []
            return asyncio.run(
                _drive(
                    store, base_url=resolved, token=target_token, concurrency=concurrency,
                    on_event=on_event, stop=stop or StopControl(), handle_signals=handle_signals,
                    client_options=_client_options(max_requests_per_second, poll, retry),
                    reuse_from=reuse_from,
                )
            )  # fmt: skip
        finally:
            store.close()


def _token_from_env() -> str | None:
    from .client import resolve_token

    return resolve_token()


def resume_run(
    run: str | Path,
    *,
    root: str | Path = "runs",
    retry_failed: bool = False,
    resend_unknown: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    base_url: str | None = None,
    token: str | None = None,
    reuse: bool = False,
    on_event: EventCallback | None = None,
    stop: StopControl | None = None,
    handle_signals: bool = False,
    max_requests_per_second: float | None = None,
    poll: Any = None,
    retry: Any = None,
) -> RunSummary:
    """Continue an interrupted run (a run folder or run id under ``root``).

    Jobs with a request id are polled, never resubmitted; missing files are downloaded; jobs
    never sent are sent. Jobs whose submit outcome is unknown are resent only with
    ``resend_unknown``; failed jobs are tried again only with ``retry_failed``.
    """
    from .store import find_run

    folder = find_run(run, root)
    store = RunStore.open(folder)
    try:
        store.lock()
        meta = store.meta
        offline = bool(meta.get("offline")) and base_url is None
        with _api_target(offline, base_url or meta.get("base_url"), token) as (url, tok):
            if not offline and not (tok or _token_from_env()):
                from .client import Client

                Client(tok)
            if offline:
                store.set_meta(base_url=url)
            reuse_from = _earlier_runs(folder.parent.parent, folder) if reuse else []
            return asyncio.run(
                _drive(
                    store, base_url=url, token=tok, concurrency=concurrency, on_event=on_event,
                    stop=stop or StopControl(), handle_signals=handle_signals,
                    client_options=_client_options(max_requests_per_second, poll, retry),
                    resend_unknown=resend_unknown, retry_failed=retry_failed,
                    reuse_from=reuse_from, requests_lost=offline,
                )
            )  # fmt: skip
    finally:
        store.close()
