"""Tests for npas_lab.pruning.schedules: the cubic ramp (Zhu & Gupta) and the ADMM stages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npas_lab.models import create_model
from npas_lab.pruning.schedules import admm_schedule, cubic_rate, scheduled_plan, split_steps
from npas_lab.sparsity import uniform_plan

rates = st.floats(min_value=1.0, max_value=1000.0, allow_nan=False)
progress = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def test_cubic_rate_known_values():
    # sparsity s_f (1 - (1 - p)^3) with s_f = 1 - 1/8 = 0.875, converted back to 1 / (1 - s)
    assert cubic_rate(0.0, 8.0) == 1.0
    assert cubic_rate(0.5, 8.0) == pytest.approx(1 / (1 - 0.875 * (1 - 0.5**3)))  # 4.267
    assert cubic_rate(0.25, 4.0) == pytest.approx(1 / (1 - 0.75 * (1 - 0.75**3)))
    assert cubic_rate(1.0, 8.0) == 8.0
    # Sparsity (not rate) is cubic: half the ramp already removes 77% of the weights at 8x.
    assert 1 - 1 / cubic_rate(0.5, 8.0) == pytest.approx(0.765625)
    # Outside [0, 1] the progress is clipped.
    assert cubic_rate(-1.0, 8.0) == 1.0 and cubic_rate(2.0, 8.0) == 8.0
    assert cubic_rate(0.0, 8.0, initial=2.0) == pytest.approx(2.0)


@settings(max_examples=200, deadline=None)
@given(target=rates, a=progress, b=progress)
def test_cubic_rate_is_monotone_from_one_to_target(target, a, b):
    lo, hi = sorted((a, b))
    assert cubic_rate(0.0, target) == pytest.approx(1.0)
    assert cubic_rate(1.0, target) == target
    assert cubic_rate(lo, target) <= cubic_rate(hi, target) * (1 + 1e-12)
    assert 1.0 - 1e-12 <= cubic_rate(lo, target) <= target * (1 + 1e-12)


def test_scheduled_plan_keeps_choices_and_clips_pattern_to_its_minimum():
    model = create_model("small_cnn", num_classes=4, in_channels=1, input_size=8)
    plan = uniform_plan(model, "pattern", 6.0)
    start = scheduled_plan(plan, model, 0.0)
    assert {c.rate for c in start.pruned().values()} == {2.25}  # patterns alone: 9/4
    assert scheduled_plan(plan, model, 1.0) == plan
    mid = scheduled_plan(plan, model, 0.5)
    for name, choice in mid.pruned().items():
        assert choice.scheme == "pattern" and choice.patterns == plan[name].patterns
        assert choice.rate == pytest.approx(cubic_rate(0.5, 6.0))
    block = uniform_plan(model, "block_punched", 4.0)
    assert {c.rate for c in scheduled_plan(block, model, 0.0).pruned().values()} == {1.0}
    assert all(c.block == (8, 4) for c in scheduled_plan(block, model, 0.3).pruned().values())


def test_split_steps_leaves_a_step_for_retraining():
    assert split_steps(38, 0.5, name="x") == 19
    assert split_steps(38, 1.0, name="x") == 37
    assert split_steps(38, 0.0, name="x") == 0
    assert split_steps(1, 0.5, name="x") == 0
    with pytest.raises(ValueError, match="ramp"):
        split_steps(10, 1.5, name="ramp")


def test_admm_schedule_raises_rho_tenfold_over_four_stages():
    schedule = admm_schedule(40, rho=1e-4, factor=10, stages=4, updates_per_stage=3)
    assert len(schedule) == 40
    assert [s.stage for s in schedule] == [k for k in range(4) for _ in range(10)]
    assert sorted({s.rho for s in schedule}) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    updates = [i for i, s in enumerate(schedule) if s.update]
    assert updates == [3, 6, 9, 13, 16, 19, 23, 26, 29, 33, 36, 39]  # 3 a stage, last at its end


def test_admm_schedule_shrinks_with_tiny_budgets():
    # 6 steps, 4 stages: stages of 1-2 steps, Z/U after every step.
    tiny = admm_schedule(6, rho=1e-4, factor=10, stages=4, updates_per_stage=3)
    assert [s.stage for s in tiny] == [0, 1, 1, 2, 3, 3]
    assert all(s.update for s in tiny)
    # Fewer steps than stages: one stage per step, rho stops rising early.
    two = admm_schedule(2, rho=1e-4, factor=10, stages=4, updates_per_stage=3)
    assert [s.rho for s in two] == pytest.approx([1e-4, 1e-3])
    assert admm_schedule(0, rho=1e-4, factor=10, stages=4, updates_per_stage=3) == []
    with pytest.raises(ValueError, match="stages"):
        admm_schedule(10, rho=1e-4, factor=10, stages=0, updates_per_stage=3)
