"""Phase-3 pruning algorithms behind one interface, and their registry.

Every algorithm trains the model for the run's epochs (a :class:`~.loop.Trainer`) and leaves it
with the plan's masks installed; its options are the fields of a frozen dataclass.

=========== ===============================================================================
oneshot     magnitude prune at step 0 (``apply_plan``), masked fine-tuning for the whole run
gradual     Zhu & Gupta's cubic ramp over the first ``ramp`` of the run, masks updated every
            ``update_every`` steps, then masked fine-tuning at the target
admm        ``admm_fraction`` of the run with the ADMM penalty ``rho/2 ||W - Z + U||^2`` (rho
            1e-4 raised x10 over 4 stages, Z/U updated 3 times a stage), then hard prune and
            masked retraining
group_lasso ``lasso_fraction`` of the run with ``lam * sum_g sqrt(|g|) ||W_g||`` over the
            scheme's groups (:mod:`.constraints`), then hard prune and masked retraining
=========== ===============================================================================

Examples
--------
Add your own algorithm and use it by name:

>>> @dataclasses.dataclass(frozen=True, kw_only=True)
... class Lazy(PruningAlgorithm):
...     name: ClassVar[str] = "lazy"
...     def run(self, model, plan, trainer):
...         apply_plan(model, plan)
...         trainer.masks_changed()
...         for _ in range(trainer.settings.epochs):
...             yield {"phase": "retrain", **trainer.train_epoch()}
>>> ALGORITHMS["lazy"] = Lazy
>>> make_algorithm("lazy").name
'lazy'
>>> del ALGORITHMS["lazy"]
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from npas_lab.pruning.constraints import group_norm_penalty, project, scheme_groups
from npas_lab.pruning.loop import Trainer
from npas_lab.pruning.schedules import admm_schedule, scheduled_plan, split_steps
from npas_lab.sparsity import PruningPlan, apply_plan, update_masks

__all__ = [
    "ADMM",
    "ALGORITHMS",
    "Gradual",
    "GroupLasso",
    "OneShot",
    "PruningAlgorithm",
    "list_algorithms",
    "make_algorithm",
]


class PruningAlgorithm(ABC):
    """A way to reach a pruning plan by training: one method, :meth:`run`.

    Implementations are frozen dataclasses whose fields are the algorithm's options, with a
    class attribute ``name`` (the registry key).
    """

    name: ClassVar[str] = "?"

    @abstractmethod
    def run(
        self, model: nn.Module, plan: PruningPlan, trainer: Trainer
    ) -> Iterator[dict[str, Any]]:
        """Train ``model`` for all of ``trainer``'s epochs, yielding one record per epoch.

        Each record holds ``phase`` (e.g. ``"admm"``, ``"retrain"``, ``"admm+retrain"`` for an
        epoch that spans both) and the statistics of :meth:`Trainer.train_epoch`, plus the
        algorithm's own (``rho``, ``lam``, ...). When the generator is exhausted ``model``
        carries the masks of ``plan`` (``apply_plan`` / ``update_masks``).
        """


def _label(steps: range, switch: int, first: str) -> str:
    """Name the phases an epoch's steps fall in: ``first`` before ``switch``, retrain after."""
    phases = [first] if steps.start < switch else []
    return "+".join([*phases, "retrain"] if steps.stop > switch else phases)


def _hard_prune(model: nn.Module, plan: PruningPlan, trainer: Trainer) -> None:
    apply_plan(model, plan)
    trainer.masks_changed()


