"""NPAS Fig. 2 on this CPU: speedup of each pruning scheme's kernel, and latency per filter type.

Fig. 2b
    For each layer shape (3x3 and 1x1 convs, 64@32x32, 128@16x16, 256@8x8, batch 1), every
    scheme x pruning rate gets a kernel from :mod:`npas_lab.compiler.kernels` (tuned over the
    first ``--budget`` configurations of its space, tuning database in ``results/tuning/``), and
    all of them, the tuned dense kernel and PyTorch's dense conv are timed side by side
    (interleaved rounds). Speedup = dense-kernel time / scheme-kernel time of the same run.
    ``bp 8x4`` (the issue's target) is tuned over at least 4 configurations.
    ``filter`` is the dense kernel of the layer with ``F / r`` filters, ``channel`` with ``C / r``
    input channels; ``bp 8x4 pad`` is block-punched 8x4 with every block padded to the layer's
    longest block (zero weights) instead of exact per-block counts.
Fig. 2a
    Latency against MACs for filter types (1x1, 3x3, 5x5, 3x3 and 5x5 depthwise) at 32x32,
    channel counts chosen so the types share (about) the same MAC counts; TVM (tuned dense
    kernels) and PyTorch.

Latency: minimum per-run time over short interleaved repeats (interference from other jobs only
adds time); medians are recorded too. Records go to ``results/benchmarks/schemes.jsonl``.

Usage::

    python benchmarks/schemes.py                 # ~10 min on 2 cores (less on reruns: tuning DB)
    python benchmarks/schemes.py --quick         # ~1 min
    python benchmarks/schemes.py --threads 1 --figures 2b --no-record
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf

from npas_lab import results
from npas_lab.compiler import set_runtime_threads
from npas_lab.compiler.kernels import ConvSpec, conv_kernel, tune_kernel
from npas_lab.compiler.kernels.runtime import build_kernel, kernel_args, time_interleaved
from npas_lab.devices import get_device
from npas_lab.sparsity import compute_mask
from npas_lab.studies import SPEEDUP_SCHEMES

TABLE = "benchmarks/schemes"
SHAPES = [(64, 32), (128, 16), (256, 8)]  # (channels, spatial)
RATES = [2.0, 3.0, 4.0, 6.0, 8.0, 10.0]
# (label, scheme, block, mask options); "filter"/"channel" are shrunk dense layers.
SCHEMES_3X3 = list(SPEEDUP_SCHEMES)  # the notebook's quick grid measures the same schemes
SCHEMES_1X1 = [
    ("unstructured", "unstructured", None, {}),
    ("bp 4x4", "block_punched", (4, 4), {}),
    ("bp 8x4", "block_punched", (8, 4), {}),
    ("bp 16x4", "block_punched", (16, 4), {}),
    ("block 8x4 rows", "block", (8, 4), {"prune": "rows"}),
    ("block 8x4 cols", "block", (8, 4), {"prune": "cols"}),
    ("filter", "filter", None, {}),
    ("channel", "channel", None, {}),
]
PAD_RATES = (6.0, 10.0)  # where "bp 8x4 pad" is measured


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _torch_conv(spec: ConvSpec, weight: np.ndarray):
    x = torch.randn(spec.in_shape)
    w = torch.from_numpy(weight)

    def run():
        tnf.conv2d(x, w, stride=spec.stride, padding=spec.padding, groups=spec.groups)

    return run


class Bench:
    """Builds kernels for one target and thread count; times groups of them side by side."""

    def __init__(self, threads: int, budget: int, rounds: int, database: str | None) -> None:
        self.threads = threads
        self.budget = budget
        self.rounds = rounds
        self.database = database
        target = dict(get_device("host-cpu").target)
        target["num-cores"] = threads
        self.target = target
        set_runtime_threads(threads)
        torch.set_num_threads(threads)

    def kernel(self, spec, weight, scheme, block=None, *, budget=None, config=None):
        if config is not None:
            return conv_kernel(spec, weight, scheme, block=block, config=config)
        kernel, _ = tune_kernel(
            spec,
            weight,
            scheme,
            block=block,
            target=self.target,
            budget=budget or self.budget,
            database=self.database,
            progress=False,
        )
        return kernel

    def runnable(self, kernel):
        data = np.random.default_rng(0).standard_normal(kernel.spec.in_shape).astype(np.float32)
        return build_kernel(kernel, self.target), kernel_args(kernel, data)

    def time(self, runs: dict[str, Any]) -> dict[str, Any]:
        return time_interleaved(runs, rounds=self.rounds, min_repeat_ms=2.0)


def figure_2b(bench: Bench, shapes, kernels, rates, *, run_id: str, record: bool) -> list[dict]:
    """Measure every scheme x rate on every shape; return one row per measured kernel."""
    rows = []
    for kernel_size in kernels:
        for channels, size in shapes:
            pad = kernel_size // 2
            spec = ConvSpec(channels, channels, kernel_size, 1, pad, input_hw=size)
            gen = torch.Generator().manual_seed(channels * 100 + kernel_size)
            weight = torch.randn(spec.weight_shape, generator=gen)
            shape = f"{channels}@{size}x{size} {kernel_size}x{kernel_size}"
            start = time.perf_counter()
            dense = bench.kernel(spec, weight.numpy(), "dense", budget=max(16, bench.budget))
            runs = {"torch": _torch_conv(spec, weight.numpy()), "dense": bench.runnable(dense)}
            meta: dict[str, dict] = {"dense": {"kernel": dense, "scheme": "dense", "rate": 1.0}}
            table = SCHEMES_3X3 if kernel_size == 3 else SCHEMES_1X1
            for label, scheme, block, opts in table:
                for rate in rates:
                    if scheme == "pattern" and rate < 9 / 4:
                        continue
                    if scheme in ("filter", "channel"):
                        change = "out_channels" if scheme == "filter" else "in_channels"
                        small = spec.with_(**{change: max(1, round(channels / rate))})
                        w = weight[: small.out_channels, : small.in_channels].numpy().copy()
                        kernel = bench.kernel(small, w, "dense")
                        kept = w.size
                    else:
                        mask = compute_mask(weight, scheme, rate, block=block, **opts)
                        w = (weight * mask).numpy()
                        # the target scheme gets a wider search than the others
                        wide = max(bench.budget, 4) if label == "bp 8x4" else None
                        kernel = bench.kernel(spec, w, scheme, block, budget=wide)
                        kept = int(np.count_nonzero(w))
                    name = f"{label} @{rate:g}"
                    runs[name] = bench.runnable(kernel)
                    meta[name] = {"kernel": kernel, "label": label, "scheme": scheme,
                                  "block": block, "rate": rate, "kept": kept, **opts}  # fmt: skip
                    if label == "bp 8x4" and rate in PAD_RATES:
                        padded = conv_kernel(
                            spec, w, scheme, block=block, config={**kernel.config, "ragged": "pad"}
                        )
                        pname = f"bp 8x4 pad @{rate:g}"
                        runs[pname] = bench.runnable(padded)
                        meta[pname] = {**meta[name], "kernel": padded, "label": "bp 8x4 pad"}
            _log(f"{shape}: {len(runs)} variants built in {time.perf_counter() - start:.0f} s")
            timings = bench.time(runs)
            ref, torch_t = timings["dense"], timings["torch"]
            _log(f"{shape}: dense {ref.min_ms:.3f} ms, PyTorch {torch_t.min_ms:.3f} ms")
            for name, info in meta.items():
                t = timings[name]
                kernel = info["kernel"]
                row = {
                    "figure": "2b",
                    "run_id": run_id,
                    "shape": shape,
                    "spec": spec.to_dict(),
                    "label": info.get("label", "dense"),
                    "scheme": info["scheme"],
                    "block": info.get("block"),
                    "prune": info.get("prune"),
                    "rate": info["rate"],
                    "achieved_rate": spec.weight_shape[0]
                    * spec.weight_shape[1]
                    * kernel_size**2
                    / max(1, info.get("kept", spec.macs // (spec.out_hw[0] * spec.out_hw[1]))),
                    "latency_ms": t.min_ms,
                    "median_ms": t.ms,
                    "iqr_ms": t.iqr_ms,
                    "dense_ms": ref.min_ms,
                    "torch_ms": torch_t.min_ms,
                    "torch_median_ms": torch_t.ms,
                    "speedup": ref.min_ms / t.min_ms,
                    "vs_torch": torch_t.min_ms / t.min_ms,
                    "config": dict(kernel.config),
                    "executed_macs": kernel.info["executed"],
                    "threads": bench.threads,
                    "target": bench.target,
                    "loadavg_1m": os.getloadavg()[0],
                }
                rows.append(row)
                if record:
                    results.append(TABLE, row)
    return rows


def table_2b(rows: list[dict], rates) -> str:
    """Markdown: per shape, speedup over the tuned dense kernel by scheme (rows) and rate."""
    out = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        sub = [r for r in rows if r["shape"] == shape]
        dense = next(r for r in sub if r["scheme"] == "dense")
        out.append(
            f"\n**{shape}**: tuned dense {dense['latency_ms']:.3f} ms ({dense['config']['form']}, "
            f"R={dense['config']['rows']}, tile {dense['config']['tr']}x{dense['config']['tc']}), "
            f"PyTorch {dense['torch_ms']:.3f} ms, dense/PyTorch "
            f"{dense['latency_ms'] / dense['torch_ms']:.2f}\n"
        )
        out.append("| scheme | " + " | ".join(f"{r:g}x" for r in rates) + " |")
        out.append("|---|" + "---|" * len(rates))
        for label in dict.fromkeys(r["label"] for r in sub if r["scheme"] != "dense"):
            cells = []
            for rate in rates:
                hit = [r for r in sub if r["label"] == label and r["rate"] == rate]
                cells.append(f"{hit[0]['speedup']:.2f}" if hit else "")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets_2b(rows: list[dict]) -> str:
    """Markdown: the issue's targets (bp 8x4 at 6x / 10x; channel >= 0.8 x rate)."""
    lines = ["| shape | bp 8x4 rate | vs dense | vs PyTorch | target (dense / PyTorch) |"]
    lines.append("|---|---|---|---|---|")
    goals = {6.0: (4.5, 2.5), 10.0: (6.0, 3.5)}
    for r in rows:
        if r["label"] == "bp 8x4" and r["rate"] in goals and r["shape"].endswith("3x3"):
            gd, gt = goals[r["rate"]]
            ok = "met" if r["speedup"] >= gd and r["vs_torch"] >= gt else "MISSED"
            lines.append(
                f"| {r['shape']} | {r['rate']:g}x | {r['speedup']:.2f} | {r['vs_torch']:.2f} | "
                f">= {gd} / >= {gt}: {ok} |"
            )
    chan = [r for r in rows if r["scheme"] == "channel"]
    if chan:
        worst = min(chan, key=lambda r: r["speedup"] / r["rate"])
        lines.append(
            f"\nchannel pruning: worst speedup / rate = {worst['speedup'] / worst['rate']:.2f} "
            f"({worst['shape']} at {worst['rate']:g}x; target >= 0.8)"
        )
    return "\n".join(lines)


