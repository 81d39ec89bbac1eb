"""Pruning plans: what NPAS decides per layer (filter type, scheme, rate, block), as data.

A :class:`PruningPlan` maps layer names (``model.named_modules()`` names of ``nn.Conv2d`` and
``nn.Linear`` layers) to :class:`LayerChoice` objects. Both are frozen, round-trip through JSON
and a plan has a stable :meth:`PruningPlan.key` that caches accuracy, compiled artifacts and
latency. A layer absent from a plan stays dense.

Examples
--------
>>> plan = PruningPlan({"layer1.0.conv1": LayerChoice(scheme="block_punched", rate=6)})
>>> PruningPlan.from_json(plan.to_json()) == plan
True
>>> plan["layer1.0.conv1"].block  # the default block is written in
(8, 4)
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

import pandas as pd
from torch import nn

from npas_lab.models import layer_kind
from npas_lab.sparsity.errors import SparsityError
from npas_lab.sparsity.masks import get_scheme, schemes_for
from npas_lab.sparsity.patterns import DEFAULT_NUM_PATTERNS
from npas_lab.sparsity.schemes import Scheme, weight_shape
from npas_lab.sparsity.selection import check_rate

__all__ = [
    "KEEP",
    "PLAN_VERSION",
    "LayerChoice",
    "PruningPlan",
    "model_layers",
    "uniform_plan",
    "validate_plan",
]

#: The filter type that leaves the layer's operator as it is (the only one sparsity/ applies;
#: kernel-size changes belong to the phase-2 search space).
KEEP = "keep"
#: Version of the JSON layout of :meth:`PruningPlan.to_json`.
PLAN_VERSION = 1
# Rates are kept to 12 significant digits so that 6, 6.0 and 5.999999999999999 are one plan.
_RATE_DIGITS = 12


@dataclass(frozen=True, kw_only=True)
class LayerChoice:
    """The decision for one layer; defaults are filled in so equal choices compare equal.

    Parameters
    ----------
    filter_type
        ``"keep"`` (the layer's operator unchanged).
    scheme
        A registered scheme (see :func:`~npas_lab.sparsity.masks.list_schemes`).
    rate
        Pruning rate, dense / kept weights (1 for ``dense``); stored to 12 significant digits.
    block
        ``(bf, bc)`` for block_punched, ``(rows, cols)`` for block (default ``(8, 4)``); None
        for the other schemes.
    prune
        ``"rows"`` (default) or ``"cols"`` for block; None for the other schemes.
    patterns
        Pattern-library size for pattern (default 8); None for the other schemes.
    """

    filter_type: str = KEEP
    scheme: str = "dense"
    rate: float = 1.0
    block: tuple[int, int] | None = None
    prune: str | None = None
    patterns: int | None = None

    def __post_init__(self) -> None:
        spec = get_scheme(self.scheme)
        if not isinstance(self.filter_type, str) or not self.filter_type:
            raise SparsityError(f"filter_type must be a non-empty string, got {self.filter_type!r}")
        rate = float(f"{check_rate(self.rate, scheme=self.scheme, layer='?'):.{_RATE_DIGITS}g}")
        if self.scheme == "dense" and rate != 1.0:
            raise SparsityError(f"a dense layer has rate 1, got rate={self.rate!r}")
        # The base class checks the form only; whether it fits a layer is validate_plan's job.
        block = Scheme.resolve_block(spec, self.block, (), "?")
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "block", block)
        for name, owner, default, valid, spelled in (
            ("prune", "block", "rows", ("rows", "cols"), "'rows' or 'cols'"),
            ("patterns", "pattern", DEFAULT_NUM_PATTERNS, range(1, 57), "an int from 1 to 56"),
        ):
            value = getattr(self, name)
            if self.scheme != owner:
                if value is not None:
                    raise SparsityError(f"{name}= applies to the {owner} scheme only, not {self}")
                continue
            value = default if value is None else value
            if type(value) is not type(default) or value not in valid:  # 2.0 is in range(57)
                raise SparsityError(f"{owner}: {name} must be {spelled}, got {value!r}")
            object.__setattr__(self, name, value)

    def mask_options(self) -> dict[str, Any]:
        """Return the keyword options of :func:`~npas_lab.sparsity.masks.compute_mask`."""
        options: dict[str, Any] = {"block": self.block}
        if self.prune is not None:
            options["prune"] = self.prune
        if self.patterns is not None:
            options["num_patterns"] = self.patterns
        return options

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the block as a list)."""
        data = asdict(self)
        data["block"] = list(self.block) if self.block is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerChoice:
        """Build a choice from :meth:`to_dict` output; unknown keys are refused."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise SparsityError(f"unknown LayerChoice field(s) {unknown} in {dict(data)!r}")
        data = dict(data)
        if data.get("block") is not None:
            data["block"] = tuple(data["block"])
        return cls(**data)


_DENSE = LayerChoice()


@dataclass(frozen=True, eq=False)
class PruningPlan(Mapping[str, LayerChoice]):
    """A candidate of the search: a :class:`LayerChoice` per layer name (absent = dense).

    Equality and :meth:`key` ignore explicit dense entries and the order of the layers.

    Parameters
    ----------
    layers
        ``{layer_name: LayerChoice}``.
    """

    layers: Mapping[str, LayerChoice]

    def __post_init__(self) -> None:
        layers = dict(self.layers)
        for name, choice in layers.items():
            if not isinstance(name, str) or not isinstance(choice, LayerChoice):
                raise SparsityError(
                    f"a PruningPlan maps layer names to LayerChoice, got {name!r}: {choice!r}"
                )
        object.__setattr__(self, "layers", MappingProxyType(layers))

    def __getitem__(self, name: str) -> LayerChoice:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruningPlan) and self._canonical() == other._canonical()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return f"PruningPlan({dict(self.layers)!r})"

    def pruned(self) -> dict[str, LayerChoice]:
        """Return the entries that are not plain dense layers, in plan order."""
        return {name: c for name, c in self.layers.items() if c != _DENSE}

    def _canonical(self) -> dict[str, Any]:
        layers = {name: choice.to_dict() for name, choice in sorted(self.pruned().items())}
        return {"version": PLAN_VERSION, "layers": layers}

    def key(self) -> str:
        """Return 16 hex digits of the SHA-256 of the canonical JSON (sorted, no dense entries)."""
        text = json.dumps(self._canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self, *, indent: int | None = None) -> str:
        """Return the plan as JSON, every entry (dense ones too) in plan order."""
        layers = {name: choice.to_dict() for name, choice in self.layers.items()}
        return json.dumps({"version": PLAN_VERSION, "layers": layers}, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        """Parse :meth:`to_json` output."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise SparsityError(f"not a version-{PLAN_VERSION} pruning plan: {text[:80]!r}")
        return cls({n: LayerChoice.from_dict(c) for n, c in data["layers"].items()})


def model_layers(model: nn.Module) -> pd.DataFrame:
    """Return the Conv2d / Linear layers of ``model`` like :func:`~npas_lab.models.layer_table`.

    Only the columns plans need (name, kind, kernel, groups, in_channels, out_channels), read from
    the modules without a forward pass, so no input shape is needed.
    """
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            conv = isinstance(module, nn.Conv2d)
            rows.append(
                {
                    "name": name,
                    "kind": layer_kind(module),
                    "kernel": tuple(module.kernel_size) if conv else None,
                    "groups": module.groups if conv else 1,
                    "in_channels": module.in_channels if conv else module.in_features,
                    "out_channels": module.out_channels if conv else module.out_features,
                }
            )
    columns = ["name", "kind", "kernel", "groups", "in_channels", "out_channels"]
    return pd.DataFrame(rows, columns=columns)


def _table(layers: nn.Module | pd.DataFrame) -> pd.DataFrame:
    return layers if isinstance(layers, pd.DataFrame) else model_layers(layers)


def validate_plan(plan: PruningPlan, layers: nn.Module | pd.DataFrame) -> None:
    """Check that every entry of ``plan`` names a layer and fits it; raise listing all problems.

    Parameters
    ----------
    plan
        The plan.
    layers
        The model, or its :func:`~npas_lab.models.layer_table` / :func:`model_layers`.

    Raises
    ------
    SparsityError
        One line per problem: unknown layer (with near names), filter type other than
        ``"keep"``, scheme not meant for the layer's kind or kernel (with the fitting schemes),
        block larger than the layer, rate the scheme cannot reach there (with the valid range).
    """
    table = _table(layers).set_index("name", drop=False)
    problems = []
    for name, choice in plan.items():
        if name not in table.index:
            # "conv1.weight" for "conv1" is the usual slip: offer the enclosing layer first.
            near = [n for n in table.index if name.startswith(f"{n}.")][-1:]
            near += difflib.get_close_matches(name, list(table.index), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(dict.fromkeys(near))}?" if near else ""
            problems.append(f"layer {name!r} is not a Conv2d/Linear layer of the model{hint}")
            continue
        row = table.loc[name]
        if choice.filter_type != KEEP:
            problems.append(
                f"layer {name!r}: filter type {choice.filter_type!r} cannot be applied by "
                f"sparsity/ (only {KEEP!r}); change the operator first"
            )
        if choice.scheme not in schemes_for(row):
            kernel = "x".join(map(str, row["kernel"])) if row["kernel"] is not None else "-"
            problems.append(
                f"scheme {choice.scheme!r} does not fit layer {name!r} ({row['kind']}, kernel "
                f"{kernel}); schemes for it: {', '.join(schemes_for(row))}"
            )
            continue
        spec = get_scheme(choice.scheme)
        try:
            low, high = spec.rate_range(weight_shape(row), layer=name, **choice.mask_options())
        except SparsityError as err:
            problems.append(str(err))
            continue
        if not low * (1 - 1e-9) <= choice.rate <= high * (1 + 1e-9):
            problems.append(
                f"{choice.scheme} pruning cannot reach rate {choice.rate:g} on layer {name!r}: "
                f"valid rates are {low:.4g} to {high:.4g}"
            )
    if problems:
        raise SparsityError("invalid pruning plan:\n  " + "\n  ".join(problems))


def uniform_plan(
    layers: nn.Module | pd.DataFrame,
    scheme: str,
    rate: float,
    *,
    block: tuple[int, int] | None = None,
    prune: str | None = None,
    patterns: int | None = None,
    skip_first: bool = True,
    kinds: Sequence[str] = ("conv", "pointwise", "depthwise"),
) -> PruningPlan:
    """Return a plan pruning every eligible layer with one scheme at one rate.

    Eligible: the layer's kind is in ``kinds`` and the scheme fits it
    (:func:`~npas_lab.sparsity.masks.schemes_for`); every other layer gets a dense entry.
    The defaults follow the NPAS and PatDNN experiments: every conv but the first, the
    classifier kept dense. A block larger than a layer is clipped to the layer's shape (and the
    clipped block written into the plan), so e.g. a 4-filter squeeze-excite conv gets one block
    across its filters.

    Parameters
    ----------
    layers
        The model, or its :func:`~npas_lab.models.layer_table` / :func:`model_layers`.
    scheme, rate, block, prune, patterns
        The :class:`LayerChoice` for every eligible layer.
    skip_first
        Keep the first Conv2d/Linear layer dense (it has few weights and is sensitive).
    kinds
        Layer kinds to prune (``conv``, ``pointwise``, ``depthwise``, ``linear``).

    Raises
    ------
    SparsityError
        If the rate cannot be reached on an eligible layer (see :func:`validate_plan`).
    """
    template = LayerChoice(scheme=scheme, rate=rate, block=block, prune=prune, patterns=patterns)
    table = _table(layers)
    choices = {}
    for index, row in enumerate(table.to_dict("records")):
        if (
            (skip_first and index == 0)
            or row["kind"] not in kinds
            or scheme not in schemes_for(row)
        ):
            choices[row["name"]] = _DENSE
            continue
        choice = template
        if template.block is not None:
            f, c = weight_shape(row)[:2]
            clipped = (min(template.block[0], f), min(template.block[1], c))
            choice = LayerChoice(**{**template.to_dict(), "block": clipped})
        choices[row["name"]] = choice
    plan = PruningPlan(choices)
    validate_plan(plan, table)
    return plan