def _regularise_then_prune(
    model: nn.Module,
    plan: PruningPlan,
    trainer: Trainer,
    *,
    switch: int,
    phase: str,
    penalty: Callable[[int], torch.Tensor | None],
    before_step: Callable[[int], None] | None = None,
    extras: Callable[[], dict[str, Any]] = dict,
) -> Iterator[dict[str, Any]]:
    """Train with ``penalty`` up to step ``switch``, hard prune there, retrain masked after."""

    def hook(step: int) -> None:
        if before_step is not None:
            before_step(step)
        if step == switch:
            _hard_prune(model, plan, trainer)

    for _ in range(trainer.settings.epochs):
        steps = trainer.epoch_steps()
        stats = trainer.train_epoch(before_step=hook, penalty=penalty)
        yield {"phase": _label(steps, switch, phase), **stats, **extras()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneShot(PruningAlgorithm):
    """Magnitude-prune once (``apply_plan``), then fine-tune with the masks for every epoch."""

    name: ClassVar[str] = "oneshot"

    def run(
        self, model: nn.Module, plan: PruningPlan, trainer: Trainer
    ) -> Iterator[dict[str, Any]]:
        """See :meth:`PruningAlgorithm.run`."""
        _hard_prune(model, plan, trainer)
        for _ in range(trainer.settings.epochs):
            yield {"phase": "retrain", **trainer.train_epoch()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gradual(PruningAlgorithm):
    """Gradual magnitude pruning with the cubic schedule of Zhu & Gupta (2017).

    Masks are installed at step 0 at rate 1 (the scheme's minimum: 9/4 for pattern), updated by
    magnitude every ``update_every`` steps to the rates of
    :func:`~npas_lab.pruning.schedules.scheduled_plan`, and set to the plan's rates at the end of
    the ramp; the rest of the run fine-tunes with the final masks. A removed weight is 0 in the
    stored tensor and in the optimizer state, so magnitude never brings it back and the pruned
    set only grows (pattern layers excepted: their library is re-extracted at every update, so a
    kept kernel may switch pattern).
    """

    name: ClassVar[str] = "gradual"
    ramp: float = 0.5  # fraction of the run's steps over which the rate rises to the target
    update_every: int | None = None  # steps between mask updates; None: a tenth of the ramp

    def __post_init__(self) -> None:
        split_steps(1, self.ramp, name="ramp")  # checks the range
        if self.update_every is not None and (
            isinstance(self.update_every, bool)
            or not isinstance(self.update_every, int)
            or self.update_every < 1
        ):
            raise ValueError(f"update_every={self.update_every!r} must be a positive int or None")

    def run(
        self, model: nn.Module, plan: PruningPlan, trainer: Trainer
    ) -> Iterator[dict[str, Any]]:
        """See :meth:`PruningAlgorithm.run`."""
        end = split_steps(trainer.total_steps, self.ramp, name="ramp")
        every = self.update_every or max(1, round(end / 10))
        apply_plan(model, scheduled_plan(plan, model, 0.0 if end else 1.0))
        trainer.masks_changed()

        def before_step(step: int) -> None:
            if 0 < step <= end and (step % every == 0 or step == end):
                update_masks(model, scheduled_plan(plan, model, step / end))
                trainer.masks_changed()

        for _ in range(trainer.settings.epochs):
            steps = trainer.epoch_steps()
            stats = trainer.train_epoch(before_step=before_step)
            yield {"phase": _label(steps, end, "ramp"), **stats}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ADMM(PruningAlgorithm):
    """ADMM-regularised training, then hard prune and masked retraining (ADMM-NN, PatDNN).

    The constraint "W satisfies the plan" is split off with an auxiliary Z and a scaled dual U:
    the loss gets ``rho/2 ||W - Z + U||^2`` per pruned layer, and every few steps
    ``Z = project(W + U)`` (:func:`~npas_lab.pruning.constraints.project`, the plan's masks on
    ``W + U``) and ``U += W - Z``. ``rho`` rises by ``rho_factor`` per stage
    (:func:`~npas_lab.pruning.schedules.admm_schedule` maps stages and updates onto steps);
    when it does, U is divided by the same factor, since U is the dual over rho (Boyd et al.
    2011, section 3.4.1).

    Budget mapping: the authors run ADMM for many epochs, 4 stages of several epochs each, with
    Z/U updated every few epochs. Here the ADMM part is the first ``admm_fraction`` of the run's
    steps, cut into ``stages`` equal stretches with ``updates_per_stage`` Z/U updates each. A
    40-epoch run thus has 20 ADMM epochs, 5 per stage, Z/U every 1.7 epochs; a 1-epoch smoke
    run on digits (19 steps) has 9 ADMM steps, stages of 2-3 steps, Z/U after nearly every step.
    """

    name: ClassVar[str] = "admm"
    rho: float = 1e-4  # penalty weight of the first stage (authors' code)
    rho_factor: float = 10.0  # rho grows by this factor from one stage to the next
    stages: int = 4
    updates_per_stage: int = 3  # Z/U updates per stage ("every few epochs" in a long run)
    admm_fraction: float = 0.5  # fraction of the run's steps with the ADMM penalty

    def __post_init__(self) -> None:
        split_steps(1, self.admm_fraction, name="admm_fraction")
        admm_schedule(
            0,
            rho=self.rho,
            factor=self.rho_factor,
            stages=self.stages,
            updates_per_stage=self.updates_per_stage,
        )

    def run(
        self, model: nn.Module, plan: PruningPlan, trainer: Trainer
    ) -> Iterator[dict[str, Any]]:
        """See :meth:`PruningAlgorithm.run`."""
        names = list(plan.pruned())
        end = split_steps(trainer.total_steps, self.admm_fraction, name="admm_fraction")
        schedule = admm_schedule(
            end,
            rho=self.rho,
            factor=self.rho_factor,
            stages=self.stages,
            updates_per_stage=self.updates_per_stage,
        )

        def weights() -> dict[str, torch.Tensor]:
            return {name: model.get_submodule(name).weight for name in names}

        current = {name: w.detach() for name, w in weights().items()}
        z = project(current, plan)
        u = {name: torch.zeros_like(w) for name, w in current.items()}
        last = {"rho": None}

        def penalty(step: int) -> torch.Tensor | None:
            if step >= end:
                return None
            rho = last["rho"] = schedule[step].rho
            terms = [(w - z[n] + u[n]).pow(2).sum() for n, w in weights().items()]
            return rho / 2 * torch.stack(terms).sum()

        def before_step(step: int) -> None:
            if not 0 < step < end:
                return
            if schedule[step - 1].update:
                w = {name: t.detach() for name, t in weights().items()}
                z.update(project({n: w[n] + u[n] for n in names}, plan))
                for n in names:
                    u[n] += w[n] - z[n]
            if schedule[step].rho != schedule[step - 1].rho:
                # U is the dual divided by rho: keep the dual when rho changes (Boyd et al.
                # 2011, section 3.4.1), or a x10 rho would also weigh the old duals x10.
                for n in names:
                    u[n] *= schedule[step - 1].rho / schedule[step].rho

        def extras() -> dict[str, Any]:
            if last["rho"] is None:
                return {}
            record = {"rho": last["rho"]}
            last["rho"] = None
            # Primal residual ||W - Z|| / ||W||: how far the weights still are from the plan.
            with torch.no_grad():
                gap = sum(float((w - z[n]).pow(2).sum()) for n, w in weights().items())
                norm = sum(float(w.pow(2).sum()) for w in weights().values())
            record["admm_residual"] = (gap / norm) ** 0.5 if norm else 0.0
            return record

        yield from _regularise_then_prune(
            model,
            plan,
            trainer,
            switch=end,
            phase="admm",
            penalty=penalty,
            before_step=before_step,
            extras=extras,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupLasso(PruningAlgorithm):
    """Group-Lasso-regularised training over the scheme's groups, then hard prune and retrain.

    The penalty is ``lam * sum_layers sum_g sqrt(|g|) ||W_g||_2`` with the groups of
    :func:`~npas_lab.pruning.constraints.scheme_groups` (punches, kernels, filters, channels,
    block rows/columns), which drives whole groups towards 0 so the hard prune loses little.
    """

    name: ClassVar[str] = "group_lasso"
    lam: float = 1e-4  # strength; the penalty is of the order of the layers' L1 norm
    lasso_fraction: float = 0.5  # fraction of the run's steps with the penalty

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"lam={self.lam!r} must be >= 0")
        split_steps(1, self.lasso_fraction, name="lasso_fraction")

    def run(
        self, model: nn.Module, plan: PruningPlan, trainer: Trainer
    ) -> Iterator[dict[str, Any]]:
        """See :meth:`PruningAlgorithm.run`."""
        groups = {}
        for name, choice in plan.pruned().items():
            weight = model.get_submodule(name).weight
            ids, count = scheme_groups(weight.shape, choice, layer=name)
            groups[name] = (ids.to(weight.device), count)
        end = split_steps(trainer.total_steps, self.lasso_fraction, name="lasso_fraction")

        def penalty(step: int) -> torch.Tensor | None:
            if step >= end or not groups:
                return None
            terms = [
                group_norm_penalty(model.get_submodule(name).weight, ids, count)
                for name, (ids, count) in groups.items()
            ]
            return self.lam * torch.stack(terms).sum()

        yield from _regularise_then_prune(
            model,
            plan,
            trainer,
            switch=end,
            phase="group_lasso",
            penalty=penalty,
            extras=lambda: {"lam": self.lam},
        )


#: Algorithm name -> class. Register your own with ``ALGORITHMS["mine"] = Mine``.
ALGORITHMS: dict[str, type[PruningAlgorithm]] = {
    cls.name: cls for cls in (OneShot, Gradual, ADMM, GroupLasso)
}


def list_algorithms() -> list[str]:
    """Return the registered algorithm names in registry order."""
    return list(ALGORITHMS)


def make_algorithm(name: str | PruningAlgorithm, **options: Any) -> PruningAlgorithm:
    """Return the algorithm ``name`` built with ``options`` (an instance passes through).

    Raises
    ------
    ValueError
        For an unknown name (listing the registered ones) or an unknown option (listing the
        algorithm's options).
    """
    if isinstance(name, PruningAlgorithm):
        if options:
            raise ValueError(
                f"options {sorted(options)} given with an algorithm instance {name!r}; "
                "set them on the instance"
            )
        return name
    if name not in ALGORITHMS:
        raise ValueError(
            f"unknown pruning algorithm {name!r}; valid: {', '.join(list_algorithms())}"
        )
    cls = ALGORITHMS[name]
    valid = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"pruning algorithm {name!r} has no option(s) {unknown}; valid: "
            + (", ".join(valid) or "none")
        )
    return cls(**options)
