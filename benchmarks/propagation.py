"""What propagating filter/channel pruning into the next conv buys, end to end.

For each model, input size and scheme, one run builds and measures side by side (same protocol,
same threads, builds interleaved over ``--rounds`` rounds, best median kept):

- ``dense``: the model compiled with ``compile_model`` (dense templates);
- ``shrunk``: uniformly filter- (or channel-) pruned, each pruned conv computing only its kept
  filters from its kept inputs, but putting the removed channels back (``propagate=False``);
- ``propagated``: the same plan with pruning propagated (``propagate=True``, the default): a
  reader of a pruned filter no longer reads it, a producer no longer computes what its
  channel-pruned reader ignores.

It prints a markdown table with the MACs each build still computes (from the prepared model)
and the speedups, and appends each measurement to ``results/benchmarks/propagation.jsonl``.

Usage::

    python benchmarks/propagation.py                       # ResNet-18 + MobileNet-V3-small
    python benchmarks/propagation.py --models resnet18 --sizes 32 --kernel-tune 0 --no-record
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

from npas_lab import results
from npas_lab.compiler import compile_model
from npas_lab.compiler.prepare import prepare_model
from npas_lab.devices import MeasureConfig, get_device, get_engine, measure
from npas_lab.models import create_model, layer_table
from npas_lab.sparsity import uniform_plan

sys.path.insert(0, os.path.dirname(__file__))
from engines import realistic  # benchmarks/ is a folder of scripts, not a package

TABLE = "benchmarks/propagation"
CONFIG = MeasureConfig(warmup=3, repeat=15, number=1, min_repeat_ms=50)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every conv of ``model`` on ``x`` (weights as stored)."""
    table = layer_table(model, tuple(x.shape))
    return int(table.loc[table["kind"] != "linear", "macs"].sum()) * x.shape[0]


def run_case(
    model_name: str, size: int, scheme: str, rate: float, tune: int, rounds: int
) -> list[dict]:
    """Build and measure dense / shrunk / propagated; return one row per build."""
    torch.manual_seed(0)
    model = realistic(create_model(model_name, input_size=size), size)
    x = torch.randn(1, 3, size, size)
    plan = uniform_plan(model, scheme, rate)
    builds = {"dense": (None, True), "shrunk": (plan, False), "propagated": (plan, True)}
    runners, rows = {}, {}
    for label, (build_plan, propagate) in builds.items():
        _log(f"[{model_name} {size}px {scheme} {rate:g}x] {label}: compiling ...")
        compiled = compile_model(
            model, x, plan=build_plan, kernel_tune=tune, propagate=propagate, progress=False,
            name=f"{model_name}-{label}",
        )  # fmt: skip
        prepared = prepare_model(model, build_plan, example_input=x if propagate else None)
        runners[label] = get_engine("tvm").prepare(compiled, x, device=get_device("host-cpu"))
        rows[label] = {
            "model": model_name,
            "input": size,
            "scheme": scheme,
            "rate": rate,
            "build": label,
            "macs": conv_macs(prepared.model, x),
            "propagated_layers": len(compiled.propagation),
            "ms": float("inf"),
        }
    try:
        for _ in range(rounds):
            for label, runner in runners.items():
                m = measure(runner, x, config=CONFIG, model_name=f"{model_name} {label}")
                if m.latency_ms < rows[label]["ms"]:
                    rows[label].update(ms=m.latency_ms, iqr_ms=m.spread_ms)
                _log(f"  {label}: {m.latency_ms:.3f} ms")
    finally:
        for runner in runners.values():
            runner.close()
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224])
    parser.add_argument("--schemes", nargs="+", default=["filter", "channel"])
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--kernel-tune", type=int, default=4, help="configurations per layer")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds")
    parser.add_argument("--no-record", action="store_true", help="do not append to results/")
    args = parser.parse_args(argv)

    run_id = results.new_run_id()
    device = get_device("host-cpu")
    _log(f"run {run_id}: target {device.target_json()}, {device.num_threads} threads")
    if os.getloadavg()[0] > 0.5 * device.num_threads:
        _log(f"WARNING: load average {os.getloadavg()[0]:.2f}: timings will be noisy")
    start = time.perf_counter()
    lines = [
        "| model | input | scheme | dense ms | shrunk ms | propagated ms | conv MACs "
        "dense / shrunk / propagated (M) | shrunk vs dense | propagated vs dense "
        "| propagated vs shrunk |",
        "|" + "---|" * 10,
    ]
    for model_name in args.models:
        for size in args.sizes:
            for scheme in args.schemes:
                rows = run_case(model_name, size, scheme, args.rate, args.kernel_tune, args.rounds)
                if not args.no_record:
                    for row in rows:
                        results.append(TABLE, {"run_id": run_id, **row})
                by = {r["build"]: r for r in rows}
                d, s, p = (by[k] for k in ("dense", "shrunk", "propagated"))
                lines.append(
                    f"| {model_name} | {size} | {scheme} {args.rate:g}x | {d['ms']:.3f} "
                    f"| {s['ms']:.3f} | {p['ms']:.3f} | {d['macs'] / 1e6:.1f} / "
                    f"{s['macs'] / 1e6:.1f} / {p['macs'] / 1e6:.1f} "
                    f"| {d['ms'] / s['ms']:.2f}x | {d['ms'] / p['ms']:.2f}x "
                    f"| {s['ms'] / p['ms']:.2f}x |"
                )
    print("\n".join(lines))
    _log(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
