"""CLI commands: run, resume, runs, status."""

from __future__ import annotations

import click

commands: list[click.Command] = []
