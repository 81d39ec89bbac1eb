"""NPAS phase 3: pruning algorithms behind one interface, and the search among them.

With the per-layer scheme and rate fixed (a :class:`~npas_lab.sparsity.PruningPlan`), phase 3
finds *how* to reach the plan by training (NPAS.md, "Three phases"):

- :mod:`~npas_lab.pruning.schedules`: the cubic rate ramp of gradual pruning, the ADMM stages.
- :mod:`~npas_lab.pruning.constraints`: the plan as a projection (ADMM) and as weight groups
  (group Lasso), following each scheme.
- :mod:`~npas_lab.pruning.loop`: the training loop with step hooks the algorithms drive.
- :mod:`~npas_lab.pruning.algorithms`: ``oneshot``, ``gradual``, ``admm``, ``group_lasso``
  (registry :data:`ALGORITHMS`).
- :mod:`~npas_lab.pruning.runner`: :func:`prune`, one algorithm on a copy of a model, logged
  epoch by epoch to the ``pruning`` table of the results store.
- :mod:`~npas_lab.pruning.selection`: :func:`select_algorithm`, short trials ranked on the
  validation split, the winner run to completion.

Examples
--------
>>> from npas_lab.sparsity import uniform_plan
>>> plan = uniform_plan(model, "block_punched", 2.0)  # doctest: +SKIP
>>> result = prune(model, plan, data, algorithm="gradual", epochs=6)  # doctest: +SKIP
>>> choice = select_algorithm(model, plan, data, trial_epochs=2, final_epochs=8)  # doctest: +SKIP
>>> choice.algorithm, choice.scores, choice.result.test_accuracy  # doctest: +SKIP
"""

from npas_lab.pruning.algorithms import (
    ADMM,
    ALGORITHMS,
    Gradual,
    GroupLasso,
    OneShot,
    PruningAlgorithm,
    list_algorithms,
    make_algorithm,
)
from npas_lab.pruning.constraints import group_norm_penalty, plan_masks, project, scheme_groups
from npas_lab.pruning.loop import Trainer, TrainSettings
from npas_lab.pruning.runner import TABLE, PruneResult, plan_rates, prune
from npas_lab.pruning.schedules import admm_schedule, cubic_rate, scheduled_plan
from npas_lab.pruning.selection import Selection, select_algorithm

__all__ = [
    "ADMM",
    "ALGORITHMS",
    "TABLE",
    "Gradual",
    "GroupLasso",
    "OneShot",
    "PruneResult",
    "PruningAlgorithm",
    "Selection",
    "TrainSettings",
    "Trainer",
    "admm_schedule",
    "cubic_rate",
    "group_norm_penalty",
    "list_algorithms",
    "make_algorithm",
    "plan_masks",
    "plan_rates",
    "project",
    "prune",
    "scheduled_plan",
    "scheme_groups",
    "select_algorithm",
]
