"""Sparsity schemes: a boolean keep-mask for one layer weight at a requested pruning rate.

A conv weight is ``F x C x kh x kw`` (``C`` = input channels per group), a linear weight
``F x C`` and is treated as a 1x1 conv. In GEMM form the weight is the matrix
``F x (C * kh * kw)``: a *column* is one kernel position ``(c, i, j)``.

Schemes (registered in :data:`~npas_lab.sparsity.masks.SCHEMES`)
-----------------------------------------------------------------
``dense``           keep everything (rate 1 only).
``unstructured``    any single weight.
``filter``          whole output channels (rows of the GEMM matrix).
``channel``         whole input channels.
``column``          one kernel position ``(c, i, j)`` in every filter (a GEMM column).
``pattern``         3x3 kernels projected on a pattern library + connectivity pruning
                    (:mod:`~npas_lab.sparsity.patterns`).
``block``           matrices (linear, 1x1 conv): tiles of ``rows x cols``; inside a tile whole
                    row segments (``prune="rows"``) or column segments (``prune="cols"``) go.
``block_punched``   conv of any kernel: blocks of ``bf`` filters x ``bc`` channels; a *punch* is
                    one position ``(c, i, j)`` of a block, removed in all ``bf`` filters of it.

Scores: every weight gets a score from an :class:`~npas_lab.sparsity.importance.Importance`
(magnitude by default); a group is scored by the L2 norm of its weights' scores; one threshold per
layer keeps the best groups (:func:`~npas_lab.sparsity.selection.select_groups`), so the kept
count is ``round(total / rate)`` up to one group.

Decisions
---------
- A punch's score is the L2 norm of its GEMM column over the block's ``bf`` filters. ``bc``
  therefore does not change the mask (a punch lies in exactly one channel): it sets the tile of
  the compact storage and the compiler's vector width. This makes a 1x1 block unstructured
  pruning and a whole-layer block column pruning, the two special cases NPAS names.
- Ragged edges: when ``F`` (or ``C``) is not a multiple of the block, the last block is smaller;
  its punches (or row / column segments) simply hold fewer weights.
- Depthwise convs (one input channel per filter) under ``block_punched``: the block's channel
  extent is 1 whatever ``bc`` says, so a block is ``bf`` consecutive filters and a punch removes
  one kernel position ``(i, j)`` in all of them.
- A block larger than the layer in a dimension is refused (except ``bc`` on depthwise convs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from npas_lab.sparsity.errors import SparsityError
from npas_lab.sparsity.patterns import (
    DEFAULT_NUM_PATTERNS,
    PATTERN_ONLY_RATE,
    PatternLibrary,
    check_kernel,
    pattern_mask,
)
from npas_lab.sparsity.selection import group_norms, select_groups

__all__ = [
    "DEFAULT_BLOCK",
    "Block",
    "BlockPunched",
    "Channel",
    "Column",
    "Dense",
    "Filter",
    "Pattern",
    "Scheme",
    "Unstructured",
    "weight_shape",
]

#: Block of ``block_punched`` (filters, channels) and tile of ``block`` (rows, cols) when none is
#: given: 8 x 4 as in the authors' code (4 channels = one 128-bit vector of float32).
DEFAULT_BLOCK = (8, 4)
CONV_KINDS = frozenset({"conv", "pointwise", "depthwise"})
ALL_KINDS = CONV_KINDS | {"linear"}


def weight_shape(layer: Mapping[str, Any]) -> tuple[int, ...]:
    """Return the weight shape of a :func:`~npas_lab.models.layer_table` row.

    ``(out, in / groups, kh, kw)`` for a conv, ``(out, in)`` for a linear layer.
    """
    if layer["kind"] == "linear":
        return (int(layer["out_channels"]), int(layer["in_channels"]))
    kh, kw = layer["kernel"]
    return (int(layer["out_channels"]), int(layer["in_channels"]) // int(layer["groups"]), kh, kw)


def _as_4d(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    return (*shape, 1, 1) if len(shape) == 2 else tuple(shape)  # type: ignore[return-value]


def _take_options(opts: dict, allowed: Mapping[str, Any], scheme: str, layer: str) -> dict:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none"
        raise SparsityError(
            f"{scheme} pruning of layer {layer!r}: unknown option(s) {unknown}; valid: {valid}"
        )
    return {**allowed, **opts}


class Scheme(ABC):
    """One sparsity scheme: which groups a layer's weights form and which of them to keep.

    Subclasses implement :meth:`rate_range` and :meth:`mask`; :meth:`fits` says which layer
    kinds the scheme is meant for (used by ``schemes_for`` and plan validation). Register a new
    scheme with ``SCHEMES["mine"] = MyScheme()`` (:mod:`~npas_lab.sparsity.masks`).
    """

    name: str = "?"
    #: Layer kinds of :func:`~npas_lab.models.layer_kind` the scheme applies to.
    kinds: frozenset[str] = ALL_KINDS
    #: Keyword options and their defaults.
    options: Mapping[str, Any] = MappingProxyType({})
    #: Default block, or None for schemes without blocks.
    default_block: tuple[int, int] | None = None

    def fits(self, layer: Mapping[str, Any]) -> bool:
        """Return whether the scheme is meant for a :func:`~npas_lab.models.layer_table` row."""
        return layer["kind"] in self.kinds

    @abstractmethod
    def rate_range(
        self,
        shape: tuple[int, ...],
        *,
        block: tuple[int, int] | None = None,
        layer: str = "?",
        **opts: Any,
    ) -> tuple[float, float]:
        """Return the lowest and highest rate reachable on a weight of ``shape``.

        Raises :class:`SparsityError` when the scheme, block or options cannot apply at all.
        """

    @abstractmethod
    def mask(
        self,
        scores: torch.Tensor,
        rate: float,
        *,
        block: tuple[int, int] | None = None,
        layer: str = "?",
        **opts: Any,
    ) -> torch.Tensor:
        """Return the boolean keep-mask of a 4-D weight from its per-weight ``scores``."""

    def resolve_block(self, block: object, shape: tuple[int, ...], layer: str) -> tuple | None:
        """Return the block to use (the default for None) after checking it fits ``shape``."""
        if self.default_block is None:
            if block is not None:
                raise SparsityError(
                    f"{self.name} pruning of layer {layer!r} takes no block (got {block!r}); "
                    "only block and block_punched do"
                )
            return None
        block = self.default_block if block is None else block
        if (
            not isinstance(block, (tuple, list))
            or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)
        ):
            raise SparsityError(
                f"{self.name} pruning of layer {layer!r}: block must be two positive ints "
                f"(filters, channels), got {block!r}"
            )
        return tuple(block)


class _Grouped(Scheme):
    """A scheme that partitions the weights into groups and keeps the best-scored groups."""

    unit = "group"

    @abstractmethod
    def group_ids(
        self, shape: tuple[int, int, int, int], block: tuple | None, *, layer: str, **opts: Any
    ):
        """Return the group index of every weight (int64, ``shape``) and the group count."""

    def _groups(self, shape, block, layer, opts):
        opts = _take_options(opts, self.options, self.name, layer)
        return self.group_ids(shape, self.resolve_block(block, shape, layer), layer=layer, **opts)

    def rate_range(self, shape, *, block=None, layer="?", **opts):
        ids, n = self._groups(_as_4d(tuple(shape)), block, layer, opts)
        sizes = torch.bincount(ids.reshape(-1), minlength=n)
        return 1.0, ids.numel() / int(sizes.min())

    def mask(self, scores, rate, *, block=None, layer="?", **opts):
        ids, n = self._groups(tuple(scores.shape), block, layer, opts)
        ids = ids.to(scores.device)
        sizes = torch.bincount(ids.reshape(-1), minlength=n)
        norms = group_norms(scores, ids, n)
        keep = select_groups(norms, sizes, rate, scheme=self.name, layer=layer, unit=self.unit)
        return keep[ids]


def _positions(shape) -> torch.Tensor:
    """Return the GEMM column index ``c * kh * kw + i * kw + j`` of every weight."""
    _, c, kh, kw = shape
    return torch.arange(c * kh * kw).reshape(1, c, kh, kw).expand(shape)


class Unstructured(_Grouped):
    """Keep any single weights: the largest scores."""

    name, unit = "unstructured", "weight"

    def group_ids(self, shape, block, *, layer="?"):
        return torch.arange(torch.Size(shape).numel()).reshape(shape), torch.Size(shape).numel()


class Filter(_Grouped):
    """Keep whole filters (output channels, GEMM rows)."""

    name, unit = "filter", "filter"

    def group_ids(self, shape, block, *, layer="?"):
        return torch.arange(shape[0]).reshape(-1, 1, 1, 1).expand(shape), shape[0]


class Channel(_Grouped):
    """Keep whole input channels (all filters, all kernel positions of a channel)."""

    name, unit = "channel", "input channel"
    kinds = ALL_KINDS - {"depthwise"}  # one input channel per filter: that is filter pruning

    def group_ids(self, shape, block, *, layer="?"):
        return torch.arange(shape[1]).reshape(1, -1, 1, 1).expand(shape), shape[1]


class Column(_Grouped):
    """Keep whole GEMM columns: a kernel position ``(c, i, j)`` in every filter."""

    name, unit = "column", "column"

    def group_ids(self, shape, block, *, layer="?"):
        return _positions(shape), shape[1] * shape[2] * shape[3]


class BlockPunched(_Grouped):
    """Keep punches: a position ``(c, i, j)`` shared by the ``bf`` filters of a block."""

    name, unit = "block_punched", "punch"
    kinds = CONV_KINDS
    default_block = DEFAULT_BLOCK

    def resolve_block(self, block, shape, layer):
        bf, bc = super().resolve_block(block, shape, layer)
        f, c = shape[0], shape[1]
        if c == 1:
            bc = 1  # depthwise: a block is bf filters of one channel each (module docstring)
        if bf > f or bc > c:
            raise SparsityError(
                f"block_punched block {(bf, bc)} is larger than layer {layer!r} ({f} filters x "
                f"{c} channels); valid blocks have 1 <= bf <= {f} and 1 <= bc <= {c}"
            )
        return bf, bc

    def group_ids(self, shape, block, *, layer="?"):
        bf, _ = block
        f, c, kh, kw = shape
        width = c * kh * kw
        row_block = (torch.arange(f) // bf).reshape(-1, 1, 1, 1)
        return row_block * width + _positions(shape), -(-f // bf) * width


class Block(_Grouped):
    """Keep whole row (or column) segments of the ``rows x cols`` tiles of a matrix."""

    name, unit = "block", "segment"
    kinds = frozenset({"linear", "pointwise"})
    options = MappingProxyType({"prune": "rows"})
    default_block = DEFAULT_BLOCK

    def resolve_block(self, block, shape, layer):
        rows, cols = super().resolve_block(block, shape, layer)
        f, c, kh, kw = shape
        if (kh, kw) != (1, 1):
            raise SparsityError(
                f"block pruning needs a matrix (linear or 1x1 conv); layer {layer!r} has "
                f"{kh}x{kw} kernels (use block_punched there)"
            )
        if rows > f or cols > c:
            raise SparsityError(
                f"block tile {(rows, cols)} is larger than layer {layer!r} ({f} x {c}); valid "
                f"tiles have 1 <= rows <= {f} and 1 <= cols <= {c}"
            )
        return rows, cols

    def group_ids(self, shape, block, *, layer="?", prune="rows"):
        rows, cols = block
        f, c = shape[0], shape[1]
        r = torch.arange(f).reshape(-1, 1)
        k = torch.arange(c).reshape(1, -1)
        if prune == "rows":  # a row segment: one row of one tile
            ids, n = r * -(-c // cols) + k // cols, f * -(-c // cols)
        elif prune == "cols":  # a column segment: one column of one tile
            ids, n = k * -(-f // rows) + r // rows, c * -(-f // rows)
        else:
            raise SparsityError(
                f"block pruning of layer {layer!r}: prune must be 'rows' or 'cols', got {prune!r}"
            )
        return ids.reshape(shape), n


class Pattern(Scheme):
    """Project 3x3 kernels on a pattern library, then keep the strongest kernels."""

    name = "pattern"
    kinds = frozenset({"conv"})
    options = MappingProxyType({"library": None, "num_patterns": DEFAULT_NUM_PATTERNS})

    def fits(self, layer):
        return super().fits(layer) and tuple(layer["kernel"]) == (3, 3)

    def rate_range(self, shape, *, block=None, layer="?", **opts):
        _take_options(opts, self.options, self.name, layer)
        self.resolve_block(block, shape, layer)
        check_kernel(tuple(shape), layer=layer)
        return PATTERN_ONLY_RATE, 9 * shape[0] * shape[1] / 4

    def mask(self, scores, rate, *, block=None, layer="?", **opts):
        opts = _take_options(opts, self.options, self.name, layer)
        self.resolve_block(block, tuple(scores.shape), layer)
        library: PatternLibrary | None = opts["library"]
        return pattern_mask(
            scores, rate, library=library, num_patterns=opts["num_patterns"], layer=layer
        )


class Dense(Scheme):
    """Keep everything (rate 1 only): the choice for unpruned layers."""

    name = "dense"

    def rate_range(self, shape, *, block=None, layer="?", **opts):
        _take_options(opts, self.options, self.name, layer)
        self.resolve_block(block, shape, layer)
        return 1.0, 1.0

    def mask(self, scores, rate, *, block=None, layer="?", **opts):
        self.rate_range(tuple(scores.shape), block=block, layer=layer, **opts)
        if rate != 1.0:
            raise SparsityError(f"dense layer {layer!r} has rate 1, got rate {rate:g}")
        return torch.ones_like(scores, dtype=torch.bool)
