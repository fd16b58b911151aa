"""seedflow report: grid layout, thumbnails, the HTML page, the contact sheet and the command."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from PIL import Image
from report_fixtures import make_run

from seedflow.cli import cli
from seedflow.errors import RunError, UsageError
from seedflow.report import (
    build_grid,
    default_axes,
    load_manifest,
    make_thumbnails,
    reproduce_command,
    write_report,
    write_sheet,
)

AXES = {"style": ["oil", "watercolor", "pixel art"], "subject": ["fox", "owl"], "seed": [1, 2]}
# index of a job in make_run's product order: style outermost, then subject, then seed
FAILED, PARTIAL, CANCELLED, PENDING, UNKNOWN = 1, 3, 5, 7, 8


class PageParser(HTMLParser):
    """Collects what the tests look at: labels, cells, links and the embedded job data."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.col_labels: list[str] = []
        self.row_labels: list[str] = []
        self.cells: list[dict[str, str]] = []
        self.links: list[str] = []
        self.scripts: list[str] = []
        self._text: list[str] | None = None
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for name in ("src", "href"):
            if name in a:
                self.links.append(a[name])
        if tag == "th" and ("col-label" in a.get("class", "") or "row-label" in a.get("class", "")):
            self._text = []
            self.stack.append((tag, a))
        if tag == "td" and "cell" in a.get("class", ""):
            self.cells.append(a)
        if tag == "script":
            self._script = []
        if tag == "span" and self._text is not None and a.get("class") in ("axisname", "note"):
            self._skip = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self._text is not None:
            _, a = self.stack.pop()
            label = "".join(self._text).strip()
            (self.col_labels if "col-label" in a["class"] else self.row_labels).append(label)
            self._text = None
        if tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None
        if tag == "span":
            self._skip = False

    _skip = False

    def handle_data(self, data: str) -> None:
        if self._text is not None and not self._skip:
            self._text.append(data)
        if self._script is not None:
            self._script.append(data)


def parse(page: Path) -> PageParser:
    parser = PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def details(parser: PageParser) -> dict[str, Any]:
    data = next(s for s in parser.scripts if s.lstrip().startswith("{"))
    return json.loads(data)  # type: ignore[no-any-return]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path, axes=AXES, states={
        FAILED: "failed", PARTIAL: "partial", CANCELLED: "cancelled", PENDING: "pending",
        UNKNOWN: "unknown",
    })


# --- layout ---------------------------------------------------------------------------------


