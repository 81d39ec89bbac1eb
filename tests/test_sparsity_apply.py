"""Tests for npas_lab.sparsity.apply: masks survive training, update in place, bake in."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from npas_lab.models import create_model
from npas_lab.sparsity import (
    Importance,
    LayerChoice,
    PatternLibrary,
    PruningPlan,
    SparsityError,
    WeightMask,
    achieved_rates,
    apply_plan,
    get_masks,
    make_permanent,
    uniform_plan,
    update_masks,
)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", num_classes=4, in_channels=1, input_size=8)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)


@pytest.mark.parametrize("scheme", ["unstructured", "filter", "pattern", "block_punched"])
def test_masked_weights_stay_zero_through_sgd_training(scheme):
    model = small_cnn()
    plan = uniform_plan(model, scheme, 4.0)
    apply_plan(model, plan)
    before = achieved_rates(model)
    masks = {name: mask.clone() for name, mask in get_masks(model).items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for step in range(5):
        x, y = batch(step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert (module.weight[~mask] == 0).all()
        assert (module.parametrizations.weight.original[~mask] == 0).all()
        assert module.weight[mask].ne(0).all()  # kept weights still train
    assert achieved_rates(model) == before
    assert before["features.0.0"] == 1.0 and before["classifier"] == 1.0
    assert all(abs(before[name] - 4.0) < 0.5 for name in masks)


def test_make_permanent_leaves_plain_layers_with_zeros_and_the_same_outputs():
    model = small_cnn().eval()
    apply_plan(model, uniform_plan(model, "block_punched", 6.0))
    masks = {name: mask.clone() for name, mask in get_masks(model).items()}
    x, _ = batch()
    expected = model(x)
    make_permanent(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert "features.1.0.weight" in model.state_dict()
    for name, mask in masks.items():
        assert (model.get_submodule(name).weight[~mask] == 0).all()
    torch.testing.assert_close(model(x), expected)
    assert achieved_rates(model)["features.1.0"] == pytest.approx(6.0, rel=0.05)
    assert get_masks(model) == {}


def test_update_masks_raises_the_rate_in_place_for_gradual_pruning():
    model = small_cnn()
    apply_plan(model, uniform_plan(model, "unstructured", 2.0))
    buffer = get_masks(model)["features.1.0"]
    first = buffer.clone()
    update_masks(model, uniform_plan(model, "unstructured", 4.0))
    assert get_masks(model)["features.1.0"] is buffer  # same tensor: optimizer state survives
    assert achieved_rates(model)["features.1.0"] == pytest.approx(4.0)
    assert not (buffer & ~first).any()  # magnitude never revives a zeroed weight


def test_update_masks_needs_masks_already_installed():
    model = small_cnn()
    with pytest.raises(SparsityError, match="apply_plan first"):
        update_masks(model, uniform_plan(model, "unstructured", 2.0))


def test_a_dense_entry_unmasks_a_masked_layer():
    model = small_cnn()
    apply_plan(model, uniform_plan(model, "filter", 2.0))
    with torch.no_grad():
        model.features[1][0].parametrizations.weight.original.add_(1.0)
    apply_plan(model, PruningPlan({"features.1.0": LayerChoice()}))
    assert get_masks(model)["features.1.0"].all()
    assert achieved_rates(model)["features.1.0"] == 1.0


def test_pattern_layers_share_one_model_wide_library():
    model = small_cnn()
    apply_plan(model, uniform_plan(model, "pattern", 9 / 4, patterns=4))
    weights = [model.get_submodule(n).parametrizations.weight.original for n in get_masks(model)]
    shapes = set()
    for mask in get_masks(model).values():
        shapes |= {tuple(k.nonzero()[:, 0].tolist()) for k in mask.reshape(-1, 9) if k.any()}
    assert len(shapes) <= 4
    assert shapes <= set(PatternLibrary.from_weights(weights, size=4).patterns)


def test_importance_sees_the_unmasked_parameter_and_its_gradient():
    seen = []

    class Taylor(Importance):
        def __call__(self, weight):
            seen.append(weight.grad is not None)
            return (weight * weight.grad).abs()

    model = small_cnn()
    apply_plan(model, uniform_plan(model, "unstructured", 2.0))
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    update_masks(model, uniform_plan(model, "unstructured", 3.0), importance=Taylor())
    assert seen and all(seen)


def test_apply_plan_validates_against_the_model():
    with pytest.raises(SparsityError, match="'nope'"):
        apply_plan(small_cnn(), PruningPlan({"nope": LayerChoice(scheme="filter", rate=2)}))


def test_foreign_parametrizations_are_refused():
    model = small_cnn()

    class Double(nn.Module):
        def forward(self, weight):
            return 2 * weight

    parametrize.register_parametrization(model.features[1][0], "weight", Double())
    with pytest.raises(SparsityError, match="other than one WeightMask"):
        apply_plan(model, uniform_plan(model, "filter", 2.0))


def test_weight_mask_multiplies_by_the_mask():
    mask = torch.tensor([True, False])
    assert WeightMask(mask)(torch.tensor([3.0, 4.0])).tolist() == [3.0, 0.0]


def test_make_permanent_on_a_deep_copy_leaves_the_original_working():
    import copy

    from npas_lab.sparsity import apply_plan, make_permanent, uniform_plan

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    apply_plan(model, uniform_plan(model, "unstructured", 2.0))
    clone = copy.deepcopy(model)
    make_permanent(clone)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(model(x), clone(x))  # the original still has its masked weight
    make_permanent(model)
    assert torch.equal(model(x), clone(x))
