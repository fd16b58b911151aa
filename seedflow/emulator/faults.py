"""Faults the emulator can inject, and when.

A :class:`Fault` names an endpoint (``submit``, ``status``, ``result``, ``cancel``, ``download``,
or ``job`` for faults of the job itself), a kind, and a trigger: a fraction of calls
(``rate``), every Nth call (``every``), or the next N calls (``next``). A fault with no trigger
fires on every call. Triggers are counted per fault, so two faults never disturb each other.

The textual form, used by ``seedflow emulator --fault``, is ``ENDPOINT:KIND[:KEY=VALUE,...]``::

    status:429:rate=0.2                 # a fifth of status calls answer 429 with Retry-After
    submit:drop:next=1                  # the next submit is accepted, but its answer is lost
    download:truncate:every=3           # every third download stops short of Content-Length
    result:error200:code=404001         # HTTP 200 carrying an error_code
    status:slow:delay=2.5,rate=0.1      # a tenth of status calls take 2.5 s longer
    job:fail:rate=0.5                   # half the jobs fail
    job:partial:every=2                 # every second job returns fewer images than asked
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["ENDPOINTS", "KINDS", "Fault", "Faults", "parse_fault"]

#: Where a fault can be attached. ``job`` faults act on the job, not on an HTTP call.
ENDPOINTS = ("submit", "status", "result", "cancel", "download", "job")

#: Every kind of fault, with the endpoints it applies to and what it does.
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "429": (ENDPOINTS[:5], "HTTP 429 with a Retry-After header (retry_after=SECONDS)"),
    "429-bare": (ENDPOINTS[:5], "HTTP 429 without Retry-After"),
    "500": (ENDPOINTS[:5], "HTTP 500"),
    "503": (ENDPOINTS[:5], "HTTP 503"),
    "error200": (
        ENDPOINTS[:4],
        "HTTP 200 carrying an error_code (code=N; default 400002 on submit, 404001 elsewhere)",
    ),
    "drop": (
        ENDPOINTS[:5],
        "close the connection without answering (a submit is still accepted first)",
    ),
    "slow": (ENDPOINTS[:5], "answer normally after delay=SECONDS (default 1)"),
    "truncate": (("download",), "send fewer bytes than Content-Length, then close"),
    "fail": (("job",), "the job fails with an error message"),
    "partial": (("job",), "the job returns half the images it was asked for (rounded down)"),
}


@dataclass
class Fault:
    """One fault: where, what, and when it fires.

    With none of ``rate``, ``every`` and ``next`` set the fault fires on every call.
    ``next`` counts down as the fault fires; at zero it never fires again.
    """

    endpoint: str
    kind: str
    rate: float | None = None
    every: int | None = None
    next: int | None = None
    delay: float = 1.0
    retry_after: int = 1
    code: int | None = None
    _calls: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(
                f"unknown endpoint {self.endpoint!r}: use one of {', '.join(ENDPOINTS)}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.endpoint not in KINDS[self.kind][0]:
            allowed = ", ".join(KINDS[self.kind][0])
            raise ValueError(f"fault {self.kind!r} applies to {allowed}, not {self.endpoint!r}")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, not {self.rate}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be at least 1, not {self.every}")
        if self.next is not None and self.next < 0:
            raise ValueError(f"next must not be negative, not {self.next}")

    def fires(self, rng: random.Random) -> bool:
        """Count one call and say whether the fault would hit it (``next`` is not used up)."""
        self._calls += 1
        if self.next is not None and self.next <= 0:
            return False
        if self.every is not None and self._calls % self.every != 0:
            return False
        return self.rate is None or rng.random() < self.rate

    def spend(self) -> None:
        """Record that the fault hit a call (counts down ``next``)."""
        if self.next is not None:
            self.next -= 1

    def error_code(self) -> int:
        """The error_code an ``error200`` fault carries."""
        if self.code is not None:
            return self.code
        return 400002 if self.endpoint == "submit" else 404001


@dataclass
class Faults:
    """Every fault the emulator injects. Mutable while the emulator runs.

    ``balance``: submits accepted before the account runs dry (402, error_code 400002);
    None = unlimited. ``file_ttl``: seconds after a job completes that its file URLs stay
    valid (then 403); None = forever.
    """

    rules: list[Fault] = field(default_factory=list)
    balance: int | None = None
    file_ttl: float | None = None

    def add(self, endpoint: str, kind: str, **trigger: float | None) -> Fault:
        """Add a fault and return it (so a test can inspect or remove it)."""
        fault = Fault(endpoint, kind, **trigger)  # type: ignore[arg-type]
        self.rules.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault (balance and file TTL included)."""
        self.rules.clear()
        self.balance = None
        self.file_ttl = None

    def pick(self, endpoint: str, rng: random.Random) -> Fault | None:
        """The first fault of ``endpoint`` that fires on this call, if any.

        Every fault of the endpoint counts the call, so ``every`` stays exact; only the chosen
        one uses up one of its ``next`` calls.
        """
        chosen: Fault | None = None
        for fault in self.rules:
            if fault.endpoint == endpoint and fault.fires(rng) and chosen is None:
                chosen = fault
        if chosen is not None:
            chosen.spend()
        return chosen


_FLOAT_KEYS = {"rate", "delay"}
_INT_KEYS = {"every", "next", "retry_after", "code"}


def parse_fault(text: str) -> Fault:
    """Read ``ENDPOINT:KIND[:KEY=VALUE,...]`` (see the module docstring); ValueError if wrong."""
    parts = text.strip().split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"fault {text!r} is not ENDPOINT:KIND[:KEY=VALUE,...]")
    endpoint, kind = parts[0].strip(), parts[1].strip()
    options: dict[str, float | int] = {}
    if len(parts) == 3 and parts[2].strip():
        for item in parts[2].split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in _FLOAT_KEYS | _INT_KEYS:
                known = ", ".join(sorted(_FLOAT_KEYS | _INT_KEYS))
                raise ValueError(f"fault option {item!r} in {text!r}: use KEY=VALUE with {known}")
            try:
                options[key] = float(value) if key in _FLOAT_KEYS else int(value)
            except ValueError:
                raise ValueError(
                    f"fault option {key}={value!r} in {text!r} is not a number"
                ) from None
    return Fault(endpoint, kind, **options)  # type: ignore[arg-type]
