"""Search algorithms behind one interface: ``propose`` a candidate, ``observe`` its reward.

=========== ===============================================================================
random      uniform candidates (the baseline every figure compares against)
rl          the Q-learning controller alone (:class:`~.controller.QController`), one
            proposal evaluated per step
bo          Bayesian optimisation alone: ``n_initial`` random candidates, then each step the
            candidate of highest expected improvement (:class:`~.surrogate.Surrogate`, a
            scikit-optimize Gaussian process over the encoding) among ``pool`` random ones, the
            way scikit-optimize optimises its acquisition over categorical spaces (sampling)
npas        the meta-modeling procedure: the controller proposes a batch of ``pool``
            candidates, the surrogate predicts their reward and only the ``evaluate_top`` most
            promising (expected improvement) are evaluated; both learn from every evaluation
=========== ===============================================================================

``bo`` and ``npas`` differ only in where the candidates the surrogate ranks come from (random
vs the learning controller), so comparing them isolates what the RL part adds.

Algorithms never propose a candidate the search has already evaluated (``seen``); the search
loop (:func:`~npas_lab.search.loop.search`) records and replays their history.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Set
from typing import Any, ClassVar

import numpy as np

from npas_lab.search.controller import ControllerConfig, QController
from npas_lab.search.space import Candidate, SearchSpace
from npas_lab.search.surrogate import Surrogate

__all__ = [
    "ALGORITHMS",
    "BayesianSearch",
    "NPASSearch",
    "RLSearch",
    "RandomSearch",
    "SearchAlgorithm",
    "list_algorithms",
    "make_algorithm",
]

_TRIES = 2000  # proposals tried before falling back to a random unseen candidate


class SearchAlgorithm(ABC):
    """Propose candidates and learn from their rewards.

    Parameters
    ----------
    space
        The search space.
    seed
        Seeds every random choice (a resumed search replays the same proposals).
    budget
        Evaluations the search will make (exploration schedules use it).
    """

    name: ClassVar[str] = "?"

    def __init__(self, space: SearchSpace, *, seed: int = 0, budget: int = 20) -> None:
        self.space, self.seed, self.budget = space, seed, budget
        self.rng = np.random.default_rng(seed)
        self.candidates: list[Candidate] = []
        self.rewards: list[float] = []

    @abstractmethod
    def propose(self, seen: Set[Candidate]) -> tuple[Candidate, float | None]:
        """Return the next candidate to evaluate (not in ``seen``) and its predicted reward."""

    def observe(self, candidate: Candidate, reward: float) -> None:
        """Learn from one evaluated candidate (the base class keeps the history)."""
        self.candidates.append(candidate)
        self.rewards.append(float(reward))

    def options(self) -> dict[str, Any]:
        """Return the algorithm's options, as recorded with a search."""
        return {}

    def _random_unseen(self, seen: Set[Candidate]) -> Candidate:
        for _ in range(_TRIES):
            candidate = self.space.sample(self.rng)
            if candidate not in seen:
                return candidate
        raise RuntimeError(
            f"found no unevaluated candidate in {_TRIES} random draws: the space "
            f"({self.space.size} candidates) is (nearly) exhausted"
        )


class RandomSearch(SearchAlgorithm):
    """Uniformly random candidates."""

    name: ClassVar[str] = "random"

    def propose(self, seen: Set[Candidate]) -> tuple[Candidate, float | None]:
        """See :meth:`SearchAlgorithm.propose`."""
        return self._random_unseen(seen), None


