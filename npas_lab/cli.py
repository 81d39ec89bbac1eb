"""The ``npas-lab`` command: the same pipeline as the notebooks, headless.

Sub-commands
------------
``reproduce``  run the notebooks with papermill and write a report under ``results/reports/``
``train``      train (or load from cache) a registry model on a dataset
``measure``    compile a trained model with TVM and time it against PyTorch and ONNX Runtime
``models`` / ``datasets`` / ``devices``  list what the registries hold
``device``     ``tracker`` / ``serve --key K`` / ``list``: TVM RPC tracker and servers (phones)
``search``     NPAS phase 2: search per-layer schemes and rates, scored by accuracy and latency

Errors the user can fix (a bad name, a missing file) print one line and exit with status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from npas_lab.reproduce import reproduce

    folder = reproduce(
        args.profile, notebooks=args.notebooks or None, run_id=args.run_id, force=args.force
    )
    print(f"report: {folder / 'report.md'}")
    return 0


def train_config(args: argparse.Namespace):
    """Return the :class:`~npas_lab.training.TrainConfig` of the common training options."""
    from npas_lab.training import TrainConfig

    return TrainConfig(
        model=args.model,
        dataset=args.dataset,
        image_size=args.image_size,
        in_channels=args.in_channels,
        epochs=args.epochs,
        seed=args.seed,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from npas_lab.training import train

    trained = train(train_config(args), cache=not args.no_cache)
    source = (
        "loaded from cache" if trained.from_cache else f"trained in {trained.train_seconds:.1f} s"
    )
    print(
        f"{args.model} on {args.dataset}: test accuracy {trained.test_accuracy:.4f} ({source}); "
        f"checkpoint {trained.checkpoint}"
    )
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from npas_lab.devices import COMPARE_COLUMNS, compare_engines
    from npas_lab.training import train

    trained = train(train_config(args))
    table = compare_engines(
        trained.model,
        trained.data.example_input(),
        model_name=args.model,
        engines=args.engines,
        device=args.device,
    )
    print(table[list(COMPARE_COLUMNS)].to_string(index=False))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.command == "models":
        from npas_lab.models import list_models as names
    elif args.command == "datasets":
        from npas_lab.data import list_datasets as names
    else:
        from npas_lab.devices import list_devices as names
    print("\n".join(names()))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npas-lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reproduce", help="run the notebooks headless and write a report")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    p.add_argument("--notebooks", nargs="*", help="e.g. 00_quickstart (default: all)")
    p.add_argument("--run-id", default=None, help="report folder name (default: date-profile)")
    p.add_argument("--force", action="store_true", help="rerun notebooks that already ran ok")
    p.set_defaults(func=_cmd_reproduce)

    for name, func, help_ in (
        ("train", _cmd_train, "train a registry model (cached)"),
        ("measure", _cmd_measure, "TVM vs PyTorch vs ONNX Runtime latency"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--model", default="small_cnn")
        p.add_argument("--dataset", default="digits")
        p.add_argument("--image-size", type=int, default=16)
        p.add_argument("--in-channels", type=int, default=1)
        p.add_argument("--epochs", type=int, default=12)
        p.add_argument("--seed", type=int, default=0)
        if name == "train":
            p.add_argument("--no-cache", action="store_true", help="train even if cached")
        else:
            p.add_argument("--engines", nargs="+", default=["tvm", "pytorch", "onnxruntime", "mnn"])
            p.add_argument("--device", default="host-cpu")
        p.set_defaults(func=func)

    for name in ("models", "datasets", "devices"):
        sub.add_parser(name, help=f"list the registered {name}").set_defaults(func=_cmd_list)

    from npas_lab.devices.cli import add_device_parser
    from npas_lab.search.cli import add_search_parser

    add_device_parser(sub)
    add_search_parser(sub)
    return parser


def _user_fixable(err: Exception) -> bool:
    """Tell errors a user can fix (bad names, missing files, a failed notebook) from bugs."""
    from npas_lab.data import DatasetUnavailableError
    from npas_lab.reproduce import NotebookFailed
    from npas_lab.results import ResultsCorruptError

    return isinstance(
        err,
        ValueError
        | FileNotFoundError
        | DatasetUnavailableError
        | NotebookFailed
        | ResultsCorruptError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        if not _user_fixable(err):
            raise  # a bug: keep the traceback
        print(f"npas-lab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything recorded so far is in results/", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
