"""Every pruning scheme on every registry model: compiled output vs the masked PyTorch model.

A correctness sweep too long for the test suite (48 compiles, ~15 min on 2 cores; the tests
cover every scheme on ResNet-18 and MobileNet-V3-small and block-punched on every model). For
each model and scheme it prints the largest difference relative to the output scale (capped at
1), how many convs the plan prunes, how many producers propagation narrowed and how many convs
fell back to TVM's own operator, and exits 1 if any difference exceeds 1e-4.

Usage::

    python benchmarks/scheme_matrix.py
    python benchmarks/scheme_matrix.py --models small_cnn resnet18 --size 16
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

from npas_lab.compiler import compile_model
from npas_lab.models import create_model, list_models
from npas_lab.sparsity import apply_plan, uniform_plan

sys.path.insert(0, os.path.dirname(__file__))
from engines import realistic  # benchmarks/ is a folder of scripts, not a package

#: (scheme, rate, block), as in tests/test_compiler_plan.py
SCHEMES = [
    ("unstructured", 4.0, None),
    ("filter", 2.0, None),
    ("channel", 2.0, None),
    ("pattern", 3.0, None),
    ("block_punched", 6.0, (8, 4)),
    ("block", 4.0, (8, 4)),
]
TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list_models())
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    args = parser.parse_args(argv)
    print("| model | scheme | max rel. error | pruned convs | propagated | TVM convs | s |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for name in args.models:
        torch.manual_seed(0)
        model = realistic(create_model(name, input_size=args.size), args.size).eval()
        x = torch.randn(1, 3, args.size, args.size)
        for scheme, rate, block in SCHEMES:
            start = time.perf_counter()
            # block pruning is for matrices: the 1x1 (pointwise) convs only
            kinds = ("pointwise",) if scheme == "block" else ("conv", "pointwise", "depthwise")
            plan = uniform_plan(model, scheme, rate, block=block, kinds=kinds)
            if not plan.pruned():
                print(f"| {name} | {scheme} | (no layer this scheme applies to) | 0 | | | |")
                continue
            compiled = compile_model(model, x, plan=plan, progress=False, name=name)
            with torch.no_grad():
                expected = apply_plan(copy.deepcopy(model), plan).eval()(x)
            scale = min(1.0, expected.abs().max().item())
            error = (compiled(x) - expected).abs().max().item() / scale
            worst = max(worst, error)
            fallback = int(compiled.kernels.kernel.str.startswith("tvm").sum())
            print(
                f"| {name} | {scheme} | {error:.1e} | {len(plan.pruned())} "
                f"| {len(compiled.propagation)} | {fallback} "
                f"| {time.perf_counter() - start:.0f} |",
                flush=True,
            )
    print(f"\nworst: {worst:.1e} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
