"""End to end: ResNet-18 pruned uniformly (6x block-punched 8x4) vs its dense build vs PyTorch.

For each input size, one run measures side by side, with the same protocol
(:mod:`npas_lab.devices.measure`) and thread count:

- ``tvm dense``: the dense model compiled with ``compile_model`` (every conv on the dense
  template, tuned per layer with ``--kernel-tune`` configurations);
- ``tvm pruned``: the same model with every conv but the first pruned by the plan, compiled the
  same way (each pruned conv on the block-punched template);
- ``pytorch`` and ``onnxruntime``: the dense model.

It prints a markdown table (median ± IQR, speedups) and where the pruned build spends its time
(the tuned per-layer kernel times from the kernels table against the whole-model latency), and
appends each measurement to ``results/benchmarks/end_to_end.jsonl``.

Usage::

    python benchmarks/end_to_end.py                     # 32 and 224 px, ~10 min on 2 cores
    python benchmarks/end_to_end.py --sizes 32 --kernel-tune 0 --no-record   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from npas_lab import results
from npas_lab.compiler import compile_model
from npas_lab.devices import MeasureConfig, get_device, get_engine, measure
from npas_lab.models import create_model
from npas_lab.sparsity import uniform_plan

sys.path.insert(0, os.path.dirname(__file__))
from engines import realistic  # benchmarks/ is a folder of scripts, not a package

TABLE = "benchmarks/end_to_end"
CONFIGS = {
    "small": MeasureConfig(warmup=3, repeat=20, number=1, min_repeat_ms=50),
    "large": MeasureConfig(warmup=2, repeat=10, number=1, min_repeat_ms=100),
}
LARGE_FROM = 128


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_size(
    model_name: str, size: int, scheme: str, rate: float, block: tuple[int, int], tune: int
) -> tuple[dict[str, dict], dict]:
    """Measure the four builds at one input size; return rows by build and the pruned build."""
    torch.manual_seed(0)
    model = realistic(create_model(model_name, input_size=size), size)
    x = torch.randn(1, 3, size, size)
    plan = uniform_plan(model, scheme, rate, block=block)
    config = CONFIGS["large" if size >= LARGE_FROM else "small"]
    rows: dict[str, dict] = {}
    builds = {}
    for label, build_plan in (("tvm dense", None), ("tvm pruned", plan)):
        _log(f"[{model_name} {size}px] {label}: compiling (kernel_tune={tune}) ...")
        start = time.perf_counter()
        compiled = compile_model(
            model, x, plan=build_plan, kernel_tune=tune, name=f"{model_name}-{label}",
            progress=False,
        )  # fmt: skip
        builds[label] = compiled
        with get_engine("tvm").prepare(compiled, x, device=get_device("host-cpu")) as runner:
            m = measure(runner, x, config=config, model_name=f"{model_name} {label}")
        rows[label] = {**m.to_dict(), "prepare_s": time.perf_counter() - start}
        _log(f"  {m.latency_ms:.3f} ms (IQR {m.spread_ms:.3f})")
    for engine in ("pytorch", "onnxruntime"):
        _log(f"[{model_name} {size}px] {engine} ...")
        with get_engine(engine).prepare(model, x, device=get_device("host-cpu")) as runner:
            m = measure(runner, x, config=config, model_name=f"{model_name} dense")
        rows[engine] = m.to_dict()
        _log(f"  {m.latency_ms:.3f} ms (IQR {m.spread_ms:.3f})")
    return rows, builds


def where_time_goes(compiled, latency_ms: float) -> str:
    """Return a markdown summary: tuned conv-kernel times against the whole-model latency."""
    table = compiled.kernels
    if table.ms.isna().any():
        return "(per-layer times need --kernel-tune > 0)"
    convs = table.ms.sum()
    top = table.sort_values("ms", ascending=False).head(5)
    lines = [
        f"conv kernels {convs:.3f} ms of {latency_ms:.3f} ms "
        f"({100 * convs / latency_ms:.0f}%); the rest is pooling, adds, the classifier and "
        "VM overhead. Slowest convs:",
        "",
        "| layer | scheme | ms |",
        "|---|---|---|",
    ]
    lines += [f"| {r.layer} | {r.scheme} | {r.ms:.3f} |" for r in top.itertuples()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224])
    parser.add_argument("--scheme", default="block_punched")
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--block", nargs=2, type=int, default=[8, 4])
    parser.add_argument("--kernel-tune", type=int, default=8, help="configurations per layer")
    parser.add_argument("--no-record", action="store_true", help="do not append to results/")
    args = parser.parse_args(argv)

    run_id = results.new_run_id()
    device = get_device("host-cpu")
    _log(f"run {run_id}: target {device.target_json()}, {device.num_threads} threads")
    if os.getloadavg()[0] > 0.5 * device.num_threads:
        _log(f"WARNING: load average {os.getloadavg()[0]:.2f}: timings will be noisy")
    start = time.perf_counter()
    head = (
        "| model | input | TVM dense ms | TVM pruned ms | PyTorch ms | ORT ms "
        "| pruned / TVM dense | pruned / PyTorch | pruned / ORT | TVM dense vs PyTorch "
        "| TVM dense vs ORT |"
    )
    lines = [head, "|" + "---|" * 11]
    notes = []
    for size in args.sizes:
        rows, builds = run_size(
            args.model, size, args.scheme, args.rate, tuple(args.block), args.kernel_tune
        )
        if not args.no_record:
            for label, row in rows.items():
                results.append(
                    TABLE,
                    {
                        "run_id": run_id,
                        "build": label,
                        "scheme": args.scheme,
                        "rate": args.rate,
                        "block": list(args.block),
                        "kernel_tune": args.kernel_tune,
                        "loadavg_1m": os.getloadavg()[0],
                        **row,
                    },
                )
        ms = {label: row["latency_ms"] for label, row in rows.items()}
        cell = {k: f"{r['latency_ms']:.2f} ± {r['spread_ms']:.2f}" for k, r in rows.items()}
        pruned, dense = ms["tvm pruned"], ms["tvm dense"]
        lines.append(
            f"| {args.model} | 1x3x{size}x{size} | {cell['tvm dense']} | {cell['tvm pruned']} "
            f"| {cell['pytorch']} | {cell['onnxruntime']} "
            f"| {dense / pruned:.2f}x | {ms['pytorch'] / pruned:.2f}x "
            f"| {ms['onnxruntime'] / pruned:.2f}x "
            f"| {dense / ms['pytorch']:.2f} | {dense / ms['onnxruntime']:.2f} |"
        )
        for label in ("tvm dense", "tvm pruned"):
            notes.append(f"**{size}px, {label}**: {where_time_goes(builds[label], ms[label])}")
    print("\n".join(lines))
    print(
        f"\n{args.scheme} {args.block[0]}x{args.block[1]} at {args.rate}x on every conv but the "
        f"first; speedups = other latency / pruned latency; 'TVM dense vs X' = TVM dense "
        f"latency / X latency (1.0 = parity). kernel_tune={args.kernel_tune}; "
        f"{device.num_threads} threads; total {time.perf_counter() - start:.0f} s; load "
        f"average at the end {os.getloadavg()[0]:.2f}\n"
    )
    print("\n\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
