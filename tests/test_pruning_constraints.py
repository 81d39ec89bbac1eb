"""Tests for npas_lab.pruning.constraints: ADMM projection and group-Lasso groups per scheme."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from npas_lab.models import create_model
from npas_lab.pruning.constraints import group_norm_penalty, plan_masks, project, scheme_groups
from npas_lab.sparsity import (
    LayerChoice,
    PruningPlan,
    apply_plan,
    compute_mask,
    get_masks,
    uniform_plan,
)


def small_cnn():
    torch.manual_seed(0)
    return create_model("small_cnn", num_classes=10, in_channels=1, input_size=8)


def penalty(weight: torch.Tensor, choice: LayerChoice) -> float:
    return float(group_norm_penalty(weight, *scheme_groups(weight.shape, choice)))


@pytest.mark.parametrize(
    ("scheme", "rate", "block"),
    [("unstructured", 4.0, None), ("filter", 2.0, None), ("block_punched", 3.0, (8, 4))],
)
def test_admm_projection_is_compute_mask_of_w_plus_u(scheme, rate, block):
    model = small_cnn()
    plan = uniform_plan(model, scheme, rate, block=block)
    gen = torch.Generator().manual_seed(1)
    w_plus_u = {
        name: model.get_submodule(name).weight.detach()
        + 0.05 * torch.randn(model.get_submodule(name).weight.shape, generator=gen)
        for name in plan.pruned()
    }
    z = project(w_plus_u, plan)
    for name, choice in plan.pruned().items():
        mask = compute_mask(w_plus_u[name], scheme, rate, **choice.mask_options())
        assert torch.equal(z[name], w_plus_u[name] * mask)
        assert torch.equal(z[name] != 0, mask)


def test_pattern_projection_uses_the_model_wide_library_like_apply_plan():
    model = small_cnn()
    plan = uniform_plan(model, "pattern", 3.0)
    gen = torch.Generator().manual_seed(2)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for name in plan.pruned():
            shifted.get_submodule(name).weight.add_(
                0.05 * torch.randn(shifted.get_submodule(name).weight.shape, generator=gen)
            )
    tensors = {name: shifted.get_submodule(name).weight.detach().clone() for name in plan}
    expected = get_masks(apply_plan(shifted, plan))
    masks = plan_masks(tensors, plan)
    assert masks.keys() == expected.keys()
    for name, mask in masks.items():
        assert torch.equal(mask, expected[name])
        assert torch.equal(project(tensors, plan)[name], tensors[name] * mask)


def test_group_lasso_known_answers_per_scheme():
    # 4 filters x 1 channel x 1 x 2: rows (3, 4), (0, 0), (1, 0), (0, 2)
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]).reshape(4, 1, 1, 2)
    # unstructured: every weight a group of one -> plain L1
    assert penalty(w, LayerChoice(scheme="unstructured", rate=2)) == pytest.approx(10.0)
    # filter: groups of 2, norms 5, 0, 1, 2 -> sqrt(2) * 8
    assert penalty(w, LayerChoice(scheme="filter", rate=2)) == pytest.approx(math.sqrt(2) * 8)
    # column (= kernel position in every filter): columns (3, 0, 1, 0), (4, 0, 0, 2)
    column = 2 * (math.sqrt(10) + math.sqrt(20))
    assert penalty(w, LayerChoice(scheme="column", rate=2)) == pytest.approx(column)
    # block_punched 2x1: punches = position x pair of filters:
    # filters 0-1: (3, 0) -> 3, (4, 0) -> 4; filters 2-3: (1, 0) -> 1, (0, 2) -> 2
    punched = LayerChoice(scheme="block_punched", rate=2, block=(2, 1))
    assert penalty(w, punched) == pytest.approx(math.sqrt(2) * (3 + 4 + 1 + 2))
    # channel: a single input channel holding everything: sqrt(8) * ||w||
    assert penalty(w, LayerChoice(scheme="channel", rate=1)) == pytest.approx(
        math.sqrt(8) * math.sqrt(30)
    )


def test_group_lasso_block_segments_and_pattern_kernels():
    # linear 2 x 4, tile 2 x 2: row segments (1 row x 2 cols) or column segments (2 rows x 1)
    w = torch.tensor([[3.0, 4.0, 0.0, 1.0], [0.0, 0.0, 6.0, 8.0]])
    rows = LayerChoice(scheme="block", rate=2, block=(2, 2), prune="rows")
    assert penalty(w, rows) == pytest.approx(math.sqrt(2) * (5 + 1 + 0 + 10))
    cols = LayerChoice(scheme="block", rate=2, block=(2, 2), prune="cols")
    assert penalty(w, cols) == pytest.approx(math.sqrt(2) * (3 + 4 + 6 + math.sqrt(65)))
    # pattern: a 3x3 kernel per group (connectivity pruning removes whole kernels)
    k = torch.zeros(1, 2, 3, 3)
    k[0, 0, 1, 1], k[0, 0, 0, 0], k[0, 1, 2, 2] = 3.0, 4.0, 2.0
    assert penalty(k, LayerChoice(scheme="pattern", rate=3)) == pytest.approx(3 * (5 + 2))


def test_group_lasso_gradient_is_finite_at_zero_groups():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    ids, count = scheme_groups(w.shape, LayerChoice(scheme="filter", rate=2))
    group_norm_penalty(w, ids, count).backward()
    expected = torch.tensor([[math.sqrt(2) * 3 / 5, math.sqrt(2) * 4 / 5], [0.0, 0.0]])
    assert torch.allclose(w.grad, expected)


def test_dense_has_no_groups():
    with pytest.raises(ValueError, match="no weight groups"):
        scheme_groups((4, 4), LayerChoice())


def test_plan_masks_needs_every_pruned_layer():
    plan = PruningPlan({"a": LayerChoice(scheme="filter", rate=2)})
    with pytest.raises(ValueError, match="'a'"):
        plan_masks({}, plan)
