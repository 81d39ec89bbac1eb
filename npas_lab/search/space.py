"""The search space of NPAS phase 2: per layer, filter type x scheme x block x rate.

A :class:`SearchSpace` is built from a model and a :class:`SpaceConfig`. For each searched layer
it lists every :class:`~npas_lab.sparsity.LayerChoice` that fits it (its *options*): the filter
types of :mod:`~npas_lab.search.filters`, then for each filter type the schemes meant for the
layer *after* the change (a 3x3 conv shrunk to 1x1 may take ``block`` but no longer
``pattern``), the blocks of :attr:`SpaceConfig.blocks` clipped to the layer (for the schemes
that have a block), and the rates of :attr:`SpaceConfig.rates` that scheme can reach there. Rate
1 is the layer left dense (one option per filter type), so equal plans are one option.

A candidate is a tuple of option indices, one per searched layer; :meth:`SearchSpace.plan`
turns it into a :class:`~npas_lab.sparsity.PruningPlan` and :meth:`SearchSpace.encode` into a
fixed-length vector of numbers for the meta-model (scheme one-hot, log rate, kernel and block
sizes per layer); :meth:`SearchSpace.decode` inverts it.

Examples
--------
>>> from npas_lab.models import create_model
>>> space = SearchSpace.from_model(create_model("small_cnn", in_channels=1, input_size=16))
>>> space.layers
('features.1.0', 'features.2.0')
>>> space.size > 10_000
True
>>> c = space.sample(np.random.default_rng(0))
>>> space.decode(space.encode(c)) == c
True
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from npas_lab.search.filters import KEEP, filter_types_for, kernel_of
from npas_lab.sparsity import LayerChoice, PruningPlan, get_scheme, list_schemes, schemes_for
from npas_lab.sparsity.plan import model_layers
from npas_lab.sparsity.schemes import weight_shape

__all__ = ["DEFAULT_RATES", "Candidate", "SearchSpace", "SpaceConfig"]

#: Pruning rates offered per layer (NPAS's {1, 2, 2.5, 3, 5, 7, 10}x; 1 = dense).
DEFAULT_RATES = (1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0)
#: A candidate: one option index per searched layer.
Candidate = tuple[int, ...]
_KINDS = ("conv", "pointwise", "depthwise", "linear")


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """What the search may decide, per layer (defaults: the NPAS space, first conv kept dense)."""

    rates: tuple[float, ...] = DEFAULT_RATES  # offered rates, 1 = dense
    # Block options for block_punched (bf filters x bc channels) and block (rows x cols),
    # clipped to the layer; the channel count follows the vector width (4), NPAS.md.
    blocks: tuple[tuple[int, int], ...] = ((4, 4), (8, 4), (16, 4))
    schemes: tuple[str, ...] | None = None  # None: every registered scheme that fits
    filter_types: bool = True  # offer kernel-size changes (False: "keep" only)
    kinds: tuple[str, ...] = ("conv", "pointwise", "depthwise")  # layer kinds searched
    skip_first: bool = True  # keep the first Conv2d/Linear layer dense (few weights, sensitive)

    def __post_init__(self) -> None:
        rates = tuple(float(r) for r in self.rates)
        if not rates or any(not math.isfinite(r) or r < 1 for r in rates):
            raise ValueError(f"SpaceConfig.rates={self.rates!r}: give rates >= 1, e.g. (1, 2, 5)")
        object.__setattr__(self, "rates", tuple(sorted(set(rates))))
        blocks = tuple(tuple(int(v) for v in b) for b in self.blocks)
        if not blocks or any(len(b) != 2 or min(b) < 1 for b in blocks):
            raise ValueError(f"SpaceConfig.blocks={self.blocks!r}: give (rows, cols) pairs >= 1")
        object.__setattr__(self, "blocks", blocks)
        unknown = sorted(set(self.kinds) - set(_KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"SpaceConfig.kinds: unknown {unknown}; valid: {', '.join(_KINDS)}")
        if self.schemes is not None:
            for name in self.schemes:
                get_scheme(name)  # lists the valid names
            object.__setattr__(self, "schemes", tuple(self.schemes))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-able data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpaceConfig:
        """Rebuild a config written by :meth:`to_dict`."""
        data = dict(data)
        data["blocks"] = tuple(tuple(b) for b in data["blocks"])
        for name in ("rates", "kinds", "schemes"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)


def _shrunk_row(row: dict[str, Any], module: nn.Module, filter_type: str) -> dict[str, Any]:
    """Return the layer-table row of ``module`` after the filter type is applied."""
    size = kernel_of(filter_type)
    if size is None:
        return row
    kind = "pointwise" if size == 1 and row["groups"] == 1 else row["kind"]
    return {**row, "kernel": (size, size), "kind": kind}


def _layer_options(row: dict[str, Any], module: nn.Module, config: SpaceConfig) -> list:
    """Return every LayerChoice that fits one layer (dense with the layer unchanged first)."""
    options = [LayerChoice()]
    types = filter_types_for(module) if config.filter_types else [KEEP]
    for filter_type in types:
        shaped = _shrunk_row(row, module, filter_type)
        shape = weight_shape(shaped)
        if filter_type != KEEP:
            options.append(LayerChoice(filter_type=filter_type))
        for scheme in schemes_for(shaped):
            if scheme == "dense" or (config.schemes is not None and scheme not in config.schemes):
                continue
            spec = get_scheme(scheme)
            blocks: list[tuple[int, int] | None] = [None]
            if spec.default_block is not None:
                clipped = (
                    tuple(min(b, s) for b, s in zip(blk, shape[:2], strict=True))
                    for blk in config.blocks
                )
                blocks = list(dict.fromkeys(clipped))
            for block in blocks:
                try:
                    template = LayerChoice(filter_type=filter_type, scheme=scheme, block=block)
                    low, high = spec.rate_range(shape, layer=row["name"], **template.mask_options())
                except Exception:  # a block or option that cannot apply here: not offered
                    continue
                for rate in config.rates:
                    if rate > 1 and low * (1 - 1e-9) <= rate <= high * (1 + 1e-9):
                        data = {**template.to_dict(), "rate": rate}
                        options.append(LayerChoice.from_dict(data))
    return list(dict.fromkeys(options))


class SearchSpace:
    """Per-layer options of a model; candidates, plans and their numeric encoding.

    Parameters
    ----------
    options
        ``{layer_name: [LayerChoice, ...]}`` in model order; the first option of each layer is
        the dense layer (what :meth:`dense` picks).
    config
        The config the options were built from (recorded with searches).

    Use :meth:`from_model` to build one.
    """

    def __init__(
        self, options: dict[str, list[LayerChoice]], *, config: SpaceConfig | None = None
    ) -> None:
        if not options:
            raise ValueError("a search space needs at least one layer with options")
        self.options = {name: list(opts) for name, opts in options.items()}
        self.config = config or SpaceConfig()
        self.layers = tuple(self.options)
        self._index = [{c: i for i, c in enumerate(opts)} for opts in self.options.values()]
        schemes = {c.scheme for opts in self.options.values() for c in opts}
        self._schemes = [s for s in list_schemes() if s in schemes]
        self._max_log_rate = math.log(max(max(self.config.rates), 2.0))
        self._codes = [
            np.stack([self._encode_choice(c) for c in opts]) for opts in self.options.values()
        ]

    @classmethod
    def from_model(cls, model: nn.Module, config: SpaceConfig | None = None) -> SearchSpace:
        """Return the space of ``model`` (Conv2d/Linear layers of ``config.kinds``)."""
        config = config or SpaceConfig()
        table = model_layers(model)
        modules = dict(model.named_modules())
        options = {}
        for index, row in enumerate(table.to_dict("records")):
            if (config.skip_first and index == 0) or row["kind"] not in config.kinds:
                continue
            opts = _layer_options(row, modules[row["name"]], config)
            if len(opts) > 1:
                options[row["name"]] = opts
        if not options:
            raise ValueError(
                f"model {type(model).__name__} has no layer to search with {config} (layers: "
                f"{', '.join(table['name'])})"
            )
        return cls(options, config=config)

    # ------------------------------------------------------------------ size and identity
    @property
    def size(self) -> int:
        """Number of distinct candidates (the product of the per-layer option counts)."""
        return math.prod(len(opts) for opts in self.options.values())

    def summary(self) -> pd.DataFrame:
        """Return one row per layer: option count and the filter types, schemes, rates offered."""
        rows = []
        for name, opts in self.options.items():
            rows.append(
                {
                    "layer": name,
                    "options": len(opts),
                    "filter_types": sorted({c.filter_type for c in opts}),
                    "schemes": [s for s in self._schemes if any(c.scheme == s for c in opts)],
                    "rates": sorted({c.rate for c in opts}),
                }
            )
        return pd.DataFrame(rows)

    def key(self) -> str:
        """Return a stable 16-hex-digit hash of the options (a resumed search checks it)."""
        data = {n: [c.to_dict() for c in opts] for n, opts in self.options.items()}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}: {len(o)}" for n, o in self.options.items())
        return f"SearchSpace({counts}; size {self.size:.3g})"

    # ------------------------------------------------------------------ candidates
    def dense(self) -> Candidate:
        """Return the candidate that leaves every layer dense."""
        return tuple(0 for _ in self.layers)

    def sample(self, rng: np.random.Generator) -> Candidate:
        """Return a uniformly random candidate."""
        return tuple(int(rng.integers(len(opts))) for opts in self.options.values())

    def check(self, candidate: Sequence[int]) -> Candidate:
        """Return ``candidate`` as a tuple of ints after checking it indexes every layer."""
        candidate = tuple(int(i) for i in candidate)
        if len(candidate) != len(self.layers) or any(
            not 0 <= i < len(opts) for i, opts in zip(candidate, self.options.values(), strict=True)
        ):
            counts = [len(o) for o in self.options.values()]
            raise ValueError(
                f"candidate {candidate} does not fit the space: one index per layer "
                f"{list(self.layers)}, below the option counts {counts}"
            )
        return candidate

    def plan(self, candidate: Sequence[int]) -> PruningPlan:
        """Return the pruning plan of ``candidate`` (unsearched layers stay dense)."""
        candidate = self.check(candidate)
        opts = self.options.values()
        return PruningPlan({n: o[i] for n, o, i in zip(self.layers, opts, candidate, strict=True)})

    def candidate(self, plan: PruningPlan) -> Candidate:
        """Return the candidate of ``plan`` (inverse of :meth:`plan`).

        Raises
        ------
        ValueError
            If the plan prunes a layer outside the space or makes a choice it does not offer.
        """
        extra = sorted(set(plan.pruned()) - set(self.layers))
        if extra:
            raise ValueError(f"plan prunes layers outside the search space: {extra}")
        result = []
        for name, index in zip(self.layers, self._index, strict=True):
            choice = plan.get(name, LayerChoice())
            if choice not in index:
                raise ValueError(f"layer {name!r}: {choice} is not an option of the space")
            result.append(index[choice])
        return tuple(result)

    # ------------------------------------------------------------------ encoding
    @property
    def n_features(self) -> int:
        """Length of :meth:`encode` vectors."""
        return sum(codes.shape[1] for codes in self._codes)

    def _encode_choice(self, choice: LayerChoice) -> np.ndarray:
        # Numbers in [0, 1] so that one GP length scale fits all: scheme one-hot, log rate over
        # log max rate, kernel shrink (k'/k is what a filter type changes), log block sizes.
        onehot = [float(choice.scheme == s) for s in self._schemes]
        rate = math.log(choice.rate) / self._max_log_rate
        size = kernel_of(choice.filter_type)
        shrink = 0.0 if size is None else 1.0 / size  # 1x1: 1, 3x3: 1/3, keep: 0
        bf, bc = choice.block or (0, 0)
        block = [math.log2(1 + bf) / 5, math.log2(1 + bc) / 5]
        return np.array([*onehot, rate, shrink, *block], dtype=float)

    def encode(self, candidate: Sequence[int]) -> np.ndarray:
        """Return the numeric encoding of ``candidate`` (for the Bayesian meta-model)."""
        candidate = self.check(candidate)
        return np.concatenate([codes[i] for codes, i in zip(self._codes, candidate, strict=True)])

    def encode_many(self, candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """Return the encodings of several candidates as rows of a 2-D array."""
        if not candidates:
            return np.zeros((0, self.n_features))
        return np.stack([self.encode(c) for c in candidates])

    def decode(self, vector: Sequence[float]) -> Candidate:
        """Return the candidate whose encoding is nearest ``vector``, layer by layer."""
        vector = np.asarray(vector, dtype=float)
        if vector.shape != (self.n_features,):
            raise ValueError(f"vector has shape {vector.shape}, expected ({self.n_features},)")
        result, start = [], 0
        for codes in self._codes:
            part = vector[start : start + codes.shape[1]]
            result.append(int(np.argmin(((codes - part) ** 2).sum(axis=1))))
            start += codes.shape[1]
        return tuple(result)
