"""A local emulator of RunComfy's Model API queue, served over real HTTP on loopback.

::

    from seedflow.emulator import EmulatorConfig, Faults, serve

    with serve(EmulatorConfig(processing_time=(0.05, 0.05), concurrency=4)) as emu:
        emu.base_url          # "http://127.0.0.1:PORT"; any bearer token is accepted
        emu.config.faults.add("status", "429", next=2)   # switch faults on mid-test
        emu.stats.submits_by_input                       # what was received, per input
        emu.requests                                     # request_id -> RequestRecord

``create_app`` gives the bare ASGI app (for ``httpx.ASGITransport``); ``run`` serves in the
foreground, as ``seedflow emulator`` does.
"""

from __future__ import annotations

from .app import ConnectionDropped, EmulatorState, create_app
from .config import EmulatorConfig, parse_range
from .faults import ENDPOINTS, KINDS, Fault, Faults, parse_fault
from .images import image_dimensions, render_png
from .server import EmulatorHandle, run, serve
from .state import RequestRecord, Stats, canonical_json

__all__ = [
    "ENDPOINTS",
    "KINDS",
    "ConnectionDropped",
    "EmulatorConfig",
    "EmulatorHandle",
    "EmulatorState",
    "Fault",
    "Faults",
    "RequestRecord",
    "Stats",
    "canonical_json",
    "create_app",
    "image_dimensions",
    "parse_fault",
    "parse_range",
    "render_png",
    "run",
    "serve",
]
