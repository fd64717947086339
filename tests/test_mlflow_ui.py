"""The MLflow UI, proven in a real browser: stage runs and a bisection, as a user sees them.

A real tiny pipeline run (`dvc repro`) and a real `segbisect` bisection fill a SQLite tracking store; a real
`mlflow server` serves it on a free loopback port; headless Debian Chromium, driven by Playwright, opens the
experiment's runs page, picks the metric columns in the UI, expands the bisection's parent run and reads the
table. Nothing is asserted from the database alone: the store only tells the test which run ids to look for.

A second store holds the README's walkthrough in small: the tiny pipeline reproduced, then reproduced again with
the broken label map. From MLflow's Home page the test follows the README's clicks to the runs table, adds the
README's columns, and compares the two evaluate runs.

The bisection's own report.html is opened from its file in the same browser.

Screenshots go to a results dir (printed; `MLFLOW_UI_RESULTS=DIR` picks it). With `SAVE_SCREENSHOT=1` they are
also copied to docs/img/mlflow-ui.png (stage runs), docs/img/mlflow-ui-bisection.png (bisection),
docs/img/mlflow-ui-compare.png (the walkthrough's two evaluate runs compared) and docs/img/segbisect-report.png
(report.html).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.scratch import ROOT
from support import ThresholdBisection
from test_tracking_configuration import LabelMapStore, load_label_map_store, stage_runs
from ui_server import (
    CHROMIUM,
    RUN_NAME_COL,
    MlflowServer,
    chromium_page,
    close_assistant,
    compare_section,
    compare_selected,
    compared_run_ids,
    expand_parent,
    header_ids,
    metric_col,
    open_runs_table_from_home,
    open_runs_table_through_overview,
    port_in_use,
    row_cell,
    runs_url,
    set_columns,
    shown_number,
    tag_col,
    widen,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} missing: install Debian's chromium (apt-get install chromium) for the MLflow UI test",
    ),
]

STAGES = ["synthesize", "prepare", "preprocess", "train", "evaluate"]
KEY_METRICS = ["mean_iou", "foreground_fraction"]
# The columns the README has a user add to the runs table, and the tags its walkthrough reads.
README_METRICS = ["mean_iou", "all_zero_symptom", "absent_classes", "foreground_fraction"]
README_TAGS = ["diagnosis", "diagnosis.cause"]
EXPERIMENT = "wise-deeplabv3plus"
UI_TIMEOUT_MS = 30_000


@dataclass
class Store:
    root: Path
    uri: str
    repo: Path
    stage_runs: dict[str, Any] = field(default_factory=dict)  # stage -> mlflow Run


@dataclass
class Bisection:
    parent: Any
    children: list[Any]
    output: str


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def all_runs(uri: str) -> list[Any]:
    c = client(uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=1000)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = (
        Path(os.environ["MLFLOW_UI_RESULTS"])
        if os.environ.get("MLFLOW_UI_RESULTS")
        else tmp_path_factory.mktemp("mlflow-ui-results")
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def store(threshold_bisection: ThresholdBisection) -> Store:
    """The store filled by a real tiny pipeline run (and a real bisection), committed like a user would."""
    uri = threshold_bisection.uri
    runs = [r for r in all_runs(uri) if "stage" in r.data.tags and "segbisect.session" not in r.data.tags]
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert sorted(by_stage) == sorted(STAGES) and len(runs) == len(STAGES), [r.info.run_name for r in runs]
    return Store(threshold_bisection.root, uri, threshold_bisection.repo, by_stage)


@pytest.fixture(scope="module")
def bisection(store: Store, threshold_bisection: ThresholdBisection) -> Bisection:
    """The real `segbisect good bad --repo PATH` whose BAD evaluate threshold hides every foreground pixel."""
    output = threshold_bisection.output
    assert threshold_bisection.returncode == 0, f"segbisect exited {threshold_bisection.returncode}:\n{output}"
    runs = all_runs(store.uri)
    children: dict[str, list[Any]] = {}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            children.setdefault(run.data.tags["mlflow.parentRunId"], []).append(run)
    parents = [r for r in runs if r.info.run_id in children and r.data.tags.get("segbisect.role") == "session"]
    assert len(parents) == 1, f"expected one bisection parent run with child runs, found {len(parents)}:\n{output}"
    parent = parents[0]
    return Bisection(parent, sorted(children[parent.info.run_id], key=lambda r: r.info.start_time), output)


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` on the store; stopped (process group killed, port checked free) even when a test fails."""
    srv = MlflowServer(store.uri, tmp_path_factory.mktemp("mlflow-server") / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def walkthrough_store(tmp_path_factory: pytest.TempPathFactory) -> LabelMapStore:
    """The quick start's run and the walkthrough's broken one, in small (see tests/test_tracking_configuration.py)."""
    return load_label_map_store(tmp_path_factory)


@pytest.fixture(scope="module")
def walkthrough_server(
    walkthrough_store: LabelMapStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    srv = MlflowServer(walkthrough_store.uri, tmp_path_factory.mktemp("mlflow-server") / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()


def save(page: Any, results_dir: Path, name: str, docs_name: str) -> Path:
    path = results_dir / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("SAVE_SCREENSHOT") == "1":
        docs = ROOT / "docs" / "img" / docs_name
        docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs)
    print(f"screenshot: {path}")
    return path


@contextmanager
def screenshot_on_failure(page: Any, results_dir: Path, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path = results_dir / f"FAILED-{name}"
        try:
            page.screenshot(path=str(path), full_page=True)
            print(f"failure screenshot: {path}")
        except Exception:  # the browser itself may be what failed
            pass
        raise


def open_runs(page: Any, base: str, experiment_id: str, wait_for: list[str], search_filter: str | None = None) -> None:
    """Load an experiment's runs page (optionally filtered) and wait until the named runs are drawn."""
    page.goto("about:blank")  # a full load, not an in-app hash change, so the URL alone must carry the filter
    page.goto(runs_url(base, experiment_id, search_filter))
    for name in wait_for:
        page.get_by_text(name, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)


def assert_row(page: Any, run: Any, metrics: list[str] = (), tags: list[str] = ()) -> None:
    """The run's row shows its name, its metric values (as the UI rounds them) and its tag values."""
    name = row_cell(page, run.info.run_id, RUN_NAME_COL)
    name.wait_for(timeout=UI_TIMEOUT_MS)
    assert run.info.run_name in name.inner_text(), f"row {run.info.run_id} shows {name.inner_text()!r}"
    for key in metrics:
        cell = row_cell(page, run.info.run_id, metric_col(key))
        assert cell.is_visible(), f"{key} cell of {run.info.run_name} not visible"
        expected = run.data.metrics[key]
        shown = shown_number(cell.inner_text())
        assert shown == pytest.approx(expected, abs=max(1e-3, abs(expected) * 1e-2)), (
            run.info.run_name,
            key,
            cell.inner_text(),
        )
    for key in tags:
        cell = row_cell(page, run.info.run_id, tag_col(key))
        assert cell.is_visible(), f"tag {key} cell of {run.info.run_name} not visible"
        assert run.data.tags[key] in cell.inner_text(), (run.info.run_name, key, cell.inner_text())


def assert_headers(page: Any, keys: list[str]) -> None:
    for key in keys:
        header = page.get_by_test_id(f"sort-header-{key}")
        header.wait_for(timeout=UI_TIMEOUT_MS)
        assert header.is_visible(), f"column {key} not visible"


def shown_run_ids(page: Any) -> set[str]:
    """Run ids of the rows drawn now, read in one go (the grid re-renders rows while a search settles)."""
    return set(page.locator(".ag-row[row-id]").evaluate_all("rows => rows.map(r => r.getAttribute('row-id'))"))


def search(page: Any, text: str, expected: set[str]) -> None:
    """Type a filter into the runs search box like a user, and wait until the table shows exactly `expected`."""
    box = page.get_by_test_id("search-box")
    box.fill(text)
    # The box is an autocomplete: while its suggestion list is open, Enter goes to the list, not to the search.
    box.press("Escape")
    assert box.input_value() == text
    box.press("Enter")
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while (shown := shown_run_ids(page)) != expected:
        assert time.monotonic() < deadline, f"filter {text!r}: table shows {sorted(shown)}, expected {sorted(expected)}"
        page.wait_for_timeout(250)
    page.wait_for_timeout(500)  # the count of matching runs and cells settle after the rows


def test_stage_runs_of_a_configuration_in_the_ui(store: Store, server: MlflowServer, results_dir: Path) -> None:
    runs = store.stage_runs
    evaluate = runs["evaluate"]
    experiment_id = evaluate.info.experiment_id
    chash = evaluate.data.tags["config_hash"]
    names = [runs[s].info.run_name for s in STAGES]
    with chromium_page() as page, screenshot_on_failure(page, results_dir, "mlflow-ui-stages.png"):
        open_runs(page, server.url, experiment_id, names)
        close_assistant(page)
        missing = set_columns(page, [*KEY_METRICS, "stage", "config_hash"])
        assert not missing, f"not offered in the Columns picker: {missing}"
        assert_headers(page, KEY_METRICS)
        for stage in STAGES:
            assert_row(page, runs[stage], tags=["stage", "config_hash"])
        assert_row(page, evaluate, metrics=KEY_METRICS)
        for col, pixels in [
            (RUN_NAME_COL, 40),
            (metric_col("foreground_fraction"), 40),
            (metric_col("mean_iou"), 20),
            (tag_col("config_hash"), 20),
        ]:
            widen(page, col, pixels)
        save(page, results_dir, "mlflow-ui-stages.png", "mlflow-ui.png")

        # The filter strings the README gives: one stage across configurations, then one configuration's stage runs.
        search(page, 'tags.stage = "evaluate"', {evaluate.info.run_id})
        assert_row(page, evaluate, metrics=KEY_METRICS)
        search(page, f'tags.config_hash = "{chash}"', {r.info.run_id for r in runs.values()})
        # ...and the same as a URL, as the README can link it.
        open_runs(page, server.url, experiment_id, names, f'tags.config_hash = "{chash}"')
        assert shown_run_ids(page) == {r.info.run_id for r in runs.values()}


def test_bisection_parent_and_hybrid_runs_in_the_ui(
    store: Store, bisection: Bisection, server: MlflowServer, results_dir: Path
) -> None:
    parent, children = bisection.parent, bisection.children
    session = parent.data.tags["segbisect.session"]
    experiment_id = parent.info.experiment_id
    assert children, bisection.output
    assert all(c.info.experiment_id == experiment_id for c in children)
    # Columns worth seeing for hybrids: the key metrics, the verdict and the side of each stage that differs.
    sides = sorted({k for c in children for k in c.data.tags if k.startswith("side.")})
    varying = [k for k in sides if len({c.data.tags.get(k) for c in children}) > 1]
    child_tags = sorted({k for c in children for k in c.data.tags if k == "outcome"}) + (varying or sides)
    with chromium_page() as page, screenshot_on_failure(page, results_dir, "mlflow-ui-bisection.png"):
        open_runs(page, server.url, experiment_id, [parent.info.run_name], f'tags.`segbisect.session` = "{session}"')
        close_assistant(page)
        missing = set_columns(page, [*KEY_METRICS, *child_tags])
        assert not missing, f"not offered in the Columns picker: {missing}"
        assert_headers(page, KEY_METRICS)
        if not shown_run_ids(page) >= {c.info.run_id for c in children}:  # parents start collapsed
            expand_parent(page, parent.info.run_id)
        for child in children:
            row_cell(page, child.info.run_id, RUN_NAME_COL).wait_for(timeout=UI_TIMEOUT_MS)
        assert shown_run_ids(page) >= {parent.info.run_id, *(c.info.run_id for c in children)}
        # The session filter also finds the stage runs the hybrids logged, nested under the hybrid that ran them.
        matching = client(store.uri).search_runs(
            [experiment_id], f"tags.`segbisect.session` = '{session}'", max_results=1000
        )
        stage_runs = [r for r in matching if r.data.tags.get("segbisect.role") is None]
        hybrids = {c.info.run_id for c in children}
        assert stage_runs and all(r.data.tags.get("mlflow.parentRunId") in hybrids for r in stage_runs)
        for hybrid in sorted({r.data.tags["mlflow.parentRunId"] for r in stage_runs}):
            if not shown_run_ids(page) >= {
                r.info.run_id for r in stage_runs if r.data.tags["mlflow.parentRunId"] == hybrid
            }:
                expand_parent(page, hybrid)
        for stage_run in stage_runs:
            row_cell(page, stage_run.info.run_id, RUN_NAME_COL).wait_for(timeout=UI_TIMEOUT_MS)
        assert shown_run_ids(page) >= {r.info.run_id for r in matching}
        assert_row(page, parent)
        for child in children:
            assert_row(
                page,
                child,
                metrics=[k for k in KEY_METRICS if k in child.data.metrics],
                tags=[k for k in child_tags if k in child.data.tags],
            )
        assert any(all(k in c.data.metrics for k in KEY_METRICS) for c in children), "no hybrid logged the key metrics"
        widen(page, RUN_NAME_COL, 200)
        widen(page, metric_col("foreground_fraction"), 40)
        save(page, results_dir, "mlflow-ui-bisection.png", "mlflow-ui-bisection.png")


def test_report_html_in_the_browser(threshold_bisection: ThresholdBisection, results_dir: Path) -> None:
    """The report renders in Chromium from the file alone: the verdict is on the page, every image decodes, and
    each test image GOOD drew stands beside BAD's and the culprit hybrid's drawing of the same image.
    """
    report = threshold_bisection.report
    sides = [s["label"] for s in report["figures"]["sides"]]
    assert sides == ["GOOD", "BAD", "culprit"], report["figures"]
    overlays = [i for i in report["figures"]["images"] if i["path"].startswith("reports/figures/overlays/")]
    assert len(overlays) == 2, "GOOD draws two test images"
    expected_images = sum(kept is not None for image in report["figures"]["images"] for kept in image["kept"])
    with chromium_page() as page, screenshot_on_failure(page, results_dir, "segbisect-report.png"):
        page.goto((Path(report["results_dir"]) / "report.html").as_uri())
        assert "Verdict: culprit" in page.locator("#verdict").inner_text()
        images = page.locator("img")
        assert images.count() == expected_images
        sizes = images.evaluate_all("(all) => all.map((img) => [img.complete, img.naturalWidth, img.alt])")
        assert all(complete and width > 0 for complete, width, _ in sizes), sizes
        for image in overlays:
            row = page.locator("tr", has=page.get_by_text(image["path"], exact=True))
            assert row.locator("img").count() == sum(kept is not None for kept in image["kept"])
        assert page.get_by_text("evaluate.threshold", exact=True).first.is_visible()
        save(page, results_dir, "segbisect-report.png", "segbisect-report.png")


def test_readme_clicks_lead_from_home_to_the_runs_table_and_compare(
    walkthrough_store: LabelMapStore, walkthrough_server: MlflowServer, results_dir: Path
) -> None:
    """Home -> Model training -> the experiment: its runs table, without a metric column until the README's
    columns are ticked; the README's filters; then Compare of the quick start's evaluate run and the broken one,
    whose params differ in the label map and the data it changed, nothing else."""
    good, bad = stage_runs(walkthrough_store.uri, "evaluate")
    evaluations = {good.info.run_id, bad.info.run_id}
    failing = {r.info.run_id for r in (good, bad) if r.data.metrics["all_zero_symptom"] == 1}
    with chromium_page() as page, screenshot_on_failure(page, results_dir, "mlflow-ui-walkthrough.png"):
        open_runs_table_from_home(page, walkthrough_server.url, EXPERIMENT, UI_TIMEOUT_MS)
        close_assistant(page)
        assert f"/experiments/{good.info.experiment_id}/runs" in page.url, page.url
        row_cell(page, good.info.run_id, RUN_NAME_COL).wait_for(timeout=UI_TIMEOUT_MS)
        shown = header_ids(page)
        assert RUN_NAME_COL in shown and not [c for c in shown if c.startswith(("metrics.", "params.", "tags."))]

        search(page, 'tags.stage = "evaluate"', evaluations)
        missing = set_columns(page, [*README_METRICS, *README_TAGS])
        assert not missing, f"not offered in the Columns picker: {missing}"
        assert_headers(page, README_METRICS)
        for run in (good, bad):
            assert_row(page, run, metrics=README_METRICS, tags=README_TAGS)
        assert bad.data.metrics["absent_classes"] == 1 and good.data.metrics["absent_classes"] == 0
        search(page, 'tags.stage = "evaluate" and metrics.all_zero_symptom = 1', failing)
        assert bad.info.run_id in failing
        search(page, 'tags.stage = "evaluate"', evaluations)

        compare_selected(page, [bad.info.run_id, good.info.run_id], UI_TIMEOUT_MS)
        close_assistant(page)
        order = compared_run_ids(page)
        assert sorted(order) == sorted(evaluations), order
        logged = {run.info.run_id: run.data.params for run in (good, bad)}
        differing = {
            key: [logged[run_id][key] for run_id in order]
            for key in good.data.params
            if good.data.params[key] != bad.data.params[key]
        }
        assert set(differing) == {"prepare.label_map.255", "deps.data/prepared", "deps.data/processed", "deps.models"}
        assert len(compare_section(page, "Parameters", diff_only=False)) == len(good.data.params)
        assert compare_section(page, "Parameters", diff_only=True) == differing
        tags = compare_section(page, "Tags", diff_only=True)
        assert {"config_hash", "git_commit"} <= set(tags), tags
        # The picture: the runs and the params that differ (the tiny configuration's metrics say nothing).
        for section in ("Metrics", "Tags"):
            page.locator(".du-bois-light-collapse-header").filter(has_text=re.compile(f"^{section}$")).click()
        page.locator(".du-bois-light-collapse-header").filter(has_text="Run details").evaluate(
            "e => e.scrollIntoView()"
        )
        save(page, results_dir, "mlflow-ui-compare.png", "mlflow-ui-compare.png")


def test_without_the_switch_an_overview_page_and_its_pop_up_come_first(
    walkthrough_store: LabelMapStore, walkthrough_server: MlflowServer, results_dir: Path
) -> None:
    """The README's way from Home when the UI is left on GenAI: the pop-up's Got it, then Training runs."""
    good, _ = stage_runs(walkthrough_store.uri, "evaluate")
    with chromium_page() as page, screenshot_on_failure(page, results_dir, "mlflow-ui-overview.png"):
        open_runs_table_through_overview(page, walkthrough_server.url, EXPERIMENT, UI_TIMEOUT_MS)
        row_cell(page, good.info.run_id, RUN_NAME_COL).wait_for(timeout=UI_TIMEOUT_MS)
        assert f"/experiments/{good.info.experiment_id}/runs" in page.url, page.url


def test_server_is_stopped_and_port_freed_even_on_failure(tmp_path: Path) -> None:
    srv = MlflowServer(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="boom"), srv:
        port, pid = srv.port, srv.proc.pid
        assert port_in_use(port)
        raise RuntimeError("boom")
    assert not port_in_use(port)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
