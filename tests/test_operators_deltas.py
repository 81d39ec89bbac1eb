"""Tests for npas_lab.operators.deltas: measured accuracy and latency deltas of replacement."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from npas_lab import results
from npas_lab.data import load_dataset
from npas_lab.operators import (
    DELTA_COLUMNS,
    RESULTS_TABLE,
    measure_replacement,
    replacement_variants,
)
from npas_lab.operators import deltas as deltas_module
from npas_lab.plotting import operator_deltas_figure
from npas_lab.training import fit


class TinySE(nn.Module):
    """Conv -> BN -> SiLU -> squeeze-excitation (sigmoid gate) -> linear head, for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.se = SqueezeExcitation(8, 4)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.act(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", image_size=8, in_channels=1)


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    model = TinySE()
    fit(model, data, epochs=2, lr=1e-2, progress=False)  # well above chance, so deltas can move
    return model


def hard_modules(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Hardswish | nn.Hardsigmoid) for m in model.modules())


def fake_tvm(monkeypatch, latency_ms, calls=None):
    """Stand in for TVM: "compiling" returns the model, timing returns ``latency_ms(model)``."""
    monkeypatch.setattr(
        deltas_module, "_compile", lambda model, example, *, device, name: (model, 0.0)
    )

    def time(model, example, *, device, config, name):
        if calls is not None:
            calls.append(hard_modules(model))
        latency = latency_ms(model)
        return {"latency_ms": latency, "spread_ms": 0.0, "times_ms": [latency], "repeats": 1,
                "device": "host-cpu", "engine": "tvm", "target": "{}"}  # fmt: skip

    monkeypatch.setattr(deltas_module, "_time", time)


def test_variants_are_the_original_each_rule_and_all():
    assert replacement_variants(("sigmoid", "swish")) == [
        ("original", "original", ()),
        ("sigmoid", "rule", ("sigmoid",)),
        ("swish", "rule", ("swish",)),
        ("sigmoid+swish", "all", ("sigmoid", "swish")),
    ]
    assert replacement_variants(("sigmoid", "swish"), per_rule=False) == [
        ("original", "original", ()),
        ("sigmoid+swish", "all", ("sigmoid", "swish")),
    ]
    # One rule: "all" would measure the same model twice.
    assert replacement_variants("swish") == [
        ("original", "original", ()),
        ("swish", "rule", ("swish",)),
    ]
    assert replacement_variants(()) == [("original", "original", ())]
    with pytest.raises(ValueError, match="valid rules"):
        replacement_variants(("sigmoid", "hard"))
    with pytest.raises(ValueError, match="twice"):
        replacement_variants(("swish", "swish"))


def test_measured_deltas_with_tvm_are_consistent_recorded_and_leave_the_model_alone(trained, data):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.train()  # a mode the measurement must not change
    table = measure_replacement(
        trained,
        data,
        finetune_epochs=1,
        finetune_samples=256,
        measure_config=_quick_protocol(),
        rounds=3,
        model_name="tiny_se",
        progress=False,
    )
    assert tuple(table.columns[: len(DELTA_COLUMNS)]) == DELTA_COLUMNS
    assert list(table["variant"]) == ["original", "sigmoid", "swish", "sigmoid+swish"]
    assert list(table["replaced"]) == [0, 1, 1, 2]  # the SE gate, the SiLU, both
    original = table.iloc[0]
    for _, row in table.iterrows():
        assert row["accuracy_delta"] == pytest.approx(row["accuracy"] - original["accuracy"])
        assert row["accuracy_finetuned_delta"] == pytest.approx(
            row["accuracy_finetuned"] - original["accuracy_finetuned"]
        )
        # Latency is paired: each variant against the original timed alternately with it.
        assert row["latency_delta_ms"] == pytest.approx(
            row["latency_ms"] - row["reference_latency_ms"]
        )
        assert row["speedup"] == pytest.approx(row["reference_latency_ms"] / row["latency_ms"])
        assert row["measurement"]["repeats"] == 3 * 3  # rounds x repeats, pooled
        assert row["latency_ms"] > 0 and row["engine"] == "tvm" and row["device"] == "host-cpu"
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["accuracy_finetuned"] <= 1
        assert row["finetune"]["samples"] == 256
    assert original[["accuracy_delta", "latency_delta_ms"]].tolist() == [0, 0]
    assert original["reference_latency_ms"] == original["latency_ms"]
    assert original["accuracy"] > 0.3  # trained: the deltas are measured on a working model
    # The original model is untouched: weights, module types and training flags.
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())
    assert isinstance(trained.act, nn.SiLU) and isinstance(trained.se.scale_activation, nn.Sigmoid)
    assert all(m.training for m in trained.modules())
    stored = results.load(RESULTS_TABLE)
    assert stored["variant"].tolist() == table["variant"].tolist()
    assert set(stored["run_id"]) == {table.attrs["run_id"]}
    assert stored["accuracy_delta"].tolist() == pytest.approx(table["accuracy_delta"].tolist())
    assert "env" in stored  # every record carries its environment


