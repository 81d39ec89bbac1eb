"""Every notebook runs top to bottom in SMOKE mode, through the main job's own runner."""

from __future__ import annotations

import json

import pytest

from npas_lab import reproduce, results

NOTEBOOKS = reproduce.list_notebooks()


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:1] == ["00_quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_house_rules(path):
    cells = _cells(path)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell"
    assert "SMOKE = False" in "".join(code[0]["source"])
    for cell in code:
        source = "".join(cell["source"])
        assert not cell.get("outputs"), "committed with outputs"
        assert "\ndef " not in "\n" + source and "\nclass " not in "\n" + source, source
        assert "pip install" not in source and "os.chdir" not in source


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_smoke_mode(path, isolated_home):
    folder = reproduce.reproduce("smoke", notebooks=[path.stem], run_id="t", progress=False)
    assert (folder / path.name).exists()
    report = (folder / "report.md").read_text()
    assert f"| [{path.name}]({path.name}) | ok |" in report
    assert any((folder / "figures").glob("*.html")), "the notebook saved no figure"
    runs = results.load("runs")
    assert runs[runs.kind == "notebook"].status.tolist() == ["ok"]


def test_unknown_notebook_and_profile_are_clear_errors():
    with pytest.raises(ValueError, match="unknown notebooks"):
        reproduce.reproduce("smoke", notebooks=["99_nothing"])
    with pytest.raises(ValueError, match="profile='fast'"):
        reproduce.reproduce("fast")
