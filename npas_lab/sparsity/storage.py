"""Compact storage of a pruned weight, one format per scheme, and its size in bytes.

What the compiler stores instead of the dense tensor (NPAS: "compact weight storage, beyond
CSR"). Every format has ``from_dense(weight, mask)`` (keeps exactly the masked-in weights),
``to_dense()`` (the exact dense masked weight back) and ``nbytes()``: values as float32, every
index array in the smallest unsigned integer type that holds its largest value (shapes and other
per-layer constants are not counted).

Formats, in GEMM form (``W`` as ``F x C*kh*kw``; a linear weight is ``F x C``):

- :class:`CSRStorage` (unstructured): row pointers, column indices, values.
- :class:`ShrunkStorage` (filter, channel): the physically smaller dense tensor plus the kept
  filter and channel indices (omitted when all are kept).
- :class:`TiledStorage` (block_punched, block, column): per tile the count and local indices of
  the kept columns (or rows) it shares, and its kept part as a small dense matrix.
- :class:`PatternStorage` (pattern): filter-kernel-weight style; per filter its kept kernels
  grouped by pattern id (channel index + pattern id each), values as an ``n_kernels x 4`` matrix,
  and the library (``K x 4`` positions).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from npas_lab.sparsity.errors import SparsityError

__all__ = [
    "VALUE_BYTES",
    "CSRStorage",
    "CompactWeight",
    "DenseStorage",
    "PatternStorage",
    "ShrunkStorage",
    "TiledStorage",
    "index_bytes",
]

#: Bytes per stored weight value (float32).
VALUE_BYTES = 4


def index_bytes(max_value: int) -> int:
    """Return the bytes of the smallest unsigned integer type holding ``0..max_value``."""
    for size in (1, 2, 4):
        if max_value < 1 << (8 * size):
            return size
    return 8


def _check_pair(weight: torch.Tensor, mask: torch.Tensor) -> None:
    if weight.shape != mask.shape or mask.dtype != torch.bool:
        raise SparsityError(
            f"storage needs a boolean mask of the weight's shape {tuple(weight.shape)}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )


class CompactWeight(ABC):
    """A stored pruned weight: built from a dense weight and mask, convertible back exactly."""

    shape: tuple[int, ...]

    @classmethod
    @abstractmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor) -> CompactWeight:
        """Store the weights of ``weight`` where ``mask`` is True."""

    @abstractmethod
    def to_dense(self) -> torch.Tensor:
        """Return ``weight * mask`` as a dense tensor of the original shape."""

    @abstractmethod
    def nbytes(self) -> int:
        """Return the storage size: float32 values plus minimal-width indices."""


@dataclass(frozen=True, eq=False)
class DenseStorage(CompactWeight):
    """The dense weight itself (masked), the baseline of every comparison."""

    shape: tuple[int, ...]
    values: torch.Tensor

    @classmethod
    def from_dense(cls, weight, mask):
        """Store ``weight * mask`` densely."""
        _check_pair(weight, mask)
        return cls(tuple(weight.shape), weight.detach() * mask)

    def to_dense(self):
        """Return the stored tensor."""
        return self.values.clone()

    def nbytes(self):
        """Return ``numel * 4``."""
        return self.values.numel() * VALUE_BYTES


@dataclass(frozen=True, eq=False)
class CSRStorage(CompactWeight):
    """Compressed sparse rows of the GEMM matrix: the unstructured baseline."""

    shape: tuple[int, ...]
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_dense(cls, weight, mask):
        """Store the masked-in weights row by row."""
        _check_pair(weight, mask)
        rows = mask.reshape(weight.shape[0], -1)
        _, col_idx = rows.nonzero(as_tuple=True)  # row-major order, as CSR needs
        row_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), rows.sum(1).cumsum(0)])
        values = weight.detach().reshape(weight.shape[0], -1)[rows]
        return cls(tuple(weight.shape), row_ptr, col_idx, values)

    def to_dense(self):
        """Scatter the values back into a zero GEMM matrix."""
        matrix = torch.zeros(self.shape[0], int(torch.Size(self.shape[1:]).numel()))
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), self.row_ptr.diff())
        matrix = matrix.to(self.values.dtype)
        matrix[rows, self.col_idx] = self.values
        return matrix.reshape(self.shape)

    def nbytes(self):
        """Return row pointers + column indices + values."""
        nnz, width = len(self.values), int(torch.Size(self.shape[1:]).numel())
        return (
            len(self.row_ptr) * index_bytes(nnz) + nnz * index_bytes(width - 1) + nnz * VALUE_BYTES
        )


@dataclass(frozen=True, eq=False)
class ShrunkStorage(CompactWeight):
    """A filter- and/or channel-pruned weight as the smaller dense tensor it really is."""

    shape: tuple[int, ...]
    filters: torch.Tensor | None  # kept output channels; None = all
    channels: torch.Tensor | None  # kept input channels; None = all
    values: torch.Tensor

    @classmethod
    def from_dense(cls, weight, mask):
        """Store the sub-tensor of kept filters x kept channels (the mask must be exactly that)."""
        _check_pair(weight, mask)
        filters = mask.flatten(1).any(1).nonzero()[:, 0]
        channels = mask.any(0).reshape(mask.shape[1], -1).any(1).nonzero()[:, 0]
        product = torch.zeros_like(mask)
        product[filters[:, None], channels[None, :]] = True
        if not torch.equal(product, mask):
            raise SparsityError(
                "ShrunkStorage needs a mask that keeps whole filters x whole input channels "
                f"(filter or channel pruning); this one of shape {tuple(mask.shape)} does not"
            )
        values = weight.detach()[filters][:, channels].clone()
        f, c = weight.shape[0], weight.shape[1]
        return cls(
            tuple(weight.shape),
            None if len(filters) == f else filters,
            None if len(channels) == c else channels,
            values,
        )

    def to_dense(self):
        """Place the sub-tensor back among zeros."""
        dense = torch.zeros(self.shape, dtype=self.values.dtype)
        rows = torch.arange(self.shape[0]) if self.filters is None else self.filters
        cols = torch.arange(self.shape[1]) if self.channels is None else self.channels
        dense[rows[:, None], cols[None, :]] = self.values
        return dense

    def nbytes(self):
        """Return values + kept filter and channel indices."""
        size = self.values.numel() * VALUE_BYTES
        if self.filters is not None:
            size += len(self.filters) * index_bytes(self.shape[0] - 1)
        if self.channels is not None:
            size += len(self.channels) * index_bytes(self.shape[1] - 1)
        return size


@dataclass(frozen=True, eq=False)
class TiledStorage(CompactWeight):
    """Tiles of the GEMM matrix, each keeping a subset of its columns (or rows) densely.

    ``axis="cols"``: every row of a tile keeps the same local columns (block_punched: a tile is
    ``bf`` filters x ``bc * kh * kw`` columns; column pruning: one tile, the whole layer; block
    pruning with ``prune="cols"``). ``axis="rows"``: every column of a tile keeps the same local
    rows (block pruning with ``prune="rows"``). Edge tiles may be smaller (ragged).
    """

    shape: tuple[int, ...]
    tile: tuple[int, int]  # (rows, cols) of the GEMM matrix
    axis: str
    counts: torch.Tensor  # kept columns (rows) per tile, tiles in row-major order
    indices: torch.Tensor  # local kept column (row) indices, concatenated
    values: torch.Tensor  # each tile's kept dense sub-matrix, flattened and concatenated

    @classmethod
    def from_dense(cls, weight, mask, *, tile=None, axis="cols"):
        """Store ``weight`` by tiles of ``tile`` GEMM (rows, cols); default: one whole tile."""
        _check_pair(weight, mask)
        if axis not in ("rows", "cols"):
            raise SparsityError(f"TiledStorage axis must be 'rows' or 'cols', got {axis!r}")
        matrix = weight.detach().reshape(weight.shape[0], -1)
        keep = mask.reshape(weight.shape[0], -1)
        tile = tuple(tile) if tile is not None else tuple(matrix.shape)
        if axis == "rows":  # rows of a tile are the columns of the transposed tile
            matrix, keep, tile = matrix.T, keep.T, tile[::-1]
        counts, indices, values = [], [], []
        for r0 in range(0, matrix.shape[0], tile[0]):
            for c0 in range(0, matrix.shape[1], tile[1]):
                sub = keep[r0 : r0 + tile[0], c0 : c0 + tile[1]]
                kept = sub.any(0)
                if not torch.equal(sub, kept.expand_as(sub)):
                    raise SparsityError(
                        f"TiledStorage(axis={axis!r}): the tile at ({r0}, {c0}) does not keep "
                        f"the same {axis} in all its {'columns' if axis == 'rows' else 'rows'}"
                    )
                local = kept.nonzero()[:, 0]
                counts.append(len(local))
                indices.append(local)
                values.append(matrix[r0 : r0 + tile[0], c0 : c0 + tile[1]][:, local].reshape(-1))
        return cls(
            tuple(weight.shape),
            tuple(tile[::-1]) if axis == "rows" else tuple(tile),
            axis,
            torch.tensor(counts, dtype=torch.int64),
            torch.cat(indices),
            torch.cat(values).clone(),
        )

    def to_dense(self):
        """Rebuild the GEMM matrix tile by tile."""
        rows, cols = self.shape[0], int(torch.Size(self.shape[1:]).numel())
        tile = self.tile
        if self.axis == "rows":
            rows, cols, tile = cols, rows, tile[::-1]
        matrix = torch.zeros(rows, cols, dtype=self.values.dtype)
        t, used, position = 0, 0, 0
        for r0 in range(0, rows, tile[0]):
            height = min(tile[0], rows - r0)
            for c0 in range(0, cols, tile[1]):
                count = int(self.counts[t])
                local = self.indices[used : used + count]
                block = self.values[position : position + height * count].reshape(height, count)
                matrix[r0 : r0 + height, c0 + local] = block
                t, used, position = t + 1, used + count, position + height * count
        if self.axis == "rows":
            matrix = matrix.T
        return matrix.reshape(self.shape)

    def nbytes(self):
        """Return per-tile counts + local indices + values."""
        extent = self.tile[1] if self.axis == "cols" else self.tile[0]
        return (
            len(self.counts) * index_bytes(extent)
            + len(self.indices) * index_bytes(extent - 1)
            + self.values.numel() * VALUE_BYTES
        )


@dataclass(frozen=True, eq=False)
class PatternStorage(CompactWeight):
    """Pattern-pruned 3x3 conv in filter-kernel-weight form (PatDNN's FKW).

    Kernels are grouped by filter and, inside a filter, ordered by pattern id (then channel), so
    a kernel loop runs over runs of the same pattern: ``filter_counts[f]`` kept kernels in filter
    ``f``; for each, its input ``channels`` index and ``pattern_ids`` entry; ``values`` holds its
    4 weights in the pattern's position order; ``library`` the ``K x 4`` positions.
    """

    shape: tuple[int, ...]
    library: torch.Tensor
    filter_counts: torch.Tensor
    channels: torch.Tensor
    pattern_ids: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_dense(cls, weight, mask):
        """Store a mask whose kept 3x3 kernels keep exactly 4 weights each."""
        _check_pair(weight, mask)
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
            raise SparsityError(f"PatternStorage needs 3x3 kernels, got {tuple(weight.shape)}")
        f, c = weight.shape[:2]
        kernels = mask.reshape(f * c, 9)
        sizes = kernels.sum(1)
        if not ((sizes == 0) | (sizes == 4)).all():
            raise SparsityError("PatternStorage needs every kernel to keep 0 or 4 weights")
        kept = (sizes == 4).nonzero()[:, 0]
        codes = (kernels[kept].long() << torch.arange(9)).sum(1)
        library_codes, pattern_ids = torch.unique(codes, return_inverse=True)
        filt, chan = kept // c, kept % c
        order = torch.argsort((filt * len(library_codes) + pattern_ids) * c + chan)
        kept, filt, chan, pattern_ids = kept[order], filt[order], chan[order], pattern_ids[order]
        library = ((library_codes[:, None] >> torch.arange(9)) & 1).bool()
        # Each pattern as its 4 positions in increasing order: the order of a kernel's values.
        positions = library.nonzero()[:, 1].reshape(-1, 4)
        values = weight.detach().reshape(f * c, 9)[kept[:, None], positions[pattern_ids]]
        return cls(
            tuple(weight.shape),
            positions,
            torch.bincount(filt, minlength=f),
            chan,
            pattern_ids,
            values.clone(),
        )

    def to_dense(self):
        """Scatter every kernel's 4 values back to its pattern positions."""
        f, c = self.shape[:2]
        dense = torch.zeros(f * c, 9, dtype=self.values.dtype)
        if len(self.channels):
            filt = torch.repeat_interleave(torch.arange(f), self.filter_counts)
            rows = filt * c + self.channels
            dense[rows[:, None], self.library[self.pattern_ids]] = self.values
        return dense.reshape(self.shape)

    def nbytes(self):
        """Return library + per-filter counts + channel indices + pattern ids + values."""
        f, c = self.shape[:2]
        n, k = len(self.channels), len(self.library)
        return (
            self.library.numel() * 1
            + f * index_bytes(c)
            + n * index_bytes(c - 1)
            + n * index_bytes(max(k - 1, 0))
            + self.values.numel() * VALUE_BYTES
        )
