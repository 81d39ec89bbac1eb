"""Accuracy of each pruning algorithm at a fixed plan, on real data (issue 5, point 5).

Trains (or loads from the checkpoint cache) a dense model, prunes it with every algorithm of
:mod:`npas_lab.pruning` under one uniform plan (default: ResNet-18 on digits, 6x block_punched
8x4 on every conv but the first), and prints test accuracy per algorithm with the loss against
the dense model. Records go to the ``pruning`` table (per epoch) and to
``benchmarks/pruning_quality`` (one row per algorithm).

Usage::

    python benchmarks/pruning_quality.py                       # ResNet-18, 6x block_punched 8x4
    python benchmarks/pruning_quality.py --epochs 2 --pretrain-epochs 3 --model small_cnn  # quick
"""

from __future__ import annotations

import argparse
import time

from npas_lab import results
from npas_lab.pruning import list_algorithms, prune
from npas_lab.sparsity import uniform_plan
from npas_lab.training import TrainConfig, train

TABLE = "benchmarks/pruning_quality"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--scheme", default="block_punched")
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--block", type=int, nargs=2, default=(8, 4))
    parser.add_argument("--epochs", type=int, default=8, help="pruning + fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--algorithms", nargs="+", default=list_algorithms())
    args = parser.parse_args()

    config = TrainConfig(model=args.model, image_size=args.image_size, epochs=args.pretrain_epochs)
    dense = train(config)
    plan = uniform_plan(dense.model, args.scheme, args.rate, block=tuple(args.block))
    run_id = results.new_run_id()
    print(
        f"dense {args.model}: test accuracy {dense.test_accuracy:.4f} ({len(plan.pruned())} "
        f"layers pruned {args.rate:g}x {args.scheme} {tuple(args.block)})",
        flush=True,
    )
    rows = []
    for algorithm in args.algorithms:
        start = time.perf_counter()
        result = prune(
            dense.model,
            plan,
            dense.data,
            algorithm=algorithm,
            epochs=args.epochs,
            lr=args.lr,
            run_id=run_id,
        )
        row = {
            "run_id": run_id,
            "model": args.model,
            "scheme": args.scheme,
            "rate": args.rate,
            "block": list(args.block),
            "algorithm": algorithm,
            "epochs": args.epochs,
            "dense_accuracy": dense.test_accuracy,
            "test_accuracy": result.test_accuracy,
            "loss_points": 100 * (dense.test_accuracy - result.test_accuracy),
            "seconds": time.perf_counter() - start,
            "plan_key": plan.key(),
        }
        results.append(TABLE, row)
        rows.append(row)
        print(
            f"{algorithm}: {result.test_accuracy:.4f} ({row['loss_points']:+.2f} points lost, "
            f"{row['seconds']:.0f} s)",
            flush=True,
        )
    print(f"\n| algorithm | test accuracy | loss vs dense ({dense.test_accuracy:.2%}) |")
    print("|---|---|---|")
    for row in rows:
        print(
            f"| {row['algorithm']} | {row['test_accuracy']:.2%} | {row['loss_points']:.2f} points |"
        )
    print(f"\nrun_id {run_id}")


if __name__ == "__main__":
    main()
