"""CLI commands: validate, plan, init, models, schema."""

from __future__ import annotations

import click

commands: list[click.Command] = []
