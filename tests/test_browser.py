"""Notebook 03 in a real browser: JupyterLab on loopback, headless Chromium, SMOKE run.

A copy of ``notebooks/03_scheme_search.ipynb`` with ``SMOKE = True`` injected the way papermill
does is opened in JupyterLab (random free port, a token) by Debian's Chromium driven by
Playwright (no browser is downloaded), every cell is run from the page, and the live Pareto
``FigureWidget`` of the search dashboard must draw its candidates as plotly scatter points. A
screenshot of the page is saved under ``results/screenshots/`` of the test's results store.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from npas_lab import paths

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOK = paths.REPO_ROOT / "notebooks" / "03_scheme_search.ipynb"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium); Playwright drives it",
)

# JavaScript run in the page: the points the live Pareto widget (the dashboard cell) drew.
_DASHBOARD_POINTS = """() => {
    const cell = [...document.querySelectorAll('.jp-CodeCell')].find(
        c => c.querySelector('.jp-InputArea').textContent.includes('dashboard = SearchDashboard(')
    );
    return cell ? cell.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length : 0;
}"""
_ERRORS = """() => [...document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
)].map(e => e.textContent).filter(t => t.includes('Error'))"""
_LAST_PROMPT = """() => {
    const prompts = document.querySelectorAll('.jp-CodeCell .jp-InputPrompt');
    return prompts.length ? prompts[prompts.length - 1].textContent : '';
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "JupyterLab exited while starting"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer at {url} within {timeout_s} s")


@pytest.fixture
def lab(tmp_path, isolated_home):
    """JupyterLab serving a SMOKE copy of notebook 03; yield (url, notebook name)."""
    root = tmp_path / "lab"
    root.mkdir()
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOK)), {"SMOKE": True})
    nbformat.write(nb, root / NOTEBOOK.name)
    # Render every cell (no windowing), so the widget's output is in the DOM wherever it is.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "NPAS_LAB_HOME": str(isolated_home),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
    }
    log = (tmp_path / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells by command
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={token}", proc, timeout_s=90)
        yield f"{base}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_notebook_03_in_chromium_draws_the_live_pareto_points(lab, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    screenshot = paths.results_dir() / "screenshots" / "03_scheme_search_live_pareto.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(lab, timeout=90_000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=90_000,
            )
            page.evaluate(
                "async () => {"
                " const panel = window.jupyterapp.shell.currentWidget;"
                " await panel.sessionContext.ready;"
                " await window.jupyterapp.commands.execute('notebook:run-all-cells');"
                "}"
            )
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                errors = page.evaluate(_ERRORS)
                assert not errors, errors[0][-2000:]
                if page.evaluate(_DASHBOARD_POINTS) and "*" not in page.evaluate(_LAST_PROMPT):
                    break
                time.sleep(1)
            points = page.evaluate(_DASHBOARD_POINTS)
        finally:
            # The dashboard cell as the user sees it (JupyterLab scrolls inside the page).
            cell = page.locator(".jp-CodeCell", has_text="dashboard = SearchDashboard(")
            if cell.count():
                cell.first.scroll_into_view_if_needed()
                cell.first.screenshot(path=str(screenshot))
            else:
                page.screenshot(path=str(screenshot))
            browser.close()
    assert points > 0, f"the live Pareto widget drew no points (see {screenshot})"
    assert screenshot.stat().st_size > 10_000
