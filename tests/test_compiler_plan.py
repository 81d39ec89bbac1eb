"""compile_model(plan=...): every scheme lowered to its kernel and equal to the masked model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from npas_lab.compiler import compile_model, load_artifact, save_artifact
from npas_lab.models import list_models
from npas_lab.sparsity import LayerChoice, PruningPlan, SparsityError, apply_plan, uniform_plan

SHAPE = (1, 3, 32, 32)
SLOW_MODELS = {
    "efficientnet_b0",
    "efficientnet_b0_50",
    "efficientnet_b0_70",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet50",
}
#: (scheme, rate, block, the kernel the pruned layers must run)
SCHEMES = [
    ("unstructured", 4.0, None, "unstructured template"),
    ("filter", 2.0, None, "dense template"),
    ("channel", 2.0, None, ("dense template", "channel template")),  # channel: gather fused
    ("pattern", 3.0, None, "pattern template"),
    ("block_punched", 6.0, (8, 4), "block_punched template"),
    ("block", 4.0, (8, 4), "block template"),
]


def masked_output(model: nn.Module, plan: PruningPlan, x: torch.Tensor) -> torch.Tensor:
    masked = apply_plan(copy.deepcopy(model), plan).eval()
    with torch.no_grad():
        return masked(x)


def assert_matches(compiled, expected: torch.Tensor, x: torch.Tensor) -> None:
    # Pruned nets can have small logits: compare within 1e-4 of the output's scale when that is
    # below 1 (stricter than 1e-4 absolute), so the check never becomes vacuous.
    scale = expected.abs().max().item()
    assert scale > 1e-3, "outputs too small for the tolerance to mean anything"
    torch.testing.assert_close(compiled(x), expected, atol=1e-4 * min(1.0, scale), rtol=0)


@pytest.mark.parametrize(("scheme", "rate", "block", "kernel"), SCHEMES)
def test_every_scheme_runs_its_kernel_and_matches_the_masked_model(
    calibrated, scheme, rate, block, kernel
):
    model = calibrated("resnet18")
    # block pruning is for matrices: it prunes the 1x1 (pointwise) convs only
    kinds = ("pointwise",) if scheme == "block" else ("conv", "pointwise", "depthwise")
    plan = uniform_plan(model, scheme, rate, block=block, kinds=kinds)
    assert plan.pruned()
    compiled = compile_model(model, torch.randn(SHAPE), plan=plan, name=f"resnet18-{scheme}")
    x = torch.randn(SHAPE)
    assert_matches(compiled, masked_output(model, plan, x), x)
    table = compiled.kernels.set_index("layer")
    for layer in plan.pruned():
        assert table.loc[layer, "scheme"] == scheme
        assert table.loc[layer, "kernel"].startswith(kernel), table.loc[layer, "kernel"]
    # dense layers run the dense template, none is left to TVM's untuned conv
    assert not table.kernel.str.startswith("tvm conv").any()
    assert compiled.plan == plan
    assert "R.nn.conv2d" not in compiled.lowered["main"].script()
    # filter/channel pruning reaches the next conv of every block (conv1 -> ReLU -> conv2)
    assert (not compiled.propagation.empty) == (scheme in ("filter", "channel"))


@pytest.mark.slow
@pytest.mark.parametrize(("scheme", "rate", "block", "kernel"), SCHEMES)
def test_every_scheme_on_mobilenet_matches_the_masked_model(
    calibrated, scheme, rate, block, kernel
):
    # depthwise convs, squeeze-excitation products, hard-swish and residual adds: the structures
    # ResNet-18 lacks (the full scheme x registry matrix is a script, see docs/compiler.md)
    model = calibrated("mobilenet_v3_small")
    kinds = ("pointwise",) if scheme == "block" else ("conv", "pointwise", "depthwise")
    plan = uniform_plan(model, scheme, rate, block=block, kinds=kinds)
    compiled = compile_model(model, torch.randn(SHAPE), plan=plan, name=f"mbv3-{scheme}")
    x = torch.randn(SHAPE)
    assert_matches(compiled, masked_output(model, plan, x), x)
    assert (not compiled.propagation.empty) == (scheme in ("filter", "channel"))


def test_propagated_filter_pruning_fuses_the_bias_map_into_the_reader_kernel(calibrated):
    from npas_lab.compiler import fusion_report

    model = calibrated("resnet18")
    plan = uniform_plan(model, "filter", 2.0)
    compiled = compile_model(model, torch.randn(SHAPE), plan=plan)
    row = compiled.propagation.set_index("layer").loc["layer1.0.conv1"]
    assert (row.computed, row.constant, row.absorbed) == (32, 32, "map")
    report = fusion_report(compiled).set_index("kernel")
    # the reader adds its bias map inside the template: no separate add kernel for it
    assert report.loc["npas_layer1_0_conv2_filter", "ops"] == ("conv2d", "add")
    assert report.loc["npas_layer1_0_conv2_filter", "scheduled"]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in list_models()],
)
def test_every_registry_model_compiles_pruned_and_matches(calibrated, name):
    model = calibrated(name)
    plan = uniform_plan(model, "block_punched", 3.0)
    compiled = compile_model(model, torch.randn(SHAPE), plan=plan, name=name)
    x = torch.randn(SHAPE)
    assert_matches(compiled, masked_output(model, plan, x), x)
    pruned = compiled.kernels[compiled.kernels.layer.isin(list(plan.pruned()))]
    assert len(pruned) == len(plan.pruned())
    # Every pruned conv runs a sparse template (a grouped conv may fall back, saying why).
    assert pruned.kernel.str.contains("template").all(), pruned.kernel.tolist()


def test_tvm_kernels_apply_the_plan_as_zeros(calibrated):
    model = calibrated("small_cnn")
    plan = uniform_plan(model, "unstructured", 4.0)
    compiled = compile_model(model, torch.randn(SHAPE), plan=plan, kernels="tvm")
    x = torch.randn(SHAPE)
    assert_matches(compiled, masked_output(model, plan, x), x)
    assert compiled.kernels is None and compiled.options["kernels"] == "tvm"


def test_a_pruned_model_keeps_its_own_masks(calibrated):
    model = calibrated("small_cnn")
    plan = uniform_plan(model, "block_punched", 4.0, block=(4, 4))
    pruned = apply_plan(copy.deepcopy(model), plan)
    with torch.no_grad():  # weights move after masking (as in fine-tuning): masks must hold
        for p in pruned.parameters():
            p.add_(0.01)
    compiled = compile_model(pruned, torch.randn(SHAPE), plan=plan)
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = pruned.eval()(x)
    assert_matches(compiled, expected, x)


def test_artifact_keeps_the_plan_and_runs_without_recompiling(calibrated):
    model = calibrated("small_cnn")
    plan = uniform_plan(model, "pattern", 3.0)
    compiled = compile_model(model, torch.randn(SHAPE), plan=plan, name="small_cnn-pattern")
    folder = save_artifact(compiled)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert PruningPlan.from_json(json.dumps(metadata["plan"])) == plan
    x = torch.randn(SHAPE)
    torch.testing.assert_close(load_artifact(folder)(x), compiled(x), atol=0, rtol=0)


def test_plan_that_does_not_fit_names_the_layer(calibrated):
    model = calibrated("small_cnn")
    plan = PruningPlan({"features.99": LayerChoice(scheme="unstructured", rate=2.0)})
    with pytest.raises(SparsityError, match=r"features\.99"):
        compile_model(model, torch.randn(SHAPE), plan=plan)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernels": "mkl"}, r"kernels='mkl': choose one of auto, templates, tvm"),
        ({"kernel_tune": -1}, r"kernel_tune=-1"),
        ({"kernels": "templates", "relax_pipeline": "zero"}, r"relax_pipeline"),
    ],
)
def test_bad_kernel_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compile_model(nn.Conv2d(3, 4, 3), torch.randn(SHAPE), **kwargs)


def test_kernel_tuning_is_kept_so_a_second_compile_measures_nothing(calibrated, isolated_home):
    model = calibrated("small_cnn")
    plan = uniform_plan(model, "unstructured", 4.0)
    x = torch.randn(SHAPE)
    first = compile_model(model, x, plan=plan, kernel_tune=2, progress=False)
    database = isolated_home / "results" / "tuning" / "kernels.jsonl"
    records = database.read_text().splitlines()
    assert records
    # every layer reports what its tuning measured; unstructured layers measured dense too
    assert first.kernels.kernel.str.contains(r"\d ms").all(), first.kernels.kernel.tolist()
    second = compile_model(model, x, plan=plan, kernel_tune=2, progress=False)
    assert database.read_text().splitlines() == records
    assert second.kernels.kernel.tolist() == first.kernels.kernel.tolist()
    assert_matches(second, masked_output(model, plan, x), x)
