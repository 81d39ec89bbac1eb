"""The search loop: a generator of evaluated candidates, recorded as they come, resumable.

:func:`search` asks an algorithm for a candidate, evaluates it (:class:`~.evaluate.Evaluator`:
fine-tuned accuracy, measured latency, both cached by plan key), scores it with the search's
:class:`~.reward.RewardConfig`, appends an ``evaluation`` record to the ``search/runs`` table and
yields it, until the budget is spent. Stop whenever you like (stop iterating, a stop button,
Ctrl-C, a killed process): calling :func:`search` again with the same ``run_id`` replays the
recorded steps into a fresh algorithm with the same seed, which then proposes what it would
have proposed next, and continues. Replayed steps are yielded again (``replayed=True``, so a
live figure can redraw them) but neither evaluated nor recorded twice.

Evaluations go through an executor (:mod:`~npas_lab.search.executors`): in process by default,
a Dask cluster when given one. With ``batch=k`` the algorithm proposes ``k`` candidates before
it observes their rewards, so ``k`` evaluations run at once; the candidates depend only on the
seed, ``batch`` and the rewards observed, never on which worker finished first, so a run gives
the same records in process and on a cluster (and resumes identically from any step).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

from npas_lab import results
from npas_lab.search.algorithms import make_algorithm
from npas_lab.search.evaluate import EvalResult, Evaluator
from npas_lab.search.executors import client_home, evaluate, resolve_executor
from npas_lab.search.history import RUNS_TABLE, Evaluation, run_records
from npas_lab.search.reward import RewardConfig
from npas_lab.search.space import SearchSpace

__all__ = ["FAILED_PENALTY", "search"]

#: A failed evaluation is observed by the algorithms as the worst reward so far minus this.
FAILED_PENALTY = 0.1


#: Identity fields added after runs were first recorded, with the value old runs had.
_IDENTITY_DEFAULTS = {"batch": 1}


def _check_resume(start: dict[str, Any], identity: dict[str, Any], run_id: str) -> None:
    """Refuse to resume a run under a different algorithm, seed, space, reward or evaluator."""
    for name, value in identity.items():
        recorded = start.get(name, _IDENTITY_DEFAULTS.get(name))
        if recorded != value:
            raise ValueError(
                f"run_id={run_id!r} was started with {name}={recorded!r}, not {value!r}; "
                "resume it with the same settings or start a new run (run_id=None)"
            )


def search(
    space: SearchSpace,
    evaluator: Evaluator,
    reward: RewardConfig,
    *,
    algorithm: str = "npas",
    budget: int = 20,
    seed: int = 0,
    run_id: str | None = None,
    options: dict[str, Any] | None = None,
    executor: Any = None,
    batch: int = 1,
) -> Iterator[Evaluation]:
    """Yield evaluated candidates of one search run, recording each; resume by ``run_id``.

    Parameters
    ----------
    space
        What may be decided per layer.
    evaluator
        Fast evaluation (accuracy, latency) on the pretrained model, cached by plan key.
    reward
        The reward form and the latency target T.
    algorithm
        ``"npas"``, ``"random"``, ``"rl"`` or ``"bo"`` (see
        :func:`~npas_lab.search.algorithms.list_algorithms`).
    budget
        Evaluations in the run (cached ones count: they are evaluations of this search).
        A resumed run may be given a larger budget to go on.
    seed
        Seeds the algorithm.
    run_id
        Id of the run in the results store; a new one by default. An existing id resumes.
    options
        Keyword options of the algorithm (e.g. ``{"pool": 128}`` for ``npas``).
    executor
        Where evaluations run (:func:`~npas_lab.search.executors.resolve_executor`): None in
        process, a ``dask.distributed.Client``, or any ``concurrent.futures.Executor``. Workers
        must see the client's results folder (a shared filesystem).
    batch
        Candidates proposed (and evaluated at once) before their rewards are observed; part of
        the run's identity, like the seed. 1 is the sequential search; give the number of
        workers to keep a cluster busy.

    Returns
    -------
    Iterator[Evaluation]
        In step order; a resumed run first yields its recorded steps (``replayed=True``).
        Settings are checked, and a new run's start record written, when :func:`search` is
        called; candidates are evaluated as the iterator is consumed.

    Raises
    ------
    ValueError
        Unknown algorithm or option, a budget or batch < 1, or a ``run_id`` recorded with other
        settings (raised by the call, before anything is evaluated).
    TypeError
        An ``executor`` without ``submit``.

    Examples
    --------
    >>> reward = RewardConfig(target_ms=0.2)
    >>> for ev in search(space, evaluator, reward, budget=10):  # doctest: +SKIP
    ...     print(ev.step, ev.accuracy, ev.latency, ev.reward)
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget={budget!r} must be an int >= 1 (evaluations)")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(
            f"batch={batch!r} must be an int >= 1 (candidates evaluated at once; 1: sequential)"
        )
    pool = resolve_executor(executor)
    options = dict(options or {})
    algo = make_algorithm(algorithm, space, seed=seed, budget=budget, **options)
    identity = {
        "algorithm": algorithm,
        "seed": seed,
        "space_key": space.key(),
        "reward": reward.to_dict(),
        "context": evaluator.context,
    }
    if batch != 1:  # runs recorded before batches existed resume as batch=1
        identity["batch"] = batch
    run_id = run_id or results.new_run_id()
    start, history = run_records(run_id)
    if start is not None:
        _check_resume(start, identity, run_id)
    else:
        results.append(
            RUNS_TABLE,
            {
                "kind": "start",
                "run_id": run_id,
                **identity,
                "budget": budget,
                "options": algo.options(),
                "space": space.config.to_dict(),
                "space_size": space.size,
                "layers": list(space.layers),
                "evaluator": evaluator.spec,
            },
        )
    return _steps(space, evaluator, reward, algo, algorithm, budget, run_id, history, pool, batch)


