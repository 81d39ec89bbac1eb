"""The phase-2 search space: options per layer, candidates, plans, encoding; filter types."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from npas_lab.models import create_model
from npas_lab.search import SearchSpace, SpaceConfig, apply_filter_types, filter_types_for
from npas_lab.search.filters import shrink_conv
from npas_lab.sparsity import LayerChoice, PruningPlan, SparsityError, apply_plan, validate_plan

SMALL = create_model("small_cnn", in_channels=1, input_size=16)
SPACE = SearchSpace.from_model(SMALL)
MOBILE = create_model("mobilenet_v3_small", input_size=16)
MOBILE_SPACE = SearchSpace.from_model(MOBILE, SpaceConfig(rates=(1, 2, 5)))


def test_small_cnn_space_offers_every_fitting_scheme_rate_and_filter_type():
    assert SPACE.layers == ("features.1.0", "features.2.0")  # first conv and classifier dense
    options = SPACE.options["features.1.0"]
    assert options[0] == LayerChoice()
    schemes = {(c.filter_type, c.scheme) for c in options}
    assert ("keep", "pattern") in schemes and ("1x1", "block") in schemes
    assert ("keep", "block") not in schemes and ("1x1", "pattern") not in schemes
    assert {c.rate for c in options} == {1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0}
    assert {c.block for c in options if c.scheme == "block_punched"} == {(4, 4), (8, 4), (16, 4)}
    assert len(options) == len(set(options))
    assert SPACE.size == len(options) * len(SPACE.options["features.2.0"])
    summary = SPACE.summary()
    assert summary["options"].tolist() == [len(o) for o in SPACE.options.values()]


def test_depthwise_5x5_can_become_3x3_but_not_1x1():
    dw5 = [
        n for n, m in MOBILE.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (5, 5)
    ]
    assert dw5
    module = MOBILE.get_submodule(dw5[0])
    assert filter_types_for(module) == ["keep", "3x3"]
    assert {c.filter_type for c in MOBILE_SPACE.options[dw5[0]]} == {"keep", "3x3"}


def test_shrunk_kernel_is_the_centre_and_keeps_the_output_shape():
    conv = nn.Conv2d(4, 6, 5, padding=2, stride=2, bias=True)
    small = shrink_conv(conv, 3)
    torch.testing.assert_close(small.weight, conv.weight[:, :, 1:4, 1:4])
    torch.testing.assert_close(small.bias, conv.bias)
    x = torch.randn(2, 4, 9, 9)
    assert small(x).shape == conv(x).shape
    # A kernel that is zero outside its centre computes the same function shrunk.
    with torch.no_grad():
        conv.weight[:, :, [0, 4], :] = 0
        conv.weight[:, :, :, [0, 4]] = 0
    torch.testing.assert_close(shrink_conv(conv, 3)(x), conv(x))
    with pytest.raises(ValueError, match="filter types: keep, 3x3, 1x1"):
        shrink_conv(conv, 4)
    assert filter_types_for(nn.Conv2d(4, 4, 3, padding=0)) == ["keep"]  # shape would change


def test_filter_type_on_a_wrong_layer_is_a_clear_error():
    plan = PruningPlan({"classifier": LayerChoice(filter_type="1x1")})
    with pytest.raises(SparsityError, match=r"classifier.*not a Conv2d"):
        apply_filter_types(SMALL, plan)
    with pytest.raises(ValueError, match="outside the search space"):
        SPACE.candidate(PruningPlan({"features.0.0": LayerChoice(scheme="filter", rate=2)}))
    with pytest.raises(ValueError, match="does not fit the space"):
        SPACE.plan((0,))
    with pytest.raises(ValueError, match=r"SpaceConfig\.rates"):
        SpaceConfig(rates=(0.5,))


candidates = st.builds(
    lambda seed: SPACE.sample(np.random.default_rng(seed)), st.integers(0, 2**32 - 1)
)
mobile_candidates = st.builds(
    lambda seed: MOBILE_SPACE.sample(np.random.default_rng(seed)), st.integers(0, 2**32 - 1)
)


@settings(max_examples=60, deadline=None)
@given(candidates)
def test_encoding_and_plan_round_trip(candidate):
    assert SPACE.decode(SPACE.encode(candidate)) == candidate
    plan = SPACE.plan(candidate)
    assert SPACE.candidate(plan) == candidate
    assert PruningPlan.from_json(plan.to_json()) == plan
    assert SPACE.encode(candidate).shape == (SPACE.n_features,)


@settings(max_examples=15, deadline=None)
@given(candidates)
def test_every_sampled_small_cnn_candidate_applies_and_runs(candidate):
    model, plan = apply_filter_types(SMALL, SPACE.plan(candidate))
    validate_plan(plan, model)
    apply_plan(model, plan)
    assert model.eval()(torch.zeros(1, 1, 16, 16)).shape == (1, 10)


@settings(max_examples=10, deadline=None)
@given(mobile_candidates)
def test_every_sampled_mobilenet_candidate_is_valid(candidate):
    model, plan = apply_filter_types(MOBILE, MOBILE_SPACE.plan(candidate))
    validate_plan(plan, model)
