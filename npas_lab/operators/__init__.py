"""Phase 1 of NPAS: find mobile-unfriendly operators, replace them with hard variants, measure.

Sigmoid, swish (SiLU), GELU, tanh and friends need an exponential per element, a latency
bottleneck on phones; NPAS replaces sigmoid with hard-sigmoid ``relu6(x + 3) / 6`` and swish with
hard-swish ``x * relu6(x + 3) / 6`` and recovers the accuracy with a short fine-tune (NPAS.md).

``rules``
    The registries: :data:`OP_KINDS` (what is unfriendly, how it looks) and :data:`RULES` (what
    replaces it; extend with :func:`register_rule`), :data:`DEFAULT_RULES`.
``detect``
    :func:`find_unfriendly`: every call of an unfriendly operator, in module, function, method or
    swish-pattern form (SE gates included), found by tracing.
``replace``
    :func:`replace_operators` (a new model) and :func:`replacement_report` (what it replaces).
``deltas``
    :func:`measure_replacement`: accuracy with and without a short fine-tune and TVM latency,
    for the original, each rule and all rules, recorded in the results store.

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

import sys
import types

from npas_lab.operators import rules
from npas_lab.operators.deltas import (
    DELTA_COLUMNS,
    RESULTS_TABLE,
    measure_replacement,
    replacement_variants,
)
from npas_lab.operators.detect import FIND_COLUMNS, UntraceableModelError, find_unfriendly
from npas_lab.operators.replace import REPORT_COLUMNS, replace_operators, replacement_report
from npas_lab.operators.rules import (
    DEFAULT_RULES,
    OpKind,
    Rule,
    get_rule,
    list_rules,
    register_rule,
)

__all__ = [
    "DEFAULT_RULES",
    "DELTA_COLUMNS",
    "FIND_COLUMNS",
    "OP_KINDS",
    "REPORT_COLUMNS",
    "RESULTS_TABLE",
    "RULES",
    "OpKind",
    "Rule",
    "UntraceableModelError",
    "find_unfriendly",
    "get_rule",
    "list_rules",
    "measure_replacement",
    "register_rule",
    "replace_operators",
    "replacement_report",
    "replacement_variants",
]


def _registry(name: str) -> property:
    return property(
        lambda self: getattr(rules, name),
        lambda self, value: setattr(rules, name, value),
        doc=f"The live ``rules.{name}`` registry.",
    )


class _Package(types.ModuleType):
    """This package's module type: ``RULES`` and ``OP_KINDS`` are those of ``rules``, live.

    The registries live in :mod:`npas_lab.operators.rules`. Re-exporting them by name would make
    ``operators.RULES = {...}`` (e.g. ``monkeypatch.setattr(operators, "RULES", ...)`` to isolate
    a test that registers rules) rebind only the package's name while every function kept using
    the old dict; these properties read and set the one registry instead.
    """

    RULES = _registry("RULES")
    OP_KINDS = _registry("OP_KINDS")


sys.modules[__name__].__class__ = _Package
