"""The main job: execute the numbered notebooks headless and collect a one-page report.

``reproduce(profile="quick")`` runs every ``notebooks/NN_*.ipynb`` with papermill, injecting the
profile's parameters into each notebook's ``parameters`` cell, and writes under
``results/reports/<run_id>/`` (by default ``<date>-<profile>``): the executed notebooks, the
figures they save (interactive HTML, and PNG where kaleido finds a Chromium), and ``report.md``:
each notebook with its status and run time, the paper's Table 1 and the Pareto-dominance check
from the results store (:mod:`npas_lab.paper`), every figure, the environment and the load.

A failing notebook is recorded with its error and the rest still run; the call raises at the end
so the command's exit status says something failed.

Reruns reuse everything already computed. Training checkpoints, TVM tuning records, search
evaluations and measurements are cached in ``results/`` by the stages themselves, so an
executed-again notebook loads rather than recomputes. On top of that, a notebook that already
ran ``ok`` under the same ``run_id`` with the same source and parameters is not executed again
(``force=True`` executes it anyway), so rerunning the day's command after a failure only runs
what failed or changed.

Profiles (:data:`PROFILES`)
---------------------------
``smoke``
    ``SMOKE=True``: the smallest budgets; what the test suite runs (about a minute a notebook).
``quick``
    The defaults written in each notebook's parameters cell (digits, host CPU): this machine.
``full``
    ``FULL=True`` and CIFAR-10 at 32x32 RGB: each notebook's larger budgets, for real hardware
    (CIFAR-10 is downloaded into ``data/`` when online, see README).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from npas_lab import paths, results

__all__ = [
    "NOTEBOOK_DIR",
    "PROFILES",
    "NotebookFailed",
    "Profile",
    "get_profile",
    "list_notebooks",
    "reproduce",
    "run_notebook",
    "write_report",
]

NOTEBOOK_DIR = paths.REPO_ROOT / "notebooks"


@dataclass(frozen=True)
class Profile:
    """How the main job runs the notebooks.

    Parameters
    ----------
    name : str
        ``"smoke"``, ``"quick"`` or ``"full"``.
    parameters : dict
        Injected after every notebook's ``parameters`` cell (a notebook ignores names it does
        not use).
    cell_timeout_s : int
        Per-cell limit.
    description : str
        One line for the report.
    """

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cell_timeout_s: int = 1800  # a TVM compile of a large model on 2 cores takes minutes
    description: str = ""


#: The profiles of the main job, by name.
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", {"SMOKE": True}, 600, "SMOKE=True: smallest budgets (the test suite's run)"
    ),
    "quick": Profile("quick", {}, 1800, "each notebook's defaults: digits, this machine's CPU"),
    "full": Profile(
        "full",
        {"FULL": True, "DATASET": "cifar10", "IMAGE_SIZE": 32, "IN_CHANNELS": 3},
        7200,
        "FULL=True on CIFAR-10 32x32: larger budgets for real hardware",
    ),
}


class NotebookFailed(RuntimeError):
    """One or more notebooks raised while being executed."""


def get_profile(profile: str | Profile) -> Profile:
    """Return profile ``profile`` (a :class:`Profile` passes through).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    return PROFILES[profile]


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


def _select(notebooks: Sequence[str] | None) -> list[Path]:
    available = list_notebooks()
    if not notebooks:
        return available
    by_name = {p.stem: p for p in available} | {p.name: p for p in available}
    unknown = [n for n in notebooks if n not in by_name]
    if unknown:
        raise ValueError(
            f"unknown notebooks {unknown}; valid: {', '.join(p.stem for p in available)}"
        )
    return [by_name[n] for n in notebooks]


