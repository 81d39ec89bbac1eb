"""npas_lab.compiler fusion: the fusing pipeline and the fusion report on a known model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npas_lab.compiler import compile_model, fusion_report
from npas_lab.compiler.fusion import FUSION_COLUMNS, kernel_ops
from npas_lab.compiler.pipeline import UnsupportedForFusionError, fuse_module


class ResidualBlock(nn.Module):
    """conv-BN-ReLU, then conv-BN + residual add + ReLU (a ResNet basic block)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


SHAPE = (1, 8, 8, 8)


@pytest.fixture(scope="module")
def block() -> nn.Module:
    torch.manual_seed(0)
    model = ResidualBlock()
    with torch.no_grad():  # non-trivial statistics, so folding them is actually tested
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def fused(block):
    return compile_model(block, torch.randn(SHAPE), name="block", kernels="tvm")


@pytest.fixture(scope="module")
def templated(block):
    return compile_model(block, torch.randn(SHAPE), name="block")


@pytest.fixture(scope="module")
def unfused(block):
    return compile_model(block, torch.randn(SHAPE), name="block", fuse=False, kernels="tvm")


def test_fused_block_matches_pytorch(block, fused):
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = block(x)
    torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=0)
    assert fused.options["fuse"] is True


def test_report_has_the_two_expected_fusion_groups(fused):
    report = fusion_report(fused)
    assert list(report.columns) == list(FUSION_COLUMNS)
    # Batch norm is folded into the conv weights: conv + bias add + relu, and the residual
    # block's conv + bias add + residual add + relu. Nothing else is left.
    assert sorted(report["ops"]) == [
        ("conv2d", "add", "add", "relu"),
        ("conv2d", "add", "relu"),
    ]
    assert report["fused"].all()
    assert report["calls"].tolist() == [1, 1]
    assert report["num_ops"].tolist() == [4, 3]  # sorted by size
    assert not report["scheduled"].any()  # untuned


def test_template_build_fuses_bias_and_relu_into_scheduled_conv_kernels(block, templated):
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = block(x)
    torch.testing.assert_close(templated(x), expected, atol=1e-5, rtol=0)
    report = fusion_report(templated).set_index("kernel")
    # conv1 + BN (folded) + ReLU -> one template kernel; conv2 + BN -> one, then TVM fuses the
    # residual add with the ReLU.
    assert report.loc["npas_conv1_dense", "ops"] == ("conv2d", "add", "relu")
    assert report.loc["npas_conv2_dense", "ops"] == ("conv2d", "add")
    assert report.loc[["npas_conv1_dense", "npas_conv2_dense"], "scheduled"].all()
    assert [ops for ops in report["ops"] if "conv2d" not in ops] == [("add", "relu")]


def test_unfused_build_has_one_operator_per_kernel(unfused):
    report = fusion_report(unfused)
    assert not report["fused"].any()
    assert set(report["ops"].map(lambda ops: ops[0])) == {"conv2d", "batch_norm", "add", "relu"}
    # Structurally equal kernels are shared: two convs, two BNs, two ReLUs, one add.
    calls = dict(zip(report["kernel"], report["calls"], strict=True))
    assert sum(calls.values()) == 7


@pytest.mark.parametrize(
    ("name", "ops"),
    [
        ("fused_conv2d_add1_relu", ("conv2d", "add", "relu")),
        ("fused_conv2d3_add_add1_relu2", ("conv2d", "add", "add", "relu")),
        ("max_pool2d1", ("max_pool2d",)),
        ("fused_matmul_add6", ("matmul", "add")),
        ("adaptive_avg_pool2d", ("adaptive_avg_pool2d",)),
        ("fused_my_kernel_add", ("my_kernel", "add")),
        ("fused_conv2d3_add4_tir_clip2_multiply1", ("conv2d", "add", "clip", "multiply")),
    ],
)
def test_kernel_names_split_into_operators(name, ops):
    assert kernel_ops(name) == ops


def test_fuse_conflicts_with_a_custom_relax_pipeline(block):
    with pytest.raises(ValueError, match="fusing pipeline"):
        compile_model(block, torch.randn(SHAPE), relax_pipeline="zero", fuse=True)


def test_tune_needs_fusion(block):
    from npas_lab.compiler import TuneConfig

    with pytest.raises(ValueError, match="needs fuse=True"):
        compile_model(block, torch.randn(SHAPE), fuse=False, tune=TuneConfig())


def test_side_effecting_packed_calls_refuse_fusion():
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2,), "float32"))
    with bb.function("main", [x]):
        y = bb.emit(relax.op.add(x, x))
        bb.emit(relax.call_pure_packed("my.print", y, ty_args=relax.TensorType((2,), "float32")))
        bb.emit_func_output(y)
    target = tvm.target.Target({"kind": "llvm"})
    with pytest.raises(UnsupportedForFusionError, match="call_pure_packed"):
        fuse_module(bb.get(), target)


def _module_calling(kernel_scheduled: bool):
    import tvm
    from tvm import relax, te

    shape = [tvm.tirx.const(n, "int64") for n in (1, 8)]  # Relax shapes are int64
    a = te.placeholder(shape, name="A")
    b = te.compute(shape, lambda i, j: a[i, j] * 2.0, name="B")
    kernel = te.create_prim_func([a, b]).with_attr("global_symbol", "my_kernel")
    if kernel_scheduled:
        kernel = kernel.with_attr("tirx.is_scheduled", True)  # e.g. a hand-written kernel
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.add_func(kernel, "my_kernel")
            y = bb.emit(relax.call_tir(gv, [x], relax.TensorType((1, 8), "float32")))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return fuse_module(bb.get(), tvm.target.Target({"kind": "llvm"}))


def test_scheduled_kernels_are_not_fused_into_others():
    kept = fusion_report(_module_calling(kernel_scheduled=True))
    assert sorted(kept["kernel"]) == ["my_kernel", "relu"]
    assert kept.set_index("kernel").loc["my_kernel", "scheduled"]
    # The same kernel unscheduled is fused with its consumer like any elementwise op.
    merged = fusion_report(_module_calling(kernel_scheduled=False))
    called = merged[merged["calls"] > 0]  # the original stays, exported, but is not called
    assert called["ops"].tolist() == [("my_kernel", "relu")]
