"""Showing a run's progress: live on a terminal, log lines otherwise, JSON lines, or nothing.

Every display is a callable taking :class:`~seedflow.executor.RunEvent`, so the executor knows
nothing about terminals. A token given as ``secret`` is masked in everything shown, as a last
line of defence (events carry no token to begin with).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any

from typing_extensions import Self

from .executor import RunEvent

__all__ = ["Progress", "choose_mode", "format_counts", "format_duration"]

#: Event kinds worth a line of their own in plain mode (the rest only move the counters).
_NOTABLE = {
    "job_failed": "failed",
    "job_unknown": "UNKNOWN",
    "job_partial": "partial",
    "job_error": "error",
    "job_cancelled": "cancelled",
    "warning": "warning",
    "stopping": "stopping",
}


def choose_mode(*, quiet: bool, json_lines: bool, stream: IO[str]) -> str:
    """``json``, ``quiet``, ``live`` (a terminal) or ``plain``."""
    if json_lines:
        return "json"
    if quiet:
        return "quiet"
    return "live" if stream.isatty() else "plain"


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _tally(event: RunEvent) -> dict[str, int]:
    c = event.counts
    return {
        "waiting": c.get("pending", 0) + c.get("submitting", 0),
        "queued": c.get("queued", 0),
        "running": c.get("running", 0),
        "done": c.get("completed", 0) + c.get("partial", 0) + c.get("reused", 0),
        "failed": c.get("failed", 0) + c.get("unknown", 0) + c.get("cancelled", 0),
    }


def format_counts(event: RunEvent) -> str:
    """One line: jobs by stage, images, elapsed, ETA."""
    t = _tally(event)
    return (
        f"{t['done']}/{event.jobs} done, {t['failed']} failed, {t['running']} running, "
        f"{t['queued']} queued, {t['waiting']} to send; images {event.images}/"
        f"{event.images_expected}; elapsed {format_duration(event.elapsed)}, "
        f"ETA {format_duration(_Eta.estimate(event))}"
    )


class _Eta:
    @staticmethod
    def estimate(event: RunEvent) -> float | None:
        """Remaining time from the pace so far (finished jobs per second)."""
        t = _tally(event)
        finished = t["done"] + t["failed"]
        remaining = event.jobs - finished
        if remaining <= 0:
            return 0.0
        if finished == 0 or event.elapsed <= 0:
            return None
        return remaining * event.elapsed / finished


class Progress:
    """A run display: call it with each event; use as a context manager."""

    def __init__(
        self,
        mode: str = "plain",
        *,
        stream: IO[str] | None = None,
        secret: str | None = None,
        plain_interval: float = 5.0,
    ) -> None:
        if mode not in ("live", "plain", "json", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self._secret = secret
        self._plain_interval = plain_interval
        self._last_line = 0.0
        self._live: Any = None
        self._console: Any = None
        self._last: RunEvent | None = None

    # -- context -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self.mode == "live":
            from rich.console import Console
            from rich.live import Live

            # "live" is chosen for terminals only; say so, so a redirected test stream renders too
            self._console = Console(file=self.stream, force_terminal=True)
            self._live = Live(
                self._render(None), console=self._console, refresh_per_second=8, transient=True
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    # -- events ------------------------------------------------------------------------------

    def _mask(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _write(self, text: str) -> None:
        if self._console is not None:
            self._console.print(self._mask(text), markup=False, highlight=False)
        else:
            self.stream.write(self._mask(text) + "\n")
            self.stream.flush()

    def __call__(self, event: RunEvent) -> None:
        self._last = event
        if self.mode == "quiet":
            return
        if self.mode == "json":
            self._write(json.dumps(event.to_dict(), ensure_ascii=False, default=str))
            return
        line = self._line_for(event)
        if line:
            self._write(line)
        if self.mode == "live" and self._live is not None:
            self._live.update(self._render(event))
        elif self.mode == "plain" and event.kind not in ("run_started", "run_finished"):
            now = time.monotonic()
            if now - self._last_line >= self._plain_interval:
                self._last_line = now
                self._write(f"[{format_duration(event.elapsed)}] {format_counts(event)}")

    def _line_for(self, event: RunEvent) -> str | None:
        if event.kind == "run_started":
            return f"run {event.run_id}: {event.jobs} jobs"
        if event.kind in ("run_finished", "run_aborted"):
            return f"[{format_duration(event.elapsed)}] {format_counts(event)}"
        label = _NOTABLE.get(event.kind)
        if label is None:
            return None
        where = f" {event.job}" if event.job else ""
        return f"{label}{where}: {event.message or ''}".rstrip(": ")

    def _render(self, event: RunEvent | None) -> Any:
        from rich.table import Table
        from rich.text import Text

        # markup resolved here, not when printed: lines printed above the live display are
        # printed without markup, and the display is re-rendered with them
        def cell(markup: str) -> Text:
            return Text.from_markup(markup)

        table = Table.grid(padding=(0, 2))
        if event is None:
            table.add_row(cell("starting…"))
            return table
        t = _tally(event)
        table.add_row(
            cell(f"[bold]{t['done']}[/]/{event.jobs} done"),
            cell(f"[red]{t['failed']} failed[/]"),
            cell(f"[cyan]{t['running']} running[/]"),
            cell(f"{t['queued']} queued"),
            cell(f"{t['waiting']} to send"),
        )
        table.add_row(
            cell(f"images {event.images}/{event.images_expected}"),
            cell(f"elapsed {format_duration(event.elapsed)}"),
            cell(f"ETA {format_duration(_Eta.estimate(event))}"),
            cell(""),
            cell(""),
        )
        return table