def _fingerprint(path: Path, parameters: dict[str, Any]) -> str:
    blob = path.read_bytes() + json.dumps(parameters, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _done_before(run_id: str, folder: Path) -> dict[str, str]:
    """Return ``{notebook: fingerprint}`` of notebooks that ran ok under ``run_id``."""
    done = {}
    for r in results.iter_records("runs"):
        if r.get("kind") == "notebook" and r.get("run_id") == run_id and r.get("status") == "ok":
            if (folder / r["notebook"]).exists() and r.get("fingerprint"):
                done[r["notebook"]] = r["fingerprint"]
    return done


def reproduce(
    profile: str | Profile = "quick",
    *,
    notebooks: Sequence[str] | None = None,
    run_id: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Run the notebooks of the workbench headless and write a report; return its folder.

    Parameters
    ----------
    profile
        ``"smoke"``, ``"quick"`` or ``"full"`` (see the module docstring), or a
        :class:`Profile`.
    notebooks
        Names (``"00_quickstart"`` or file names) to run; all by default.
    run_id
        Report folder name under ``results/reports/``; default ``<UTC date>-<profile>``, so
        rerunning the same day continues the same report.
    progress
        A bar over notebooks and papermill's bar over cells.
    force
        Execute notebooks that already ran ok under this ``run_id`` with the same source and
        parameters (skipped otherwise).

    Returns
    -------
    Path
        The report folder (``report.md``, the executed notebooks, ``figures/``).

    Raises
    ------
    ValueError
        Unknown profile or notebook names.
    NotebookFailed
        After all notebooks ran, if any failed (the report lists why).
    """
    from tqdm.auto import tqdm

    chosen = get_profile(profile)
    selected = _select(notebooks)
    run_id = run_id or f"{datetime.now(UTC):%Y-%m-%d}-{chosen.name}"
    folder = paths.results_dir() / "reports" / run_id
    figures = folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    done = {} if force else _done_before(run_id, folder)
    # Notebooks save figures through plotting.save_figure, which honours this variable.
    previous = os.environ.get("NPAS_LAB_FIGURES_DIR")
    os.environ["NPAS_LAB_FIGURES_DIR"] = str(figures)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    bar = tqdm(selected, desc=f"reproduce ({chosen.name})", unit="notebook", disable=not progress)
    try:
        for nb in bar:
            bar.set_postfix_str(nb.stem)
            fingerprint = _fingerprint(nb, chosen.parameters)
            start = time.perf_counter()
            status, error, cached = "ok", None, done.get(nb.name) == fingerprint
            if not cached:
                try:
                    run_notebook(
                        nb,
                        parameters=chosen.parameters,
                        output_dir=folder,
                        timeout_s=chosen.cell_timeout_s,
                        progress=progress,
                    )
                except NotebookFailed as err:
                    status, error = "failed", str(err)
            row = {
                "run_id": run_id,
                "kind": "notebook",
                "profile": chosen.name,
                "notebook": nb.name,
                "status": status,
                "cached": cached,
                "error": error,
                "seconds": round(time.perf_counter() - start, 1),
                "fingerprint": fingerprint,
            }
            results.append("runs", row)
            rows.append(row)
            if progress:
                how = "reused (ran ok before)" if cached else f"{row['seconds']:.0f} s"
                bar.write(f"[reproduce] {nb.name}: {status}, {how}")
    finally:
        bar.close()
        if previous is None:
            os.environ.pop("NPAS_LAB_FIGURES_DIR", None)
        else:
            os.environ["NPAS_LAB_FIGURES_DIR"] = previous
    write_report(folder, chosen, rows, seconds=time.perf_counter() - started)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise NotebookFailed("; ".join(r["error"] for r in failed) + f" (report: {folder})")
    return folder


# ---------------------------------------------------------------------------------- report
def _markdown_table(df: Any, floats: str = "{:.3g}") -> list[str]:
    """Return ``df`` as markdown lines (pandas' ``to_markdown`` needs ``tabulate``)."""
    import math

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else floats.format(value)
        return str(value).replace("|", "/").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return lines


def _paper_section(tag: str) -> list[str]:
    """Table 1 and the dominance check of the latest dense-zoo run, from the results store."""
    from npas_lab import paper

    lines = ["", "## NPAS Table 1 and Fig. 7 (from the results store)", ""]
    try:
        zoo = paper.load_zoo(tag=tag)
        if zoo.empty:
            return [*lines, "No dense-zoo records yet: run `python benchmarks/paper_engines.py` "
                    "or notebook 06."]  # fmt: skip
        first = zoo.iloc[0]
        table = paper.table1(run_id=str(first["run_id"]))
        lines.append(
            f"Dense zoo run `{first['run_id']}`: {first['dataset']} at "
            f"{first['in_channels']}x{first['image_size']}x{first['image_size']}, batch 1, "
            f"device `{first['device']}`, {first['num_threads']} threads, load average "
            f"{zoo['loadavg_1m'].mean():.2f} while measuring. Latency in ms (median); "
            "`tvm_speedup_vs_X` = X latency / TVM latency (> 1: TVM is faster)."
        )
        lines += ["", *_markdown_table(table.drop(columns=["source"], errors="ignore"))]
        verdict = paper.dominance(zoo=zoo)
        if len(verdict):
            lines += ["", "Pareto dominance (validation accuracy, TVM latency):", ""]
            for r in verdict.itertuples(index=False):
                if r.dominated:
                    caveat = ""
                    if r.by_model is not None and r.by_model != r.model:
                        caveat = (
                            f" -- not like for like: that search pruned {r.by_model} "
                            f"(input {r.by_input}), not {r.model}"
                        )
                    lines.append(
                        f"- {r.model} ({r.accuracy:.3f}, {r.latency_ms:.3f} ms): dominated by "
                        f"NPAS {r.by_run} step {r.by_step} ({r.by_accuracy:.3f}, "
                        f"{r.by_latency_ms:.3f} ms){caveat}"
                    )
                else:
                    lines.append(
                        f"- {r.model} ({r.accuracy:.3f}, {r.latency_ms:.3f} ms): not dominated"
                    )
        if paper.npas_points().empty:
            lines += ["", "No search records yet: run notebook 03."]
    except Exception as err:  # the report must render even if one table cannot be built
        lines.append(f"Could not build the tables: {type(err).__name__}: {err}")
    return lines


def write_report(
    folder: Path, profile: Profile, rows: list[dict[str, Any]], *, seconds: float = 0.0
) -> Path:
    """Write ``report.md`` in ``folder``: notebooks, paper tables, figures, environment.

    Parameters
    ----------
    folder
        The report folder (executed notebooks beside it, figures in ``figures/``).
    profile
        The profile that ran.
    rows
        One ``runs`` record per notebook.
    seconds
        Wall time of the whole job.

    Returns
    -------
    Path
        ``folder / "report.md"``.
    """
    env = results.environment()
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    commit = (env.get("git_commit") or "unknown")[:12] + (
        " (dirty)" if env.get("git_dirty") else ""
    )
    lines = [
        f"# npas-lab report `{folder.name}` (profile `{profile.name}`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s. Profile: "
        f"{profile.description}. Git {commit}; {env['hostname']}, {env['cpu_count']} cores, "
        f"load average {load} (1/5/15 min); {versions}.",
        "",
        "## Notebooks",
        "",
        "| notebook | status | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| [{r['notebook']}]({r['notebook']}) | {r['status']} | "
        f"{'reused' if r.get('cached') else r['seconds']} |"
        for r in rows
    ]
    # A smoke run reports its own tiny zoo; the others the paper's latest run.
    lines += _paper_section("smoke" if profile.name == "smoke" else "paper")
    figures = sorted((folder / "figures").glob("*.html"))
    if figures:
        lines += ["", "## Figures", ""]
        for fig in figures:
            png = fig.with_suffix(".png")
            if png.exists():
                lines += [f"### {fig.stem}", "", f"![{fig.stem}](figures/{png.name})", ""]
                lines += [f"[interactive]({'figures/' + fig.name}) · [PNG](figures/{png.name})", ""]
            else:
                lines += [f"- {fig.stem}: [interactive](figures/{fig.name}) (no PNG: Chromium?)"]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {r['error']}" for r in errors]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
