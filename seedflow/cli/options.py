"""Click options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def base_url_option(func: F) -> F:
    """``--base-url``: the API's address (default: RUNCOMFY_BASE_URL, else RunComfy's own)."""
    return click.option(
        "--base-url",
        envvar="RUNCOMFY_BASE_URL",
        default=None,
        metavar="URL",
        help="API base URL (env RUNCOMFY_BASE_URL; default https://model-api.runcomfy.net). "
        "Plain http:// is accepted only for loopback.",
    )(func)