def sweep(axes: dict[str, list[Any]]) -> dict[str, Any]:
    """A bare manifest with one job per combination of ``axes``."""
    import itertools

    jobs = [{"variables": dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]
    return {"axes": axes, "jobs": jobs}


def test_default_axes_take_the_sweeps_with_most_values_and_leave_seeds_to_pages() -> None:
    manifest = sweep({"subject": ["fox", "owl"], "seed": [1, 2, 3, 4, 5],
                      "style": ["a", "b", "c"], "mood": ["x"]})
    assert default_axes(manifest) == ("style", "subject")
    assert build_grid(manifest).page_axes == ("seed",)  # mood has one value: no pages
    assert default_axes(sweep({"seed": [1, 2, 3], "style": ["a", "b"]})) == ("style", "seed")


def test_an_axis_that_follows_from_x_takes_neither_the_rows_nor_pages() -> None:
    manifest = sweep({"size": ["wide", "square", "tall"], "count": [3], "mood": ["calm", "wild"]})
    for job in manifest["jobs"]:  # an include ties count 4 to the tall size
        job["variables"]["count"] = 4 if job["variables"]["size"] == "tall" else 3
    manifest["axes"]["count"] = [3, 4]
    grid = build_grid(manifest)
    assert (grid.x, grid.y, grid.page_axes) == ("size", "mood", ())
    assert len(grid.pages) == 1 and all(c.entries for row in grid.pages[0].cells for c in row)


def test_every_job_has_exactly_one_cell_and_failures_keep_their_reason(run_dir: Path) -> None:
    manifest = load_manifest(run_dir)
    grid = build_grid(manifest, exists=lambda rel: (run_dir / rel).is_file())
    assert (grid.x, grid.y, grid.page_axes) == ("style", "subject", ("seed",))
    placed = [e.id for e in grid.entries()]
    assert sorted(placed) == sorted(j["id"] for j in manifest["jobs"])
    by_index = {e.job["index"]: e for e in grid.entries()}
    assert by_index[FAILED].status == "failed"
    assert "content policy" in (by_index[FAILED].reason or "")
    assert by_index[CANCELLED].status == "cancelled"
    assert by_index[PENDING].status == "waiting"
    assert by_index[UNKNOWN].status == "unknown" and "billed" in (by_index[UNKNOWN].reason or "")
    partial = by_index[PARTIAL]
    assert partial.status == "partial"
    assert [t.status for t in partial.tiles] == ["ok", "not_returned"]
    assert partial.reason == "1 of 2 images came back"


def test_cells_sit_at_their_axis_values_in_pipeline_order(run_dir: Path) -> None:
    grid = build_grid(load_manifest(run_dir))
    assert [p.title for p in grid.pages] == ["seed=1", "seed=2"]
    for page in grid.pages:
        assert [c.label for c in page.columns] == AXES["style"]
        assert [r.label for r in page.rows] == AXES["subject"]
        for r, row in enumerate(page.cells):
            for c, cell in enumerate(row):
                (entry,) = cell.entries
                variables = entry.job["variables"]
                assert variables["style"] == page.columns[c].label
                assert variables["subject"] == page.rows[r].label
                assert page.title == f"seed={variables['seed']}"


def test_outputs_of_one_job_stay_together_in_their_order(tmp_path: Path) -> None:
    run = make_run(tmp_path, axes={"style": ["a", "b"]}, images_per_job=4)
    manifest = load_manifest(run)
    manifest["jobs"][0]["outputs"].reverse()  # the manifest order must not matter
    grid = build_grid(manifest)
    for entry in grid.entries():
        assert [t.index for t in entry.tiles] == [0, 1, 2, 3]
        assert [t.path for t in entry.tiles] == sorted(t.path or "" for t in entry.tiles)


def test_axes_can_be_chosen_and_a_wrong_one_is_a_clear_error(run_dir: Path) -> None:
    manifest = load_manifest(run_dir)
    grid = build_grid(manifest, x="seed", y="style")
    assert (grid.x, grid.y, grid.page_axes) == ("seed", "style", ("subject",))
    assert build_grid(manifest, y="seed").x == "style"
    with pytest.raises(UsageError) as info:
        build_grid(manifest, x="colour")
    assert "colour" in str(info.value) and "style, subject, seed" in str(info.value)
    with pytest.raises(UsageError):
        build_grid(manifest, x="style", y="style")


def test_excluded_combinations_leave_an_empty_cell_not_a_shifted_grid(run_dir: Path) -> None:
    manifest = load_manifest(run_dir)
    manifest["jobs"] = [j for j in manifest["jobs"]
                        if not (j["variables"]["style"] == "oil" and j["variables"]["subject"] == "owl")]
    grid = build_grid(manifest)
    page = grid.pages[0]
    assert [r.label for r in page.rows] == ["fox", "owl"]
    assert page.cells[1][0].status == "empty"
    assert page.cells[1][1].entries[0].job["variables"]["style"] == "watercolor"


def test_missing_files_and_paths_outside_the_run_are_marked_missing(run_dir: Path) -> None:
    manifest = load_manifest(run_dir)
    first = manifest["jobs"][0]
    (run_dir / first["outputs"][0]["path"]).unlink()
    manifest["jobs"][2]["outputs"][0]["path"] = "../../etc/passwd"
    grid = build_grid(manifest, exists=lambda rel: (run_dir / rel).is_file())
    by_index = {e.job["index"]: e for e in grid.entries()}
    assert by_index[0].status == "missing" and by_index[0].tiles[0].status == "missing"
    assert by_index[2].status == "missing" and by_index[2].tiles[0].path is None
    assert "missing" in (by_index[0].reason or "")


def test_a_planned_job_absent_from_the_manifest_still_gets_a_cell(run_dir: Path) -> None:
    manifest = load_manifest(run_dir)
    lost = manifest["jobs"].pop(4)
    grid = build_grid(manifest, plan_jobs=[lost])
    entry = next(e for e in grid.entries() if e.id == lost["id"])
    assert entry.status == "failed" and "not in the manifest" in (entry.reason or "")
    assert any("not in the manifest" in p for p in grid.problems)


# --- thumbnails -----------------------------------------------------------------------------


def test_thumbnails_are_small_cached_by_sha256_and_reused(tmp_path: Path) -> None:
    run = make_run(tmp_path, axes={"style": ["a", "b"]}, size=(900, 600))
    grid = make_thumbnails(run, build_grid(load_manifest(run)))
    thumbs = sorted((run / "thumbs").iterdir())
    assert len(thumbs) == 4
    for tile in grid.tiles():
        assert tile.thumb is not None and tile.sha256 and tile.sha256 in tile.thumb
        with Image.open(run / tile.thumb) as image:
            assert max(image.size) <= 320 and image.size == (320, 213)
    stamps = {p: p.stat().st_mtime_ns for p in thumbs}
    os.utime(thumbs[0], ns=(1, 1))
    make_thumbnails(run, build_grid(load_manifest(run)))
    assert thumbs[0].stat().st_mtime_ns == 1  # not made again
    assert {p: p.stat().st_mtime_ns for p in thumbs[1:]} == {p: stamps[p] for p in thumbs[1:]}


def test_an_unreadable_image_marks_its_cell(run_dir: Path) -> None:
    manifest = load_manifest(run_dir)
    broken = manifest["jobs"][0]["outputs"][1]
    (run_dir / broken["path"]).write_bytes(b"not a png")
    broken["sha256"] = "f" * 64
    grid = make_thumbnails(run_dir, build_grid(manifest))
    entry = next(e for e in grid.entries() if e.job["index"] == 0)
    assert [t.status for t in entry.tiles] == ["ok", "unreadable"]
    assert entry.status == "missing" and "unreadable" in (entry.reason or "")


# --- the page -------------------------------------------------------------------------------


def test_page_has_a_cell_per_job_labels_from_the_axes_and_only_relative_links(
    run_dir: Path,
) -> None:
    page = write_report(run_dir)
    assert page == run_dir / "report.html"
    html = page.read_text(encoding="utf-8")
    parsed = parse(page)
    manifest = load_manifest(run_dir)
    jobs_in_cells = [j for c in parsed.cells for j in c["data-jobs"].split()]
    assert sorted(jobs_in_cells) == sorted(j["id"] for j in manifest["jobs"])
    assert parsed.col_labels == AXES["style"] * 2
    assert parsed.row_labels == AXES["subject"] * 2
    for cell in parsed.cells:
        job = next(j for j in manifest["jobs"] if j["id"] == cell["data-jobs"])
        assert (cell["data-x"], cell["data-y"]) == (job["variables"]["style"],
                                                    job["variables"]["subject"])
    images = [link for link in parsed.links if link]
    assert images, "the page links no image"
    for link in images:
        assert not re.match(r"^[a-z]+:|^/", link), link  # no scheme, no absolute path
        assert (run_dir / unquote(link)).is_file(), link
    assert str(run_dir) not in html and str(run_dir.parent.parent) not in html
    assert "http://" not in html.replace("http://127.0.0.1:9", "")  # only provenance URLs
    assert "<link" not in html and "@import" not in html  # nothing fetched from outside


def test_detail_data_has_prompt_variables_seed_request_id_sha256_and_command(
    run_dir: Path,
) -> None:
    parsed = parse(write_report(run_dir))
    data = details(parsed)
    manifest = load_manifest(run_dir)
    job = manifest["jobs"][0]
    shown = data[job["id"]]
    assert shown["prompt"] == job["input"]["text"]
    assert shown["variables"] == {k: str(v) for k, v in job["variables"].items()}
    assert shown["seed"] == job["seed"] and shown["request_id"] == job["request_id"]
    assert [t["sha256"] for t in shown["tiles"]] == [o["sha256"] for o in job["outputs"]]
    # no plan.json in this run folder, so no --set values to repeat
    assert shown["command"] == f"seedflow run pipelines/study.yaml --only {job['id']}"
    assert data[manifest["jobs"][FAILED]["id"]]["reason"].startswith("the service reported")


def test_reproduce_command_repeats_the_set_values_quoted_and_never_leaks_an_absolute_path() -> None:
    import shlex

    from seedflow.expand import parse_overrides

    manifest = {"pipeline": {"path": "/home/someone/secret/zipped.yaml"}}
    job = {"id": "ab12cd34ef56", "group": "hero"}
    overrides = {"product": "it's a mug; $(rm -rf ~) & more", "size": ["a", "b: c"], "n": 2,
                 "ratio": "16:9", "flag": "true", "empty": ""}
    command = reproduce_command(manifest, job, overrides)
    assert command == (
        "seedflow run pipeline.yaml --set 'product=it'\"'\"'s a mug; $(rm -rf ~) & more' "
        "--set 'size=[\"a\", \"b: c\"]' --set n=2 --set 'ratio=\"16:9\"' "
        "--set 'flag=\"true\"' --set 'empty=\"\"' --only ab12cd34ef56"
    )
    argv = shlex.split(command)
    sets = [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]
    parsed, problems = parse_overrides(sets)
    assert problems == [] and parsed == overrides  # the shell and --set read back every value
    assert "/home" not in command
    relative = {"pipeline": {"path": "pipelines/x y.yaml"}}
    assert reproduce_command(relative, job) == "seedflow run 'pipelines/x y.yaml' --only ab12cd34ef56"


def test_script_data_cannot_break_out_of_the_page(run_dir: Path) -> None:
    manifest = load_manifest(run_dir)
    manifest["jobs"][0]["input"]["text"] = "</script><script>alert(1)</script> <b>&amp;"
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    page = write_report(run_dir)
    html = page.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html
    data = details(parse(page))
    assert data[manifest["jobs"][0]["id"]]["prompt"].startswith("</script><script>")


def test_unfinished_run_page_reloads_itself_and_a_finished_one_does_not(tmp_path: Path) -> None:
    live = make_run(tmp_path / "a", axes={"style": ["a", "b"]}, ended=False, states={1: "running"})
    done = make_run(tmp_path / "b", axes={"style": ["a", "b"]})
    live_html = write_report(live).read_text(encoding="utf-8")
    done_html = write_report(done).read_text(encoding="utf-8")
    assert "location.reload()" in live_html and 'http-equiv="refresh"' in live_html
    assert "location.reload()" not in done_html and "refresh" not in done_html.lower().replace(
        "refreshes", "")
    assert "location.reload()" not in write_report(live, live=False).read_text(encoding="utf-8")


def test_report_fills_in_as_the_manifest_changes(tmp_path: Path) -> None:
    run = make_run(tmp_path, axes={"style": ["a", "b"]}, ended=False, states={1: "running"})
    manifest = load_manifest(run)
    first = parse(write_report(run, manifest=manifest))
    assert sum("thumbs/" in link for link in first.links) == 2
    done = make_run(tmp_path / "later", axes={"style": ["a", "b"]})
    manifest["jobs"][1] = load_manifest(done)["jobs"][1]
    for out in manifest["jobs"][1]["outputs"]:
        target = run / out["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((done / out["path"]).read_bytes())
    second = parse(write_report(run, manifest=manifest))
    assert sum("thumbs/" in link for link in second.links) == 4


def test_header_shows_pipeline_model_totals_duration_and_cost(run_dir: Path) -> None:
    html = write_report(run_dir).read_text(encoding="utf-8")
    for text in ("study", "bytedance/seedream-4-0/sequential", "2 min 05 s", "0.65 USD",
                 "1 failed", "1 partial", "1 cancelled", "15", "of 24 requested"):
        assert text in html, text


def test_a_broken_manifest_is_a_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, axes={"style": ["a", "b"]})
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["jobs"][0]["state"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match=r"manifest.json: not a seedflow manifest: at \$\.jobs\[0\]"):
        load_manifest(run)
    (run / "manifest.json").write_text("{")
    with pytest.raises(RunError, match="not valid JSON"):
        load_manifest(run)
    with pytest.raises(RunError, match="no manifest.json"):
        load_manifest(tmp_path)


# --- contact sheet --------------------------------------------------------------------------


def test_contact_sheet_draws_every_cell_with_its_status_colour(run_dir: Path) -> None:
    out = run_dir.parent / "sheet.png"
    write_report(run_dir, sheet=out)
    with Image.open(out) as sheet:
        width, height = sheet.size
        rgb = sheet.convert("RGB")
        colours = {rgb.getpixel((x, y)) for x in range(0, width, 7) for y in range(0, height, 7)}
    assert width > 3 * 2 * 160 and height > 4 * 160  # 3 columns of 2 images, 2 pages × 2 rows
    assert (253, 226, 226) in colours  # the failed cell
    assert (232, 240, 252) in colours  # the waiting cell
    grid = make_thumbnails(run_dir, build_grid(load_manifest(run_dir), x="subject", y="style"))
    tall = write_sheet(run_dir, grid, run_dir.parent / "tall.png")
    with Image.open(tall) as image:
        assert image.height > height  # 3 rows per page now


# --- the command ----------------------------------------------------------------------------


def test_command_writes_the_page_and_sheet_from_a_run_id(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    sheet = tmp_path / "out" / "sheet.png"
    result = runner.invoke(cli, ["report", run_dir.name, "--out", str(tmp_path / "runs"),
                                 "--x", "subject", "--y", "seed", "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and sheet.is_file()
    parsed = parse(run_dir / "report.html")
    assert parsed.col_labels[:2] == ["fox", "owl"] and parsed.row_labels[:2] == ["1", "2"]


def test_command_errors_are_messages_not_tracebacks(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["report", str(run_dir), "--x", "colour"])
    assert result.exit_code == 2
    assert "no such axis" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["report", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "no run 'nope'" in result.output


def test_a_sheet_that_cannot_be_written_is_a_message_naming_its_path(
    run_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("")
    sheet = tmp_path / "afile" / "x.png"  # its folder cannot exist: the parent is a file
    with pytest.raises(UsageError, match="cannot write the contact sheet .*afile/x.png"):
        write_report(run_dir, sheet=sheet)
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--sheet", str(sheet)])
    assert result.exit_code == 2 and str(sheet) in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_a_message(run_dir: Path) -> None:
    os.chmod(run_dir, 0o555)
    try:
        with pytest.raises(RunError, match=f"cannot write the report into {run_dir}"):
            write_report(run_dir)
    finally:
        os.chmod(run_dir, 0o755)


def test_report_files_are_readable_by_others_as_the_umask_allows(run_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        page = write_report(run_dir, sheet=run_dir.parent / "sheet.png")
    finally:
        os.umask(old)
    thumbs = list((run_dir / "thumbs").iterdir())
    assert thumbs
    for path in [page, run_dir.parent / "sheet.png", *thumbs[:3]]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert not list(run_dir.glob(".*.tmp"))
    old = os.umask(0o077)
    try:
        write_report(run_dir)
    finally:
        os.umask(old)
    assert page.stat().st_mode & 0o777 == 0o600  # a stricter umask is respected


# --- reports of real runs against the emulator -------------------------------------------------

SUNSET = Path(__file__).resolve().parent.parent / "pipelines" / "sunset-study.yaml"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seedflow.executor import run_pipeline
    from seedflow.report import LiveReport

    root = tmp_path_factory.mktemp("real")
    pipeline = root / "sunset-study.yaml"
    pipeline.write_text(SUNSET.read_text(encoding="utf-8"), encoding="utf-8")
    live = LiveReport(min_interval=0.05)
    summary = run_pipeline(pipeline, out=root / "runs", offline=True, on_event=live)
    assert summary.exit_code == 0
    assert live.errors == [] and live.page is not None
    return live.page.parent


def test_report_of_a_real_run_has_every_job_and_links_only_files_of_the_run(
    real_run: Path,
) -> None:
    page = real_run / "report.html"
    html = page.read_text(encoding="utf-8")
    manifest = load_manifest(real_run)
    parsed = parse(page)
    jobs_in_cells = [j for c in parsed.cells for j in c["data-jobs"].split()]
    assert sorted(jobs_in_cells) == sorted(j["id"] for j in manifest["jobs"])
    # x = size (3 values); count follows from size (an include), so mood takes the rows
    sizes = manifest["axes"]["size"]
    assert parsed.col_labels == sizes * 2 and parsed.row_labels == ["beautiful", "stormy"] * 2
    grid = build_grid(manifest)
    assert [c.note for c in grid.pages[-1].columns] == ["count=3", "count=3", "count=4"]
    assert "location.reload()" not in html  # the run has ended: the last write is static
    for link in parsed.links:
        assert not re.match(r"^[a-z]+:|^/", link) and (real_run / unquote(link)).is_file(), link
    images = sum(len(j["outputs"]) for j in manifest["jobs"])
    assert sum(link.startswith("thumbs/") for link in parsed.links) == images
    assert str(real_run.parent.parent) not in html  # no path of this machine


PRODUCTS = SUNSET.parent / "product-shots.yaml"
# --set values a shell and YAML could both misread; count reaches both job groups
PRODUCT_SETS = ("product=a red mug; it's \"glossy\" & $HOME", "count=2")


@pytest.fixture(scope="module")
def set_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline run of a pipeline with `jobs:` groups, planned with --set values."""
    root = tmp_path_factory.mktemp("sets")
    pipeline = root / "product-shots.yaml"
    pipeline.write_text(PRODUCTS.read_text(encoding="utf-8"), encoding="utf-8")
    sets = [word for item in PRODUCT_SETS for word in ("--set", item)]
    result = CliRunner().invoke(
        cli, ["run", str(pipeline), *sets, "--offline", "--quiet", "--out", str(root / "runs")]
    )
    assert result.exit_code == 0, result.output
    (folder,) = [p.parent for p in (root / "runs").glob("*/*/manifest.json")]
    write_report(folder)
    return folder


def _command_words(run_dir: Path, job_id: str) -> list[str]:
    import shlex

    return shlex.split(details(parse(run_dir / "report.html"))[job_id]["command"])


@pytest.mark.parametrize("run", ["real_run", "set_run"])
def test_every_reproduce_command_plans_exactly_its_job(
    run: str, request: pytest.FixtureRequest
) -> None:
    from seedflow.plan import plan_file

    run_dir: Path = request.getfixturevalue(run)
    manifest = load_manifest(run_dir)
    assert len(manifest["jobs"]) > 1
    if run == "set_run":
        assert len({j["group"] for j in manifest["jobs"]}) == 2
    for job in manifest["jobs"]:
        argv = _command_words(run_dir, job["id"])
        assert argv[:3] == ["seedflow", "run", "pipeline.yaml"]  # the original path is absolute
        sets = [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]
        assert sets == ([] if run == "real_run" else list(PRODUCT_SETS))
        assert argv[-2:] == ["--only", job["id"]] and argv.count("--only") == 1
        plan = plan_file(run_dir / "pipeline.yaml", overrides=sets, only=[job["id"]])
        assert [(j.id, j.input) for j in plan.jobs] == [(job["id"], job["input"])], job["name"]


def test_a_reproduce_command_run_offline_makes_the_same_job_again(
    set_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = load_manifest(set_run)["jobs"][-1]  # a job of the second group, derived seed
    argv = _command_words(set_run, original["id"])
    assert argv[:2] == ["seedflow", "run"]
    monkeypatch.chdir(set_run)  # where the page says to run it: pipeline.yaml is the copy
    result = CliRunner().invoke(
        cli, [*argv[1:], "--offline", "--quiet", "--out", str(tmp_path / "again")]
    )
    assert result.exit_code == 0, result.output
    (folder,) = [p.parent for p in (tmp_path / "again").glob("*/*/manifest.json")]
    (job,) = load_manifest(folder)["jobs"]
    assert (job["id"], job["name"], job["input"], job["seed"]) == (
        original["id"], original["name"], original["input"], original["seed"]
    )
    assert job["state"] == "completed" and len(job["outputs"]) == 2


def test_thumbnails_are_turned_upright_from_exif(tmp_path: Path) -> None:
    from seedflow.report import _thumbnail

    image = Image.new("RGB", (800, 400), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated a quarter turn: portrait
    image.save(tmp_path / "photo.jpg", exif=exif)
    assert _thumbnail(tmp_path / "photo.jpg", tmp_path / "thumb.jpg", 320)
    with Image.open(tmp_path / "thumb.jpg") as thumb:
        assert thumb.size == (160, 320)


def test_live_report_reloads_while_running_and_ends_static(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from seedflow.report import LiveReport

    run = make_run(tmp_path, axes={"style": ["a", "b"]}, ended=False, states={1: "running"})
    seen: list[str] = []
    live = LiveReport(min_interval=0.01, chain=lambda event: seen.append(event.kind))
    live(SimpleNamespace(kind="job_completed"))  # before the run started: nothing to write
    assert not (run / "report.html").exists()
    live(SimpleNamespace(kind="run_started", message=str(run)))
    live(SimpleNamespace(kind="job_completed"))
    import time

    deadline = time.monotonic() + 10
    while not (run / "report.html").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "location.reload()" in (run / "report.html").read_text(encoding="utf-8")
    live(SimpleNamespace(kind="run_aborted", message=str(run)))  # interrupted: nothing will
    assert "location.reload()" not in (run / "report.html").read_text(encoding="utf-8")
    assert seen == ["job_completed", "run_started", "job_completed", "run_aborted"]
    assert live.errors == []


def test_live_report_keeps_errors_instead_of_breaking_the_run(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from seedflow.report import LiveReport

    live = LiveReport(x="nope")
    live(SimpleNamespace(kind="run_started", message=str(tmp_path)))
    live(SimpleNamespace(kind="run_finished", message=str(tmp_path)))
    assert live.errors and "manifest" in live.errors[-1]


def test_the_page_of_a_crashed_run_does_not_reload_forever(tmp_path: Path) -> None:
    from seedflow.plan import plan_file
    from seedflow.store import RunStore

    store = RunStore.create(tmp_path, plan_file(SUNSET), base_url="http://127.0.0.1:1")
    try:
        store.lock()  # a live run: its page fills in as images arrive
        result = CliRunner().invoke(cli, ["report", str(store.path)])
        assert result.exit_code == 0, result.output
        assert "location.reload()" in (store.path / "report.html").read_text(encoding="utf-8")
        store.unlock()  # as if its process died: the journal still says it has not ended
        result = CliRunner().invoke(cli, ["report", str(store.path)])
        assert result.exit_code == 0, result.output
        assert "location.reload()" not in (store.path / "report.html").read_text(encoding="utf-8")
    finally:
        store.close()
