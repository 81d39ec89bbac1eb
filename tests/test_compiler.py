"""npas_lab.compiler: every registry model compiles with TVM and matches PyTorch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from npas_lab.compiler import (
    CompiledModel,
    ExportError,
    UnsupportedOperatorError,
    compile_model,
    export_to_relax,
)
from npas_lab.devices import get_device
from npas_lab.models import create_model, list_models

# Compile + first run take > ~15 s each on 2 cores (small_cnn and resnet18 take ~3 s).
SLOW_MODELS = {
    "efficientnet_b0",
    "efficientnet_b0_50",
    "efficientnet_b0_70",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet50",
}
SHAPE = (1, 3, 32, 32)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in list_models()],
)
def test_compiled_model_matches_pytorch(name, calibrated):
    model = calibrated(name)
    compiled = compile_model(model, torch.randn(SHAPE), name=name)
    x = torch.randn(SHAPE)  # not the example input: the build must not depend on its values
    with torch.no_grad():
        expected = model(x)
    got = compiled(x)
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape
    assert expected.std() > 1e-2, "outputs too small for the tolerance to mean anything"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert model.training is False  # compile_model restores the caller's mode


@pytest.fixture(scope="module")
def small(calibrated) -> tuple[nn.Module, CompiledModel]:
    model = calibrated("small_cnn")
    return model, compile_model(model, torch.randn(SHAPE), name="small_cnn")


def test_compiled_model_describes_its_target_and_device(small):
    _, compiled = small
    assert compiled.device == "host-cpu"
    assert compiled.name == "small_cnn"
    assert compiled.input_shape == SHAPE and compiled.input_dtype == torch.float32
    host = get_device("host-cpu").target
    assert compiled.target["kind"] == "llvm"
    assert compiled.target["mcpu"] == host["mcpu"]
    assert compiled.target["num-cores"] == host["num-cores"]
    assert json.loads(compiled.target_json()) == compiled.target
    assert set(compiled.timings) == {"export", "import", "kernels", "build"}


def test_compile_restores_training_mode():
    model = create_model("small_cnn", input_size=16).train()
    compile_model(model, torch.randn(1, 3, 16, 16))
    assert model.training


def test_export_library_writes_a_shared_library(small, tmp_path):
    _, compiled = small
    path = compiled.export_library(tmp_path / "lib" / "small_cnn.so")
    assert path.exists() and path.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        (torch.randn(2, 3, 32, 32), "shape (2, 3, 32, 32)"),
        (torch.randn(1, 3, 16, 16), "shape (1, 3, 16, 16)"),
        (torch.randn(SHAPE, dtype=torch.float64), "dtype torch.float64"),
    ],
)
def test_wrong_input_names_expected_and_got(small, bad, what):
    _, compiled = small
    with pytest.raises(ValueError, match=r"compiled for input shape \(1, 3, 32, 32\)") as info:
        compiled(bad)
    assert what in str(info.value)


def test_unknown_device_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown device 'pixel-9'.*host-cpu, host-cpu-rpc"):
        compile_model(nn.Linear(4, 2), torch.randn(1, 4), "pixel-9")


class _KthValue(nn.Module):
    def forward(self, x):
        return torch.kthvalue(x.flatten(1), 2).values


class _DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_unsupported_operator_is_named_with_the_model():
    with pytest.raises(UnsupportedOperatorError, match=r"model 'kth'.*kthvalue") as info:
        export_to_relax(_KthValue(), torch.randn(1, 3, 4, 4), name="kth")
    assert info.value.operators == ["kthvalue.default"]
    assert info.value.model_name == "kth"


def test_untraceable_model_names_the_model_and_shape():
    with pytest.raises(
        ExportError, match=r"could not trace model '_DataDependent'.*\(1, 3, 4, 4\)"
    ):
        compile_model(_DataDependent(), torch.randn(1, 3, 4, 4))
