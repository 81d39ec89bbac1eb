"""The phases of one candidate's evaluation: their names, timing them, announcing them.

:class:`~npas_lab.search.evaluate.Evaluator` times every phase (:data:`PHASES`) of an evaluation
with a :class:`PhaseTimer` and stores the seconds in the record (``phases``), so a search shows
where its time goes (:func:`~npas_lab.search.history.phase_table`). Set the environment variable
``NPAS_LAB_PHASE_LOG`` to a file path to have every phase's start and end appended there as one
JSON line (flushed) while it happens: a way to watch a search from outside, e.g. a progress
monitor, or the crash tests that kill a search in a given phase.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PHASES", "PHASE_LOG_ENV", "PhaseTimer"]

#: Phases of one evaluation, in order, as keys of ``EvalResult.phases`` (seconds): ``load`` (copy
#: the pretrained model, apply the filter types), ``prune`` (one-shot masks), ``finetune``,
#: ``accuracy`` (validation pass), ``compile`` (export, lowering, TVM build; tuning excluded),
#: ``tune`` (kernel-template and MetaSchedule tuning, 0 unless asked for), ``save`` (the compiled
#: library to ``results/artifacts/``), ``measure`` (load on the device and time it).
PHASES = ("load", "prune", "finetune", "accuracy", "compile", "tune", "save", "measure")

#: Environment variable naming a file that receives one JSON line per phase start and end.
PHASE_LOG_ENV = "NPAS_LAB_PHASE_LOG"


class PhaseTimer:
    """Time the phases of one evaluation; announce each to ``$NPAS_LAB_PHASE_LOG`` if set."""

    def __init__(self, plan_key: str) -> None:
        self.plan_key = plan_key
        self.seconds: dict[str, float] = {}
        self.log = os.environ.get(PHASE_LOG_ENV)

    def _announce(self, phase: str, event: str) -> None:
        if not self.log:
            return
        line = {"plan_key": self.plan_key, "phase": phase, "event": event, "pid": os.getpid()}
        with open(self.log, "a", encoding="utf-8") as file:
            file.write(json.dumps(line) + "\n")
            file.flush()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._announce(phase, "start")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
        self._announce(phase, "end")
