"""Tests for npas_lab.models: registry, small-input stems, layer_table and MAC counting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from npas_lab import models
from npas_lab.models import (
    LAYER_COLUMNS,
    count_macs,
    create_model,
    layer_kind,
    layer_table,
    list_models,
    min_input_size,
    uses_small_stem,
)

ALL_MODELS = [
    "small_cnn",
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b0_70",
    "efficientnet_b0_50",
]

# Only these ops carry conv / linear MACs; elementwise ops (BN, activations, pooling) are ignored.
_MAC_OPS = {
    torch.ops.aten.convolution,
    torch.ops.aten._convolution,
    torch.ops.aten.mm,
    torch.ops.aten.addmm,
    torch.ops.aten.bmm,
}


def flop_counter_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Count conv/matmul MACs independently with torch's FlopCounterMode (FLOPs / 2)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape))
    counts = counter.get_flop_counts()["Global"]
    flops = sum(count for op, count in counts.items() if op in _MAC_OPS)
    assert flops % 2 == 0
    return flops // 2


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# --- registry ------------------------------------------------------------------------------------


def test_list_models_names_every_registered_model():
    assert list_models() == sorted(ALL_MODELS)
    assert set(models.MODELS) == set(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize(
    ("num_classes", "in_channels", "input_size"),
    [(10, 3, 32), (7, 1, 16), (3, 4, 64)],
)
def test_forward_gives_one_logit_per_class(name, num_classes, in_channels, input_size):
    torch.manual_seed(0)
    model = create_model(
        name, num_classes=num_classes, in_channels=in_channels, input_size=input_size
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, input_size, input_size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    assert first_conv(model).in_channels == in_channels


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_at_minimum_input_size_in_training_mode(name):
    size = min_input_size(name)
    model = create_model(name, num_classes=5, input_size=size).train()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_small_stem_rule_is_a_threshold_on_input_size():
    assert models.SMALL_INPUT_THRESHOLD == 64
    assert uses_small_stem(8) and uses_small_stem(32) and uses_small_stem(63)
    assert not uses_small_stem(64) and not uses_small_stem(224)


def test_resnet_uses_cifar_stem_for_small_inputs_and_imagenet_stem_otherwise():
    small = create_model("resnet18", input_size=32)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = create_model("resnet18", input_size=224, in_channels=1)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert large.conv1.in_channels == 1
    assert isinstance(large.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_mobile_nets_drop_first_conv_stride_for_small_inputs(name):
    assert first_conv(create_model(name, input_size=32)).stride == (1, 1)
    assert first_conv(create_model(name, input_size=64)).stride == (2, 2)


def test_classifier_head_has_num_classes_outputs():
    for name in ALL_MODELS:
        last = [m for m in create_model(name, num_classes=13).modules() if isinstance(m, nn.Linear)]
        assert last[-1].out_features == 13


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown model 'resnet19'") as info:
        create_model("resnet19")
    for name in ALL_MODELS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        min_input_size("vgg16")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_classes": 0}, "num_classes must be an integer >= 1"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
        ({"in_channels": "3"}, "in_channels"),
        ({"input_size": 0}, "input_size must be an integer >= 16 for model 'mobilenet_v3_small'"),
        ({"input_size": 15}, "input_size must be an integer >= 16"),
    ],
)
def test_bad_arguments_name_the_argument_and_what_is_valid(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        create_model("mobilenet_v3_small", **kwargs)


def test_registry_accepts_extension_models():
    models.MODELS["tiny_linear"] = lambda *, num_classes, in_channels, input_size: nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes)
    )
    try:
        model = create_model("tiny_linear", num_classes=4, input_size=2)
        assert "tiny_linear" in list_models()
        assert min_input_size("tiny_linear") == 1
        assert count_macs(model, (1, 3, 2, 2)) == 12 * 4
    finally:
        del models.MODELS["tiny_linear"]


# --- layer_table: known answers ------------------------------------------------------------------


def tiny_model() -> nn.Sequential:
    """One 3x3 conv, one depthwise, one pointwise and one linear layer, for input (N, 3, 8, 8)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8 out
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),  # 4x4 out
        nn.Conv2d(8, 16, 1),  # 4x4 out
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_layer_table_known_answer_for_tiny_model():
    model = tiny_model()
    table = layer_table(model, (2, 3, 8, 8))
    assert tuple(table.columns) == LAYER_COLUMNS
    assert table["name"].tolist() == ["0", "2", "3", "6"]
    assert table["kind"].tolist() == ["conv", "depthwise", "pointwise", "linear"]
    assert table["kernel"].tolist() == [(3, 3), (3, 3), (1, 1), None]
    assert table["stride"].tolist() == [(1, 1), (2, 2), (1, 1), None]
    assert table["groups"].tolist() == [1, 8, 1, 1]
    assert table["in_channels"].tolist() == [3, 8, 8, 16]
    assert table["out_channels"].tolist() == [8, 8, 16, 10]
    assert table["input_hw"].tolist() == [(8, 8), (8, 8), (4, 4), None]
    assert table["output_hw"].tolist() == [(8, 8), (4, 4), (4, 4), None]
    # params: 8*3*9 + 8 bias; 8*1*9 (no bias); 16*8 + 16; 16*10 + 10
    assert table["params"].tolist() == [224, 72, 144, 170]
    # MACs per sample (batch of 2 does not double them): 8*8 * 8*3*9; 4*4 * 8*1*9; 4*4 * 16*8; 16*10
    assert table["macs"].tolist() == [13824, 1152, 2048, 160]
    assert table["macs"].sum() == 17184 == count_macs(model, (2, 3, 8, 8))
    assert table.attrs == {"input_shape": (2, 3, 8, 8), "total_macs": 17184, "total_params": 610}
    assert flop_counter_macs(model, (1, 3, 8, 8)) == 17184


