"""Helpers for the MLflow UI browser test: a real `mlflow server` on a free loopback port, and headless Chromium.

Kept out of conftest.py so that only the UI test pays for Playwright. Everything here is bounded in time and
cleans up after itself: the server runs in its own process group, killed as a whole, and `stop()` checks that
the port is free again.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("MLFLOW_UI_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium, run as root, on a machine whose network is closed: without the background-networking
# flags Chromium keeps opening connections that get refused.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOST = "127.0.0.1"
# No telemetry from the server or from the UI it serves.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# Without this, `mlflow server` also starts a job runner with seven huey consumer processes (GenAI jobs): seconds
# of CPU on a 2-core machine for nothing the runs table needs.
SERVER_ENV = {**QUIET_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


class MlflowServer:
    """`mlflow server` bound to 127.0.0.1 on a free port, against one backend store."""

    def __init__(self, backend_store_uri: str, log_path: Path, start_timeout: float = 60.0) -> None:
        self.backend_store_uri = backend_store_uri
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, attempts: int = 3) -> MlflowServer:
        """Start and wait for /health; a port taken between picking and binding gets a new port."""
        errors = []
        for _ in range(attempts):
            self.port = free_port()
            try:
                self._start_once()
                return self
            except RuntimeError as exc:
                errors.append(str(exc))
                self.stop(check_port=False)
        raise RuntimeError("mlflow server did not start:\n" + "\n---\n".join(errors))

    def _start_once(self) -> None:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = self.log_path.open("ab")
        try:
            # Own session = own process group: stop() kills the server and every worker it spawned.
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **SERVER_ENV},
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode} on port {self.port}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"no answer on {self.url}/health within {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, check_port: bool = True, timeout: float = 15.0) -> None:
        """Kill the server's process group (TERM, then KILL) and, by default, check the port is free again."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
                # The leader is gone; workers in its group may linger a moment.
                if not _group_alive(proc.pid, 3.0):
                    break
        if check_port and self.port:
            deadline = time.monotonic() + timeout
            while port_in_use(self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} still accepts connections after stopping mlflow server")
                time.sleep(0.2)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _group_alive(pgid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1600, 1000)) -> Iterator[Any]:
    """A page in headless Debian Chromium driven by Playwright (no downloaded browser), closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # a missing test dependency is a failure, not a skip
        raise RuntimeError(
            "the MLflow UI test needs the `playwright` Python package (the project's `ui` extra)"
        ) from exc

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            context.set_default_timeout(30_000)
            yield context.new_page()
        finally:
            browser.close()


# --- MLflow 3.17 runs page (React + ag-grid), as seen in a real browser -------------------------------------

RUN_NAME_COL = "attributes.`Run Name`"


def metric_col(key: str) -> str:
    return f"metrics.`{key}`"


def tag_col(key: str) -> str:
    return f"tags.`{key}`"


def open_runs_table_from_home(page: Any, base: str, experiment: str, timeout_ms: float = 30_000) -> None:
    """The README's clicks: MLflow's Home page, the switch from GenAI to Model training at the top left, then the
    experiment under Recent Experiments, which opens on its runs table."""
    page.goto(base)
    page.get_by_role("heading", name="Welcome to MLflow").wait_for(timeout=timeout_ms)
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name=experiment, exact=True).first.click()
    page.get_by_role("heading", name="Runs", exact=True).wait_for(timeout=timeout_ms)


def open_runs_table_through_overview(page: Any, base: str, experiment: str, timeout_ms: float = 30_000) -> None:
    """The README's other way, without the switch: the experiment opens on a GenAI Overview page under a pop-up;
    Got it closes the pop-up, Training runs in the left bar opens the runs table."""
    page.goto(base)
    page.get_by_role("heading", name="Welcome to MLflow").wait_for(timeout=timeout_ms)
    page.get_by_role("link", name=experiment, exact=True).first.click()
    page.get_by_role("dialog").filter(has_text="Detect Issues in Your Traces").wait_for(timeout=timeout_ms)
    page.get_by_role("button", name="Got it", exact=True).click()
    page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=timeout_ms)
    page.get_by_role("link", name="Training runs", exact=True).click()
    page.get_by_role("heading", name="Training runs", exact=True).wait_for(timeout=timeout_ms)


def header_ids(page: Any) -> list[str]:
    """The column ids of the runs table's headers, as drawn now."""
    return page.locator(".ag-header-cell[col-id]").evaluate_all("cells => cells.map(c => c.getAttribute('col-id'))")


