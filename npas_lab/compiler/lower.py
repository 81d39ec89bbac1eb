"""Graph-level lowering: replace the pruned convs of an imported Relax module by compact kernels.

After :func:`npas_lab.compiler.prepare.prepare_model` a pruned conv is a plain ``conv2d`` whose
constant weight has zeros where the plan pruned. This pass finds each such call by its weight
(the exact bytes of the layer's weight identify the layer), takes the bias add and ReLU that
follow it into the same kernel (NPAS's layer fusion), and replaces the three bindings with one
``call_tir`` to a kernel built for that layer's scheme from its compact storage. The kernel
comes from a *provider*, so the template library and its tuning stay in
:mod:`npas_lab.compiler.kernels` and this module only knows the graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

__all__ = [
    "ConvSite",
    "KernelProvider",
    "LoweredKernel",
    "lower_convs",
    "template_provider",
    "weight_digest",
]

#: Below this rate an unstructured layer runs the dense template: the sparse one measured
#: 0.91-1.08x of dense at 2x and faster from 3x (BENCHMARKS.md, Fig. 2b), so untuned compiles
#: pick by rate; tuned compiles measure both and keep the faster.
UNSTRUCTURED_MIN_RATE = 3.0


@dataclass(frozen=True)
class ConvSite:
    """One conv call of the graph, as a kernel provider sees it."""

    layer: str
    scheme: str
    rate: float
    block: tuple[int, int] | None
    input_shape: tuple[int, ...]
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray | None = field(repr=False)
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    epilogue: str  # "none" | "bias" | "bias_relu" | "map" | "map_relu" (bias: the flat map)


@dataclass(frozen=True)
class LoweredKernel:
    """What a provider returns: a PrimFunc ``(data, *constants, out)`` and its constants.

    The bias, when the site has one, is the last constant.
    """

    primfunc: tvm.tirx.PrimFunc
    constants: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]
    description: str = ""
    ms: float | None = None  # measured time of the kernel alone, when it was tuned


#: ``provider(site) -> LoweredKernel`` or ``None`` to leave the conv as it is.
KernelProvider = Callable[[ConvSite], "LoweredKernel | None"]


def weight_digest(weight: np.ndarray) -> str:
    """Return a digest of a weight's exact bytes, shape and dtype (how sites are matched)."""
    array = np.ascontiguousarray(weight)
    head = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha1(head + array.tobytes()).hexdigest()