@pytest.mark.parametrize(
    ("layer", "kind"),
    [
        (nn.Conv2d(8, 8, 3, groups=8), "depthwise"),
        (nn.Conv2d(8, 16, 5, groups=8), "depthwise"),  # channel multiplier 2
        (nn.Conv2d(8, 8, 1, groups=8), "depthwise"),  # 1x1 depthwise is still depthwise
        (nn.Conv2d(8, 16, 1), "pointwise"),
        (nn.Conv2d(8, 16, 1, groups=2), "conv"),  # grouped 1x1 is not pointwise
        (nn.Conv2d(8, 8, 3, groups=4), "conv"),
        (nn.Conv2d(1, 4, 3), "conv"),
        (nn.Conv2d(1, 1, 1), "pointwise"),
        (nn.Linear(4, 2), "linear"),
    ],
)
def test_layer_kind(layer, kind):
    assert layer_kind(layer) == kind


def test_layer_kind_rejects_other_modules():
    with pytest.raises(TypeError, match="BatchNorm2d"):
        layer_kind(nn.BatchNorm2d(3))


def test_linear_macs_count_every_position_between_batch_and_features():
    model = nn.Linear(6, 5)
    assert count_macs(model, (3, 7, 6)) == 7 * 6 * 5
    assert flop_counter_macs(model, (1, 7, 6)) == 7 * 6 * 5


def test_shared_module_counts_every_call_and_unused_module_counts_zero():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.unused = nn.Linear(4, 4)

        def forward(self, x):
            return self.conv(self.conv(x))

    table = layer_table(Twice(), (1, 4, 5, 5)).set_index("name")
    assert table.loc["conv", "macs"] == 2 * 25 * 4 * 4 * 9
    assert table.loc["unused", "macs"] == 0 and table.loc["unused", "input_hw"] is None


def test_layer_table_restores_modes_and_removes_hooks():
    model = create_model("mobilenet_v3_small").train()
    model.features[1].eval()  # a deliberately frozen block must stay frozen
    modes = {name: m.training for name, m in model.named_modules()}
    layer_table(model, (1, 3, 32, 32))
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_table_on_model_without_layers_is_empty():
    table = layer_table(nn.ReLU(), (1, 3, 4, 4))
    assert tuple(table.columns) == LAYER_COLUMNS and table.empty
    assert count_macs(nn.ReLU(), (1, 3, 4, 4)) == 0


@pytest.mark.parametrize("shape", [(), (1, 0, 4), (1, -3), (1.0, 3)])
def test_layer_table_rejects_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape"):
        layer_table(tiny_model(), shape)


# --- layer_table against torch's flop counter ---------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("input_size", [32, 64])
def test_layer_table_macs_match_flop_counter(name, input_size):
    model = create_model(name, num_classes=10, input_size=input_size)
    shape = (1, 3, input_size, input_size)
    table = layer_table(model, shape)
    expected = flop_counter_macs(model, shape)
    # Exact in practice (torch 2.14); the requirement is agreement within 1 %.
    assert table["macs"].sum() == pytest.approx(expected, rel=0.01)
    assert table["macs"].sum() == expected
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(table) == n_layers
    assert (table["macs"] > 0).all()


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 4),
    in_per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.integers(1, 2),
    extra=st.tuples(st.integers(0, 6), st.integers(0, 6)),
    bias=st.booleans(),
)
def test_single_conv_macs_match_flop_counter(
    groups, in_per_group, out_per_group, kernel, stride, padding, dilation, extra, bias
):
    in_channels, out_channels = groups * in_per_group, groups * out_per_group
    conv = nn.Conv2d(
        in_channels, out_channels, kernel, stride, padding, dilation, groups=groups, bias=bias
    )
    # the smallest input that still gives a 1x1 output, plus a random margin
    hw = tuple(dilation * (k - 1) + 1 + e for k, e in zip(kernel, extra, strict=True))
    shape = (1, in_channels, *hw)
    row = layer_table(conv, shape).iloc[0]
    assert row["macs"] == flop_counter_macs(conv, shape)
    out_h, out_w = row["output_hw"]
    assert row["macs"] == out_h * out_w * out_channels * in_per_group * kernel[0] * kernel[1]
    assert row["params"] == conv.weight.numel() + (out_channels if bias else 0)
    assert row["kind"] == layer_kind(conv)


# --- model-level known answers -------------------------------------------------------------------


def test_scaled_efficientnets_have_70_and_50_percent_of_b0_macs():
    def macs_at_224(name):
        return count_macs(create_model(name, num_classes=1000, input_size=224), (1, 3, 224, 224))

    b0 = macs_at_224("efficientnet_b0")
    assert b0 == pytest.approx(385.8e6, rel=0.01)  # ~0.39 GMACs, as published for EfficientNet-B0
    assert macs_at_224("efficientnet_b0_70") / b0 == pytest.approx(0.70, abs=0.02)
    assert macs_at_224("efficientnet_b0_50") / b0 == pytest.approx(0.50, abs=0.02)


def test_small_cnn_is_small():
    params = sum(p.numel() for p in create_model("small_cnn").parameters())
    assert 20_000 < params < 150_000


def test_small_cnn_learns_digits_to_95_percent():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(0)
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8)
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(labels)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, random_state=0, stratify=labels
    )
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x_train, y_train = x[train_idx], y[train_idx]
    for _ in range(3):
        model.train()
        for batch in torch.randperm(len(y_train)).split(64):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    assert accuracy >= 0.95