def compare_selected(page: Any, run_ids: list[str], timeout_ms: float = 30_000) -> None:
    """Tick the runs' checkboxes in the runs table and press Compare."""
    for run_id in run_ids:
        page.locator(f'.ag-row[row-id="{run_id}"] input.ag-checkbox-input').first.check()
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_role("heading", name=re.compile(r"^Comparing \d+ Runs")).wait_for(timeout=timeout_ms)


def compare_section(page: Any, section: str, diff_only: bool) -> dict[str, list[str]]:
    """A section (Parameters, Metrics, Tags) of the Compare page: key -> one value per run, in the page's run
    order, after setting its Show diff only switch."""
    name = f"{section} - Show diff only"
    switch = page.get_by_role("switch", name=name)
    if (switch.get_attribute("aria-checked") == "true") != diff_only:
        switch.click()
    page.locator(f'[role=switch][aria-label="{name}"][aria-checked="{str(diff_only).lower()}"]').wait_for()
    table = page.locator(".du-bois-light-collapse-item", has=switch).locator("table").first
    rows = table.locator("tr").evaluate_all(
        "rows => rows.map(r => [r.querySelector('th'), ...r.querySelectorAll('td')].map(cell => cell.innerText))"
    )
    return {row[0].strip(): [value.strip() for value in row[1:]] for row in rows}


def compared_run_ids(page: Any) -> list[str]:
    """The Compare page's runs, in its column order (the Run ID row of Run details)."""
    row = page.locator("tr", has=page.locator("th", has_text="Run ID:")).first
    row.locator("a").first.wait_for()
    return [text.strip() for text in row.locator("a").all_inner_texts()]


def close_assistant(page: Any) -> None:
    """The 'MLflow Assistant' side panel opens on a fresh profile and takes a third of the width."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


def set_columns(page: Any, show: list[str], hide: tuple[str, ...] = ("Dataset", "Source", "Models")) -> list[str]:
    """Tick `show` (metric, param or tag keys) and untick `hide` in the runs table's Columns picker.

    Returns the names it could not find in the picker.
    """
    page.get_by_role("button", name="Columns", exact=True).click()
    search = page.get_by_placeholder("Search columns")
    search.wait_for()
    missing = []
    for name, wanted in [*((n, False) for n in hide), *((n, True) for n in show)]:
        search.fill(name)
        # Leaf nodes of the column tree; the search highlights matches, so compare the whole text.
        node = page.locator(".du-bois-light-tree-treenode-switcher-close").filter(
            has_text=re.compile(f"^{re.escape(name)}$")
        )
        try:
            node.first.wait_for(timeout=5_000)
        except Exception:
            missing.append(name)
            continue
        checked = "checkbox-checked" in (node.first.get_attribute("class") or "")
        if checked != wanted:
            node.first.locator(".du-bois-light-tree-checkbox").click()
    search.fill("")
    page.keyboard.press("Escape")
    return missing


def row_cell(page: Any, run_id: str, col_id: str) -> Any:
    """A cell of a run's row: ag-grid splits a row over pinned and scrolling containers, all keyed by row-id."""
    return page.locator(f'.ag-row[row-id="{run_id}"] [col-id="{col_id}"]').first


def expand_parent(page: Any, run_id: str) -> None:
    """Click the +/- expander in a parent run's name cell to show its nested child runs."""
    row_cell(page, run_id, RUN_NAME_COL).locator('button[data-component-id*="runnamecellrenderer"]').first.click()


def widen(page: Any, col_id: str, pixels: int) -> None:
    """Drag a column header's resize handle, so a screenshot shows whole run names and values."""
    handle = page.locator(f'.ag-header-cell[col-id="{col_id}"] .ag-header-cell-resize').first
    if not handle.count():
        return
    handle.hover()  # ag-grid only starts a resize from a hovered handle
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.down()
    page.mouse.move(x + pixels, y, steps=10)
    page.mouse.up()
    page.mouse.move(0, 0)  # no hover highlight in screenshots


def runs_url(base: str, experiment_id: str, search_filter: str | None = None) -> str:
    from urllib.parse import quote

    url = f"{base}/#/experiments/{experiment_id}/runs"
    return f"{url}?searchFilter={quote(search_filter)}" if search_filter else url


def shown_number(text: str) -> float:
    """The UI shows metric values rounded; read one back."""
    match = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text.replace(",", ""))
    if not match:
        raise AssertionError(f"no number in cell text {text!r}")
    return float(match.group())
