"""Tests for npas_lab.sparsity.plan: LayerChoice / PruningPlan, JSON, keys, validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from npas_lab.models import create_model, layer_table
from npas_lab.sparsity import (
    LayerChoice,
    PruningPlan,
    SparsityError,
    uniform_plan,
    validate_plan,
)
from npas_lab.sparsity.plan import model_layers


def tiny() -> nn.Module:
    """conv 3x3 (first), conv 3x3, depthwise 3x3, pointwise, linear."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.Conv2d(16, 32, 3),
        nn.Conv2d(32, 32, 3, groups=32),
        nn.Conv2d(32, 8, 1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


choices = st.one_of(
    st.builds(LayerChoice),
    st.builds(
        LayerChoice,
        scheme=st.sampled_from(["unstructured", "filter", "channel", "column"]),
        rate=st.floats(1, 50),
    ),
    st.builds(
        LayerChoice,
        scheme=st.just("block_punched"),
        rate=st.floats(1, 50),
        block=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    ),
    st.builds(
        LayerChoice,
        scheme=st.just("block"),
        rate=st.floats(1, 9),
        prune=st.sampled_from(["rows", "cols"]),
    ),
    st.builds(
        LayerChoice, scheme=st.just("pattern"), rate=st.floats(2.25, 9), patterns=st.integers(1, 56)
    ),
)
plans = st.dictionaries(st.text(min_size=1, max_size=12), choices, max_size=6).map(PruningPlan)


@settings(max_examples=40, deadline=None)
@given(plans)
def test_plans_round_trip_through_json(plan):
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan and again.key() == plan.key()
    assert list(again) == list(plan)
    assert all(again[name] == plan[name] for name in plan)


@settings(max_examples=40, deadline=None)
@given(plans, st.randoms())
def test_key_ignores_insertion_order(plan, random):
    names = list(plan)
    random.shuffle(names)
    shuffled = PruningPlan({name: plan[name] for name in names})
    assert shuffled.key() == plan.key() and hash(shuffled) == hash(plan)


def test_key_is_stable_across_versions():
    # A golden value: changing it invalidates every cached accuracy and latency.
    plan = PruningPlan(
        {
            "layer1.0.conv1": LayerChoice(scheme="block_punched", rate=6),
            "layer1.0.conv2": LayerChoice(scheme="pattern", rate=4.5),
        }
    )
    assert plan.key() == "96a0bcf36c60fd83"


def test_key_ignores_float_repr_and_dense_entries_but_not_rates():
    base = PruningPlan({"a": LayerChoice(scheme="unstructured", rate=6)})
    assert base.key() == PruningPlan({"a": LayerChoice(scheme="unstructured", rate=6.0)}).key()
    assert base.key() == PruningPlan({"a": LayerChoice(scheme="unstructured", rate=0.1 * 60)}).key()
    assert base.key() == PruningPlan({"a": base["a"], "b": LayerChoice()}).key()
    assert base.key() != PruningPlan({"a": LayerChoice(scheme="unstructured", rate=6.5)}).key()
    assert base.key() != PruningPlan({"b": base["a"]}).key()
    assert len(base.key()) == 16 and int(base.key(), 16) >= 0


def test_layer_choice_fills_in_scheme_defaults():
    assert LayerChoice(scheme="block_punched", rate=6).block == (8, 4)
    block = LayerChoice(scheme="block", rate=2)
    assert block.block == (8, 4) and block.prune == "rows"
    assert LayerChoice(scheme="pattern", rate=3).patterns == 8
    assert LayerChoice(scheme="block_punched", rate=6) == LayerChoice(
        scheme="block_punched", rate=6.0, block=[8, 4]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "nope"}, "unknown sparsity scheme"),
        ({"scheme": "dense", "rate": 2}, "rate 1"),
        ({"scheme": "filter", "rate": 0.5}, "rate must be"),
        ({"scheme": "filter", "rate": 2, "block": (2, 2)}, "takes no block"),
        ({"scheme": "filter", "rate": 2, "prune": "rows"}, "block scheme only"),
        ({"scheme": "block", "rate": 2, "prune": "diagonal"}, "prune must be"),
        ({"scheme": "pattern", "rate": 3, "patterns": 0}, "patterns must be"),
        ({"scheme": "pattern", "rate": 3, "patterns": 2.0}, "patterns must be"),  # key stability
        ({"filter_type": ""}, "filter_type"),
    ],
)
def test_layer_choice_refuses_invalid_fields(kwargs, match):
    with pytest.raises(SparsityError, match=match):
        LayerChoice(**kwargs)


