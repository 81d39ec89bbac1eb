"""Rewards, the Q-learning controller, the Gaussian-process surrogate and the four algorithms.

The algorithms are pure decision-makers, so they are tested on a known reward function over
the real small_cnn space (no training): each must propose valid, unseen candidates, and the
learning ones must beat random search on a reward with a clear optimum.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npas_lab.models import create_model
from npas_lab.search import (
    ControllerConfig,
    QController,
    RewardConfig,
    SearchSpace,
    SpaceConfig,
    Surrogate,
    list_algorithms,
    make_algorithm,
)

SPACE = SearchSpace.from_model(
    create_model("small_cnn", in_channels=1, input_size=16), SpaceConfig(blocks=((8, 4),))
)


def known_reward(candidate) -> float:
    """High for block_punched at high rates with the kernel kept, in every layer."""
    score = 0.0
    for name, index in zip(SPACE.layers, candidate, strict=True):
        choice = SPACE.options[name][index]
        score += (choice.scheme == "block_punched") + (choice.filter_type == "keep")
        score += np.log(choice.rate) / np.log(10)
    return score / (3 * len(SPACE.layers))


def test_reward_forms():
    soft = RewardConfig(target_ms=2.0)
    assert soft(0.9, 2.0) == pytest.approx(0.9)
    assert soft(0.9, 1.0) > 0.9 > soft(0.9, 4.0)
    hard = RewardConfig(target_ms=2.0, form="hard")
    assert hard(0.5, 2.0) == 0.5 and hard(0.99, 2.2) < 0 < hard(0.01, 1.0)
    assert hard(0.99, 4.0) < hard(0.99, 2.2)  # graded above T
    with pytest.raises(ValueError, match=r"form='mnas'.*soft, hard"):
        RewardConfig(target_ms=1.0, form="mnas")
    with pytest.raises(ValueError, match="target_ms"):
        RewardConfig(target_ms=0)


@given(st.floats(0, 1), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_soft_reward_never_rewards_being_slower(accuracy, latency, more):
    reward = RewardConfig(target_ms=1.0)
    assert reward(accuracy, latency + more) <= reward(accuracy, latency) + 1e-12


def test_controller_learns_the_best_decisions():
    rng = np.random.default_rng(0)
    controller = QController(SPACE, rng, horizon=150, config=ControllerConfig(epsilon_end=0.05))
    for _ in range(150):
        candidate = controller.propose()
        controller.observe(candidate, known_reward(candidate))
    greedy = controller.propose(epsilon=0.0)
    assert known_reward(greedy) > 0.8, [
        SPACE.options[n][i] for n, i in zip(SPACE.layers, greedy, strict=True)
    ]


def test_surrogate_ranks_held_out_candidates():
    rng = np.random.default_rng(1)
    seen = [SPACE.sample(rng) for _ in range(40)]
    surrogate = Surrogate(SPACE)
    surrogate.fit(seen, [known_reward(c) for c in seen])
    held_out = [SPACE.sample(rng) for _ in range(60)]
    mean, std = surrogate.predict(held_out)
    truth = [known_reward(c) for c in held_out]
    assert np.corrcoef(mean, truth)[0, 1] > 0.7
    assert (std >= 0).all() and (surrogate.expected_improvement(held_out) >= 0).all()


@pytest.mark.parametrize("name", list_algorithms())
def test_algorithms_propose_valid_unseen_candidates_reproducibly(name):
    def run(seed):
        algo = make_algorithm(name, SPACE, seed=seed, budget=12)
        seen, out = set(), []
        for _ in range(12):
            candidate, _predicted = algo.propose(seen)
            assert SPACE.check(candidate) == candidate and candidate not in seen
            seen.add(candidate)
            out.append(candidate)
            algo.observe(candidate, known_reward(candidate))
        return out

    assert run(3) == run(3)


def test_learning_algorithms_beat_random_on_a_known_reward():
    # Small: a Gaussian-process fit per step costs ~0.3-1 s on 2 shared cores.
    budget, seeds = 15, range(2)
    best = {}
    for name in ("random", "bo", "npas"):
        finals = []
        for seed in seeds:
            algo = make_algorithm(name, SPACE, seed=seed, budget=budget)
            seen, rewards = set(), []
            for _ in range(budget):
                candidate, _ = algo.propose(seen)
                seen.add(candidate)
                rewards.append(known_reward(candidate))
                algo.observe(candidate, rewards[-1])
            finals.append(max(rewards))
        best[name] = np.mean(finals)
    assert best["npas"] > best["random"] and best["bo"] > best["random"], best


def test_unknown_algorithm_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="valid: npas, random, rl, bo"):
        make_algorithm("evolution", SPACE)
    with pytest.raises(ValueError, match=r"'npas'.*pool_size"):
        make_algorithm("npas", SPACE, pool_size=3)
    with pytest.raises(ValueError, match="evaluate_top"):
        make_algorithm("bo", SPACE, pool=4, evaluate_top=5)


def test_search_dashboard_draws_history_plan_and_target():
    import pandas as pd

    from npas_lab.search import EvalConfig, Evaluation
    from npas_lab.training import TrainConfig
    from npas_lab.widgets import SearchDashboard

    dash = SearchDashboard(TrainConfig(), EvalConfig(), SpaceConfig(), target_ms=0.1, budget=3)
    assert dash.resume_button.disabled and not dash.start_button.disabled
    rows = []
    for step, (accuracy, latency) in enumerate([(0.9, 0.2), (0.95, 0.1), (0.8, 0.05)]):
        candidate = SPACE.sample(np.random.default_rng(step))
        ev = Evaluation(
            plan=SPACE.plan(candidate),
            accuracy=accuracy,
            latency=latency,
            reward=RewardConfig(target_ms=0.1)(accuracy, latency),
            cost_s=1.0,
            status="ok",
            step=step,
            candidate=candidate,
        )
        rows.append(ev.to_record())
    dash.history = pd.DataFrame(rows)
    dash._redraw()
    candidates, front, best, _zoo = dash.figure.data[:4]
    assert list(candidates.x) == [0.2, 0.1, 0.05]
    assert list(front.x) == [0.05, 0.1]  # (0.2, 0.9) is dominated by (0.1, 0.95)
    assert list(best.y) == [0.95]
    assert {bar.name for bar in dash.plan_figure.data} <= {"dense", *SPACE._schemes}
    assert sum(len(bar.x) for bar in dash.plan_figure.data) == len(SPACE.layers)
    dash.target.value = 0.2
    assert dash.figure.layout.shapes[0].x0 == 0.2
    dash.stop()
    assert dash._stop.is_set()