def _steps(
    space: SearchSpace,
    evaluator: Evaluator,
    reward: RewardConfig,
    algo: Any,
    algorithm: str,
    budget: int,
    run_id: str,
    history: list[dict[str, Any]],
    pool: Any,
    batch: int,
) -> Iterator[Evaluation]:
    """Run the search loop of :func:`search` (a generator)."""
    seen: set[tuple[int, ...]] = set()
    observed: list[float] = []
    diverged = False
    home = client_home()
    for first in range(0, budget, batch):
        # Propose the whole batch before observing anything: what is proposed depends on the
        # seed and the rewards so far only, not on which evaluation finishes first.
        steps = range(first, min(first + batch, budget))
        proposals = []
        for step in steps:
            candidate, predicted = algo.propose(seen)
            if step < len(history):
                recorded = history[step]
                plan = space.plan(recorded["candidate"])
                if plan.key() != recorded["plan_key"]:
                    raise ValueError(
                        f"run {run_id!r} step {step}: the recorded candidate does not give the "
                        "recorded plan; the search space changed since the run was recorded"
                    )
                if tuple(recorded["candidate"]) != candidate and not diverged:
                    diverged = True
                    warnings.warn(
                        f"run {run_id!r}: the algorithm proposed something else than recorded "
                        f"at step {step} (code or library change); continuing from the recorded "
                        "history",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                candidate = tuple(recorded["candidate"])
            seen.add(candidate)
            proposals.append((step, candidate, predicted))
        pending: dict[str, Any] = {}  # plan key -> future, so a batch never evaluates twice
        began = time.perf_counter()
        for step, candidate, _ in proposals:
            if step >= len(history):
                plan = space.plan(candidate)
                if evaluator.cached(plan) is None and plan.key() not in pending:
                    pending[plan.key()] = pool.submit(evaluate, evaluator, plan, home)
        try:
            for step, candidate, predicted in proposals:
                if step < len(history):
                    evaluation = Evaluation.from_record(history[step])
                else:
                    plan = space.plan(candidate)
                    future = pending.pop(plan.key(), None)
                    if future is not None:  # evaluated now, in process or on a worker
                        result = evaluator.remember(future.result())
                    else:
                        result = evaluator.cached(plan)
                    evaluation = _evaluation(
                        result, reward, step, candidate, predicted, run_id, algorithm, began
                    )
                    results.append(RUNS_TABLE, evaluation.to_record(), env=False)
                value = evaluation.reward
                if value is None:  # failed: worse than anything seen, so the learners move away
                    value = (min(observed) if observed else 0.0) - FAILED_PENALTY
                observed.append(value)
                algo.observe(evaluation.candidate, value)
                yield evaluation
        finally:
            # Stopped early (or failed): drop what has not started. What runs finishes and is
            # recorded in the evaluations table by its worker, so a resume finds it cached.
            for future in pending.values():
                future.cancel()


def _evaluation(
    result: EvalResult,
    reward: RewardConfig,
    step: int,
    candidate: tuple[int, ...],
    predicted: float | None,
    run_id: str,
    algorithm: str,
    began: float,
) -> Evaluation:
    """Score ``result`` and make the run's :class:`Evaluation` of it."""
    score = reward(result.accuracy, result.latency_ms) if result.status == "ok" else None
    status = ("cached" if result.cached else "ok") if result.status == "ok" else "failed"
    return Evaluation(
        plan=result.plan,
        accuracy=result.accuracy,
        latency=result.latency_ms,
        reward=score,
        cost_s=result.cost_s if not result.cached else time.perf_counter() - began,
        status=status,
        step=step,
        spread_ms=result.spread_ms,
        candidate=candidate,
        predicted=predicted,
        run_id=run_id,
        algorithm=algorithm,
        replayed=False,
        error=result.error,
        phases=result.phases if not result.cached else None,
    )
