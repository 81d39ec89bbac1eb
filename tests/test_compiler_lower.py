"""Graph-level lowering: pruned conv calls found by weight and replaced, epilogue fused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax, te, topi

from npas_lab.compiler.export import export_to_relax
from npas_lab.compiler.lower import LoweredKernel, lower_convs, weight_digest
from npas_lab.compiler.prepare import prepare_model
from npas_lab.devices import get_device
from npas_lab.sparsity import LayerChoice, uniform_plan


def reference_provider(site):
    """A plain TE conv (+bias, +ReLU): checks the graph mechanism, not kernel speed."""
    if site.groups != 1:
        return None
    data = te.placeholder(site.input_shape, name="data")
    weight = te.placeholder(site.weight.shape, name="weight")
    out = topi.nn.conv2d_nchw(data, weight, site.stride, site.padding, site.dilation)
    args, constants = [data, weight], [site.weight]
    if site.bias is not None:
        bias = te.placeholder((site.bias.shape[0],), name="bias")
        conv = out
        out = te.compute(conv.shape, lambda n, f, i, j: conv[n, f, i, j] + bias[f])
        args.append(bias)
        constants.append(site.bias)
    if site.epilogue == "bias_relu":
        out = topi.nn.relu(out)
    shape = tuple(int(s) for s in out.shape)
    return LoweredKernel(te.create_prim_func([*args, out]), tuple(constants), shape, "reference")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.Conv2d(16, 4, 1),
    )
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 8, 8))
    return model.eval()


def test_every_pruned_conv_is_replaced_with_its_epilogue_and_outputs_match(net):
    plan = uniform_plan(net, "block_punched", 2.0, skip_first=False)
    prepared = prepare_model(net, plan)
    x = torch.randn(1, 3, 8, 8)
    mod = export_to_relax(prepared.model, x).mod
    layers = {
        weight_digest(prepared.model.get_submodule(name).weight.detach().numpy()): (name, choice)
        for name, choice in plan.pruned().items()
    }
    lowered, report = lower_convs(mod, layers, reference_provider)
    assert report.layer.tolist() == ["0", "3", "5"]
    # conv+BN+ReLU -> one kernel with bias and ReLU; conv+BN (folded) -> bias; plain conv -> bias
    assert report.epilogue.tolist() == ["bias_relu", "bias", "bias"]
    names = {gv.name_hint for gv in lowered.get_global_vars()}
    assert {"npas_0_block_punched", "npas_3_block_punched", "npas_5_block_punched"} <= names
    assert "R.nn.conv2d" not in lowered["main"].script()
    target = tvm.target.Target(dict(get_device("host-cpu").target))
    vm = relax.VirtualMachine(tvm.compile(lowered, target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        expected = prepared.model(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_layers_not_in_the_plan_and_declined_sites_stay_convs(net):
    prepared = prepare_model(net)
    mod = export_to_relax(prepared.model, torch.randn(1, 3, 8, 8)).mod
    lowered, report = lower_convs(mod, {}, reference_provider)
    assert report.empty and lowered["main"].script().count("R.nn.conv2d") == 3
    weight = prepared.model.get_submodule("0").weight.detach().numpy()
    layers = {weight_digest(weight): ("0", LayerChoice(scheme="unstructured", rate=2.0))}
    lowered, report = lower_convs(mod, layers, lambda site: None)
    assert report.empty


def test_weight_digest_sees_values_shape_and_dtype():
    a = np.arange(6, dtype=np.float32)
    assert weight_digest(a) == weight_digest(a.copy())
    assert weight_digest(a) != weight_digest(a.reshape(2, 3))
    assert weight_digest(a) != weight_digest(a.astype(np.float64))
    b = a.copy()
    b[3] = 0
    assert weight_digest(a) != weight_digest(b)
