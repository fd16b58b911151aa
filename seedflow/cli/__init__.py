"""The ``seedflow`` command line: thin click commands over the importable Python API.

Each command module exposes ``commands``; this module only assembles them and turns a
:class:`~seedflow.errors.SeedflowError` into a message and an exit code (never a traceback).
"""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from ..errors import PipelineError, SeedflowError


class SeedflowGroup(click.Group):
    """A click group that shows seedflow's errors as messages, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            # each problem already reads "file:line: error ...", as compilers print them
            click.echo(exc.format_message(), err=True)
            ctx.exit(exc.exit_code)
        except SeedflowError as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=SeedflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seedflow")
def cli() -> None:
    """Declarative, reproducible image-generation runs on RunComfy's Model API.

    \b
    Quick start (offline, no token needed):
      seedflow validate pipelines/sunset-study.yaml
      seedflow plan pipelines/sunset-study.yaml
      seedflow run pipelines/sunset-study.yaml --offline
    """


def _register() -> None:
    from . import emulator_cmd, pipeline_cmds, report_cmd, run_cmds

    for module in (pipeline_cmds, emulator_cmd, run_cmds, report_cmd):
        for command in module.commands:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="seedflow")
