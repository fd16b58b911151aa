"""What the emulator remembers: request records, counters, and the job scheduler.

Everything here runs on the server's event loop and is driven by ``loop.call_later`` timers:
a job becomes eligible after its queue time, starts when one of ``concurrency`` slots is free,
and finishes after its processing time. No polling loop, no lock. Other threads (a test)
may read records and counters at any time.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .config import EmulatorConfig

__all__ = ["RequestRecord", "Scheduler", "Stats", "canonical_json"]

IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "in_queue", "in_progress", "completed", "failed", "cancelled",
)  # fmt: skip
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


def canonical_json(data: Any) -> str:
    """The key ``Stats.submits_by_input`` uses for an input body."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass
class Stats:
    """What the emulator received.

    ``submits`` counts accepted (billable) submits and ``submits_by_input`` the same per
    canonical input JSON; ``submit_calls`` counts every POST to a model, rejected or not.
    """

    submits: int = 0
    submit_calls: int = 0
    submits_by_input: Counter[str] = field(default_factory=Counter)
    status_calls: int = 0
    result_calls: int = 0
    cancel_calls: int = 0
    downloads: int = 0
    faults_fired: Counter[str] = field(default_factory=Counter)

    def duplicates(self) -> dict[str, int]:
        """Inputs submitted (and accepted) more than once, with their counts."""
        return {key: n for key, n in self.submits_by_input.items() if n > 1}


@dataclass
class RequestRecord:
    """One accepted request, as the service would track it."""

    request_id: str
    model_id: str
    input: dict[str, Any]
    images_requested: int
    prompt: str
    seed: int
    image_size: str | None
    base_url: str
    state: str = IN_QUEUE
    created: float = field(default_factory=time.time)
    started: float | None = None
    completed: float | None = None
    queue_time: float = 0.0
    processing_time: float = 0.0
    image_urls: list[str] = field(default_factory=list)
    error: str | None = None
    eligible: bool = False
    status_url: str = ""
    result_url: str = ""
    cancel_url: str = ""

    def __post_init__(self) -> None:
        base = f"{self.base_url}/v1/requests/{self.request_id}"
        self.status_url = f"{base}/status"
        self.result_url = f"{base}/result"
        self.cancel_url = f"{base}/cancel"

    @property
    def processing_duration(self) -> float | None:
        """Seconds it actually ran (started to completed); None unless it ran to the end."""
        if self.started is None or self.completed is None:
            return None
        return self.completed - self.started

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def file_url(self, index: int) -> str:
        return f"{self.base_url}/files/{self.request_id}/{index}.png"


class Scheduler:
    """Runs at most ``config.concurrency`` jobs at a time, in submission order."""

    def __init__(self, config: EmulatorConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.rng = random.Random(config.seed)
        self.records: dict[str, RequestRecord] = {}
        self._waiting: dict[str, RequestRecord] = {}  # insertion order = queue order
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running = 0
        self._positions: dict[str, int] | None = None  # rebuilt lazily when the queue changes

    def new_request_id(self) -> str:
        # Random, never seeded: two emulators (say, before and after a crash) must never hand
        # out the same id, or a resumed run would poll another job's request.
        return str(uuid.uuid4())

    def add(self, record: RequestRecord) -> None:
        """Queue an accepted request; its eligibility timer starts now."""
        loop = asyncio.get_running_loop()
        record.queue_time = self.config.draw(self.config.queue_time, self.rng)
        self.records[record.request_id] = record
        self._waiting[record.request_id] = record
        self._positions = None
        if record.queue_time <= 0:
            record.eligible = True
            self._fill_slots(loop)
        else:
            timer = loop.call_later(record.queue_time, self._become_eligible, record, loop)
            self._timers[record.request_id] = timer

    def queue_position(self, record: RequestRecord) -> int:
        """How many queued jobs are ahead of this one (0 = next to start)."""
        if self._positions is None:
            self._positions = {rid: i for i, rid in enumerate(self._waiting)}
        return self._positions.get(record.request_id, 0)

    def cancel(self, record: RequestRecord) -> bool:
        """Cancel a queued job; False (and nothing changes) once it runs or has finished."""
        if record.state != IN_QUEUE:
            return False
        timer = self._timers.pop(record.request_id, None)
        if timer is not None:
            timer.cancel()
        del self._waiting[record.request_id]
        self._positions = None
        record.state = CANCELLED
        record.completed = time.time()
        return True

    def _become_eligible(self, record: RequestRecord, loop: asyncio.AbstractEventLoop) -> None:
        self._timers.pop(record.request_id, None)
        record.eligible = True
        self._fill_slots(loop)

    def _fill_slots(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._running < self.config.concurrency:
            record = next((r for r in self._waiting.values() if r.eligible), None)
            if record is None:
                return
            self._start(record, loop)

    def _start(self, record: RequestRecord, loop: asyncio.AbstractEventLoop) -> None:
        del self._waiting[record.request_id]
        self._positions = None
        self._running += 1
        record.state = IN_PROGRESS
        record.started = time.time()
        record.processing_time = self.config.draw(self.config.processing_time, self.rng)
        loop.call_later(record.processing_time, self._finish, record, loop)

    def _finish(self, record: RequestRecord, loop: asyncio.AbstractEventLoop) -> None:
        self._running -= 1
        fault = self.config.faults.pick("job", self.rng)
        record.completed = time.time()
        if fault is not None and fault.kind == "fail":
            self.stats.faults_fired["job:fail"] += 1
            record.state = FAILED
            record.error = "generation failed: the model could not produce images for this input"
        else:
            count = record.images_requested
            if fault is not None and fault.kind == "partial":
                self.stats.faults_fired["job:partial"] += 1
                count = count // 2
            record.image_urls = [record.file_url(i) for i in range(count)]
            record.state = COMPLETED
        self._fill_slots(loop)
