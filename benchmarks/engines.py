"""Benchmark inference engines on the host CPU: TVM (our build) vs PyTorch eager vs ONNX Runtime.

For each model and input size, every engine is timed with the same protocol
(:mod:`npas_lab.devices.measure`) and the same thread count; the script prints a markdown table of
medians (± IQR) and ratios to PyTorch, and appends one record per measurement to the results
table ``benchmarks/engines`` (``results/benchmarks/engines.jsonl``).

TVM here is :func:`npas_lab.compiler.compile_model`'s default build: every conv on the project's
scheduled template kernels (``--kernel-tune N`` measures N configurations per layer first), the
rest through the fusing pipeline. ``--tvm-default`` times TVM's own untuned build instead (its
CPU convolutions are unscheduled loops: TVM_NOTES.md). Models come from the
registry with random weights and calibrated batch-norm statistics (:func:`realistic`); at 32x32
they use the small-input stems.

Usage::

    python benchmarks/engines.py                   # default: ~3-5 min on 2 cores
    python benchmarks/engines.py --models small_cnn --sizes 32 --no-record   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

from npas_lab import results
from npas_lab.devices import MeasureConfig, compare_engines, get_device, get_engine
from npas_lab.models import create_model

TABLE = "benchmarks/engines"
ENGINES = ("tvm", "pytorch", "onnxruntime")
# Untuned TVM takes seconds per ResNet-18 run at 224x224: fewer repeats there keep the run short.
CONFIGS = {
    "small": MeasureConfig(warmup=2, repeat=10, number=1, min_repeat_ms=100),
    "large": MeasureConfig(warmup=1, repeat=5, number=1, min_repeat_ms=100),
}
LARGE_FROM = 128  # input sizes from this on use CONFIGS["large"]
TVM_OPTIONS: dict = {"progress": False}  # compile_model options of the TVM engine (see main)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load() -> float:
    return os.getloadavg()[0]


def _cell(row: dict | None) -> str:
    return "n/a" if row is None else f"{row['latency_ms']:.2f} ± {row['spread_ms']:.2f}"


def _ratio(row: dict | None, ref: dict | None) -> str:
    return "n/a" if row is None or ref is None else f"{row['latency_ms'] / ref['latency_ms']:.2f}"


def realistic(model: nn.Module, size: int) -> nn.Module:
    """Give a freshly initialised model batch-norm statistics of its own activations.

    In eval mode with the initial statistics (mean 0, variance 1) MobileNet's activations
    shrink layer by layer (logits ~1e-10), and near-denormal numbers can change CPU timings.
    Two random batches through the model in train mode give it O(1) activations, as a trained
    model has.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval()


def run(
    models: list[str], sizes: list[int], engines: list[str], *, record: bool, run_id: str
) -> list[dict]:
    """Measure every (model, size, engine); return one row per (model, size)."""
    rows = []
    for name in models:
        for size in sizes:
            torch.manual_seed(0)
            model = realistic(create_model(name, input_size=size), size)
            x = torch.randn(1, 3, size, size)
            config = CONFIGS["large" if size >= LARGE_FROM else "small"]
            chosen = [get_engine(e, **TVM_OPTIONS) if e == "tvm" else e for e in engines]
            table = compare_engines(
                model, x, model_name=name, engines=chosen, config=config, progress=_log
            )
            records = table.to_dict("records")
            if record:
                for row in records:
                    # The load average tells a reader whether other work shared the cores.
                    build = {k: v for k, v in TVM_OPTIONS.items() if k != "progress"}
                    results.append(
                        TABLE, {"run_id": run_id, "loadavg_1m": _load(), "tvm_build": build, **row}
                    )
            by_engine = {row["engine"]: row for row in records}
            rows.append({"model": name, "size": size, **by_engine})
    return rows


def markdown(rows: list[dict], engines: list[str]) -> str:
    """Return the results as a markdown table (medians ± IQR in ms, ratios to PyTorch)."""
    titles = {"tvm": "TVM", "pytorch": "PyTorch eager", "onnxruntime": "ONNX Runtime"}
    head = ["model", "input"] + [f"{titles[e]} ms" for e in engines]
    ratios = [e for e in ("tvm", "onnxruntime") if e in engines and "pytorch" in engines]
    head += [f"{'ORT' if e == 'onnxruntime' else 'TVM'}/PyTorch" for e in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], f"1x3x{row['size']}x{row['size']}"]
        cells += [_cell(row.get(e)) for e in engines]
        cells += [_ratio(row.get(e), row.get("pytorch")) for e in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--kernel-tune", type=int, default=0, help="template configs per layer")
    parser.add_argument("--tvm-default", action="store_true", help="TVM's untuned build instead")
    parser.add_argument("--no-record", action="store_true", help="do not append to results/")
    args = parser.parse_args(argv)
    if args.tvm_default:
        TVM_OPTIONS.update(kernels="tvm")
    else:
        TVM_OPTIONS.update(kernel_tune=args.kernel_tune)

    run_id = results.new_run_id()
    device = get_device("host-cpu")
    _log(f"run {run_id}: device host-cpu, target {device.target_json()}, "
         f"{device.num_threads} threads")  # fmt: skip
    if _load() > 0.5 * device.num_threads:
        _log(f"WARNING: load average {_load():.2f} on {device.num_threads} cores: other work "
             "competes for the CPU and the timings will be noisy")  # fmt: skip
    start = time.perf_counter()
    rows = run(args.models, args.sizes, args.engines, record=not args.no_record, run_id=run_id)
    print(markdown(rows, args.engines))
    print(
        f"\nmedian ± IQR of per-repeat times; protocols: "
        f"<{LARGE_FROM}px {CONFIGS['small']}, >={LARGE_FROM}px {CONFIGS['large']}; "
        f"{device.num_threads} threads per engine; total {time.perf_counter() - start:.0f} s; "
        f"load average at the end {_load():.2f}"
    )
    if not args.no_record:
        print(f"records appended to {results.table_path(TABLE)} (run_id {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
