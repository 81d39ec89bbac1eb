"""Find mobile-unfriendly operators by tracing a model: :func:`find_unfriendly`.

An operator shows up in one of four **forms**, all found by tracing the model:

``"module"``
    a submodule such as ``nn.Sigmoid`` or ``nn.SiLU`` (also inside torchvision's
    ``SqueezeExcitation``, whose gate is ``scale_activation``);
``"function"``
    a call such as ``torch.sigmoid(x)`` or ``F.silu(x)``;
``"method"``
    a tensor method such as ``x.sigmoid()`` (``F.sigmoid`` and ``F.tanh`` trace to this form);
``"swish-pattern"``
    ``x * sigmoid(x)`` written out, whatever form the sigmoid has (kind ``"silu"``).

Tracing is ``torch.fx.symbolic_trace`` in eval mode, with ``ShapeProp`` for element counts. A
model fx cannot trace (e.g. Python control flow on shapes) falls back to ``torch.export``
(non-strict) at ``input_shape``: its ATen graph keeps the module stack of every node, so module
forms are still told apart; functions and methods are then both reported as ``"function"``.

The private helpers (``_Site``, ``_trace``, ``_table``, ...) are shared with
:mod:`npas_lab.operators.replace`, which rewrites the sites found here.
"""

from __future__ import annotations

import inspect
import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

# The registries are read through the module at call time (not imported by name), so that a
# registry swapped on the package (``operators.RULES = {...}``) is the one used here.
from npas_lab.operators import rules

__all__ = ["FIND_COLUMNS", "UntraceableModelError", "find_unfriendly"]

#: Columns of :func:`find_unfriendly`, in order.
FIND_COLUMNS = (
    *("location", "module", "form", "kind", "op", "suggestion", "rule"),
    *("count", "elements_per_call", "elements"),
)


class UntraceableModelError(RuntimeError):
    """Neither tracer can read the model, or a rewrite needs fx and fx cannot trace it."""


@dataclass
class _Site:
    """One call of an unfriendly operator (one graph node)."""

    location: str
    module: str
    form: str
    kind: str
    op: str
    node: fx.Node
    elements: int = 0
    inner: _Site | None = field(default=None, repr=False)  # the sigmoid of a swish pattern


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _stack(node: fx.Node) -> list[tuple[str, object]]:
    return list((node.meta.get("nn_module_stack") or {}).values())


def _aten_name(node: fx.Node) -> str:
    return getattr(getattr(node.target, "overloadpacket", None), "__name__", "")


def _input(node: fx.Node) -> object:
    return node.args[0] if node.args else node.kwargs.get("input")


def _classify(node: fx.Node, modules: dict[str, nn.Module], *, aten: bool) -> _Site | None:
    """Return the site of ``node`` of an fx graph (``aten=False``) or an export graph, or None."""
    stack = _stack(node)
    enclosing = stack[-1][0] if stack else ""
    for kind, spec in rules.OP_KINDS.items():
        if aten:
            if node.op != "call_function" or _aten_name(node) not in spec.aten:
                continue
            # An ATen graph has no call_module nodes; the innermost module tells the form.
            if isinstance(modules.get(enclosing), spec.modules):
                op = f"nn.{type(modules[enclosing]).__name__}"
                return _Site(enclosing, _parent(enclosing), "module", kind, op, node)
            return _Site(node.name, enclosing, "function", kind, _aten_name(node), node)
        if node.op == "call_module" and isinstance(modules.get(node.target), spec.modules):
            op = f"nn.{type(modules[node.target]).__name__}"
            return _Site(node.target, _parent(node.target), "module", kind, op, node)
        if node.op == "call_function" and node.target in spec.functions:
            prefix = "F" if node.target.__module__ == F.__name__ else "torch"
            op = f"{prefix}.{node.target.__name__}"
            return _Site(node.name, enclosing, "function", kind, op, node)
        if node.op == "call_method" and node.target in spec.methods:
            return _Site(node.name, enclosing, "method", kind, f"Tensor.{node.target}", node)
    return None