def _quick_protocol():
    from npas_lab.devices import MeasureConfig

    return MeasureConfig(warmup=1, repeat=3, min_repeat_ms=5)


def test_without_finetune_the_finetuned_columns_are_nan(trained, data, monkeypatch):
    fake_tvm(monkeypatch, lambda model: 2.0 - 0.5 * hard_modules(model))
    table = measure_replacement(
        trained, data, rules="swish", finetune_epochs=0, progress=False, run_id="r1"
    )
    assert list(table["variant"]) == ["original", "swish"]
    assert table["accuracy_finetuned"].isna().all()
    assert table["latency_delta_ms"].tolist() == [0.0, -0.5]
    assert table["speedup"].tolist() == pytest.approx([1.0, 2.0 / 1.5])
    stored = results.load(RESULTS_TABLE)
    assert stored["accuracy_finetuned"].isna().all()  # NaN is stored as null, read back as NaN


def test_paired_timing_alternates_abba_so_a_steady_drift_cancels(trained, data, monkeypatch):
    calls: list[int] = []
    # Every variant is as fast as the original, but the machine slows down 1 ms per measurement.
    fake_tvm(monkeypatch, lambda model: 10.0 + len(calls), calls)
    table = measure_replacement(
        trained, data, rules="swish", rounds=2, finetune_epochs=0, progress=False
    )
    # Original alone twice; then original, swish, swish, original (ABBA).
    assert calls == [0, 0, 0, 1, 1, 0]
    assert table["latency_delta_ms"].tolist() == [0.0, 0.0]
    # Unpaired, the swish variant would look 3 ms slower than the original's own figure.
    assert table["latency_ms"].tolist() == [11.5, 14.5]


def test_replacing_nothing_changes_no_accuracy(data, monkeypatch):
    fake_tvm(monkeypatch, lambda model: 1.0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10))
    table = measure_replacement(model, data, finetune_epochs=0, progress=False)
    assert table["replaced"].tolist() == [0, 0, 0, 0]
    assert table["accuracy_delta"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_a_crash_keeps_the_rows_already_measured(trained, data, monkeypatch):
    fake_tvm(monkeypatch, lambda model: 1.0)
    compiled = []

    def compile_or_crash(model, example, *, device, name):
        compiled.append(model)
        if len(compiled) == 3:
            raise RuntimeError("device lost")
        return model, 0.0

    monkeypatch.setattr(deltas_module, "_compile", compile_or_crash)
    with pytest.raises(RuntimeError, match="device lost"):
        measure_replacement(trained, data, finetune_epochs=0, progress=False)
    assert results.load(RESULTS_TABLE)["variant"].tolist() == ["original", "sigmoid"]


def test_bad_options_fail_before_anything_is_measured(trained, data):
    with pytest.raises(ValueError, match="valid rules"):
        measure_replacement(trained, data, rules=("hard",), progress=False)
    with pytest.raises(ValueError, match="finetune_epochs"):
        measure_replacement(trained, data, finetune_epochs=-1, progress=False)
    with pytest.raises(ValueError, match="finetune_samples"):
        measure_replacement(trained, data, finetune_samples=0, progress=False)
    with pytest.raises(ValueError, match="rounds"):
        measure_replacement(trained, data, rounds=0, progress=False)
    assert results.load(RESULTS_TABLE).empty


def test_deltas_figure_has_accuracy_and_latency_bars_per_replaced_variant():
    table = pd.DataFrame(
        {
            "model": "m",
            "variant": ["original", "sigmoid", "swish"],
            "variant_kind": ["original", "rule", "rule"],
            "accuracy": [0.9, 0.85, 0.8],
            "accuracy_delta": [0.0, -0.05, -0.1],
            "accuracy_finetuned": [0.92, 0.91, math.nan],
            "accuracy_finetuned_delta": [0.0, -0.01, math.nan],
            "latency_ms": [10.0, 9.0, 8.0],
            "latency_delta_ms": [0.0, -1.0, -2.0],
            "spread_ms": [0.1, 0.2, 0.3],
            "speedup": [1.0, 10 / 9, 1.25],
        }
    )
    fig = operator_deltas_figure(table)
    bars = {trace.name: trace for trace in fig.data}
    assert list(bars) == ["accuracy, no fine-tune", "accuracy after fine-tune", "TVM latency"]
    assert list(bars["TVM latency"].x) == ["sigmoid", "swish"]
    assert list(bars["TVM latency"].y) == [-1.0, -2.0]
    assert list(bars["accuracy, no fine-tune"].y) == pytest.approx([-5.0, -10.0])
    assert "90.0%" in fig.layout.title.text and "10.00 ms" in fig.layout.title.text
    with pytest.raises(ValueError, match="latency_ms"):
        operator_deltas_figure(table.drop(columns="latency_ms"))
