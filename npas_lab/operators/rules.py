"""What is mobile-unfriendly and what replaces it: the :data:`OP_KINDS` and :data:`RULES` dicts.

Both registries are plain dicts. :data:`OP_KINDS` says how each unfriendly operator kind looks in
a model (module classes, functions, tensor methods, ATen names); :data:`RULES` says what replaces
a kind (extend it with :func:`register_rule`). Every kind here computes an exponential per
element, a latency bottleneck on phones (NPAS.md, phase 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_RULES",
    "OP_KINDS",
    "RULES",
    "OpKind",
    "Rule",
    "get_rule",
    "list_rules",
    "register_rule",
]


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
