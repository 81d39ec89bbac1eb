"""Replace mobile-unfriendly operators: :func:`replace_operators` and :func:`replacement_report`.

Replacement works on a deep copy: module forms are swapped (same class, same ``state_dict``
keys); other forms (function, method, swish pattern) need a graph rewrite and make the result a
``torch.fx.GraphModule``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import pandas as pd
from torch import fx, nn

from npas_lab.operators.detect import (
    UntraceableModelError,
    _input,
    _is_inplace,
    _Site,
    _site_row,
    _table,
    _trace,
)
from npas_lab.operators.rules import DEFAULT_RULES, get_rule

__all__ = ["REPORT_COLUMNS", "replace_operators", "replacement_report"]

#: Columns of :func:`replacement_report`, in order.
REPORT_COLUMNS = (
    *("rule", "location", "module", "form", "kind", "op", "replacement"),
    *("count", "elements_per_call", "elements"),
)


def _plan(sites: list[_Site], rules: Iterable[str] | str) -> list[tuple[str, _Site]]:
    """Return ``(rule name, site)`` for every site the rules replace (one entry per node)."""
    names = (rules,) if isinstance(rules, str) else tuple(rules)
    by_kind: dict[str, str] = {}
    for name in names:
        for kind in get_rule(name).kinds:
            if by_kind.setdefault(kind, name) != name:
                raise ValueError(f"rules {by_kind[kind]!r} and {name!r} both replace {kind!r}")
    plan, seen = [], set()
    for site in sites:
        # Without a swish rule, x * sigmoid(x) still loses its sigmoid: x * hardsigmoid(x) is
        # hard-swish exactly.
        if site.kind not in by_kind and site.inner is not None:
            site = site.inner
        if site.kind in by_kind and site.node not in seen:
            seen.add(site.node)
            plan.append((by_kind[site.kind], site))
    return plan


def replacement_report(
    model: nn.Module,
    *,
    rules: Iterable[str] | str = DEFAULT_RULES,
    input_shape: tuple[int, ...],
) -> pd.DataFrame:
    """Return what :func:`replace_operators` replaces in ``model`` with ``rules``, per rule.

    Parameters are those of :func:`replace_operators` (``input_shape`` is required here: the
    element counts are measured at it). Columns :data:`REPORT_COLUMNS`: the rule, the site as in
    :func:`find_unfriendly` (a swish pattern without a swish rule shows its sigmoid, which the
    sigmoid rule replaces), and ``replacement`` (the rule's ``produces``).
    """
    sites, _ = _trace(model, input_shape)
    rows = [
        _site_row(site) | {"rule": name, "replacement": get_rule(name).produces}
        for name, site in _plan(sites, rules)
    ]
    table = _table(rows, REPORT_COLUMNS)
    table.attrs.update(input_shape=tuple(input_shape))
    return table


def _swap(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered (a shared module may have several names)."""
    for _, parent in model.named_modules(remove_duplicate=False):
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)


def replace_operators(
    model: nn.Module,
    *,
    rules: Iterable[str] | str = DEFAULT_RULES,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with the operators matched by ``rules`` replaced.

    Parameters
    ----------
    model : nn.Module
        Left untouched (the work is done on a deep copy).
    rules : iterable of str
        Names in :data:`RULES`, default :data:`DEFAULT_RULES` (sigmoid -> hard-sigmoid, swish ->
        hard-swish). Two rules may not match the same kind.
    input_shape : tuple of int, optional
        Only needed for a model ``torch.fx`` cannot trace (the ``torch.export`` fallback).

    Returns
    -------
    nn.Module
        If only module forms matched: a model of the same class with the modules swapped, same
        ``state_dict`` keys and training flags. Otherwise a ``torch.fx.GraphModule`` (class name
        of the original) traced in **eval mode**: Python branches on ``self.training`` are frozen
        at their eval value (e.g. torchvision's stochastic depth is off, ``F.dropout(x,
        training=self.training)`` never drops); dropout and batch-norm modules still follow
        ``train()``/``eval()``. Modules the forward never calls are dropped from it. Use
        :func:`replacement_report` for what was replaced.

    Raises
    ------
    ValueError
        For an unknown rule name (the message lists the valid ones).
    UntraceableModelError
        If the model cannot be traced, or a function, method or pattern form must be rewritten
        in a model that only ``torch.export`` can trace.
    """
    new = copy.deepcopy(model)
    sites, traced = _trace(new, input_shape, measure=False)
    plan = _plan(sites, rules)
    graph_plan = [(name, site) for name, site in plan if site.form != "module"]
    if graph_plan and traced is None:
        where = ", ".join(f"{s.location} in {s.module or 'the model'}" for _, s in graph_plan)
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(model).__name__}, so its non-module operators "
            f"({where}) cannot be rewritten; replace them in its source"
        )
    modules = dict(new.named_modules())
    for name, site in plan:
        if site.form == "module":
            old = modules[site.location]
            _swap(new, old, get_rule(name).module(old).train(old.training))
    if not graph_plan:
        return new
    graph = traced.graph  # type: ignore[union-attr]
    for name, site in graph_plan:
        node = site.node
        source = _input(site.inner.node if site.inner is not None else node)
        kwargs = {"inplace": True} if _is_inplace(node) else {}
        with graph.inserting_after(node):
            hard = graph.call_function(get_rule(name).function, (source,), kwargs)
        node.replace_all_uses_with(hard)
        graph.erase_node(node)
        if site.inner is not None and not site.inner.node.users:
            graph.erase_node(site.inner.node)
    graph.lint()
    # Modules are taken from `new` by name, so the swapped ones are the ones called.
    result = fx.GraphModule(new, graph, class_name=type(model).__name__)
    result.training = new.training
    return result