def test_options_are_keyword_only_and_plans_frozen():
    with pytest.raises(TypeError):
        LayerChoice("keep", "filter", 2.0)  # type: ignore[misc]
    plan = PruningPlan({"a": LayerChoice()})
    with pytest.raises(TypeError):
        plan.layers["a"] = LayerChoice()  # type: ignore[index]


def test_from_json_refuses_other_versions_and_unknown_fields():
    with pytest.raises(SparsityError, match="version"):
        PruningPlan.from_json(json.dumps({"version": 99, "layers": {}}))
    bad = {"version": 1, "layers": {"a": {"scheme": "filter", "rate": 2, "colour": "red"}}}
    with pytest.raises(SparsityError, match="colour"):
        PruningPlan.from_json(json.dumps(bad))


def test_uniform_plan_skips_the_first_conv_and_layers_the_scheme_does_not_fit():
    plan = uniform_plan(tiny(), "pattern", 4.0)
    assert list(plan) == ["0", "1", "2", "3", "5"]
    assert list(plan.pruned()) == ["1"]  # depthwise, pointwise, linear: no pattern
    everything = uniform_plan(
        tiny(), "unstructured", 4.0, skip_first=False, kinds=("conv", "linear")
    )
    assert list(everything.pruned()) == ["0", "1", "5"]


def test_uniform_plan_clips_blocks_to_small_layers_and_maps_depthwise_to_one_channel():
    plan = uniform_plan(tiny(), "block_punched", 2.0, block=(16, 8))
    assert plan["1"].block == (16, 8)
    assert plan["2"].block == (16, 1)  # depthwise: one input channel per filter
    assert plan["3"].block == (8, 8)  # 8 filters


def test_uniform_plan_on_resnet18_prunes_all_convs_but_the_first():
    model = create_model("resnet18")
    plan = uniform_plan(model, "block_punched", 6.0)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(plan.pruned()) == convs[1:]
    assert plan["fc"] == LayerChoice()


def test_uniform_plan_refuses_unreachable_rates():
    with pytest.raises(SparsityError, match=r"layer '3'.*valid rates are 1 to 8"):
        uniform_plan(tiny(), "filter", 10.0)


def test_validate_plan_lists_every_problem_with_layer_names():
    plan = PruningPlan(
        {
            "1.weight": LayerChoice(scheme="filter", rate=2),
            "3": LayerChoice(scheme="pattern", rate=3),
            "2": LayerChoice(scheme="channel", rate=2),
            "5": LayerChoice(scheme="block", rate=2, block=(16, 4)),
            "1": LayerChoice(filter_type="5x5", scheme="unstructured", rate=2),
        }
    )
    with pytest.raises(SparsityError) as info:
        validate_plan(plan, tiny())
    message = str(info.value)
    assert "'1.weight' is not a Conv2d/Linear layer of the model; did you mean 1" in message
    assert "scheme 'pattern' does not fit layer '3' (pointwise, kernel 1x1)" in message
    assert "scheme 'channel' does not fit layer '2' (depthwise" in message
    assert "block tile (16, 4) is larger than layer '5'" in message
    assert "filter type '5x5'" in message


def test_validate_plan_accepts_a_layer_table():
    model = tiny()
    plan = uniform_plan(model, "unstructured", 3.0)
    validate_plan(plan, layer_table(model, (1, 3, 7, 7)))
    validate_plan(plan, model_layers(model))