def _ints(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def lower_convs(
    mod: tvm.IRModule,
    layers: Mapping[str, tuple[str, Any]],
    provider: KernelProvider,
) -> tuple[tvm.IRModule, pd.DataFrame]:
    """Replace the conv calls of ``layers`` in ``mod["main"]`` by the provider's kernels.

    Parameters
    ----------
    mod
        The imported module (weights bound as constants).
    layers
        ``{weight_digest: (layer_name, LayerChoice)}`` of the layers to lower.
    provider
        Builds the kernel of one :class:`ConvSite`.

    Returns
    -------
    (IRModule, DataFrame)
        The rewritten module and one row per lowered call (layer, scheme, epilogue, kernel).
    """
    data, weight, bias, bias_map = wildcard(), is_const(), is_const(), is_const()
    conv = is_op("relax.nn.conv2d")(data, weight)
    add = is_op("relax.add")(conv, is_op("relax.reshape")(bias, wildcard()))
    relu = is_op("relax.nn.relu")(add)
    # A consumer of a filter-pruned layer adds a bias *map* (prepare.py's propagation).
    add_map = is_op("relax.add")(conv, bias_map)
    relu_map = is_op("relax.nn.relu")(add_map)
    rows: list[dict[str, Any]] = []
    # The builder types each added PrimFunc's GlobalVar, which call_tir requires.
    builder = relax.BlockBuilder(mod)

    def rewriter_for(epilogue: str) -> Callable[[relax.Expr, dict], relax.Expr]:
        def rewrite(orig: relax.Expr, found: dict) -> relax.Expr:
            conv_call = found[conv]
            w = found[weight].value.numpy()
            hit = layers.get(weight_digest(w))
            if hit is None:
                return orig
            name, choice = hit
            attrs = conv_call.attrs
            if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
                return orig
            b = None
            if epilogue.startswith("map"):
                b = found[bias_map].value.numpy()
                out_shape = tuple(_ints(conv_call.ty.shape))
                if b.shape != (1, *out_shape[1:]):
                    return orig  # not a bias map (e.g. a broadcast constant): plain conv
                b = b.reshape(-1)
            elif epilogue != "none":
                b = found[bias].value.numpy().reshape(-1)
            site = ConvSite(
                layer=name,
                scheme=choice.scheme,
                rate=choice.rate,
                block=choice.block,
                input_shape=_ints(found[data].ty.shape),
                weight=w,
                bias=b,
                stride=_ints(attrs.strides),
                padding=_ints(attrs.padding),
                dilation=_ints(attrs.dilation),
                groups=int(attrs.groups),
                epilogue=epilogue,
            )
            kernel = provider(site)
            if kernel is None:
                return orig
            symbol = f"npas_{name.replace('.', '_')}_{choice.scheme}"
            # is_scheduled: the fusing pipeline keeps the kernel whole (never fused into a
            # neighbour, which would lose its schedule) and MetaSchedule does not tune it.
            primfunc = kernel.primfunc.with_attr("global_symbol", symbol)
            primfunc = primfunc.with_attr("tirx.is_scheduled", True)
            # The operators the kernel computes, for the fusion report (its name is the layer's).
            ops = {"none": "conv2d", "bias": "conv2d,add", "bias_relu": "conv2d,add,relu"}
            ops |= {"map": ops["bias"], "map_relu": ops["bias_relu"]}
            primfunc = primfunc.with_attr("npas_lab.ops", ops[epilogue])
            gvar = builder.add_func(primfunc, symbol)
            args = [found[data], *(relax.const(c) for c in kernel.constants)]
            rows.append(
                {
                    "layer": name,
                    "scheme": choice.scheme,
                    "epilogue": epilogue,
                    "kernel": gvar.name_hint,
                    "description": kernel.description,
                    "ms": kernel.ms,
                }
            )
            return relax.call_tir(gvar, args, relax.TensorType(kernel.out_shape, "float32"))

        return rewrite

    main = mod["main"]
    # Longest pattern first, so a conv is fused with its bias and ReLU whenever they follow it.
    patterns = (
        (relu, "bias_relu"),
        (relu_map, "map_relu"),
        (add, "bias"),
        (add_map, "map"),
        (conv, "none"),
    )
    for pattern, epilogue in patterns:
        main = rewrite_call(pattern, rewriter_for(epilogue), main)
    builder.update_func(builder.get().get_global_var("main"), main)
    columns = ["layer", "scheme", "epilogue", "kernel", "description", "ms"]
    return builder.get(), pd.DataFrame(rows, columns=columns)


def _spec(site: ConvSite):
    from npas_lab.compiler.kernels import ConvSpec

    top, left, bottom, right = site.padding
    if (top, left) != (bottom, right):
        return None  # asymmetric padding: the templates assume symmetric
    return ConvSpec(
        in_channels=site.input_shape[1],
        out_channels=site.weight.shape[0],
        kernel=tuple(site.weight.shape[2:]),
        stride=site.stride,
        padding=(top, left),
        dilation=site.dilation,
        groups=site.groups,
        input_hw=tuple(site.input_shape[2:]),
        batch=site.input_shape[0],
        epilogue=site.epilogue,
    )


def template_provider(
    *, target: Mapping[str, Any] | None = None, tune_budget: int = 0, progress: bool = False
) -> KernelProvider:
    """Return a provider that lowers every conv to the project's templates.

    Parameters
    ----------
    target
        Target dict the kernels are tuned on (this CPU by default).
    tune_budget
        Configurations measured per layer (0: the template's default configuration, no
        measurement). Tuned results are kept in the tuning database, so a second compile of the
        same layers measures nothing.
    progress
        Print one line per measured candidate.
    """
    from npas_lab.compiler.kernels import conv_kernel, tune_kernel

    def build(spec, weight, scheme, block):
        if tune_budget > 0:
            kernel, ms = tune_kernel(
                spec,
                weight,
                scheme,
                block=block,
                target=target,
                budget=tune_budget,
                progress=progress,
            )
            return kernel, ms
        return conv_kernel(spec, weight, scheme, block=block), None

    def provide(site: ConvSite) -> LoweredKernel | None:
        spec = _spec(site)
        if spec is None:
            return None
        scheme = site.scheme
        if scheme in ("filter", "channel") and not spec.is_depthwise:
            # Shrunk in prepare.py; zero input columns left are channels it does not read,
            # which the channel template skips (its input staging is the gather).
            unread = ~site.weight.any(axis=(0, 2, 3))
            scheme = "channel" if unread.any() else "dense"
        elif scheme in ("dense", "filter", "channel"):
            scheme = "dense"
        elif scheme == "unstructured" and tune_budget == 0 and site.rate < UNSTRUCTURED_MIN_RATE:
            scheme = "dense"
        kernel, ms = build(spec, site.weight, scheme, site.block)
        note = f"{kernel.scheme} template {kernel.config}"
        if scheme == "unstructured" and tune_budget > 0:
            dense, dense_ms = build(spec, site.weight, "dense", None)
            if dense_ms < ms:  # reported, not hidden: the report says which one ran
                kernel, ms, note = (
                    dense,
                    dense_ms,
                    f"dense template (faster than sparse) {dense.config}",
                )
        if ms is not None:
            note += f", {ms:.3f} ms"
        constants = tuple(kernel.constants) + ((site.bias,) if site.bias is not None else ())
        return LoweredKernel(kernel.primfunc, constants, tuple(kernel.out_shape), note, ms)

    return provide
