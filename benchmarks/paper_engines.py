"""NPAS Fig. 7 / Table 1 engines: the dense zoo on TVM, ONNX Runtime, MNN and PyTorch, one run.

Each dense model (MobileNet-V3 small/large, EfficientNet-B0 and its 70 %/50 % versions,
ResNet-18) is trained on the same data (cached checkpoints: a rerun only measures), then timed
on every engine side by side -- same input, same protocol (:mod:`npas_lab.devices.measure`),
same thread count -- by :func:`npas_lab.paper.measure_zoo`, which appends one record per
(model, engine) to ``results/paper/zoo.jsonl`` (Table 1 and Fig. 7 read it). An engine that
cannot run a model is a row saying why. The script prints the markdown table for BENCHMARKS.md
with the load average, which says whether other work shared the cores.

Usage::

    python benchmarks/paper_engines.py                        # ~15-25 min on 2 loaded cores
    python benchmarks/paper_engines.py --models mobilenet_v3_small --epochs 1   # quick check
    python benchmarks/paper_engines.py --run-id R              # resume run R (skips what it has)
    python benchmarks/paper_engines.py --op-profile mobilenet_v3_small --threads 1
                                    # where TVM's time goes, per kernel (VM instrumentation)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import pandas as pd
import torch

from npas_lab import results
from npas_lab.devices import MeasureConfig, get_device, host_cpu_target
from npas_lab.paper import DENSE_ZOO, ZOO_ENGINES, ZOO_TABLE, measure_zoo, table1
from npas_lab.training import TrainConfig

TITLES = {"tvm": "TVM (ours)", "onnxruntime": "ONNX Runtime", "mnn": "MNN", "pytorch": "PyTorch"}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown(zoo: pd.DataFrame, engines: list[str]) -> str:
    """Return the run as a markdown table: accuracy, MACs, params, ms per engine, ratios."""
    table = table1(run_id=str(zoo["run_id"].iloc[0]), npas_top=0)
    spread = {(r["model"], r["engine"]): r for r in zoo.to_dict("records")}
    head = ["model", "top-1 (test)", "MMACs", "params (M)"]
    head += [f"{TITLES[e]} ms" for e in engines]
    peers = [e for e in engines if e != "tvm"]
    head += [f"{TITLES[e]} / TVM" for e in peers if "tvm" in engines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [row["model"], f"{row['top1']:.3f}", f"{row['macs_m']:.1f}"]
        cells.append(f"{row['params_m']:.2f}")
        for e in engines:
            r = spread.get((row["model"], e))
            if r is None:
                cells.append("n/a")
            elif r["status"] != "ok":
                cells.append(f"failed: {str(r['error'])[:80]}")
            else:
                cells.append(f"{r['latency_ms']:.3f} ± {r['spread_ms']:.3f}")
        if "tvm" in engines:
            cells += [
                "n/a"
                if pd.isna(row[f"tvm_speedup_vs_{e}"])
                else f"{row[f'tvm_speedup_vs_{e}']:.2f}"
                for e in peers
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def op_profile(name: str, base: TrainConfig, device, *, runs: int = 20, top: int = 12) -> str:
    """Return where the TVM build of zoo model ``name`` spends its time, kernel by kernel.

    Every call the Relax VM makes (kernels, allocations) is timed with ``time.perf_counter``
    through the VM's instrumentation hook, summed over ``runs`` runs; the hook's own Python
    overhead inflates each call by ~2-3 us, so read shares, not absolute times.
    """
    import collections

    import tvm
    from tvm import relax

    from npas_lab.compiler import compile_model
    from npas_lab.paper import recalibrate_batchnorm
    from npas_lab.training import train

    trained = train(TrainConfig(**{**base.to_dict(), "model": name}), progress=False)
    model = recalibrate_batchnorm(trained.model, trained.data)
    x = trained.data.example_input()
    compiled = compile_model(model, x, device, progress=False)
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    data = tvm.runtime.tensor(x.numpy())
    for _ in range(3):
        vm["main"](data)
    spent: dict[str, float] = collections.defaultdict(float)
    started: dict[str, float] = {}

    def instrument(func, symbol, before, ret, *args):  # signature fixed by the Relax VM
        if before:
            started[symbol] = time.perf_counter()
        else:
            spent[symbol] += time.perf_counter() - started[symbol]
        return 0

    vm.set_instrument(instrument)
    start = time.perf_counter()
    for _ in range(runs):
        vm["main"](data)
    wall = (time.perf_counter() - start) / runs * 1e3
    total = sum(spent.values()) / runs * 1e3
    lines = [
        f"{name} {'x'.join(map(str, x.shape))} on {device.name}: {wall:.3f} ms per run "
        f"instrumented, {total:.3f} ms inside VM calls",
        "",
        "| ms per run | share | VM call (kernel) |",
        "|---|---|---|",
    ]
    for symbol, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:top]:
        ms = seconds / runs * 1e3
        lines.append(f"| {ms:.3f} | {100 * ms / total:.1f}% | `{symbol}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DENSE_ZOO))
    parser.add_argument("--engines", nargs="+", default=list(ZOO_ENGINES), choices=ZOO_ENGINES)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=10, help="timed repeats per engine")
    parser.add_argument("--kernel-tune", type=int, default=0, help="TVM template configs/layer")
    parser.add_argument("--device", default="host-cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="host-cpu with this many threads per engine"
    )
    parser.add_argument("--run-id", default=None, help="resume this run (default: a new one)")
    parser.add_argument("--op-profile", metavar="MODEL", help="per-kernel TVM profile, no run")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    if args.threads:
        # On a shared, oversubscribed machine a thread pool waits at every barrier for its other
        # threads to be scheduled (2 threads at load 6: PyTorch and TVM 300x slower, measured);
        # one thread per engine measures the code, not the scheduler. Training follows suit.
        torch.set_num_threads(args.threads)
        device = dataclasses.replace(
            device,
            name=f"{device.name}-{args.threads}t",
            target=host_cpu_target(args.threads),
            num_threads=args.threads,
        )
    base = TrainConfig(
        dataset=args.dataset, image_size=args.image_size, in_channels=3, epochs=args.epochs
    )
    if args.op_profile:
        print(op_profile(args.op_profile, base, device))
        return 0
    run_id = args.run_id or results.new_run_id()
    load_start = os.getloadavg()[0]
    _log(
        f"run {run_id}: {args.device}, {device.num_threads} threads, target "
        f"{device.target_json()}, load average {load_start:.2f}"
    )
    start = time.perf_counter()
    zoo = measure_zoo(
        args.models,
        base=base,
        engines=args.engines,
        device=device,
        measure_config=MeasureConfig(warmup=2, repeat=args.repeat, min_repeat_ms=50.0),
        tvm_options={"kernel_tune": args.kernel_tune, "progress": False},
        run_id=run_id,
        progress=_log,
    )
    load_end = os.getloadavg()[0]
    print(markdown(zoo, args.engines))
    print(
        f"\n{args.dataset} at 1x3x{args.image_size}x{args.image_size}, batch 1; median ± IQR "
        f"over {args.repeat} repeats (>= 50 ms each), {device.num_threads} threads per engine; "
        f"ratios > 1: TVM is faster. Load average {load_start:.2f} at the start, "
        f"{load_end:.2f} at the end ({os.cpu_count()} cores); total "
        f"{time.perf_counter() - start:.0f} s. Records: {results.table_path(ZOO_TABLE)} "
        f"(run_id {run_id})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
