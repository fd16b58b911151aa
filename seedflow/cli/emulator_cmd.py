"""CLI commands: emulator."""

from __future__ import annotations

import ipaddress
import sys

import click

from ..emulator import KINDS, EmulatorConfig, Faults, parse_fault, parse_range, run
from ..errors import UsageError

_MODEL = "bytedance/seedream-4-0/sequential"


def _range(_ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        return parse_range(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _fault_help() -> str:
    kinds = "; ".join(f"{kind}: {what}" for kind, (_, what) in KINDS.items())
    return (
        "Inject a fault, ENDPOINT:KIND[:rate=R|every=N|next=N,...] (repeatable). ENDPOINT is "
        f"submit, status, result, cancel, download or job. KIND: {kinds}."
    )


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0 = any free port).",
)
@click.option(
    "--queue-time",
    default="0.5",
    show_default=True,
    callback=_range,
    metavar="S[-S]",
    help="Seconds a job waits in the queue (fixed or MIN-MAX).",
)
@click.option(
    "--processing-time",
    default="2-4",
    show_default=True,
    callback=_range,
    metavar="S[-S]",
    help="Seconds a job runs (fixed or MIN-MAX).",
)
@click.option(
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Jobs running at once; the rest wait in the queue.",
)
@click.option("--full-size", is_flag=True, help="Serve images at the requested size, not 256 px.")
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the emulator's own randomness (timing, faults, request ids).",
)
@click.option(
    "--token",
    envvar="SEEDFLOW_EMULATOR_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Accept only this bearer token (env SEEDFLOW_EMULATOR_TOKEN; default: any).",
)
@click.option("--fault", "faults", multiple=True, metavar="SPEC", help=_fault_help())
@click.option(
    "--balance",
    type=click.IntRange(min=0),
    default=None,
    help="Submits accepted before the balance runs out (then 402, error_code 400002).",
)
@click.option(
    "--file-ttl",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Output URLs expire this long after a job completes (then 403).",
)
def emulator_command(
    host: str,
    port: int,
    queue_time: tuple[float, float],
    processing_time: tuple[float, float],
    concurrency: int,
    full_size: bool,
    seed: int,
    token: str | None,
    faults: tuple[str, ...],
    balance: int | None,
    file_ttl: float | None,
) -> None:
    """Serve a local emulator of RunComfy's Model API (for offline runs and experiments).

    \b
    Example:
      seedflow emulator --port 8000 --processing-time 1-3 --fault status:429:rate=0.1
      seedflow run pipelines/sunset-study.yaml --base-url http://127.0.0.1:8000
    """
    try:
        rules = [parse_fault(spec) for spec in faults]
    except ValueError as exc:
        raise UsageError(f"--fault: {exc}", hint="see `seedflow emulator --help`") from None
    config = EmulatorConfig(
        queue_time=queue_time,
        processing_time=processing_time,
        concurrency=concurrency,
        image_size="full" if full_size else "small",
        seed=seed,
        token=token,
        faults=Faults(rules=rules, balance=balance, file_ttl=file_ttl),
    )

    def announce(base_url: str) -> None:
        _announce(base_url, host=host, token=token)

    try:
        run(config, host=host, port=port, on_start=announce)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another --port, or --port 0 for any free one",
        ) from None
    except KeyboardInterrupt:
        pass


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (so nobody else can reach the emulator)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _announce(base_url: str, *, host: str, token: str | None) -> None:
    """Print where the emulator listens and curl lines that work as printed (given the token)."""
    click.echo(f"seedflow emulator listening on {base_url} (Ctrl+C to stop)")
    if token:
        # The placeholder, not the value: the banner may land in a shared log or a screenshot.
        bearer = "$TOKEN"
        click.echo(
            "token: only the one given with --token (or SEEDFLOW_EMULATOR_TOKEN) is accepted;"
            " set TOKEN to it before running these lines"
        )
    else:
        bearer = "test"
        click.echo("token: any bearer token is accepted")
    click.echo("try:")
    click.echo(
        f"  curl -X POST {base_url}/v1/models/{_MODEL} \\\n"
        f'    -H "Authorization: Bearer {bearer}" -H "Content-Type: application/json" \\\n'
        """    -d '{"text": "Generate 3 images of a beautiful sunset over a calm ocean."}'"""
    )
    click.echo(
        f'  curl {base_url}/v1/requests/REQUEST_ID/status -H "Authorization: Bearer {bearer}"'
    )
    if not is_loopback(host):
        guard = "only the --token" if token else "ANY bearer token"
        click.echo(
            f"warning: listening on {host}, not loopback: the emulator is reachable from the network"
            f" and accepts {guard}. Use --host 127.0.0.1 unless other machines must reach it.",
            err=True,
        )
    sys.stdout.flush()  # whoever reads a pipe learns the address now, not at exit


commands: list[click.Command] = [emulator_command]
