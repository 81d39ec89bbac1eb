"""Torch-level lowering: masks baked, BN folded, filter/channel layers physically smaller."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from npas_lab.compiler.prepare import ShrunkConv2d, fold_batchnorm, prepare_model
from npas_lab.models import create_model
from npas_lab.sparsity import LayerChoice, PruningPlan, apply_plan, uniform_plan


def _calibrated(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, input_size=32).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # real BN statistics, so outputs are not ~0
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("scheme", ["filter", "channel"])
@pytest.mark.parametrize("propagate", [False, True], ids=["shrunk", "propagated"])
def test_prepared_model_equals_the_masked_model(name, scheme, propagate):
    model = _calibrated(name)
    plan = uniform_plan(model, scheme, 2.0)
    x = torch.randn(2, 3, 32, 32)
    prepared = prepare_model(model, plan, example_input=x if propagate else None)
    masked = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():
        expected, got = masked(x), prepared.model(x)
    # Relative to the output's scale: fresh MobileNets output logits of ~1e-5.
    scale = expected.abs().max().item()
    assert scale > 0 and expected.std() > 0
    torch.testing.assert_close(got, expected, atol=1e-4 * scale, rtol=1e-4)
    assert prepared.bn_folded
    shrunk = [m for m in prepared.model.modules() if isinstance(m, ShrunkConv2d)]
    # propagation also narrows dense producers of channel-pruned readers
    assert len(shrunk) >= len(plan.pruned()) if propagate else len(shrunk) == len(plan.pruned())
    assert len(plan.pruned()) > 0
    assert set(prepared.report.scheme) == {scheme}
    assert prepared.propagation.empty != propagate


def test_filter_pruning_halves_the_computed_filters_and_keeps_removed_outputs_constant():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight[1::2] = 0  # filters 1, 3, 5, 7 removed
    shrunk = ShrunkConv2d(conv, torch.arange(4), torch.tensor([0, 2, 4, 6]))
    assert shrunk.small.out_channels == 4 and shrunk.small.in_channels == 4
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        y = shrunk(x)
        torch.testing.assert_close(y, conv(x))
    # a removed filter outputs its bias everywhere
    assert torch.allclose(y[0, 1], conv.bias[1].expand(5, 5))


def test_channel_pruning_gathers_only_kept_inputs():
    conv = nn.Conv2d(6, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight[:, [0, 3]] = 0
    shrunk = ShrunkConv2d(conv, torch.tensor([1, 2, 4, 5]), torch.arange(4))
    assert shrunk.small.in_channels == 4 and shrunk.gather_in and not shrunk.scatter_out
    x = torch.randn(1, 6, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), conv(x))


def test_fold_batchnorm_removes_bn_and_keeps_outputs():
    model = _calibrated("resnet18")
    folded, ok = fold_batchnorm(model)
    assert ok
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)


def test_dense_plan_only_folds():
    model = _calibrated("resnet18")
    prepared = prepare_model(model)
    assert prepared.report.empty
    assert not any(isinstance(m, ShrunkConv2d) for m in prepared.model.modules())


def test_filter_pruning_reaches_the_next_conv_of_a_resnet_block():
    model = _calibrated("resnet18")
    plan = uniform_plan(model, "filter", 2.0)
    prepared = prepare_model(model, plan, example_input=torch.randn(1, 3, 32, 32))
    table = prepared.propagation.set_index("layer")
    # conv1 -> BN -> ReLU -> conv2 in each of the 8 blocks; conv2 meets the residual add.
    assert sorted(table.index) == sorted(
        f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)
    )
    row = table.loc["layer1.0.conv1"]
    assert (row.readers, row.channels, row.computed, row.constant, row.dead) == (
        "layer1.0.conv2",
        64,
        32,
        32,
        0,
    )
    assert row.absorbed == "map"  # 3x3 with zero padding: the constant differs at borders
    conv1 = prepared.model.get_submodule("layer1.0.conv1")
    conv2 = prepared.model.get_submodule("layer1.0.conv2")
    assert not conv1.scatter_out and conv1.small.out_channels == 32
    assert conv2.small.in_channels == 32 and conv2.small.out_channels == 32
    assert conv2.bias_map.shape == (1, 32, 32, 32) and conv2.small.bias is None
    assert conv2.scatter_out  # its removed filters meet the skip branch: put back


def test_channel_pruned_reader_stops_its_producer_computing_unread_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[2].weight[:, [1, 2, 6]] = 0
    plan = PruningPlan({"2": LayerChoice(scheme="channel", rate=8 / 5)})
    x = torch.randn(1, 3, 6, 6)
    prepared = prepare_model(model, plan, example_input=x)
    (row,) = prepared.propagation.itertuples()
    assert (row.layer, row.channels, row.computed, row.constant, row.dead) == ("0", 8, 5, 0, 3)
    assert prepared.model.get_submodule("0").small.out_channels == 5  # a plain conv, narrowed
    with torch.no_grad():
        torch.testing.assert_close(prepared.model(x), apply_plan(model, plan)(x))


ACTIVATIONS = {"relu": nn.ReLU, "hardswish": nn.Hardswish, "sigmoid": nn.Sigmoid, "none": None}


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    widths=st.tuples(st.integers(4, 9), st.integers(4, 9)),  # rate 4 keeps >= 1
    kernel=st.sampled_from([(1, 0), (3, 0), (3, 1), (5, 2)]),
    stride=st.sampled_from([1, 2]),
    act=st.sampled_from(sorted(ACTIVATIONS)),
    schemes=st.tuples(
        st.sampled_from(["filter", "dense"]), st.sampled_from(["channel", "filter", "dense"])
    ),
    rate=st.sampled_from([1.5, 2.0, 4.0]),
)
def test_propagation_equals_the_masked_model_for_any_conv_chain(
    seed, widths, kernel, stride, act, schemes, rate
):
    torch.manual_seed(seed)
    f, g = widths
    layers = [nn.Conv2d(3, f, 3, padding=1), nn.BatchNorm2d(f)]
    layers += [ACTIVATIONS[act]()] if ACTIVATIONS[act] else []
    layers += [nn.Conv2d(f, g, kernel[0], stride, kernel[1]), nn.BatchNorm2d(g)]
    model = nn.Sequential(*layers)
    for bn in (layers[1], layers[-1]):  # BN shifts of both signs: constants that matter
        nn.init.uniform_(bn.bias, -1, 1)
        nn.init.uniform_(bn.running_mean, -0.5, 0.5)
    model.eval()
    names = ("0", str(len(layers) - 2))
    plan = PruningPlan(
        {
            n: LayerChoice(scheme=s, rate=rate)
            for n, s in zip(names, schemes, strict=True)
            if s != "dense"
        }
    )
    x = torch.randn(2, 3, 7, 9)
    prepared = prepare_model(model, plan, example_input=x)
    masked = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():
        torch.testing.assert_close(prepared.model(x), masked(x), atol=1e-5, rtol=1e-4)
    if schemes[0] == "filter" and schemes[1] != "channel":  # the reader reads every filter
        assert prepared.propagation.layer.tolist() == ["0"]
    if not prepared.propagation.empty:  # removed filters are never computed nor read
        reader = prepared.model.get_submodule(names[1])
        assert reader.small.in_channels == prepared.model.get_submodule("0").small.out_channels
        assert reader.small.in_channels < f


def test_gather_in_kernel_reads_the_full_input_through_zero_columns():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, [0, 3]] = 0
    shrunk = ShrunkConv2d(conv, torch.tensor([1, 2, 4, 5]), torch.arange(4))
    x = torch.randn(1, 6, 5, 5)
    assert shrunk.read_in_kernel()
    assert not shrunk.gather_in and shrunk.small.in_channels == 6
    assert not shrunk.small.weight[:, [0, 3]].any()  # the unread channels: zero columns
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), conv(x))
    assert not shrunk.read_in_kernel()  # nothing left to do