# Fig. 2a: (label, kernel, depthwise, [(in, out) per MAC point]) at 32x32, MACs matched to the
# 3x3 convs 16->16, 32->32, 64->64 (2.36M, 9.44M, 37.7M).
FILTER_TYPES = [
    ("1x1", 1, False, [(48, 48), (96, 96), (192, 192)]),
    ("3x3", 3, False, [(16, 16), (32, 32), (64, 64)]),
    ("5x5", 5, False, [(8, 12), (16, 24), (32, 46)]),
    ("3x3 depthwise", 3, True, [(256, 256), (1024, 1024), (4096, 4096)]),
    ("5x5 depthwise", 5, True, [(92, 92), (368, 368), (1474, 1474)]),
]


def figure_2a(bench: Bench, points, *, size: int, run_id: str, record: bool) -> list[dict]:
    """Time every filter type at every MAC point (TVM tuned dense kernel and PyTorch)."""
    runs, meta = {}, {}
    for label, k, depthwise, sizes in FILTER_TYPES:
        for c_in, c_out in [sizes[p] for p in points]:
            groups = c_in if depthwise else 1
            spec = ConvSpec(c_in, c_out, k, 1, k // 2, groups=groups, input_hw=size)
            gen = torch.Generator().manual_seed(c_in + k)
            weight = torch.randn(spec.weight_shape, generator=gen).numpy()
            kernel = bench.kernel(spec, weight, "dense")
            name = f"{label} {c_in}->{c_out}"
            runs[f"tvm {name}"] = bench.runnable(kernel)
            runs[f"torch {name}"] = _torch_conv(spec, weight)
            meta[name] = (label, spec, kernel)
    _log(f"fig 2a: {len(runs)} variants built")
    timings = bench.time(runs)
    rows = []
    for name, (label, spec, kernel) in meta.items():
        tvm_t, torch_t = timings[f"tvm {name}"], timings[f"torch {name}"]
        row = {
            "figure": "2a",
            "run_id": run_id,
            "filter_type": label,
            "spec": spec.to_dict(),
            "macs": spec.macs,
            "latency_ms": tvm_t.min_ms,
            "median_ms": tvm_t.ms,
            "torch_ms": torch_t.min_ms,
            "torch_median_ms": torch_t.ms,
            "config": dict(kernel.config),
            "threads": bench.threads,
            "target": bench.target,
            "loadavg_1m": os.getloadavg()[0],
        }
        rows.append(row)
        if record:
            results.append(TABLE, row)
    return rows


def table_2a(rows: list[dict]) -> str:
    """Markdown: latency and GMAC/s per filter type and MAC point."""
    lines = ["| filter type | C -> F | MACs (M) | TVM ms | GMAC/s | PyTorch ms | TVM/PyTorch |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["spec"]
        lines.append(
            f"| {r['filter_type']} | {s['in_channels']} -> {s['out_channels']} | "
            f"{r['macs'] / 1e6:.2f} | {r['latency_ms']:.3f} | "
            f"{r['macs'] / r['latency_ms'] / 1e6:.1f} | {r['torch_ms']:.3f} | "
            f"{r['latency_ms'] / r['torch_ms']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shape, two rates (~1 min)")
    parser.add_argument("--figures", nargs="+", default=["2b", "2a"], choices=["2a", "2b"])
    parser.add_argument("--threads", type=int, default=None, help="default: the device's")
    parser.add_argument("--budget", type=int, default=None, help="configs tuned per kernel")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--database", default=None, help="tuning DB (default results/tuning)")
    parser.add_argument("--no-record", action="store_true", help="do not append to results/")
    args = parser.parse_args(argv)

    device = get_device("host-cpu")
    threads = args.threads or device.num_threads
    budget = args.budget or (1 if args.quick else 2)
    rounds = args.rounds or (8 if args.quick else 15)
    bench = Bench(threads, budget, rounds, args.database)
    run_id = results.new_run_id()
    _log(f"run {run_id}: target {bench.target}, {threads} threads, budget {budget}, "
         f"{rounds} rounds, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    if threads > 1 and os.getloadavg()[0] > 0.5 * os.cpu_count():
        _log(f"WARNING: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores: other "
             "jobs share the CPU; multi-threaded timings (PyTorch's above all) will be erratic, "
             "consider --threads 1")  # fmt: skip
    start = time.perf_counter()
    record = not args.no_record
    if "2b" in args.figures:
        shapes = SHAPES[:1] if args.quick else SHAPES
        kernels = [3] if args.quick else [3, 1]
        rates = [6.0, 10.0] if args.quick else RATES
        rows = figure_2b(bench, shapes, kernels, rates, run_id=run_id, record=record)
        print("## Fig. 2b: speedup over the tuned dense kernel (same run)")
        print(table_2b(rows, rates))
        print("\n" + targets_2b(rows))
    if "2a" in args.figures:
        points = [1] if args.quick else [0, 1, 2]
        rows = figure_2a(bench, points, size=32, run_id=run_id, record=record)
        print("\n## Fig. 2a: latency vs MACs per filter type (32x32, batch 1)")
        print(table_2a(rows))
    print(
        f"\nlatency = minimum per-run time over {rounds} interleaved rounds; {threads} threads; "
        f"target {bench.target}; total {time.perf_counter() - start:.0f} s; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    if record:
        print(f"records appended to {results.table_path(TABLE)} (run_id {run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
