"""Fusion report: which operators ended up in each kernel of a built model.

Every TIR function of the lowered module is one kernel. ``FuseTIR`` names a fused kernel
``fused_<op>_<op>...`` from the functions ``LegalizeOps`` generated, one per Relax operator and
named after it (with a numeric suffix for repeats: ``add1``); an unfused kernel carries one
operator's name. :func:`kernel_ops` splits such names back into operator names, matching the
underscore-separated pieces against the registered Relax operator names.

Examples
--------
>>> fusion_report(compile_model(model, x))[["kernel", "ops", "calls"]]  # doctest: +SKIP
                              kernel                        ops  calls
0  fused_conv2d_add_relu                 (conv2d, add, relu)      1
"""

from __future__ import annotations

import functools
import re

import pandas as pd
import tvm
from tvm import relax, tirx

__all__ = ["FUSION_COLUMNS", "fusion_report", "kernel_ops"]

#: Columns of :func:`fusion_report`.
FUSION_COLUMNS = ("kernel", "ops", "num_ops", "fused", "calls", "scheduled")
_SUFFIX = re.compile(r"\d+$")


@functools.cache
def _op_names() -> frozenset[str]:
    names = {name.rsplit(".", 1)[-1] for name in tvm.ir.Op.list_op_names()}
    return frozenset(name for name in names if name)


def _as_op(piece: str) -> str | None:
    # "add1" -> "add", "conv2d" -> "conv2d" (an exact name wins over stripping a digit suffix).
    known = _op_names()
    if piece in known:
        return piece
    stripped = _SUFFIX.sub("", piece)
    return stripped if stripped and stripped in known else None


def kernel_ops(kernel: str) -> tuple[str, ...]:
    """Return the operator names a kernel name is made of, in order.

    ``"fused_conv2d_add1_relu"`` -> ``("conv2d", "add", "relu")``;
    ``"max_pool2d1"`` -> ``("max_pool2d",)``. Pieces that are no operator name are kept whole
    (``"fused_my_kernel"`` -> ``("my_kernel",)``).
    """
    name = kernel[len("fused_") :] if kernel.startswith("fused_") else kernel
    parts = name.split("_")
    ops: list[str] = []
    i, pending = 0, []
    while i < len(parts):
        # The longest run of pieces starting at i that is an operator name.
        for j in range(len(parts), i, -1):
            op = _as_op("_".join(parts[i:j]))
            if op is not None:
                if pending:
                    ops.append("_".join(pending))
                    pending = []
                ops.append(op)
                i = j
                break
        else:
            if parts[i] != "tir":  # LegalizeOps names some kernels tir_<op> (tir_clip)
                pending.append(parts[i])
            i += 1
    if pending:
        ops.append("_".join(pending))
    return tuple(ops)


def _call_counts(mod: tvm.IRModule) -> dict[str, int]:
    prim = {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    counts: dict[str, int] = {}

    def visit(expr: relax.Expr) -> None:
        if not isinstance(expr, relax.Call):
            return
        callee = expr.op
        if isinstance(callee, tvm.ir.Op) and expr.args:
            callee = expr.args[0]  # call_tir(gv, ...) before VM lowering
        if isinstance(callee, tvm.ir.GlobalVar) and callee.name_hint in prim:
            counts[callee.name_hint] = counts.get(callee.name_hint, 0) + 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return counts


def fusion_report(compiled: object) -> pd.DataFrame:
    """Return one row per kernel of a compiled model: which operators it computes.

    Parameters
    ----------
    compiled : CompiledModel or tvm.IRModule
        A model from :func:`~npas_lab.compiler.compile_model` (its ``lowered`` module) or a
        module whose TIR functions are the kernels (after ``FuseTIR``, before or after VM
        lowering).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FUSION_COLUMNS`: ``kernel`` (TIR function name), ``ops`` (tuple of
        operator names, in order), ``num_ops``, ``fused`` (more than one operator), ``calls``
        (call sites in the model), ``scheduled`` (tuned or otherwise scheduled, not plain
        loops: the conv templates of :mod:`npas_lab.compiler.kernels` are, with their bias and
        ReLU fused in). Sorted by number of operators, then name.
    """
    mod = compiled if isinstance(compiled, tvm.IRModule) else getattr(compiled, "lowered", None)
    if mod is None:
        raise ValueError(f"{compiled!r} has no lowered module to report on")
    counts = _call_counts(mod)
    rows = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gv.name_hint
        attrs = func.attrs or {}
        # Template kernels (lower.py) are named after their layer and say what they compute.
        declared = attrs.get("npas_lab.ops", None)
        ops = tuple(str(declared).split(",")) if declared is not None else kernel_ops(name)
        rows.append(
            {
                "kernel": name,
                "ops": ops,
                "num_ops": len(ops),
                "fused": len(ops) > 1,
                "calls": counts.get(name, 0),
                "scheduled": bool(attrs.get("tirx.is_scheduled", False)),
            }
        )
    table = pd.DataFrame(rows, columns=list(FUSION_COLUMNS))
    return table.sort_values(["num_ops", "kernel"], ascending=[False, True], ignore_index=True)
