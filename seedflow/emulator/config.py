"""How an emulator behaves: latency, concurrency, image size, token and faults."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from .faults import Faults

__all__ = ["EmulatorConfig", "parse_range"]


def parse_range(text: str) -> tuple[float, float]:
    """``"0.5"`` -> (0.5, 0.5); ``"0.5-2"`` -> (0.5, 2.0). ValueError when it is neither."""
    low, sep, high = text.strip().partition("-")
    try:
        values = (float(low), float(high) if sep else float(low))
    except ValueError:
        raise ValueError(f"{text!r} is not SECONDS or MIN-MAX (e.g. 0.5 or 0.5-2)") from None
    if values[0] < 0 or values[1] < values[0]:
        raise ValueError(f"{text!r}: need 0 <= MIN <= MAX")
    return values


@dataclass
class EmulatorConfig:
    """Settings of one emulator. Every field may be changed while it runs.

    ``queue_time`` and ``processing_time`` are (min, max) seconds, drawn uniformly per job:
    a job waits at least its queue time before it may start, then runs when one of the
    ``concurrency`` slots is free. ``token``: when set, only this bearer token is accepted
    (any non-empty one otherwise). ``seed`` makes timing, faults, request ids and the seeds of
    jobs that send none reproducible.
    """

    queue_time: tuple[float, float] = (0.0, 0.0)
    processing_time: tuple[float, float] = (0.05, 0.05)
    concurrency: int = 4
    image_size: Literal["small", "full"] = "small"
    seed: int = 0
    token: str | None = None
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        for name in ("queue_time", "processing_time"):
            low, high = getattr(self, name)
            if low < 0 or high < low:
                raise ValueError(
                    f"{name} must be (min, max) with 0 <= min <= max, not {(low, high)}"
                )
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.image_size not in ("small", "full"):
            raise ValueError(f"image_size must be 'small' or 'full', not {self.image_size!r}")

    def __repr__(self) -> str:
        # The token never appears in a repr, even the emulator's.
        token = "***" if self.token else None
        return (
            f"EmulatorConfig(queue_time={self.queue_time}, processing_time={self.processing_time},"
            f" concurrency={self.concurrency}, image_size={self.image_size!r}, seed={self.seed},"
            f" token={token}, faults={self.faults!r})"
        )

    def draw(self, bounds: tuple[float, float], rng: random.Random) -> float:
        """A duration within ``bounds`` (the bounds themselves when they are equal)."""
        low, high = bounds
        return low if high <= low else rng.uniform(low, high)
