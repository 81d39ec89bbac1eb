"""The ``npas-lab search`` sub-command: the notebook's phase-2 search, headless.

Wired into :mod:`npas_lab.cli` with :func:`add_search_parser`. It pretrains (or loads) the
model, builds the space, evaluator and reward like notebook 03, runs :func:`~.loop.search` with
a progress bar and writes the same records (``search/runs``, ``search/evaluations``). Pass
``--run-id`` of an interrupted run to resume it. Errors a user can fix print one line and exit
with status 2.

Examples
--------
::

    npas-lab search --algorithm npas --budget 30 --target-fraction 0.5
    npas-lab search --run-id 20260101-120000-abcdef --budget 30    # resume
    npas-lab search --scheduler tcp://scheduler:8786 --batch 8     # on a Dask cluster
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_search_parser"]


def add_search_parser(subparsers: Any) -> None:
    """Add the ``search`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    from npas_lab.search.algorithms import list_algorithms
    from npas_lab.search.reward import REWARD_FORMS
    from npas_lab.search.space import DEFAULT_RATES

    p = subparsers.add_parser(
        "search", help="NPAS phase 2: search per-layer filter type, scheme and rate"
    )
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--epochs", type=int, default=12, help="pretraining epochs (cached)")
    p.add_argument("--algorithm", default="npas", choices=list_algorithms())
    p.add_argument("--budget", type=int, default=20, help="evaluations")
    p.add_argument("--seed", type=int, default=0)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-ms", type=float, help="latency constraint T in ms")
    target.add_argument(
        "--target-fraction",
        type=float,
        default=0.5,
        help="T as a fraction of the dense model's measured latency (default 0.5)",
    )
    p.add_argument("--form", default="soft", choices=list(REWARD_FORMS), help="reward form")
    p.add_argument("--device", default="host-cpu")
    p.add_argument("--finetune-steps", type=int, default=40)
    p.add_argument("--rates", type=float, nargs="+", default=list(DEFAULT_RATES))
    p.add_argument("--no-filter-types", action="store_true", help="keep every kernel size")
    p.add_argument("--no-artifacts", action="store_true", help="do not save compiled libraries")
    p.add_argument("--run-id", default=None, help="resume this run (default: a new one)")
    p.add_argument(
        "--scheduler",
        default=None,
        help="evaluate on the Dask cluster of this scheduler (tcp://host:8786); default in process",
    )
    p.add_argument(
        "--batch", type=int, default=1, help="candidates evaluated at once (e.g. the workers)"
    )
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    """Run the search; return the exit status (2 for errors the user can fix)."""
    from npas_lab.data import DatasetUnavailableError
    from npas_lab.results import ResultsCorruptError
    from npas_lab.search.executors import SchedulerUnreachableError

    try:
        return _search(args)
    except (
        ValueError,
        DatasetUnavailableError,
        ResultsCorruptError,
        SchedulerUnreachableError,
    ) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"npas-lab search: error: {message}", file=sys.stderr)
        return 2


def _search(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from npas_lab.search.evaluate import EvalConfig, Evaluator
    from npas_lab.search.executors import resolve_executor
    from npas_lab.search.history import plan_table
    from npas_lab.search.loop import search
    from npas_lab.search.reward import RewardConfig
    from npas_lab.search.space import SearchSpace, SpaceConfig
    from npas_lab.training import train

    if args.budget < 1:
        raise ValueError(f"--budget {args.budget}: give at least 1 evaluation")
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: give at least 1 (1: one evaluation at a time)")
    # Connect first: an unreachable scheduler fails before any pretraining.
    executor = resolve_executor(args.scheduler)
    if args.target_ms is None and not args.target_fraction > 0:
        raise ValueError(f"--target-fraction {args.target_fraction}: give a fraction > 0")
    from npas_lab.cli import train_config  # the same training options as `npas-lab train`

    trained = train(train_config(args), progress=False)
    space = SearchSpace.from_model(
        trained.model, SpaceConfig(rates=tuple(args.rates), filter_types=not args.no_filter_types)
    )
    evaluator = Evaluator(
        trained.model,
        trained.data,
        EvalConfig(
            finetune_steps=args.finetune_steps,
            device=args.device,
            save_artifacts=not args.no_artifacts,
        ),
        model_name=args.model,
    )
    target_ms = args.target_ms
    if target_ms is None:
        dense = evaluator(space.plan(space.dense()))
        if dense.status != "ok":
            raise RuntimeError(f"the dense model could not be evaluated: {dense.error}")
        target_ms = args.target_fraction * dense.latency_ms
        print(f"dense {args.model}: {dense.latency_ms:.4f} ms -> T = {target_ms:.4f} ms")
    reward = RewardConfig(target_ms=target_ms, form=args.form)
    print(f"{space!r}")
    best = None
    # Created before the bar: a run_id recorded with other settings fails here, bar-free.
    steps = search(
        space,
        evaluator,
        reward,
        algorithm=args.algorithm,
        budget=args.budget,
        seed=args.seed,
        run_id=args.run_id,
        executor=executor,
        batch=args.batch,
    )
    bar = tqdm(total=args.budget, desc=f"search {args.algorithm}", unit="eval")
    run_id = args.run_id
    try:
        for ev in steps:
            run_id = ev.run_id
            if ev.reward is not None and (best is None or ev.reward > best.reward):
                best = ev
            bar.update(1)
            bar.set_postfix(
                best=f"{best.reward:.4f}" if best else "-", status=ev.status, refresh=False
            )
    finally:
        bar.close()
    print(f"run {run_id}: {args.budget} evaluations of {space.size:.3g} candidates")
    if best is None:
        print("no candidate could be evaluated (see the error column of search/runs)")
        return 1
    print(
        f"best (step {best.step}): reward {best.reward:.4f}, accuracy {best.accuracy:.4f}, "
        f"latency {best.latency:.4f} ms (T = {target_ms:.4f} ms)"
    )
    print(plan_table(best.plan).to_string(index=False))
    return 0
