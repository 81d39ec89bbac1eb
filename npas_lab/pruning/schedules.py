"""Step schedules of the pruning algorithms: the cubic rate ramp and the ADMM stages.

Everything is counted in optimizer *steps* so that one schedule serves a 40-epoch run and a
1-epoch smoke test alike; an epoch is ``len(train loader)`` steps.

Gradual pruning (Zhu & Gupta, "To prune, or not to prune", 2017, eq. 1): the *sparsity* (the
pruned fraction, ``1 - 1 / rate``) follows ``s_t = s_f + (s_i - s_f) (1 - t / T)^3`` from
``s_i`` at ``t = 0`` to ``s_f`` at ``t = T``: fast early, when many redundant weights remain, and
slow near the target. Rates are dense / kept, so the cubic acts on the sparsity and the result is
converted back; interpolating the rate itself would prune almost nothing until the very end.

ADMM (authors' code, NPAS.md "Three phases"): ``rho`` starts at 1e-4 and is raised x10 at each of
4 stages; Z and U are updated every few epochs. Here the ADMM part of a run is cut into
``stages`` equal stretches of steps, and Z/U are updated ``updates_per_stage`` times per stage,
evenly spaced, the last one at the stage's end (see :func:`admm_schedule`).
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from npas_lab.sparsity import PruningPlan, get_scheme
from npas_lab.sparsity.plan import LayerChoice

__all__ = [
    "AdmmStep",
    "admm_schedule",
    "cubic_rate",
    "min_rate",
    "scheduled_plan",
    "split_steps",
]


def cubic_rate(progress: float, target: float, *, initial: float = 1.0) -> float:
    """Return the pruning rate of the cubic schedule at ``progress`` in [0, 1].

    Parameters
    ----------
    progress
        ``t / T``: fraction of the ramp done; clipped to [0, 1].
    target
        Final rate (dense / kept), reached at ``progress = 1``.
    initial
        Rate at ``progress = 0`` (1: nothing pruned).

    Examples
    --------
    Halfway through the ramp to 8x the sparsity is 7/8 * (1 - 1/8) = 0.766, a rate of 4.27x:

    >>> round(cubic_rate(0.5, 8.0), 2)
    4.27
    >>> cubic_rate(0.0, 8.0), cubic_rate(1.0, 8.0)
    (1.0, 8.0)
    """
    progress = min(max(float(progress), 0.0), 1.0)
    if progress == 1.0:
        return float(target)  # exactly the target, no round-off from 1 / (1 - s)
    s_i, s_f = 1.0 - 1.0 / initial, 1.0 - 1.0 / target
    sparsity = s_f + (s_i - s_f) * (1.0 - progress) ** 3
    return 1.0 / (1.0 - sparsity)


def min_rate(model: nn.Module, name: str, choice: LayerChoice) -> float:
    """Return the lowest rate ``choice``'s scheme reaches on layer ``name`` (9/4 for pattern)."""
    weight = model.get_submodule(name).weight
    low, _ = get_scheme(choice.scheme).rate_range(
        tuple(weight.shape), layer=name, **choice.mask_options()
    )
    return low


def scheduled_plan(plan: PruningPlan, model: nn.Module, progress: float) -> PruningPlan:
    """Return ``plan`` with every pruned layer at its cubic-schedule rate for ``progress``.

    Same schemes, blocks and options; only the rates change. A rate below what the scheme can
    reach is raised to that minimum (pattern pruning starts at 9/4: patterns alone), which keeps
    the schedule monotone.
    """
    layers = dict(plan.items())
    for name, choice in plan.pruned().items():
        rate = max(cubic_rate(progress, choice.rate), min_rate(model, name, choice))
        layers[name] = dataclasses.replace(choice, rate=min(rate, choice.rate))
    return PruningPlan(layers)


def split_steps(total: int, fraction: float, *, name: str) -> int:
    """Return the step at which the first ``fraction`` of a ``total``-step run ends.

    At least one step is always left after it (even for ``fraction = 1``), so the hard prune or
    final mask update that ends a regularised or ramp phase happens before the last step and
    every run ends with masked training on the exact plan.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name}={fraction!r} must be a fraction of the run in [0, 1]")
    return max(0, min(round(fraction * total), total - 1))


@dataclasses.dataclass(frozen=True)
class AdmmStep:
    """What the ADMM schedule does before one step: its ``rho`` and whether Z/U update first."""

    stage: int
    rho: float
    update: bool


def admm_schedule(
    steps: int, *, rho: float, factor: float, stages: int, updates_per_stage: int
) -> list[AdmmStep]:
    """Return the ADMM schedule of a ``steps``-step ADMM phase, one entry per step.

    Stage ``k`` (0-based) covers steps ``[k * steps // stages, (k+1) * steps // stages)`` and
    uses ``rho * factor**k``. Z/U are updated ``updates_per_stage`` times per stage
    at evenly spaced steps, the last one on the stage's last step; ``update`` on entry ``i``
    means "update Z and U before step ``i + 1``", i.e. after step ``i`` has been taken. With fewer
    steps than stages the stages shrink to one step each (and rho stops rising earlier); with
    fewer steps in a stage than updates, Z/U update after every step of it.

    Examples
    --------
    >>> [(s.stage, s.rho, s.update) for s in admm_schedule(
    ...     4, rho=1e-4, factor=10, stages=2, updates_per_stage=1)]
    [(0, 0.0001, False), (0, 0.0001, True), (1, 0.001, False), (1, 0.001, True)]
    """
    for label, value in (("stages", stages), ("updates_per_stage", updates_per_stage)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ADMM {label}={value!r} must be a positive int")
    if not rho > 0 or not factor >= 1:
        raise ValueError(f"ADMM needs rho > 0 and factor >= 1, got rho={rho!r}, {factor=!r}")
    stages = min(stages, steps)
    schedule = []
    for k in range(stages):
        start, stop = k * steps // stages, (k + 1) * steps // stages
        length = stop - start
        count = min(updates_per_stage, length)
        # Offsets of the last step before each update: evenly spaced, ending at the stage's end.
        marks = {math.ceil((j + 1) * length / count) - 1 for j in range(count)}
        for offset in range(length):
            schedule.append(AdmmStep(stage=k, rho=rho * factor**k, update=offset in marks))
    return schedule
