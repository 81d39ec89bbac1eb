"""The RL controller of the meta-modeling procedure: tabular Q-learning in the MetaQNN style.

Why Q-learning and not a policy-gradient controller: NPAS's wording ("reinforcement learning with
fast evaluation") matches MetaQNN (Baker et al., ICLR 2017), which learns a table of Q-values
with epsilon-greedy exploration and experience replay. A table needs no network to train, is
deterministic under a seed, costs microseconds per update, and learns from tens of evaluations,
where a REINFORCE controller needs hundreds of samples before its gradient estimate beats noise.

The decision process: a candidate is built layer by layer, and each layer's choice is four
decisions in a fixed order, filter type -> scheme -> block -> rate (a decision with one possible
value is still a step). A state is ``(layer, decisions made so far for that layer)``, so the
value of "block_punched on layer 2" is learned from every block_punched rate tried there: the
tree shares what a flat table over ~100 options per layer could not. The reward comes at the
end (gamma = 1); the update runs backwards over the trajectory (MetaQNN eq. 3):
``Q(s, a) += alpha * (target - Q(s, a))`` with ``target = max_a' Q(s', a')`` or the reward at the
last step. Unvisited pairs are worth the mean reward seen so far (a scale-free version of
MetaQNN's 0.5 initialisation, which assumed rewards in [0, 1]). After every observation
``replay`` trajectories drawn from the memory are replayed (MetaQNN replays 100).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from npas_lab.search.space import Candidate, SearchSpace

__all__ = ["ControllerConfig", "QController"]

_State = tuple[int, tuple]


@dataclass(frozen=True, kw_only=True)
class ControllerConfig:
    """Settings of :class:`QController` (MetaQNN's, scaled to tens of evaluations)."""

    alpha: float = 0.1  # learning rate (MetaQNN: 0.01 over thousands of models)
    epsilon_start: float = 1.0  # exploration at the first proposal: uniform decisions
    epsilon_end: float = 0.1  # exploration once `decay` of the horizon is spent
    decay: float = 0.6  # fraction of the horizon over which epsilon falls linearly
    replay: int = 32  # trajectories replayed from memory after each observation

    def __post_init__(self) -> None:
        for name in ("alpha", "epsilon_start", "epsilon_end", "decay"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"ControllerConfig.{name}={value!r} must be in [0, 1]")


class QController:
    """Propose candidates by epsilon-greedy decisions on a Q-table; learn from rewards.

    Parameters
    ----------
    space
        The search space.
    rng
        Random numbers for exploration and replay.
    horizon
        Observations over which epsilon decays (the search budget).
    config
        Learning rate, exploration schedule, replay.

    Examples
    --------
    >>> controller = QController(space, np.random.default_rng(0), horizon=20)  # doctest: +SKIP
    >>> c = controller.propose()  # doctest: +SKIP
    >>> controller.observe(c, reward=0.93)  # doctest: +SKIP
    """

    def __init__(
        self,
        space: SearchSpace,
        rng: np.random.Generator,
        *,
        horizon: int,
        config: ControllerConfig | None = None,
    ) -> None:
        self.space, self.rng, self.horizon = space, rng, max(1, horizon)
        self.config = config or ControllerConfig()
        self.q: dict[tuple[_State, Hashable], float] = {}
        self.memory: list[tuple[Candidate, float]] = []
        # Per layer: decision path (filter type, scheme, block, rate) of each option, and the
        # trie prefix -> possible next values in option order.
        self._paths: list[list[tuple]] = []
        self._children: list[dict[tuple, list]] = []
        self._leaf: list[dict[tuple, int]] = []
        for options in space.options.values():
            paths = [(c.filter_type, c.scheme, c.block, c.rate) for c in options]
            children: dict[tuple, list] = {}
            for path in paths:
                for depth in range(len(path)):
                    values = children.setdefault(path[:depth], [])
                    if path[depth] not in values:
                        values.append(path[depth])
            self._paths.append(paths)
            self._children.append(children)
            self._leaf.append({path: i for i, path in enumerate(paths)})

    @property
    def epsilon(self) -> float:
        """Exploration rate now (linear decay over ``decay * horizon`` observations)."""
        c = self.config
        progress = min(1.0, len(self.memory) / max(1.0, c.decay * self.horizon))
        return c.epsilon_start + (c.epsilon_end - c.epsilon_start) * progress

    def _baseline(self) -> float:
        return float(np.mean([r for _, r in self.memory])) if self.memory else 0.0

    def _value(self, state: _State, action: Hashable, baseline: float) -> float:
        return self.q.get((state, action), baseline)

    def propose(self, *, epsilon: float | None = None) -> Candidate:
        """Return a candidate built decision by decision, epsilon-greedy."""
        epsilon = self.epsilon if epsilon is None else epsilon
        baseline = self._baseline()
        candidate = []
        for layer, children in enumerate(self._children):
            prefix: tuple = ()
            while prefix in children:
                actions = children[prefix]
                if self.rng.random() < epsilon:
                    action = actions[int(self.rng.integers(len(actions)))]
                else:
                    values = np.array([self._value((layer, prefix), a, baseline) for a in actions])
                    best = np.flatnonzero(values >= values.max() - 1e-12)
                    action = actions[int(self.rng.choice(best))]
                prefix = (*prefix, action)
            candidate.append(self._leaf[layer][prefix])
        return tuple(candidate)

    def _trajectory(self, candidate: Candidate) -> list[tuple[_State, Hashable]]:
        steps = []
        for layer, index in enumerate(candidate):
            path = self._paths[layer][index]
            steps += [((layer, path[:d]), path[d]) for d in range(len(path))]
        return steps

    def _update(self, candidate: Candidate, reward: float, baseline: float) -> None:
        steps = self._trajectory(candidate)
        alpha = self.config.alpha
        for t in range(len(steps) - 1, -1, -1):
            state, action = steps[t]
            if t == len(steps) - 1:
                target = reward
            else:
                nxt = steps[t + 1][0]
                layer, prefix = nxt
                target = max(self._value(nxt, a, baseline) for a in self._children[layer][prefix])
            old = self._value(state, action, baseline)
            self.q[(state, action)] = old + alpha * (target - old)

    def observe(self, candidate: Candidate, reward: float) -> None:
        """Learn from one evaluated candidate, then replay past ones from memory."""
        candidate = self.space.check(candidate)
        self.memory.append((candidate, float(reward)))
        baseline = self._baseline()
        self._update(candidate, float(reward), baseline)
        if len(self.memory) > 1:
            for i in self.rng.integers(len(self.memory), size=self.config.replay):
                self._update(*self.memory[int(i)], baseline)
