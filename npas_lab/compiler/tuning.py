"""MetaSchedule tuning of a fused module, with a persistent database per target.

Layout (one folder per target, shared by every model compiled for it)::

    results/tuning/<target-key>/          target-key = first 12 hex digits of sha256(target JSON)
        target.json                       the canonical target the records are valid for
        database_workload.json            MetaSchedule JSONDatabase (append-only JSON lines)
        database_tuning_record.json
        ledger.json                       per workload: the per-task budget it was tuned to
        sessions/<time>/logs/             MetaSchedule's own logs (task scheduler, one per task)
        .lock                             held while a session tunes (flock)

Tuning is skipped for a workload (a fused TIR function, keyed structurally) that the ledger says
was already tuned to at least the requested ``max_trials_per_task`` (MetaSchedule itself would
re-measure ``max_trials_per_task`` fresh candidates every time), or that already has that many
records. A task whose search was cut short by ``max_trials_global`` is not marked and gets more
trials next time.

Candidates are built and timed in this process, on the deployed thread pool
(:mod:`npas_lab.compiler.candidates` says why MetaSchedule's process pools fail here).

Examples
--------
>>> cfg = TuneConfig(max_trials_global=64, max_trials_per_task=16)
>>> cm = compile_model(model, x, tune=cfg)  # doctest: +SKIP
>>> cm.tuning.trials, cm.tuning.seconds  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

from npas_lab import paths
from npas_lab.compiler.candidates import (
    InProcessBuilder,
    InProcessRunner,
    Progress,
    only_needed_tensor_intrinsics,
)

__all__ = [
    "TuneConfig",
    "TuneSummary",
    "open_database",
    "target_key",
    "tune_module",
    "tuning_dir",
    "tuning_tasks",
]

log = logging.getLogger(__name__)
_STRATEGIES = ("replay-trace", "evolutionary")


@dataclass(frozen=True)
class TuneConfig:
    """How much to tune with MetaSchedule (a *trial* = one candidate schedule built and timed).

    Parameters
    ----------
    max_trials_global : int
        Trials for the whole model, over all tasks of this session.
    max_trials_per_task : int or None
        Trials at most per task (fused kernel); None = ``max_trials_global``. A workload already
        tuned to this budget is not tuned again.
    num_trials_per_iter : int
        Candidates proposed, built and timed per search round.
    op_names : tuple of str
        Tune only tasks whose name contains one of these (e.g. ``("conv2d",)``); empty = all.
        The other kernels keep their untuned code (or earlier records).
    strategy : {"replay-trace", "evolutionary"}
        Random sampling of MetaSchedule's design space (no cost model: ~1 s of search per
        round), or its cost-model-guided evolutionary search (~45-80 s of search per round at
        population 512 on 2 loaded cores). Measured on a 64-channel 32x32 conv of ResNet-18:
        random 32 trials 0.89 ms in 17 s, 64 trials 1.22 ms in 51 s; evolutionary 64 trials
        0.77 ms in 164 s, 32 trials at population 128 1.77 ms in 69 s. Random sampling is the
        better use of a small budget here; evolutionary pays off for hundreds of trials per task.
    population_size : int
        Evolutionary search: candidates evolved per round (TVM's default 512). Each round costs
        ~45-60 s of search on 2 loaded cores at 512 whatever ``num_trials_per_iter`` is, so
        rounds of many trials amortise it better than small ones.
    seed : int or None
        Random seed of the search.
    number, repeat, min_repeat_ms : int
        How each candidate is timed (TVM ``EvaluatorConfig``: ``repeat`` repeats of ``number``
        runs, ``number`` grown until a repeat lasts ``min_repeat_ms``).
    """

    max_trials_global: int = 256
    max_trials_per_task: int | None = 64
    num_trials_per_iter: int = 16
    op_names: tuple[str, ...] = ()
    strategy: str = "replay-trace"
    population_size: int = 512
    seed: int | None = 0
    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_names", tuple(self.op_names))
        for name in (
            "max_trials_global",
            "num_trials_per_iter",
            "population_size",
            "number",
            "repeat",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"TuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_trials_per_task is not None and self.max_trials_per_task < 1:
            raise ValueError(f"max_trials_per_task must be >= 1, got {self.max_trials_per_task}")
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is not one of {_STRATEGIES}")

    @property
    def per_task(self) -> int:
        """The effective per-task budget."""
        return self.max_trials_per_task or self.max_trials_global

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-able data."""
        out = dataclasses.asdict(self)
        out["op_names"] = list(self.op_names)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuneConfig:
        """Rebuild a config written by :meth:`to_dict`."""
        data = dict(data)
        data["op_names"] = tuple(data.get("op_names", ()))
        return cls(**data)


@dataclass(frozen=True)
class TuneSummary:
    """What a tuning session did.

    Attributes
    ----------
    directory : Path
        The target's tuning folder.
    tasks : tuple of str
        Names of the selected tasks (after ``op_names``).
    tuned : tuple of str
        Tasks tuned in this session; the others were already tuned to the budget.
    trials : int
        Candidates measured in this session (0 when everything was in the database).
    seconds : float
        Wall time of the session (0 when nothing was tuned).
    records_before, records_after : int
        Records in the database before and after.
    config : TuneConfig
    """

    directory: Path
    tasks: tuple[str, ...]
    tuned: tuple[str, ...]
    trials: int
    seconds: float
    records_before: int
    records_after: int
    config: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-able data."""
        out = dataclasses.asdict(self)
        out.update(
            directory=str(self.directory),
            tasks=list(self.tasks),
            tuned=list(self.tuned),
            config=self.config.to_dict(),
        )
        return out


# ------------------------------------------------------------------------ database location
def _target_json(target: tvm.target.Target | Mapping[str, Any]) -> str:
    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(dict(target))
    return json.dumps(json.loads(str(target)), sort_keys=True)


def target_key(target: tvm.target.Target | Mapping[str, Any]) -> str:
    """Return the short hash naming ``target``'s tuning folder (12 hex digits)."""
    return hashlib.sha256(_target_json(target).encode()).hexdigest()[:12]


def tuning_dir(target: tvm.target.Target | Mapping[str, Any]) -> Path:
    """Return ``results/tuning/<target-key>/`` (created, with ``target.json`` beside the DB)."""
    path = paths.results_dir() / "tuning" / target_key(target)
    path.mkdir(parents=True, exist_ok=True)
    spec = path / "target.json"
    if not spec.exists():
        spec.write_text(json.dumps(json.loads(_target_json(target)), indent=2, sort_keys=True))
    return path


def open_database(target: tvm.target.Target | Mapping[str, Any]) -> ms.database.JSONDatabase:
    """Return the persistent MetaSchedule database of ``target`` (empty if new)."""
    return ms.database.JSONDatabase(work_dir=str(tuning_dir(target)), allow_missing=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Two processes tuning into one JSON database would each append from a stale in-memory copy.
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _workload_key(mod: tvm.IRModule) -> str:
    # What JSONDatabase writes as the first field of a database_workload.json line.
    return str(tvm_ffi.structural_hash(mod))


def _read_ledger(directory: Path) -> dict[str, Any]:
    path = directory / "ledger.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_ledger(directory: Path, ledger: Mapping[str, Any]) -> None:
    path = directory / "ledger.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: a crash keeps the old ledger


def _record_counts(directory: Path) -> dict[str, int]:
    """Return records per workload key, read from the database files (no re-hashing)."""
    workloads = directory / "database_workload.json"
    records = directory / "database_tuning_record.json"
    if not workloads.exists() or not records.exists():
        return {}
    keys = [json.loads(line)[0] for line in workloads.read_text().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for line in records.read_text().splitlines():
        if line.strip():
            key = keys[json.loads(line)[0]]
            counts[key] = counts.get(key, 0) + 1
    return counts


# ---------------------------------------------------------------------------------- tuning
def _scheduled(mod: tvm.IRModule) -> bool:
    """Whether a task's module is already scheduled (the conv templates): never tuned.

    The mark can be on the module or on its function (lower.py sets it on the PrimFunc); such
    kernels are hand-scheduled, and MetaSchedule cannot even estimate their FLOPs.
    """
    if mod.attrs is not None and mod.attrs.get("tirx.is_scheduled", False):
        return True
    return any(
        func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))
        for _, func in mod.functions_items()
    )


def tuning_tasks(
    fused: tvm.IRModule, target: tvm.target.Target, *, op_names: Sequence[str] = ()
) -> list[ms.ExtractedTask]:
    """Return the MetaSchedule tasks of a fused module (one per distinct TIR function)."""
    tasks = ms.relax_integration.extract_tasks(fused, target)
    tasks = [t for t in tasks if not _scheduled(t.mod)]
    if op_names:
        tasks = [t for t in tasks if any(op in t.task_name for op in op_names)]
    return tasks


def _num_threads(target: tvm.target.Target) -> int:
    return int(json.loads(str(target)).get("num-cores", 1))


def _reset_metaschedule_logging() -> None:
    # MetaSchedule logs to stdout at the level of this logger (DEBUG if unset) plus per-task files;
    # keep the console to warnings, the files get everything. Its logger set-up (dictConfig)
    # re-lists the handlers already attached and fails on an unnamed one in a second session of
    # the same process: detach them (closing the previous session's files) first.
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if logger.level == logging.NOTSET or logger.level < logging.WARNING:
        logger.setLevel(logging.WARNING)


def tune_module(
    fused: tvm.IRModule,
    target: tvm.target.Target,
    config: TuneConfig,
    *,
    progress: bool | Callable[[str], None] = True,
) -> tuple[ms.database.JSONDatabase, TuneSummary]:
    """Tune the kernels of ``fused`` that the target's database lacks; return DB and summary.

    Parameters
    ----------
    fused : tvm.IRModule
        A module from :func:`npas_lab.compiler.pipeline.fuse_module`.
    target : tvm.target.Target
        Must run on this machine (candidates are timed in process).
    config : TuneConfig
    progress : bool or callable
        True: a tqdm bar on stderr; a callable: called with one line per measured batch;
        False: log lines only (logger ``npas_lab.compiler.tuning``).

    Returns
    -------
    database : JSONDatabase
        The target's database (apply it with :func:`~npas_lab.compiler.pipeline.schedule_module`).
    summary : TuneSummary
    """
    from npas_lab.compiler.build import set_runtime_threads

    directory = tuning_dir(target)
    tasks = tuning_tasks(fused, target, op_names=config.op_names)
    with _locked(directory):
        database = open_database(target)
        ledger = _read_ledger(directory)
        counts = _record_counts(directory)
        records_before = len(database)
        todo = []
        for task in tasks:
            key = _workload_key(task.dispatched[0])
            tuned_to = ledger.get(key, {}).get("budget", 0)
            if max(tuned_to, counts.get(key, 0)) < config.per_task:
                todo.append((key, task))
        names = tuple(t.task_name for t in tasks)
        if not todo:
            log.info("all %d tasks already tuned to %d trials", len(tasks), config.per_task)
            summary = TuneSummary(directory, names, (), 0, 0.0, records_before, records_before)
            return database, dataclasses.replace(summary, config=config)

        threads = _num_threads(target)
        set_runtime_threads(threads)  # candidates run on the deployed thread pool
        _reset_metaschedule_logging()
        session = directory / "sessions" / time.strftime("%Y%m%d-%H%M%S")
        if config.strategy == "evolutionary":
            strategy = ms.search_strategy.EvolutionarySearch(
                population_size=config.population_size,
                init_min_unmeasured=min(50, config.population_size),
            )
            callbacks = ms.MeasureCallback.create("default")
        else:  # random sampling does not use the cost model: do not train it
            strategy = ms.search_strategy.ReplayTrace()
            callbacks = [
                ms.measure_callback.AddToDatabase(),
                ms.measure_callback.RemoveBuildArtifact(),
            ]
        with only_needed_tensor_intrinsics(target):
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [task for _, task in todo],
                str(session),
                strategy=strategy,
                num_threads=threads,
                seed=config.seed,
            )
        total = min(config.max_trials_global, config.per_task * len(todo))

        def mark_tuned(index: int) -> None:
            # Written as each task finishes, so a killed session keeps what it completed.
            key, task = todo[index]
            entry = ledger.get(key, {"task": task.task_name, "budget": 0})
            entry["budget"] = max(int(entry["budget"]), config.per_task)
            ledger[key] = entry
            _write_ledger(directory, ledger)

        reporter = Progress(total, progress, per_task=config.per_task, on_task_done=mark_tuned)
        scheduler = ms.TaskScheduler.create("gradient")
        evaluator = EvaluatorConfig(
            number=config.number, repeat=config.repeat, min_repeat_ms=config.min_repeat_ms
        )
        log.info("tuning %d of %d tasks, up to %d trials", len(todo), len(tasks), total)
        start = time.perf_counter()
        try:
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(directory),
                max_trials_global=config.max_trials_global,
                max_trials_per_task=config.per_task,
                num_trials_per_iter=config.num_trials_per_iter,
                builder=InProcessBuilder(),
                runner=InProcessRunner(evaluator),
                database=database,
                measure_callbacks=[*callbacks, reporter],
                task_scheduler=scheduler,
            )
        finally:
            reporter.close()
        seconds = time.perf_counter() - start
        # A terminated task ran its whole per-task budget (or exhausted its space): never again
        # for this budget. Others were stopped by the global budget and continue next time.
        for index, record in enumerate(scheduler.tasks_):
            if record.is_terminated:
                mark_tuned(index)
        summary = TuneSummary(
            directory=directory,
            tasks=names,
            tuned=tuple(task.task_name for _, task in todo),
            trials=reporter.done,
            seconds=seconds,
            records_before=records_before,
            records_after=len(database),
            config=config,
        )
    log.info("tuned %d trials in %.1f s", summary.trials, seconds)
    return database, summary
