"""Search history: the :class:`Evaluation` record and tables read back from the results store.

Every search run writes to the ``search/runs`` table: one ``kind="start"`` record (algorithm,
seed, budget, reward, space, evaluation context, environment) and one ``kind="evaluation"``
record per evaluated candidate, appended as it completes. :func:`load_history` reads a run back
as a DataFrame; :func:`best_so_far` and :func:`pareto_front` are what the figures plot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from npas_lab import results
from npas_lab.sparsity import PruningPlan

__all__ = [
    "RUNS_TABLE",
    "Evaluation",
    "best_so_far",
    "load_history",
    "pareto_front",
    "phase_table",
    "plan_table",
    "run_records",
]

#: Results-store table of search runs.
RUNS_TABLE = "search/runs"


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One row of search history: a candidate, what it scored, and how it was chosen.

    Attributes
    ----------
    plan
        The candidate.
    accuracy
        Validation accuracy after the fast fine-tune (None if the evaluation failed).
    latency
        Measured latency in ms, the median of the repeats (None if failed).
    reward
        Under the search's reward (None if failed).
    cost_s
        Wall time the evaluation took when it ran.
    status
        ``"ok"`` (evaluated now), ``"cached"`` (evaluated before, in any search with the same
        evaluation context) or ``"failed"``.
    step
        0-based index in the run.
    spread_ms
        Interquartile range of the latency repeats.
    candidate
        Option index per searched layer.
    predicted
        The surrogate's predicted reward when it chose this candidate (``bo``/``npas``).
    run_id, algorithm
        The run.
    replayed
        Read back from the results store when a search resumed (not evaluated, not recorded
        again).
    error
        Why a failed evaluation failed.
    phases
        Seconds per phase of the evaluation (:data:`~npas_lab.search.phases.PHASES`) when it
        ran in this step (None when it was cached or replayed from an older record).
    """

    plan: PruningPlan = field(repr=False)
    accuracy: float | None
    latency: float | None
    reward: float | None
    cost_s: float
    status: str
    step: int = 0
    spread_ms: float | None = None
    candidate: tuple[int, ...] = ()
    predicted: float | None = None
    run_id: str | None = None
    algorithm: str | None = None
    replayed: bool = False
    error: str | None = None
    phases: dict[str, float] | None = None

    def to_record(self) -> dict[str, Any]:
        """Return the ``kind="evaluation"`` record written to :data:`RUNS_TABLE`."""
        return {
            "kind": "evaluation",
            "run_id": self.run_id,
            "algorithm": self.algorithm,
            "step": self.step,
            "plan_key": self.plan.key(),
            "plan": self.plan.to_json(),
            "candidate": list(self.candidate),
            "accuracy": self.accuracy,
            "latency_ms": self.latency,
            "spread_ms": self.spread_ms,
            "reward": self.reward,
            "predicted": self.predicted,
            "cost_s": self.cost_s,
            "status": self.status,
            "error": self.error,
            "phases": self.phases,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, replayed: bool = True) -> Evaluation:
        """Rebuild an evaluation from :meth:`to_record` output."""
        return cls(
            plan=PruningPlan.from_json(record["plan"]),
            accuracy=record.get("accuracy"),
            latency=record.get("latency_ms"),
            reward=record.get("reward"),
            cost_s=record.get("cost_s", 0.0),
            status=record.get("status", "ok"),
            step=int(record["step"]),
            spread_ms=record.get("spread_ms"),
            candidate=tuple(record.get("candidate", ())),
            predicted=record.get("predicted"),
            run_id=record.get("run_id"),
            algorithm=record.get("algorithm"),
            replayed=replayed,
            error=record.get("error"),
            phases=record.get("phases"),
        )


def run_records(run_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Return the start record of run ``run_id`` (None if new) and its evaluation records.

    Evaluations are in step order; a step recorded twice (two processes resuming one run at
    once) keeps its first record.
    """
    start, evaluations = None, {}
    for record in results.iter_records(RUNS_TABLE):
        if record.get("run_id") != run_id:
            continue
        if record.get("kind") == "start" and start is None:
            start = record
        elif record.get("kind") == "evaluation":
            evaluations.setdefault(int(record["step"]), record)
    return start, [evaluations[s] for s in sorted(evaluations)]


def load_history(run_id: str | None = None) -> pd.DataFrame:
    """Return the evaluations of one run (or of every run) as a DataFrame, in step order.

    Columns: those of :meth:`Evaluation.to_record`, plus ``best_reward`` (best so far in the
    run). Empty if nothing was recorded.
    """
    rows = [
        r
        for r in results.iter_records(RUNS_TABLE)
        if r.get("kind") == "evaluation" and (run_id is None or r.get("run_id") == run_id)
    ]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame.from_records(rows).drop(columns=["env"], errors="ignore")
    df = df.drop_duplicates(["run_id", "step"]).sort_values(["run_id", "step"], kind="stable")
    df["best_reward"] = df.groupby("run_id")["reward"].cummax()
    return df.reset_index(drop=True)


def best_so_far(rewards: pd.Series | list[float | None]) -> np.ndarray:
    """Return the running maximum of ``rewards`` (failed evaluations, None/NaN, are skipped)."""
    values = pd.Series(rewards, dtype=float).to_numpy()
    values = np.where(np.isnan(values), -np.inf, values)
    return np.maximum.accumulate(values) if len(values) else values


def pareto_front(df: pd.DataFrame, *, x: str = "latency_ms", y: str = "accuracy") -> pd.DataFrame:
    """Return the rows no other row beats on both lower ``x`` and higher ``y``, by ``x``.

    Rows with a missing ``x`` or ``y`` (failed evaluations) are left out.
    """
    if df.empty:
        return df
    data = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False], kind="stable")
    keep, best = [], -np.inf
    for index, value in data[y].items():
        if value > best:
            keep.append(index)
            best = value
    return data.loc[keep]


def plan_table(plan: PruningPlan) -> pd.DataFrame:
    """Return one row per layer of ``plan``: ``layer``, ``filter_type``, ``scheme``, ``rate``,
    ``block`` (what :func:`~npas_lab.plotting.plan_layers_figure` draws)."""
    rows = [
        {
            "layer": name,
            "filter_type": c.filter_type,
            "scheme": c.scheme,
            "rate": c.rate,
            "block": c.block,
        }
        for name, c in plan.items()
    ]
    return pd.DataFrame(rows, columns=["layer", "filter_type", "scheme", "rate", "block"])


def phase_table(history: pd.DataFrame) -> pd.DataFrame:
    """Return where each evaluation of ``history`` spent its time: seconds per phase, by step.

    Parameters
    ----------
    history
        Evaluations as :func:`load_history` (or a search dashboard) gives them, with a
        ``phases`` column of dicts (older records without one are left out).

    Returns
    -------
    pandas.DataFrame
        ``step``, ``status``, one column per phase of
        :data:`~npas_lab.search.phases.PHASES` (seconds; 0 for a phase that did not run) and
        ``total``; one row per evaluation that ran in the run (not the cached ones).
    """
    from npas_lab.search.phases import PHASES

    columns = ["step", "status", *PHASES, "total"]
    if history.empty or "phases" not in history:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, row in history.iterrows():
        phases = row["phases"]
        if not isinstance(phases, Mapping):
            continue
        seconds = {name: float(phases.get(name, 0.0)) for name in PHASES}
        total = sum(seconds.values())
        rows.append({"step": row["step"], "status": row["status"], **seconds, "total": total})
    return pd.DataFrame(rows, columns=columns)