class RLSearch(SearchAlgorithm):
    """The Q-learning controller alone: evaluate what it proposes."""

    name: ClassVar[str] = "rl"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        budget: int = 20,
        controller: ControllerConfig | None = None,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget)
        self.controller = QController(space, self.rng, horizon=budget, config=controller)

    def propose(self, seen: Set[Candidate]) -> tuple[Candidate, float | None]:
        """See :meth:`SearchAlgorithm.propose`."""
        for _ in range(_TRIES // 20):
            candidate = self.controller.propose()
            if candidate not in seen:
                return candidate, None
        return self._random_unseen(seen), None

    def observe(self, candidate: Candidate, reward: float) -> None:
        """See :meth:`SearchAlgorithm.observe`."""
        super().observe(candidate, reward)
        self.controller.observe(candidate, reward)

    def options(self) -> dict[str, Any]:
        """See :meth:`SearchAlgorithm.options`."""
        return {"controller": dataclasses.asdict(self.controller.config)}


class _SurrogateSearch(SearchAlgorithm):
    """Shared part of ``bo`` and ``npas``: random start, then rank a pool by the surrogate."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        budget: int = 20,
        n_initial: int = 4,
        pool: int = 64,
        evaluate_top: int = 1,
        xi: float = 0.01,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget)
        for name, value, low in (("n_initial", n_initial, 1), ("pool", pool, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an int >= {low}")
        if isinstance(evaluate_top, bool) or not 1 <= evaluate_top <= pool:
            raise ValueError(f"evaluate_top={evaluate_top!r} must be an int from 1 to pool={pool}")
        self.n_initial, self.pool, self.evaluate_top, self.xi = n_initial, pool, evaluate_top, xi
        self.surrogate = Surrogate(space, seed=seed, xi=xi)
        self._queue: list[tuple[Candidate, float]] = []
        self._fitted = 0  # observations the surrogate was last fitted on

    @abstractmethod
    def _pool(self, seen: Set[Candidate]) -> list[Candidate]:
        """Return unseen candidates for the surrogate to rank."""

    def _initial(self, seen: Set[Candidate]) -> Candidate:
        return self._random_unseen(seen)

    def propose(self, seen: Set[Candidate]) -> tuple[Candidate, float | None]:
        """See :meth:`SearchAlgorithm.propose`."""
        self._queue = [(c, p) for c, p in self._queue if c not in seen]
        if self._queue:
            return self._queue.pop(0)
        if len(self.rewards) < self.n_initial:
            return self._initial(seen), None
        if self._fitted != len(self.rewards):
            self.surrogate.fit(self.candidates, self.rewards)
            self._fitted = len(self.rewards)
        pool = list(dict.fromkeys(self._pool(seen))) or [self._random_unseen(seen)]
        ei = self.surrogate.expected_improvement(pool)
        mean, _ = self.surrogate.predict(pool)
        # Highest expected improvement first; the index breaks ties reproducibly.
        order = sorted(range(len(pool)), key=lambda i: (-ei[i], i))[: self.evaluate_top]
        self._queue = [(pool[i], float(mean[i])) for i in order]
        return self._queue.pop(0)

    def options(self) -> dict[str, Any]:
        """See :meth:`SearchAlgorithm.options`."""
        return {
            "n_initial": self.n_initial,
            "pool": self.pool,
            "evaluate_top": self.evaluate_top,
            "xi": self.xi,
        }


class BayesianSearch(_SurrogateSearch):
    """Bayesian optimisation alone: expected improvement over a pool of random candidates."""

    name: ClassVar[str] = "bo"

    def _pool(self, seen: Set[Candidate]) -> list[Candidate]:
        return [c for c in (self.space.sample(self.rng) for _ in range(self.pool)) if c not in seen]


class NPASSearch(_SurrogateSearch):
    """The NPAS meta-modeling procedure: controller proposals, surrogate picks, both learn.

    The controller's first ``n_initial`` proposals are evaluated as they come (its epsilon
    starts at 1, so they are uniform); from then on each round it proposes ``pool`` candidates
    at its current epsilon and the surrogate picks the ``evaluate_top`` of highest expected
    improvement. The controller learns from every evaluated candidate, so later batches
    concentrate where rewards were high, and the surrogate spends evaluations only on the
    most promising of them.
    """

    name: ClassVar[str] = "npas"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int = 0,
        budget: int = 20,
        controller: ControllerConfig | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, seed=seed, budget=budget, **options)
        # The surrogate filters the controller's proposals, so the controller may keep
        # exploring longer than when it decides alone.
        config = controller or ControllerConfig(epsilon_end=0.3, decay=1.0)
        self.controller = QController(space, self.rng, horizon=budget, config=config)

    def _initial(self, seen: Set[Candidate]) -> Candidate:
        for _ in range(_TRIES // 20):
            candidate = self.controller.propose()
            if candidate not in seen:
                return candidate
        return self._random_unseen(seen)

    def _pool(self, seen: Set[Candidate]) -> list[Candidate]:
        pool: dict[Candidate, None] = {}
        for _ in range(4 * self.pool):
            candidate = self.controller.propose()
            if candidate not in seen:
                pool[candidate] = None
                if len(pool) == self.pool:
                    break
        return list(pool)

    def observe(self, candidate: Candidate, reward: float) -> None:
        """See :meth:`SearchAlgorithm.observe`."""
        super().observe(candidate, reward)
        self.controller.observe(candidate, reward)

    def options(self) -> dict[str, Any]:
        """See :meth:`SearchAlgorithm.options`."""
        return {**super().options(), "controller": dataclasses.asdict(self.controller.config)}


#: Algorithm name -> class. Add your own with ``ALGORITHMS["mine"] = MySearch``.
ALGORITHMS: dict[str, type[SearchAlgorithm]] = {
    cls.name: cls for cls in (NPASSearch, RandomSearch, RLSearch, BayesianSearch)
}


def list_algorithms() -> list[str]:
    """Return the registered algorithm names (``npas`` first)."""
    return list(ALGORITHMS)


def make_algorithm(
    name: str, space: SearchSpace, *, seed: int = 0, budget: int = 20, **options: Any
) -> SearchAlgorithm:
    """Return algorithm ``name`` for ``space``; unknown names and options are clear errors."""
    if name not in ALGORITHMS:
        raise ValueError(
            f"unknown search algorithm {name!r}; valid: {', '.join(list_algorithms())}"
        )
    try:
        return ALGORITHMS[name](space, seed=seed, budget=budget, **options)
    except TypeError as err:
        raise ValueError(f"search algorithm {name!r}: {err}") from None
