"""The paper's figures and tables are built from the results store, and say what is missing."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from npas_lab import paper, results
from npas_lab.devices import MeasureConfig
from npas_lab.search import RUNS_TABLE
from npas_lab.sparsity import LayerChoice, PruningPlan
from npas_lab.training import TrainConfig

FAST = MeasureConfig(warmup=1, repeat=3, number=1, min_repeat_ms=1.0)


def _annotations(fig) -> str:
    return " ".join(a.text for a in fig.layout.annotations)


def _zoo_row(model, engine, latency, *, run_id="r1", status="ok", accuracy=0.9, tag="paper"):
    return {
        "run_id": run_id,
        "tag": tag,
        "model": model,
        "engine": engine,
        "device": "host-cpu",
        "num_threads": 2,
        "latency_ms": latency if status == "ok" else float("nan"),
        "spread_ms": 0.01,
        "status": status,
        "error": None if status == "ok" else "RuntimeError: MNN converter failed: DFT",
        "accuracy": accuracy,
        "val_accuracy": accuracy,
        "macs": 2_000_000,
        "params": 50_000,
        "dataset": "digits",
        "image_size": 16,
        "in_channels": 1,
        "loadavg_1m": 1.0,
    }


def _search(run_id, points):
    results.append(
        RUNS_TABLE,
        {
            "kind": "start",
            "run_id": run_id,
            "algorithm": "npas",
            "evaluator": {"model": "small_cnn", "dataset": "digits", "input_shape": [1, 1, 16, 16]},
        },
    )
    plan = PruningPlan({"features.1.0": LayerChoice(scheme="unstructured", rate=4.0)})
    for step, (accuracy, latency, reward) in enumerate(points):
        results.append(
            RUNS_TABLE,
            {
                "kind": "evaluation",
                "run_id": run_id,
                "algorithm": "npas",
                "step": step,
                "plan_key": f"{plan.key()}-{step}",
                "plan": plan.to_json(),
                "accuracy": accuracy,
                "latency_ms": latency,
                "reward": reward,
                "status": "ok",
            },
        )


def test_every_builder_renders_an_empty_store_with_what_to_run():
    assert "benchmarks/schemes.py" in _annotations(paper.fig2a())
    assert "notebook 01" in _annotations(paper.fig2b())
    assert "notebook 01" in _annotations(paper.fig4())
    text = _annotations(paper.fig7())
    assert "paper_engines.py" in text and "notebook 03" in text
    assert paper.table1().empty and paper.npas_points().empty
    assert paper.dominance().empty


def test_fig2a_draws_tvm_and_pytorch_per_filter_type_of_the_latest_run():
    for run_id, scale in (("20260101-000000-aaaaaa", 100.0), ("20260102-000000-bbbbbb", 1.0)):
        for filter_type in ("1x1", "3x3 depthwise"):
            for macs in (1e6, 4e6):
                results.append(
                    "benchmarks/schemes",
                    {
                        "figure": "2a",
                        "run_id": run_id,
                        "filter_type": filter_type,
                        "macs": macs,
                        "latency_ms": scale * macs / 1e6,
                        "torch_ms": 2 * macs / 1e6,
                    },
                )
    fig = paper.fig2a()
    names = [t.name for t in fig.data]
    assert names == ["1x1 (TVM)", "1x1 (PyTorch)", "3x3 depthwise (TVM)", "3x3 depthwise (PyTorch)"]
    assert list(fig.data[0].y) == [1.0, 4.0], "only the latest run is drawn"
    assert list(fig.data[0].x) == [1.0, 4.0]  # millions of MACs


def test_fig2b_and_fig4_read_the_studies_tables():
    for rate in (2.0, 4.0):
        results.append(
            "benchmarks/schemes",
            {
                "figure": "2b",
                "source": "notebook",
                "run_id": "r",
                "shape": "32@8x8 3x3",
                "label": "bp 8x4",
                "scheme": "block_punched",
                "rate": rate,
                "speedup": rate / 1.5,
            },
        )
    assert paper.fig2b().data[0].name == "bp 8x4"
    for block, acc, ms in (("dense", 0.98, 1.0), ("1x1", 0.97, 0.9), ("8x4", 0.95, 0.4)):
        results.append(
            "studies/block_size",
            {"run_id": "s", "model": "small_cnn", "rate": 6.0, "block": block,
             "accuracy": acc, "latency_ms": ms, "spread_ms": 0.01},
        )  # fmt: skip
    fig = paper.fig4()
    # in latency order
    assert list(fig.data[0].text) == ["8x4", "1x1"] and "small_cnn at 6x" in fig.layout.title.text


def test_table1_has_latency_per_engine_ratios_and_failure_reasons():
    for model, tvm in (("mobilenet_v3_small", 1.0), ("efficientnet_b0", 2.0)):
        results.append(paper.ZOO_TABLE, _zoo_row(model, "tvm", tvm))
        results.append(paper.ZOO_TABLE, _zoo_row(model, "onnxruntime", 1.5 * tvm))
        results.append(paper.ZOO_TABLE, _zoo_row(model, "pytorch", 3 * tvm))
        results.append(paper.ZOO_TABLE, _zoo_row(model, "mnn", 0, status="failed"))
    # A smoke run, later, must not replace the paper's run.
    results.append(paper.ZOO_TABLE, _zoo_row("small_cnn", "tvm", 0.1, run_id="r9", tag="smoke"))
    table = paper.table1()
    assert table["model"].tolist() == ["mobilenet_v3_small", "efficientnet_b0"]
    first = table.iloc[0]
    assert first["tvm_ms"] == 1.0 and first["pytorch_ms"] == 3.0
    assert first["tvm_speedup_vs_onnxruntime"] == pytest.approx(1.5)
    assert first["tvm_speedup_vs_pytorch"] == pytest.approx(3.0)
    assert (
        math.isnan(first["mnn_ms"]) and "mnn: RuntimeError: MNN converter failed" in first["notes"]
    )
    assert first["macs_m"] == 2.0 and first["top1_split"] == "test"
    assert paper.load_zoo(tag="smoke")["model"].tolist() == ["small_cnn"]


def test_fig7_and_dominance_compare_the_search_with_the_dense_zoo():
    results.append(paper.ZOO_TABLE, _zoo_row("mobilenet_v3_small", "tvm", 1.0, accuracy=0.90))
    results.append(paper.ZOO_TABLE, _zoo_row("resnet18", "tvm", 0.2, accuracy=0.99))
    results.append(paper.ZOO_TABLE, _zoo_row("resnet18", "mnn", 0.3, accuracy=0.99))
    _search("search-a", [(0.92, 0.5, 1.0), (0.80, 0.1, 0.5), (0.95, 2.0, 0.2)])
    fig = paper.fig7()
    names = [t.name for t in fig.data]
    assert names == ["TVM (ours)", "MNN", "NPAS candidates (TVM)", "NPAS Pareto front (TVM)"]
    assert list(fig.data[3].x) == [0.1, 0.5, 2.0]
    verdict = paper.dominance().set_index("model")
    assert verdict.loc["mobilenet_v3_small", "dominated"]
    assert verdict.loc["mobilenet_v3_small", "by_step"] == 0  # 0.92 at 0.5 ms
    # the search pruned another model: the report must not call that like for like
    assert verdict.loc["mobilenet_v3_small", "by_model"] == "small_cnn"
    assert not verdict.loc["resnet18", "dominated"]
    table = paper.table1(npas_top=2)
    npas_rows = table[table["top1_split"] == "val"]
    assert npas_rows["model"].tolist() == ["NPAS small_cnn step 0", "NPAS small_cnn step 1"]
    assert npas_rows["tvm_ms"].tolist() == [0.5, 0.1]
    assert npas_rows["macs_m"].notna().all()


@pytest.mark.slow
def test_measure_zoo_records_each_engine_side_by_side_and_resumes():
    base = TrainConfig(image_size=8, in_channels=1, epochs=1)
    zoo = paper.measure_zoo(
        ["small_cnn"], base=base, engines=["pytorch", "onnxruntime"], measure_config=FAST,
        run_id="z1",
    )  # fmt: skip
    assert zoo["engine"].tolist() == ["pytorch", "onnxruntime"]
    assert (zoo["status"] == "ok").all() and (zoo["latency_ms"] > 0).all()
    assert {"accuracy", "val_accuracy", "macs", "params", "loadavg_1m"} <= set(zoo.columns)
    assert zoo["macs"].iloc[0] > 0 and zoo["run_id"].eq("z1").all()
    lines = []
    again = paper.measure_zoo(
        ["small_cnn"], base=base, engines=["pytorch", "onnxruntime"], run_id="z1",
        progress=lines.append,
    )  # fmt: skip
    assert len(again) == 2 and "skipped" in lines[0]
    assert isinstance(paper.table1(run_id="z1"), pd.DataFrame)


def test_recalibrating_batchnorm_copies_the_model_and_recomputes_its_statistics():
    from npas_lab.data import load_dataset
    from npas_lab.models import create_model

    data = load_dataset("digits", image_size=8, in_channels=1)
    model = create_model("small_cnn", in_channels=1, input_size=8).eval()
    before = [m.running_var.clone() for m in model.modules() if hasattr(m, "running_var")]
    fixed = paper.recalibrate_batchnorm(model, data, batches=2)
    after = [m.running_var for m in fixed.modules() if hasattr(m, "running_var")]
    untouched = [m.running_var for m in model.modules() if hasattr(m, "running_var")]
    assert fixed is not model and not fixed.training
    assert all(bool((a == b).all()) for a, b in zip(before, untouched, strict=True))
    assert any(not bool((a == b).all()) for a, b in zip(before, after, strict=True))