def _is_mul(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in ("mul", "mul_")
    return node.op == "call_function" and (
        node.target in (operator.mul, operator.imul, torch.mul)
        or _aten_name(node) in ("mul", "mul_")
    )


def _is_inplace(node: fx.Node) -> bool:
    if node.op == "call_module":
        return False
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name.endswith("_") or node.target is operator.imul or _aten_name(node).endswith("_"):
        return True
    try:  # fx keeps positional options positional, e.g. F.elu(x, 1.0, True)
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return bool(node.kwargs.get("inplace", False))
    return bool(bound.arguments.get("inplace", False))


def _swish(node: fx.Node, found: dict[fx.Node, _Site]) -> _Site | None:
    """Return the site of ``node`` if it is ``x * sigmoid(x)`` (either order), else None."""
    if not (_is_mul(node) and len(node.args) == 2 and not node.kwargs):
        return None
    for x, gate in (node.args, node.args[::-1]):
        inner = found.get(gate) if isinstance(gate, fx.Node) else None
        # An in-place sigmoid_ overwrites x first: x * x.sigmoid_() is sigmoid(x) ** 2.
        if inner and inner.kind == "sigmoid" and _input(gate) is x and not _is_inplace(gate):
            op = "x * sigmoid(x)"
            return _Site(node.name, inner.module, "swish-pattern", "silu", op, node, 0, inner)
    return None


def _collect(graph: fx.Graph, classify: Callable[[fx.Node], _Site | None]) -> list[_Site]:
    """Return the sites of ``graph`` in execution order; swish patterns absorb their sigmoid."""
    found = {node: site for node in graph.nodes if (site := classify(node)) is not None}
    sites, patterns = [], {}  # patterns: sigmoid node -> the swish muls using it
    for node in graph.nodes:
        if (swish := _swish(node, found)) is not None:
            sites.append(swish)
            patterns.setdefault(swish.inner.node, set()).add(node)  # type: ignore[union-attr]
        elif node in found:
            sites.append(found[node])
    # A sigmoid also used outside its swish pattern(s) stays a site of its own.
    return [s for s in sites if s.node not in patterns or set(s.node.users) - patterns[s.node]]


def _example(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    shape = tuple(input_shape)
    if not shape or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape
    ):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(shape, device=device, dtype=dtype)


def _trace(
    model: nn.Module, input_shape: tuple[int, ...] | None, *, measure: bool = True
) -> tuple[list[_Site], fx.GraphModule | None]:
    """Return the sites of ``model`` and its fx trace (None when ``torch.export`` had to read it).

    Both tracers run in eval mode, the graph that gets compiled; training flags are restored.
    ``measure`` runs ``ShapeProp`` for the element counts (the export graph has them anyway).
    """
    example = None if input_shape is None else _example(model, input_shape)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        try:
            traced = fx.symbolic_trace(model)
        except Exception as fx_err:
            if example is None:
                raise UntraceableModelError(
                    f"torch.fx cannot trace {type(model).__name__} ({fx_err}); pass input_shape "
                    "to read it with torch.export instead"
                ) from fx_err
            try:
                program = torch.export.export(model, (example,), strict=False)
            except Exception as export_err:
                raise UntraceableModelError(
                    f"cannot trace {type(model).__name__}: torch.fx: {fx_err}; "
                    f"torch.export: {type(export_err).__name__}: {export_err}"
                ) from export_err
            modules = dict(model.named_modules())
            sites = _collect(program.graph, lambda node: _classify(node, modules, aten=True))
            for site in sites:
                site.elements = math.prod(site.node.meta["val"].shape)
            return sites, None
        modules = dict(model.named_modules())
        sites = _collect(traced.graph, lambda node: _classify(node, modules, aten=False))
        if example is not None and measure:
            with torch.no_grad():
                ShapeProp(traced).propagate(example)
            for site in sites:
                site.elements = math.prod(site.node.meta["tensor_meta"].shape)
        return sites, traced
    finally:
        for module, training in modes.items():
            module.training = training


_COUNTS = dict.fromkeys(("count", "elements_per_call", "elements"), "int64")


def _table(rows: list[dict[str, object]], columns: tuple[str, ...]) -> pd.DataFrame:
    """Group ``rows`` (one per call) by everything but the element count, in first-call order."""
    if not rows:
        return pd.DataFrame(columns=list(columns)).astype(_COUNTS)
    keys = [c for c in columns if c not in _COUNTS]
    grouped = pd.DataFrame(rows).groupby(keys, sort=False, dropna=False)["elements"]
    table = grouped.agg(count="size", elements="sum").reset_index()
    table["elements_per_call"] = table["elements"] // table["count"]
    return table[list(columns)].astype(_COUNTS)


def _site_row(site: _Site) -> dict[str, object]:
    return {
        key: getattr(site, key) for key in ("location", "module", "form", "kind", "op", "elements")
    }


def find_unfriendly(model: nn.Module, input_shape: tuple[int, ...]) -> pd.DataFrame:
    """Return every call of a mobile-unfriendly operator in ``model``, grouped by location.

    Parameters
    ----------
    model : nn.Module
        Any model (not modified; traced in eval mode, its training flags restored).
    input_shape : tuple of int
        Full input shape, batch first, e.g. ``(1, 3, 32, 32)``: element counts are measured at it
        and the ``torch.export`` fallback traces with it.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FIND_COLUMNS`, one row per location in execution order:

        - ``location``: qualified module name (module form) or graph node name (other forms);
        - ``module``: qualified name of the enclosing module (``""`` for the model itself);
        - ``form``: ``"module"``, ``"function"``, ``"method"`` or ``"swish-pattern"``;
        - ``kind``: key of :data:`OP_KINDS`; ``op``: what the code calls (e.g. ``nn.SiLU``);
        - ``suggestion``: the mobile-friendly replacement; ``rule``: the first registered rule
          matching the kind (None if there is none);
        - ``count``: calls (a module called twice is one row with count 2);
        - ``elements``: elements produced over all calls at ``input_shape`` (whole batch), the
          elementwise cost; ``elements_per_call`` = ``elements // count``.

        ``df.attrs`` keeps ``input_shape`` and ``tracer`` (``"fx"`` or ``"export"``).

    Raises
    ------
    UntraceableModelError
        If neither ``torch.fx`` nor ``torch.export`` can trace the model.
    """
    sites, traced = _trace(model, input_shape)
    rule_of = {}
    for name, rule in rules.RULES.items():
        for kind in rule.kinds:
            rule_of.setdefault(kind, name)
    rows = [
        _site_row(s)
        | {"suggestion": rules.OP_KINDS[s.kind].suggestion, "rule": rule_of.get(s.kind)}
        for s in sites
    ]
    table = _table(rows, FIND_COLUMNS)
    table.attrs.update(
        input_shape=tuple(input_shape), tracer="fx" if traced is not None else "export"
    )
    return table
