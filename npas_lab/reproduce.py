"""The main job: execute the numbered notebooks headless and collect a report.

``reproduce(profile="quick")`` runs every ``notebooks/NN_*.ipynb`` with papermill, injecting the
profile's parameters into each notebook's ``parameters`` cell, and writes under
``results/reports/<run_id>/``: the executed notebooks, the figures they save (HTML, and PNG where
Chromium is installed), and ``report.md`` listing each notebook with its status and run time. A
failing notebook is recorded with its error and the rest still run; the call raises at the end so
the command's exit status says something failed.

Profiles
--------
``smoke``
    ``SMOKE=True``: the smallest budgets; what the test suite runs.
``quick``
    The defaults written in each notebook's parameters cell (digits, host CPU): minutes here.
``full``
    ``FULL=True``: each notebook's larger budgets, for real hardware and data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npas_lab import paths, results

__all__ = [
    "NOTEBOOK_DIR",
    "PROFILES",
    "NotebookFailed",
    "list_notebooks",
    "reproduce",
    "run_notebook",
]

NOTEBOOK_DIR = paths.REPO_ROOT / "notebooks"

#: Parameters injected into every notebook's ``parameters`` cell, per profile.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"SMOKE": True},
    "quick": {},
    "full": {"FULL": True},
}


class NotebookFailed(RuntimeError):
    """One or more notebooks raised while being executed."""


def list_notebooks() -> list[Path]:
    """Return ``notebooks/NN_*.ipynb`` in story order."""
    return sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(
    path: Path | str,
    *,
    parameters: dict[str, Any] | None = None,
    output_dir: Path | None = None,
    timeout_s: int = 1800,
    progress: bool = False,
) -> Path:
    """Execute one notebook with papermill and return the executed copy's path.

    Parameters
    ----------
    path
        The notebook (must have a cell tagged ``parameters``).
    parameters
        Values injected after the ``parameters`` cell (e.g. ``{"SMOKE": True}``).
    output_dir
        Where the executed notebook goes (``results/reports/adhoc`` by default).
    timeout_s
        Per-cell limit.
    progress
        Show papermill's cell progress bar.

    Raises
    ------
    NotebookFailed
        With the notebook name and the failing cell's error.
    """
    import papermill

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"notebook {path} does not exist; valid: {', '.join(p.name for p in list_notebooks())}"
        )
    output_dir = Path(output_dir) if output_dir else paths.results_dir() / "reports" / "adhoc"
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / path.name
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters=parameters or {},
            cwd=str(path.parent),
            kernel_name="python3",
            progress_bar=progress,
            execution_timeout=timeout_s,
            request_save_on_cell_execute=True,
        )
    except papermill.PapermillExecutionError as err:
        raise NotebookFailed(
            f"{path.name}: cell {err.exec_count} raised {err.ename}: "
            f"{err.evalue} (executed copy with the traceback: {out})"
        ) from None
    return out


def reproduce(
    profile: str = "quick",
    *,
    notebooks: Sequence[str] | None = None,
    run_id: str | None = None,
    progress: bool = True,
) -> Path:
    """Run the notebooks of the workbench headless and write a report; return its folder.

    Parameters
    ----------
    profile
        ``"smoke"``, ``"quick"`` or ``"full"`` (see the module docstring).
    notebooks
        Names (``"00_quickstart"`` or file names) to run; all by default.
    run_id
        Report folder name; a fresh time-ordered id by default.
    progress
        Show progress over notebooks and cells.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    available = list_notebooks()
    if notebooks:
        by_name = {p.stem: p for p in available} | {p.name: p for p in available}
        unknown = [n for n in notebooks if n not in by_name]
        if unknown:
            raise ValueError(
                f"unknown notebooks {unknown}; valid: {', '.join(p.stem for p in available)}"
            )
        selected = [by_name[n] for n in notebooks]
    else:
        selected = available
    run_id = run_id or results.new_run_id()
    folder = paths.results_dir() / "reports" / run_id
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    # Notebooks save figures through plotting.save_figure, which honours this variable.
    previous = os.environ.get("NPAS_LAB_FIGURES_DIR")
    os.environ["NPAS_LAB_FIGURES_DIR"] = str(figures)
    rows: list[dict[str, Any]] = []
    try:
        for nb in selected:
            if progress:
                print(f"[reproduce] {nb.name} ({profile})", flush=True)
            start = time.perf_counter()
            status, error = "ok", None
            try:
                run_notebook(nb, parameters=PROFILES[profile], output_dir=folder, progress=progress)
            except NotebookFailed as err:
                status, error = "failed", str(err)
            row = {
                "run_id": run_id,
                "kind": "notebook",
                "profile": profile,
                "notebook": nb.name,
                "status": status,
                "error": error,
                "seconds": round(time.perf_counter() - start, 1),
            }
            results.append("runs", row)
            rows.append(row)
    finally:
        if previous is None:
            os.environ.pop("NPAS_LAB_FIGURES_DIR", None)
        else:
            os.environ["NPAS_LAB_FIGURES_DIR"] = previous
    _write_report(folder, profile, rows)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise NotebookFailed("; ".join(r["error"] for r in failed) + f" (report: {folder})")
    return folder


def _write_report(folder: Path, profile: str, rows: list[dict[str, Any]]) -> Path:
    lines = [
        f"# npas-lab report `{folder.name}` (profile `{profile}`)",
        "",
        "| notebook | status | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| [{r['notebook']}]({r['notebook']}) | {r['status']} | {r['seconds']} |" for r in rows
    ]
    figures = sorted((folder / "figures").glob("*.html"))
    if figures:
        lines += ["", "## Figures", ""]
        for fig in figures:
            png = fig.with_suffix(".png")
            link = f"![{fig.stem}](figures/{png.name})" if png.exists() else fig.stem
            lines.append(f"- {link} ([interactive](figures/{fig.name}))")
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {r['error']}" for r in errors]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
