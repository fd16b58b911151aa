"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from seedflow.emulator import EmulatorConfig, EmulatorHandle, serve

#: Fast enough for tests, slow enough that "in_progress" can be observed.
FAST_SETTINGS: dict[str, object] = {
    "queue_time": (0.0, 0.0),
    "processing_time": (0.05, 0.05),
    "concurrency": 4,
}


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., EmulatorHandle]]:
    """Start emulators on free ports: ``emulator_factory(EmulatorConfig(...))`` or keywords.

    Every emulator started this way stops at the end of the test.
    """
    with contextlib.ExitStack() as stack:

        def start(config: EmulatorConfig | None = None, **settings: object) -> EmulatorHandle:
            if config is None:
                config = EmulatorConfig(**{**FAST_SETTINGS, **settings})  # type: ignore[arg-type]
            return stack.enter_context(serve(config))

        yield start


@pytest.fixture
def emulator(emulator_factory: Callable[..., EmulatorHandle]) -> EmulatorHandle:
    """A fresh, fast emulator on loopback (any bearer token accepted)."""
    return emulator_factory()
