"""The fusing Relax pipeline: fold batch norm, fuse operators, schedule, lower for the VM.

``tvm.compile``'s ``"default"`` Relax pipeline for CPU targets legalizes every operator into its
own TIR function and fuses nothing (its ``vm_build.py`` avoids the fusing
``relax.get_default_pipeline(target)`` because fusion can drop ``call_pure_packed`` calls kept
for their side effects; imported PyTorch models have none, and :func:`fusing_pipeline` refuses a
module that has one). This module builds the pipeline in two stages:

:func:`fuse_module` (the *fused module*: one TIR function per kernel; the MetaSchedule tasks)
    1. :func:`FoldBatchNorm` -- ``batch_norm(conv2d(x, W))`` with constant weights becomes
       ``conv2d(x, W') + b'`` (the scale folded into ``W``), so a conv kernel carries one
       per-channel constant instead of four;
    2. ``DecomposeOpsForInference`` (any batch norm left becomes elementwise arithmetic),
       ``CanonicalizeBindings``;
    3. ``LegalizeOps``, ``AnnotateTIROpPattern``, :func:`KeepScheduledOpaque`, ``FoldConstant``,
       ``FuseOps``, ``FuseTIR``: conv2d + bias add + activation + residual add become one TIR
       function (TVM's ``zero`` pipeline with the protection below).

:func:`schedule_module` (code quality)
    4. ``MetaScheduleApplyDatabase`` with a tuning database (tuned kernels). Functions without a
       record stay unscheduled loops, which build and run on CPU (slowly for convolutions:
       TVM_NOTES.md). dlight's CPU rules are optional (``dlight=True``): measured, they do not
       help these models (see :func:`schedule_module`).

:func:`lowering_pipeline` then runs TVM's CPU dataflow-lowering and finalisation passes (the
``"default"`` pipeline minus legalization), which :func:`npas_lab.compiler.compile_model` hands
to ``tvm.compile``.

A TIR function that is already scheduled (attribute ``tirx.is_scheduled``, e.g. a hand-written
kernel) is made opaque to ``FuseOps`` so its schedule is kept, and is not rescheduled.

Examples
--------
>>> fused = fuse_module(exported.mod, target)  # doctest: +SKIP
>>> ex = tvm.compile(schedule_module(fused, target), target,
...                  relax_pipeline=lowering_pipeline(target))  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.dpl import is_const, is_op, is_tuple_get_item, rewrite_call, wildcard

__all__ = [
    "FoldBatchNorm",
    "KeepScheduledOpaque",
    "UnsupportedForFusionError",
    "fuse_module",
    "fusing_pipeline",
    "lowering_pipeline",
    "schedule_module",
]

# relay/relax OpPatternKind: kOpaque. FuseOps never fuses an opaque function with anything.
_OPAQUE = 8
# Ops whose calls fusion may wrongly drop or reorder (see the module docstring).
_SIDE_EFFECT_OPS = frozenset({"relax.call_pure_packed", "relax.call_packed", "relax.print"})


class UnsupportedForFusionError(ValueError):
    """The module calls packed functions for their side effects; build it without fusion."""


def _fold_bn_rewriter():
    data, weight = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(data, weight)
    gamma, beta, mean, var = is_const(), is_const(), is_const(), is_const()
    bn = is_op("relax.nn.batch_norm")(conv, gamma, beta, mean, var)
    pattern = is_tuple_get_item(bn, 0)

    def rewrite(expr: relax.Expr, matches: dict) -> relax.Expr:
        conv_call, bn_call = matches[conv], matches[bn]
        ca, ba = conv_call.attrs, bn_call.attrs
        layouts = (str(ca.data_layout), str(ca.kernel_layout), str(ca.out_layout))
        if layouts != ("NCHW", "OIHW", "NCHW") or int(ba.axis) not in (1, -3):
            return expr  # keep: the scale would land on another axis
        w = matches[weight].value.numpy()
        dtype = w.dtype
        f64 = [matches[p].value.numpy().astype(np.float64) for p in (gamma, beta, mean, var)]
        g, b, m, v = f64
        g = g if bool(ba.scale) else np.ones_like(g)
        b = b if bool(ba.center) else np.zeros_like(b)
        scale = g / np.sqrt(v + float(ba.epsilon))
        new_w = (w.astype(np.float64) * scale[:, None, None, None]).astype(dtype)
        shift = (b - m * scale).astype(dtype).reshape(1, -1, 1, 1)
        new_conv = relax.op.nn.conv2d(
            matches[data],
            relax.const(new_w),
            strides=ca.strides,
            padding=ca.padding,
            dilation=ca.dilation,
            groups=int(ca.groups),
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_layout="NCHW",
            out_dtype=ca.out_dtype,
        )
        return relax.op.add(new_conv, relax.const(shift))

    return pattern, rewrite


def FoldBatchNorm() -> tvm.transform.Pass:
    """Return a pass folding inference batch norm into the preceding constant-weight conv2d.

    ``batch_norm(conv2d(x, W), gamma, beta, mean, var)[0]`` (NCHW, channel axis 1) becomes
    ``conv2d(x, W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, computed in
    float64 and cast back. Other batch norms are left for ``DecomposeOpsForInference``.
    """
    pattern, rewrite = _fold_bn_rewriter()

    @relax.transform.function_pass(opt_level=0, name="FoldBatchNorm")
    def _pass(func: relax.Function, mod: tvm.IRModule, ctx: object) -> relax.Function:
        return rewrite_call(pattern, rewrite, func)

    return _pass


def KeepScheduledOpaque() -> tvm.transform.Pass:
    """Return a pass marking already scheduled TIR functions opaque, so fusion keeps them whole."""

    @tvm.transform.module_pass(opt_level=0, name="KeepScheduledOpaque")
    def _pass(mod: tvm.IRModule, ctx: object) -> tvm.IRModule:
        updates = {
            gv: func.with_attr("op_pattern", _OPAQUE)
            for gv, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc) and _is_scheduled(func)
        }
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False))


def _check_fusable(mod: tvm.IRModule) -> None:
    found: set[str] = set()

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            if expr.op.name in _SIDE_EFFECT_OPS:
                found.add(expr.op.name)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    if found:
        raise UnsupportedForFusionError(
            f"the module calls {', '.join(sorted(found))}; the fusing pipeline could drop such "
            "calls (see tvm/relax/vm_build.py): compile with fuse=False"
        )


def fusion_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Return the passes of :func:`fuse_module`, in order (run them under ``target``)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    t = relax.transform
    return [
        *cpu_generic.library_dispatch_passes(target),  # sort/scan/sampling -> kernels
        FoldBatchNorm(),
        t.DecomposeOpsForInference(),
        t.CanonicalizeBindings(),
        t.LegalizeOps(),
        t.AnnotateTIROpPattern(),
        KeepScheduledOpaque(),
        t.FoldConstant(),
        t.FuseOps(),
        t.FuseTIR(),
        t.DeadCodeElimination(),
    ]


def fuse_module(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Return ``mod`` legalized and fused: one TIR function per kernel (unscheduled).

    Raises
    ------
    UnsupportedForFusionError
        If the module calls packed functions for side effects.
    """
    _check_fusable(mod)
    with target:
        return tvm.transform.Sequential(fusion_passes(target), name="NpasFuse")(mod)


def schedule_module(
    fused: tvm.IRModule,
    target: tvm.target.Target,
    *,
    database: object | None = None,
    dlight: bool = False,
) -> tvm.IRModule:
    """Apply tuned schedules from ``database`` (a MetaSchedule database), optionally dlight.

    Parameters
    ----------
    fused : tvm.IRModule
        Output of :func:`fuse_module`.
    target : tvm.target.Target
    database : tvm.s_tir.meta_schedule.Database, optional
        Records for (some of) the module's TIR functions; functions without one stay
        unscheduled (plain loops, which LLVM compiles as they are).
    dlight : bool
        Also apply dlight's CPU ``GEMV`` rule to unscheduled functions. Off by default: measured
        on mobilenet_v3_small at 32x32 it changed latency by noise only and made the LLVM build
        ~6x slower (62 s vs 10 s); its ``Reduction`` rule matches conv + epilogue functions and
        parallelises their batch axis of 1, which made small_cnn 1.5x slower.
    """
    mod = fused
    with target:
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        if dlight:
            from tvm.s_tir import dlight as dl

            mod = dl.ApplyDefaultSchedule(dl.cpu.GEMV())(mod)
    return mod


def lowering_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """Return the Relax passes after fusion (TVM's CPU dataflow lowering and finalisation)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    passes = cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)

    @tvm.transform.module_pass(opt_level=0, name="NpasLower")
    def _pipeline(mod: tvm.IRModule, ctx: object) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def fusing_pipeline(
    target: tvm.target.Target, *, database: object | None = None
) -> tvm.transform.Pass:
    """Return the whole pipeline (fuse, schedule, lower) as one pass for ``tvm.compile``."""

    @tvm.transform.module_pass(opt_level=0, name="NpasFusingPipeline")
    def _pipeline(mod: tvm.IRModule, ctx: object) -> tvm.IRModule:
        mod = schedule_module(fuse_module(mod, target), target, database=database)
        return lowering_pipeline(target)(mod)

    return _pipeline
