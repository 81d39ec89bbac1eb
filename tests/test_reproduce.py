"""The main job: profiles, executed notebooks, figures (HTML + PNG), the report, reruns reuse."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from npas_lab import paper, reproduce, results

PNG_POSSIBLE = any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


def _notebook(path, body: str) -> None:
    cells = [
        new_code_cell("SMOKE = False\nFULL = False", metadata={"tags": ["parameters"]}),
        new_code_cell(body),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


FIGURE = """import plotly.graph_objects as go
from npas_lab.plotting import save_figure
assert SMOKE, "the smoke profile injects SMOKE=True"
save_figure(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), "tiny")"""


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(reproduce, "NOTEBOOK_DIR", folder)
    _notebook(folder / "00_tiny.ipynb", FIGURE)
    return folder


def test_profiles_are_frozen_and_unknown_names_are_clear_errors():
    assert set(reproduce.PROFILES) == {"smoke", "quick", "full"}
    assert reproduce.get_profile("smoke").parameters == {"SMOKE": True}
    full = reproduce.get_profile("full")
    assert full.parameters["FULL"] is True and full.parameters["DATASET"] == "cifar10"
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.name = "x"
    with pytest.raises(ValueError, match="profile='fast' is not one of smoke, quick, full"):
        reproduce.get_profile("fast")


@pytest.mark.slow
def test_report_links_executed_notebooks_and_figures_and_reruns_reuse(notebooks, isolated_home):
    folder = reproduce.reproduce("smoke", progress=False)
    assert folder.name == f"{datetime.now(UTC):%Y-%m-%d}-smoke"  # the <date> report folder
    assert folder == isolated_home / "results" / "reports" / folder.name
    assert (folder / "00_tiny.ipynb").exists() and (folder / "figures" / "tiny.html").exists()
    if PNG_POSSIBLE:
        png = folder / "figures" / "tiny.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.md").read_text()
    assert "| [00_tiny.ipynb](00_tiny.ipynb) | ok |" in report
    assert "[interactive](figures/tiny.html)" in report
    if PNG_POSSIBLE:
        assert "![tiny](figures/tiny.png)" in report
    assert "No dense-zoo records yet" in report and "load average" in report
    executed = (folder / "00_tiny.ipynb").stat().st_mtime_ns

    # Same day, same notebook: reused, not executed again.
    again = reproduce.reproduce("smoke", progress=False)
    assert again == folder and (folder / "00_tiny.ipynb").stat().st_mtime_ns == executed
    assert "| [00_tiny.ipynb](00_tiny.ipynb) | ok | reused |" in (folder / "report.md").read_text()
    runs = results.load("runs")
    assert runs["cached"].tolist() == [False, True]

    # A changed notebook runs again; so does any notebook with force=True.
    _notebook(notebooks / "00_tiny.ipynb", FIGURE + "\nprint('changed')")
    reproduce.reproduce("smoke", progress=False)
    assert (folder / "00_tiny.ipynb").stat().st_mtime_ns != executed
    reproduce.reproduce("smoke", progress=False, force=True)
    assert results.load("runs")["cached"].tolist() == [False, True, False, False]


@pytest.mark.slow
def test_a_failing_notebook_is_reported_and_the_others_still_run(notebooks):
    _notebook(notebooks / "01_broken.ipynb", "raise RuntimeError('boom')")
    _notebook(notebooks / "02_after.ipynb", FIGURE.replace('"tiny"', '"after"'))
    with pytest.raises(reproduce.NotebookFailed, match=r"01_broken\.ipynb: cell .* RuntimeError"):
        reproduce.reproduce("smoke", run_id="r", progress=False)
    folder = results.table_path("runs").parent / "reports" / "r"
    report = (folder / "report.md").read_text()
    assert "| [01_broken.ipynb](01_broken.ipynb) | failed |" in report
    assert "| [02_after.ipynb](02_after.ipynb) | ok |" in report
    assert "## Failures" in report and "boom" in report
    # The rerun skips what passed and retries what failed.
    with pytest.raises(reproduce.NotebookFailed):
        reproduce.reproduce("smoke", run_id="r", progress=False)
    runs = results.load("runs")
    assert runs["cached"].tolist()[3:] == [True, False, True]


def test_report_carries_table1_from_the_results_store(tmp_path):
    for engine, ms in (("tvm", 1.0), ("onnxruntime", 2.0)):
        results.append(
            paper.ZOO_TABLE,
            {
                "run_id": "z", "tag": "paper", "model": "resnet18", "engine": engine,
                "device": "host-cpu", "num_threads": 2, "latency_ms": ms, "spread_ms": 0.1,
                "status": "ok", "error": None, "accuracy": 0.97, "val_accuracy": 0.96,
                "macs": 3_000_000, "params": 100_000, "dataset": "digits", "image_size": 32,
                "in_channels": 3, "loadavg_1m": 4.0,
            },
        )  # fmt: skip
    folder = tmp_path / "report"
    (folder / "figures").mkdir(parents=True)
    rows = [{"notebook": "06_paper_figures.ipynb", "status": "ok", "seconds": 3.0}]
    path = reproduce.write_report(folder, reproduce.get_profile("quick"), rows, seconds=3)
    text = path.read_text()
    assert "## NPAS Table 1" in text and "| resnet18 | dense zoo" not in text
    assert "| resnet18 | 0.97 | test | 3 | 0.1 | 1 | 2 |" in text
    assert "not dominated" in text and "No search records yet: run notebook 03." in text
