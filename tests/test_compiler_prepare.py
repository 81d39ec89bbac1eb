"""Torch-level lowering: masks baked, BN folded, filter/channel layers physically smaller."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from npas_lab.compiler.prepare import ShrunkConv2d, fold_batchnorm, prepare_model
from npas_lab.models import create_model
from npas_lab.sparsity import apply_plan, uniform_plan


def _calibrated(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, input_size=32).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # real BN statistics, so outputs are not ~0
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("scheme", ["filter", "channel"])
def test_prepared_model_equals_the_masked_model(name, scheme):
    model = _calibrated(name)
    plan = uniform_plan(model, scheme, 2.0)
    prepared = prepare_model(model, plan)
    masked = apply_plan(copy.deepcopy(model), plan)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = masked(x), prepared.model(x)
    # Relative to the output's scale: fresh MobileNets output logits of ~1e-5.
    scale = expected.abs().max().item()
    assert scale > 0 and expected.std() > 0
    torch.testing.assert_close(got, expected, atol=1e-4 * scale, rtol=1e-4)
    assert prepared.bn_folded
    shrunk = [m for m in prepared.model.modules() if isinstance(m, ShrunkConv2d)]
    assert len(shrunk) == len(plan.pruned()) > 0
    assert set(prepared.report.scheme) == {scheme}


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
