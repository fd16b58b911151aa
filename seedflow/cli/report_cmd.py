"""CLI commands: report."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RunError
from ..report import find_run_dir, write_report
from ..store import JOURNAL, RunStore


@click.command("report")
@click.argument("run", metavar="RUN")
@click.option("--x", "x_axis", metavar="AXIS", default=None,
              help="Axis for the columns (default: the sweep axis with most values).")
@click.option("--y", "y_axis", metavar="AXIS", default=None,
              help="Axis for the rows (default: the sweep axis with the next most values).")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="OUT.png", help="Also write the grid as one labelled PNG contact sheet.")
@click.option("--open", "open_page", is_flag=True, help="Open the page in a browser.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs"), show_default=True, metavar="DIR",
              help="Where run ids are looked up.")
def report(
    run: str, x_axis: str | None, y_axis: str | None, sheet: Path | None, open_page: bool,
    out_dir: Path,
) -> None:
    """Write report.html into a run folder: the run's images as a grid by two sweep axes.

    RUN is a run folder (runs/<pipeline>/<run id>) or a run id under --out. The remaining axes
    and the seeds become pages; failed, cancelled and missing jobs keep their cells, marked
    with the reason. The page needs no server and no network: open it from disk, or zip the
    run folder and send it.

    \b
    Examples:
      seedflow report runs/sunset-study/20261125T170000Z-3f9a
      seedflow report 20261125T170000Z-3f9a --x style --y mood --sheet sheet.png --open
    """
    folder = find_run_dir(run, out_dir)
    page = write_report(folder, x=x_axis, y=y_axis, sheet=sheet, live=_is_live(folder))
    click.echo(f"report: {page}")
    if sheet is not None:
        click.echo(f"contact sheet: {sheet}")
    if open_page:
        click.launch(page.resolve().as_uri())


def _is_live(folder: Path) -> bool | None:
    """Whether a process drives the run now (its page then reloads itself); None when only the
    manifest can tell (a copied folder without its journal, or a journal that is unreadable).

    A crashed run's manifest still says "running": its page must not reload forever.
    """
    if not (folder / JOURNAL).is_file():
        return None
    try:
        with RunStore.open(folder, readonly=True) as store:
            return store.live_status() == "running"
    except RunError:
        return None


commands: list[click.Command] = [report]
