"""Sample efficiency of the phase-2 search: npas vs random, rl and bo (issue 7, point 5).

On ``digits`` with ``small_cnn`` (pretrained, cached), every algorithm searches the same space
with the same reward and evaluation budget, over several seeds; the figure of merit is the best
reward found after each number of evaluations. The goal: ``npas`` reaches random search's final
best reward with at most a third of its evaluations.

Every evaluation is real (one-shot pruning, a short fine-tune, TVM compile, measured latency),
and is cached by plan key in the ``search/evaluations`` table: a plan proposed by two algorithms
or two seeds is evaluated once and its (accuracy, latency) reused, so the comparison is between
the candidates the algorithms choose, not between two noisy measurements of the same plan.
Compiled libraries are not saved here (``save_artifacts=False``), to save time. Runs have
fixed ids, so a re-run resumes and only evaluates what is missing.

Writes a markdown table to ``benchmarks/search_efficiency.md`` (for BENCHMARKS.md), a figure to
``results/figures/search_efficiency.html`` and one row per algorithm to the
``benchmarks/search_efficiency`` table.

Usage::

    python benchmarks/search_efficiency.py                    # 4 algorithms x 3 seeds x 20
    python benchmarks/search_efficiency.py --budget 8 --seeds 1   # quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from npas_lab import results
from npas_lab.devices import MeasureConfig
from npas_lab.plotting import save_figure, search_efficiency_figure
from npas_lab.search import (
    EvalConfig,
    Evaluator,
    RewardConfig,
    SearchSpace,
    SpaceConfig,
    best_so_far,
    list_algorithms,
    search,
)
from npas_lab.training import TrainConfig, train

TABLE = "benchmarks/search_efficiency"
SNIPPET = Path(__file__).with_name("search_efficiency.md")


def evaluations_to_reach(curve: np.ndarray, level: float) -> int | None:
    """Return the 1-based number of evaluations after which ``curve`` reaches ``level``."""
    hits = np.flatnonzero(curve >= level - 1e-12)
    return int(hits[0]) + 1 if len(hits) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--budget", type=int, default=20, help="evaluations per search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algorithms", nargs="+", default=list_algorithms())
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument(
        "--target-fraction",
        type=float,
        default=0.5,
        help="latency target T as a fraction of the dense model's latency",
    )
    parser.add_argument("--form", default="soft", choices=["soft", "hard"])
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 3, 5, 10])
    args = parser.parse_args()

    trained = train(
        TrainConfig(model=args.model, image_size=args.image_size, epochs=args.pretrain_epochs),
        progress=False,
    )
    space = SearchSpace.from_model(
        trained.model, SpaceConfig(rates=tuple(args.rates), blocks=((8, 4),))
    )
    evaluator = Evaluator(
        trained.model,
        trained.data,
        EvalConfig(
            finetune_steps=args.finetune_steps,
            measure=MeasureConfig(warmup=2, repeat=5, min_repeat_ms=10.0),
            save_artifacts=False,
        ),
        model_name=args.model,
    )
    dense = evaluator(space.plan(space.dense()))
    reward = RewardConfig(target_ms=args.target_fraction * dense.latency_ms, form=args.form)
    print(
        f"{space!r}; dense: accuracy {dense.accuracy:.4f}, {dense.latency_ms:.4f} ms; "
        f"T = {reward.target_ms:.4f} ms",
        flush=True,
    )
    tag = hashlib.sha256(
        json.dumps([vars(args), space.key(), evaluator.context], sort_keys=True).encode()
    ).hexdigest()[:8]
    curves: dict[str, list[np.ndarray]] = {a: [] for a in args.algorithms}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for algorithm in args.algorithms:
            rewards = []
            for ev in search(
                space,
                evaluator,
                reward,
                algorithm=algorithm,
                budget=args.budget,
                seed=seed,
                run_id=f"bench-{tag}-{algorithm}-s{seed}",
            ):
                rewards.append(ev.reward)
            curves[algorithm].append(best_so_far(rewards))
            print(
                f"seed {seed} {algorithm:6s} best {curves[algorithm][-1][-1]:.4f} "
                f"({evaluator.evaluated} evaluations run, {time.perf_counter() - start:.0f} s)",
                flush=True,
            )

    rows, long = [], []
    for algorithm, runs in curves.items():
        for seed, curve in enumerate(runs):
            long += [
                {
                    "algorithm": algorithm,
                    "seed": seed,
                    "evaluations": i + 1,
                    "best_reward": float(v),
                }
                for i, v in enumerate(curve)
            ]
        reach = []
        for seed, curve in enumerate(runs):
            level = curves["random"][seed][-1] if "random" in curves else curve[-1]
            reach.append(evaluations_to_reach(curve, level))
        checkpoints = {
            f"best@{n}": float(np.mean([c[n - 1] for c in runs]))
            for n in sorted({5, 10, args.budget})
            if n <= args.budget
        }
        reached = [r for r in reach if r is not None]
        rows.append(
            {
                "algorithm": algorithm,
                **checkpoints,
                "evals_to_random_final": reach,
                "mean_fraction": (
                    np.mean([r / args.budget for r in reached])
                    if len(reached) == len(reach)
                    else None
                ),
            }
        )
    table = pd.DataFrame(rows)
    for row in rows:
        results.append(
            TABLE,
            {
                **row,
                "args": vars(args),
                "tag": tag,
                "space_size": space.size,
                "target_ms": reward.target_ms,
                "dense": dense.latency_ms,
            },
        )
    fig = search_efficiency_figure(pd.DataFrame(long))
    save_figure(fig, "search_efficiency")

    def fmt(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, list):
            return ", ".join("never" if v is None else str(v) for v in value)
        return "not in every seed" if value is None else str(value)

    header = list(table.columns)
    lines = [
        f"### Phase 2 search: sample efficiency ({args.model} on digits {args.image_size}px)",
        "",
        f"Space: {len(space.layers)} layers searched ({', '.join(space.layers)}), "
        f"{space.size} candidates (filter type keep/1x1, every fitting scheme, rates "
        f"{args.rates}, blocks 8x4). Reward: {args.form}, T = {args.target_fraction:g} x dense "
        f"latency = {reward.target_ms:.4f} ms (dense: accuracy {dense.accuracy:.4f}, "
        f"{dense.latency_ms:.4f} ms). Evaluation: one-shot magnitude pruning + "
        f"{args.finetune_steps} fine-tune steps, validation accuracy, TVM-compiled latency on "
        f"host-cpu (2 shared cores). Budget {args.budget} evaluations, seeds 0..{args.seeds - 1}; "
        "evaluations cached by plan key across algorithms and seeds (same plan, same numbers).",
        "",
        "`best@n`: best reward after n evaluations, mean over seeds. `evals_to_random_final`: "
        "per seed, evaluations the algorithm needed to reach random search's final best reward "
        "(goal for npas: <= a third of the budget). `mean_fraction`: their mean / budget.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(fmt(row[c]) for c in header) + " |" for row in rows),
        "",
        f"Command: `python benchmarks/search_efficiency.py --budget {args.budget} --seeds "
        f"{args.seeds}` ({evaluator.evaluated} evaluations run in "
        f"{time.perf_counter() - start:.0f} s; tag {tag}).",
    ]
    SNIPPET.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
