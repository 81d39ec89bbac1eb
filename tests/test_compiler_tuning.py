"""npas_lab.compiler.tuning: MetaSchedule with a persistent per-target database (tiny budgets)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from npas_lab import paths
from npas_lab.compiler import TuneConfig, compile_model, fusion_report
from npas_lab.compiler.tuning import target_key, tuning_dir
from npas_lab.devices import get_device


class ConvAdd(nn.Module):
    """One conv + bias + residual add + ReLU: a single tuning task."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)


SHAPE = (1, 8, 8, 8)
# Random sampling (the default strategy), no cost model: ~1 s of search per round.
QUICK = TuneConfig(max_trials_global=8, max_trials_per_task=8, num_trials_per_iter=4)


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return ConvAdd().eval()


def test_config_validates_and_round_trips():
    config = TuneConfig(max_trials_global=16, op_names=["conv2d"])
    assert config.op_names == ("conv2d",)
    assert TuneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TuneConfig(max_trials_global=16, max_trials_per_task=None).per_task == 16
    with pytest.raises(ValueError, match="strategy"):
        TuneConfig(strategy="grid")
    with pytest.raises(ValueError, match="max_trials_global"):
        TuneConfig(max_trials_global=0)


def test_tuning_folder_is_keyed_by_target_with_its_json_beside():
    target = dict(get_device("host-cpu").target)
    folder = tuning_dir(target)
    assert folder == paths.results_dir() / "tuning" / target_key(target)
    assert len(folder.name) == 12
    assert json.loads((folder / "target.json").read_text())["kind"] == "llvm"
    assert target_key({**target, "num-cores": 99}) != folder.name


def test_second_compile_does_not_retune(model):
    x = torch.randn(SHAPE)
    lines = []
    first = compile_model(
        model, torch.randn(SHAPE), name="convadd", kernels="tvm", tune=QUICK, progress=lines.append
    )
    folder = first.tuning.directory
    records = folder / "database_tuning_record.json"
    assert first.tuning.tuned == ("fused_conv2d_add_add1_relu",)
    assert first.tuning.trials == 8 and first.tuning.records_after == 8
    assert _lines(records) == 8
    assert lines and lines[-1].startswith("[tune 8/8]")  # progress, one line per batch
    assert list(folder.glob("sessions/*/logs/*.log"))  # MetaSchedule's own logs: files
    ledger = json.loads((folder / "ledger.json").read_text())
    assert [entry["budget"] for entry in ledger.values()] == [8]

    second = compile_model(
        model, torch.randn(SHAPE), name="convadd", kernels="tvm", tune=QUICK, progress=False
    )
    assert second.tuning.trials == 0 and second.tuning.tuned == ()
    assert second.tuning.records_before == second.tuning.records_after == 8
    assert _lines(records) == 8  # no new measurement
    assert second.timings["tune"] < first.timings["tune"]

    with torch.no_grad():
        expected = model(x)
    for compiled in (first, second):
        torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=0)
        assert fusion_report(compiled)["scheduled"].all()  # the tuned schedule is applied


def test_larger_budget_tunes_again(model):
    compile_model(model, torch.randn(SHAPE), kernels="tvm", tune=QUICK, progress=False)
    more = TuneConfig(
        max_trials_global=12, max_trials_per_task=12, num_trials_per_iter=4, strategy="replay-trace"
    )
    again = compile_model(model, torch.randn(SHAPE), kernels="tvm", tune=more, progress=False)
    assert again.tuning.trials > 0
    assert again.tuning.records_after > again.tuning.records_before == 8


def test_op_names_filter_selects_no_task(model):
    only_dense = TuneConfig(max_trials_global=4, op_names=("matmul",), strategy="replay-trace")
    compiled = compile_model(
        model, torch.randn(SHAPE), kernels="tvm", tune=only_dense, progress=False
    )
    assert compiled.tuning.tasks == () and compiled.tuning.trials == 0
    assert not fusion_report(compiled)["scheduled"].any()


def test_evolutionary_search_smoke(model):
    # The default strategy (cost model + evolution) with a tiny population: it must run.
    config = TuneConfig(
        max_trials_global=4,
        max_trials_per_task=4,
        num_trials_per_iter=4,
        strategy="evolutionary",
        population_size=16,
    )
    compiled = compile_model(model, torch.randn(SHAPE), kernels="tvm", tune=config, progress=False)
    assert compiled.tuning.trials == 4
    x = torch.randn(SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=0)


def test_template_kernels_are_not_tuning_tasks(model):
    # The conv runs a scheduled template (bias fused); only the residual add + ReLU is tuned.
    compiled = compile_model(model, torch.randn(SHAPE), tune=QUICK, progress=False)
    assert compiled.tuning.tasks == ("fused_add_relu",)
    report = fusion_report(compiled).set_index("kernel")
    assert report.loc["npas_conv_dense", "scheduled"]
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=0)
