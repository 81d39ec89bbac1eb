"""The MNN engine: real MNN 3.6.1, converted from the ONNX export, timed by the shared protocol."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from npas_lab import results
from npas_lab.devices import MeasureConfig, compare_engines, get_device, get_engine, measure
from npas_lab.devices.engines import MNNEngine, convert_onnx_to_mnn
from npas_lab.models import create_model

pytest.importorskip("MNN")

FAST = MeasureConfig(warmup=1, repeat=3, number=1, min_repeat_ms=1.0)


@pytest.fixture(scope="module")
def small() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model("small_cnn", in_channels=1, input_size=16).eval()
    return model, torch.randn(1, 1, 16, 16)


class _Spectrum(nn.Module):
    """ONNX Runtime runs it (ONNX ``DFT``); MNN 3.6.1's converter has no ``DFT``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x, dim=-1).abs()


def test_mnn_is_registered_and_checks_its_options():
    assert "mnn" in get_engine("mnn").name
    with pytest.raises(ValueError, match="precision='fp8'"):
        MNNEngine(precision="fp8")
    with pytest.raises(ValueError, match="exporter='onnx'"):
        MNNEngine(exporter="onnx")


def test_mnn_matches_pytorch_and_restores_training_mode(small):
    model, x = small
    model.train()
    with get_engine("mnn").prepare(model, x, device=get_device("host-cpu")) as runner:
        y = runner(x)
        assert runner.engine == "mnn" and runner.target.startswith("mnn-3.6.1 CPU")
        assert runner.num_threads == get_device("host-cpu").num_threads
        workdir = runner._workdir
        assert (workdir / "model.mnn").exists()
    assert model.training, "preparing must not leave the model in eval mode"
    model.eval()
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    assert not workdir.exists(), "closing the runner removes the converted files"


def test_mnn_is_timed_by_the_shared_protocol(small):
    model, x = small
    m = measure(model, x, engine="mnn", config=FAST, model_name="small_cnn")
    assert m.ok and m.engine == "mnn" and m.repeats == 3 and m.latency_ms > 0
    assert m.num_threads == get_device("host-cpu").num_threads
    with get_engine("mnn").prepare(model, x, device=get_device("host-cpu")) as runner:
        with pytest.raises(ValueError, match="prepared for input shape"):
            runner(torch.randn(1, 1, 8, 8))


def test_mnn_converter_errors_quote_its_log(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(RuntimeError, match=r"MNN converter failed: .*onnx"):
        convert_onnx_to_mnn(bad, tmp_path / "bad.mnn")


def test_converting_never_imports_mnns_telemetry_wrapper(tmp_path, small):
    # MNN.tools.mnnconvert pip-installs a logging SDK and phones home when imported.
    model, x = small
    with get_engine("mnn").prepare(model, x, device=get_device("host-cpu")):
        pass
    assert "MNN.tools.utils.log" not in sys.modules
    assert "MNN.tools.mnnconvert" not in sys.modules
    from npas_lab.devices import engines

    assert "MNN.tools" not in engines._MNN_CONVERT and "_tools.mnnconvert" in engines._MNN_CONVERT
    check = subprocess.run(
        [sys.executable, "-c", "import _tools, sys; print('MNN.tools.utils.log' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip().endswith("False")


def test_an_engine_that_cannot_run_a_model_is_a_table_row_not_a_crash():
    model, x = _Spectrum().eval(), torch.randn(1, 1, 8, 8)
    table = compare_engines(
        model, x, model_name="spectrum", engines=["onnxruntime", "mnn"], config=FAST
    )
    assert table["engine"].tolist() == ["onnxruntime", "mnn"]
    ok, failed = table.iloc[0], table.iloc[1]
    assert ok["status"] == "ok" and ok["latency_ms"] > 0
    assert failed["status"] == "failed" and failed["latency_ms"] != failed["latency_ms"]  # NaN
    assert "MNN converter" in failed["error"] and "DFT" in failed["error"], failed["error"]
    recorded = results.load("measurements")
    assert recorded["status"].tolist() == ["ok", "failed"]
    with pytest.raises(RuntimeError):
        compare_engines(model, x, engines=["mnn"], config=FAST, on_error="raise", record=False)
    with pytest.raises(ValueError, match="on_error='skip'"):
        compare_engines(model, x, engines=["mnn"], on_error="skip")
