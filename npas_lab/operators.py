"""Phase 1 of NPAS: find mobile-unfriendly operators and replace them with hard variants.

Sigmoid, swish (SiLU), GELU, tanh and friends need an exponential per element, a latency
bottleneck on phones; NPAS replaces sigmoid with hard-sigmoid ``relu6(x + 3) / 6`` and swish with
hard-swish ``x * relu6(x + 3) / 6`` and recovers the accuracy with a short fine-tune (NPAS.md).

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

Replacement (:func:`replace_operators`) works on a deep copy: module forms are swapped (same
class, same ``state_dict`` keys); other forms need a graph rewrite and make the result a
``torch.fx.GraphModule``. Registries are plain dicts: :data:`OP_KINDS` (what is unfriendly, how it
looks) and :data:`RULES` (what replaces it; extend with :func:`register_rule`).

Examples
--------
>>> from npas_lab.models import create_model
>>> model = create_model("efficientnet_b0", input_size=32)
>>> found = find_unfriendly(model, (1, 3, 32, 32))
>>> found.groupby("kind")["count"].sum().to_dict()
{'sigmoid': 16, 'silu': 49}
>>> hard = replace_operators(model)
>>> find_unfriendly(hard, (1, 3, 32, 32)).empty
True
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = [
    "DEFAULT_RULES",
    "FIND_COLUMNS",
    "OP_KINDS",
    "REPORT_COLUMNS",
    "RULES",
    "OpKind",
    "Rule",
    "UntraceableModelError",
    "find_unfriendly",
    "get_rule",
    "list_rules",
    "register_rule",
    "replace_operators",
    "replacement_report",
]


class UntraceableModelError(RuntimeError):
    """Neither tracer can read the model, or a rewrite needs fx and fx cannot trace it."""


@dataclass(frozen=True)
class OpKind:
    """How one kind of mobile-unfriendly operator appears in a model.

    Attributes
    ----------
    modules : tuple of type
        Module classes (matched with ``isinstance``).
    functions : tuple of callable
        Targets of ``call_function`` nodes in an fx graph.
    methods : tuple of str
        Tensor method names (``call_method`` nodes).
    aten : tuple of str
        ATen overload packet names in a ``torch.export`` graph (the fallback tracer).
    suggestion : str
        Mobile-friendly replacement to suggest.
    """

    modules: tuple[type[nn.Module], ...]
    functions: tuple[Callable[..., torch.Tensor], ...]
    methods: tuple[str, ...]
    aten: tuple[str, ...]
    suggestion: str


#: Kind name -> how it appears. Every kind here computes an exponential per element.
OP_KINDS: dict[str, OpKind] = {
    "sigmoid": OpKind(
        (nn.Sigmoid,),
        (torch.sigmoid, torch.sigmoid_, torch.special.expit),
        ("sigmoid", "sigmoid_"),
        ("sigmoid", "sigmoid_"),
        "hardsigmoid",
    ),
    "silu": OpKind((nn.SiLU,), (F.silu,), (), ("silu", "silu_"), "hardswish"),
    "gelu": OpKind((nn.GELU,), (F.gelu,), (), ("gelu", "gelu_"), "hardswish"),
    "tanh": OpKind(
        (nn.Tanh,), (torch.tanh, torch.tanh_), ("tanh", "tanh_"), ("tanh", "tanh_"), "hardtanh"
    ),
    "softplus": OpKind((nn.Softplus,), (F.softplus,), (), ("softplus",), "relu"),
    "mish": OpKind((nn.Mish,), (F.mish,), (), ("mish", "mish_"), "hardswish"),
    "elu": OpKind(
        (nn.ELU, nn.CELU, nn.SELU),
        (F.elu, F.elu_, F.celu, F.celu_, F.selu, F.selu_),
        (),
        ("elu", "elu_", "celu", "celu_", "selu", "selu_"),
        "relu",
    ),
}


@dataclass(frozen=True)
class Rule:
    """A replacement rule: the operator kinds it matches and what it puts in their place.

    Attributes
    ----------
    kinds : tuple of str
        Keys of :data:`OP_KINDS` it matches (a swish pattern is kind ``"silu"``).
    module : callable
        ``module(old) -> nn.Module``: the replacement of a matched module (``old`` is passed so
        options such as ``inplace`` can be carried over).
    function : callable
        ``function(x, inplace=False) -> Tensor``: what replaces a function, method or pattern
        form; it gets the operator's input alone (options such as ``F.gelu``'s ``approximate``
        are dropped) and ``inplace=True`` where the original was in place.
    produces : str
        Name of the replacement, for reports.

    Examples
    --------
    >>> register_rule("mish", Rule(kinds=("mish",), module=lambda old: nn.Hardswish(),
    ...                            function=F.hardswish, produces="hardswish"))  # doctest: +SKIP
    """

    kinds: tuple[str, ...]
    module: Callable[[nn.Module], nn.Module]
    function: Callable[..., torch.Tensor]
    produces: str


def _like(cls: type[nn.Module]) -> Callable[[nn.Module], nn.Module]:
    """Return a module factory building ``cls``, in place where the old module was."""

    def build(old: nn.Module) -> nn.Module:
        inplace = bool(getattr(old, "inplace", False))
        return cls(inplace=True) if inplace else cls()

    return build


#: Rule name -> rule. "sigmoid" and "swish" are NPAS's; "gelu" and "tanh" are extras (GELU ->
#: hard-swish is an approximation that needs the fine-tune like the others).
RULES: dict[str, Rule] = {
    "sigmoid": Rule(("sigmoid",), _like(nn.Hardsigmoid), F.hardsigmoid, "hardsigmoid"),
    "swish": Rule(("silu",), _like(nn.Hardswish), F.hardswish, "hardswish"),
    "gelu": Rule(("gelu",), _like(nn.Hardswish), F.hardswish, "hardswish"),
    "tanh": Rule(("tanh",), _like(nn.Hardtanh), F.hardtanh, "hardtanh"),
}

#: The NPAS replacements, applied by default.
DEFAULT_RULES = ("sigmoid", "swish")

#: Columns of :func:`find_unfriendly`, in order.
FIND_COLUMNS = (
    *("location", "module", "form", "kind", "op", "suggestion", "rule"),
    *("count", "elements_per_call", "elements"),
)
#: Columns of :func:`replacement_report`, in order.
REPORT_COLUMNS = (
    *("rule", "location", "module", "form", "kind", "op", "replacement"),
    *("count", "elements_per_call", "elements"),
)


def list_rules() -> list[str]:
    """Return the registered rule names, sorted."""
    return sorted(RULES)


def get_rule(name: str) -> Rule:
    """Return registered rule ``name``; raise ``ValueError`` listing the valid names if unknown."""
    if name not in RULES:
        raise ValueError(f"Unknown operator rule {name!r}; valid rules: {', '.join(list_rules())}")
    return RULES[name]


def register_rule(name: str, rule: Rule, *, overwrite: bool = False) -> None:
    """Add ``rule`` to :data:`RULES` under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is taken (unless ``overwrite``) or a kind is not in :data:`OP_KINDS`.
    TypeError
        If ``rule`` is not a :class:`Rule`.
    """
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be an npas_lab.operators.Rule, got {type(rule).__name__}")
    if name in RULES and not overwrite:
        raise ValueError(f"operator rule {name!r} exists; pass overwrite=True to replace it")
    unknown = [kind for kind in rule.kinds if kind not in OP_KINDS]
    if unknown or not rule.kinds:
        raise ValueError(
            f"rule {name!r} matches unknown kinds {unknown or '(none)'}; "
            f"valid kinds: {', '.join(sorted(OP_KINDS))}"
        )
    RULES[name] = rule


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
    for kind, spec in OP_KINDS.items():
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
    for name, rule in RULES.items():
        for kind in rule.kinds:
            rule_of.setdefault(kind, name)
    rows = [
        _site_row(s) | {"suggestion": OP_KINDS[s.kind].suggestion, "rule": rule_of.get(s.kind)}
        for s in sites
    ]
    table = _table(rows, FIND_COLUMNS)
    table.attrs.update(
        input_shape=tuple(input_shape), tracer="fx" if traced is not None else "export"
    )
    return table


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
