"""NPAS Fig. 4 on this machine: accuracy and latency of block-punched pruning per block size.

Trains (or loads from the checkpoint cache) a dense model on a dataset, then for each block size
from 1x1 (unstructured) to the whole layer (structured) prunes every conv but the first at one
rate, fine-tunes, compiles with the block-punched kernels and measures
(:func:`npas_lab.studies.block_size_study`). Prints a markdown table; every point is recorded in
``results/studies/block_size.jsonl`` as soon as it is measured (``--run-id`` resumes a run).

Usage::

    python benchmarks/block_sizes.py                 # ResNet-18, digits 16 px, 6x: ~15 min
    python benchmarks/block_sizes.py --model small_cnn --epochs 1 --blocks 1x1 8x4 whole
    python benchmarks/block_sizes.py --remeasure RUN_ID     # latency again, side by side
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from npas_lab.devices import MeasureConfig
from npas_lab.studies import block_size_study, remeasure_block_sizes
from npas_lab.training import TrainConfig, train
from npas_lab.widgets import parse_blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument(
        "--blocks", nargs="+", default=["1x1", "4x4", "8x4", "16x4", "8x8", "16x16", "whole"]
    )
    parser.add_argument("--algorithm", default="oneshot")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs per block")
    parser.add_argument("--kernel-tune", type=int, default=4, help="configs per conv layer")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--run-id", default=None, help="resume a run (default: a new one)")
    parser.add_argument(
        "--remeasure",
        metavar="RUN_ID",
        help="only measure the saved points of RUN_ID again, side by side (quiet machine)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (--remeasure)")
    args = parser.parse_args(argv)
    if args.remeasure:
        table = remeasure_block_sizes(
            args.remeasure, rounds=args.rounds, measure_config=MeasureConfig(repeat=args.repeat)
        )
        print("| block | test accuracy | latency ms (median of rounds) | IQR | speedup |")
        print("|---|---|---|---|---|")
        for r in table.itertuples():
            print(f"| {r.block} | {r.accuracy:.4f} | {r.latency_ms:.3f} | {r.spread_ms:.3f} "
                  f"| {r.speedup:.2f}x |")  # fmt: skip
        print(f"\n{args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
        return 0

    start = time.perf_counter()
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        image_size=args.image_size,
        epochs=args.pretrain_epochs,
    )
    trained = train(config)
    study = block_size_study(
        trained.model,
        trained.data,
        rate=args.rate,
        blocks=parse_blocks(", ".join(args.blocks)),
        algorithm=args.algorithm,
        epochs=args.epochs,
        kernel_tune=args.kernel_tune,
        measure_config=MeasureConfig(repeat=args.repeat),
        run_id=args.run_id,
        model_name=args.model,
    )
    dense = study[study.block == "dense"].iloc[0]
    print(
        "| block | test accuracy | vs dense (points) | latency ms | speedup over dense |\n"
        "|---|---|---|---|---|"
    )
    for row in study.itertuples():
        print(
            f"| {row.block} | {row.accuracy:.4f} | {100 * (row.accuracy - dense.accuracy):+.2f} "
            f"| {row.latency_ms:.3f} ± {row.spread_ms:.3f} "
            f"| {dense.latency_ms / row.latency_ms:.2f}x |"
        )
    print(
        f"\n{args.model} on {args.dataset} {args.image_size}px, every conv but the first "
        f"block-punched at {args.rate:g}x, {args.algorithm} + {args.epochs} epochs of fine-tuning, "
        f"kernel_tune={args.kernel_tune}; total {time.perf_counter() - start:.0f} s; load "
        f"average {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
