"""Compact layouts of a masked weight: what one gather kernel needs to know about its zeros.

Every scheme lowers to one :class:`GatherLayout`: the filters are cut into *row groups* of ``R``
consecutive filters that share their inputs, and each group lists *entries*. An entry is a base
kernel position ``(c, i, j)`` plus a *shape*, a compile-time tuple of ``(dc, di, dj)`` deltas
(its members); it carries ``len(shape) * R`` weights. The kernel loads one offset per entry and
reaches every member at a constant distance from it, so the inner loop has no per-weight index
loads. Zeros inside a kept entry are stored (and multiplied); everything else is skipped.

========================  ===  ======================================  ==========================
scheme                    R    entry                                   shapes
========================  ===  ======================================  ==========================
dense, filter, channel    >1   one GEMM column (all / the non-zero)    ``((0, 0, 0),)``
block_punched             bf   a column kept by the block (punch)      ``((0, 0, 0),)``
block, ``cols`` pruned    rows a kept column of the tile row           ``((0, 0, 0),)``
block, ``rows`` pruned    1    a kept row segment (``cols`` channels)  ``((k, 0, 0), ...)``
unstructured              1-4  a column kept by any filter of the group ``((0, 0, 0),)``
pattern                   1    a kept 3x3 kernel                       its pattern (4 positions)
depthwise                 1    the filter's kernel                     its kept positions
========================  ===  ======================================  ==========================

Entries are ordered by shape, then group, then column (``ptr[k * NG + g]`` starts the entries
of shape ``k`` in group ``g``): each shape's values are one contiguous run, so a block with more
kept columns than another simply has a longer run (exact counts, no padding). ``pad_groups``
builds the alternative, every group padded with zero weights to the longest one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npas_lab.compiler.kernels.spec import KernelError

__all__ = [
    "GatherLayout",
    "column_layout",
    "kernel_layout",
    "pad_groups",
    "segment_layout",
]

Shape = tuple[tuple[int, int, int], ...]
#: More distinct kernel shapes than this would unroll into too much code.
MAX_SHAPES = 64


@dataclass(frozen=True, eq=False)
class GatherLayout:
    """Row groups, entries, shapes and values of one masked weight (module docstring).

    Attributes
    ----------
    rows : int
        ``R``, filters per row group (group ``g`` holds filters ``g * R ... g * R + R - 1``;
        rows past the last filter are zero padding).
    filters : int
        ``F``.
    shapes : tuple of Shape
        Member deltas ``(dc, di, dj)`` of each shape.
    base : np.ndarray
        ``(n, 3)`` int64 base kernel position ``(c, i, j)`` of each entry (``c`` an input
        channel, not a channel within the conv group).
    values : np.ndarray
        Float32, per shape ``k`` its entries' ``(len(shapes[k]), R)`` weight blocks, flattened
        and concatenated in entry order.
    ptr : np.ndarray
        ``(K * NG + 1,)`` int64 entry ranges by (shape, group).
    """

    rows: int
    filters: int
    shapes: tuple[Shape, ...]
    base: np.ndarray
    values: np.ndarray
    ptr: np.ndarray

    @property
    def groups(self) -> int:
        """Number of row groups ``NG``."""
        return -(-self.filters // self.rows)

    @property
    def entries(self) -> int:
        """Number of entries."""
        return len(self.base)

    def shape_entries(self, k: int) -> tuple[int, int]:
        """Return the first entry of shape ``k`` and its number of entries."""
        ng = self.groups
        return int(self.ptr[k * ng]), int(self.ptr[(k + 1) * ng] - self.ptr[k * ng])

    def value_base(self, k: int) -> int:
        """Return where shape ``k``'s values start in :attr:`values`."""
        return sum(self.shape_entries(q)[1] * len(self.shapes[q]) * self.rows for q in range(k))

    def multiply_adds(self) -> int:
        """Return the weights the kernel multiplies per output pixel (stored zeros included)."""
        return sum(
            self.shape_entries(k)[1] * len(shape) * self.rows for k, shape in enumerate(self.shapes)
        )

    def channels(self) -> tuple[int, ...]:
        """Return the input channels some member of some entry reads, sorted."""
        used: set[int] = set()
        for k, shape in enumerate(self.shapes):
            start, count = self.shape_entries(k)
            cs = self.base[start : start + count, 0]
            for dc, _, _ in shape:
                used.update((cs + dc).tolist())
        return tuple(sorted(used))


def _assemble(
    rows: int,
    filters: int,
    shapes: list[Shape],
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> GatherLayout:
    """Build a layout from, per shape, ``(group, base, values)`` arrays of its entries.

    ``group`` is ``(n,)``, ``base`` ``(n, 3)`` and ``values`` ``(n, len(shape), rows)``;
    entries are ordered by group then base position inside each shape.
    """
    ng = -(-filters // rows)
    counts, bases, values = [], [], []
    for (group, base, vals), shape in zip(parts, shapes, strict=True):
        group = np.asarray(group, np.int64)
        base = np.asarray(base, np.int64).reshape(-1, 3)
        order = np.lexsort((base[:, 2], base[:, 1], base[:, 0], group))
        counts.append(np.bincount(group, minlength=ng)[:ng])
        bases.append(base[order])
        values.append(np.asarray(vals, np.float32).reshape(-1, len(shape), rows)[order])
    ptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    base = np.concatenate(bases) if bases else np.zeros((0, 3), np.int64)
    flat = np.concatenate([v.reshape(-1) for v in values]) if values else np.zeros(0)
    return GatherLayout(rows, filters, tuple(shapes), base, flat.astype(np.float32), ptr)


def _check_rows(rows: int, weight: np.ndarray, groups: int) -> None:
    if rows < 1:
        raise KernelError(f"row group size must be >= 1, got {rows}")
    per_group = weight.shape[0] // groups
    if groups > 1 and per_group % rows:
        raise KernelError(
            f"row groups of {rows} filters would mix conv groups ({per_group} filters each)"
        )


def column_layout(
    weight: np.ndarray,
    rows: int,
    *,
    groups: int = 1,
    keep_all: bool = False,
    whole_kernels: bool = False,
) -> GatherLayout:
    """Group ``rows`` filters; each group keeps the GEMM columns any of its filters uses.

    Parameters
    ----------
    weight
        ``(F, C / groups, kh, kw)``.
    rows
        Filters per row group (``R``).
    groups
        Conv groups; a row group never spans two.
    keep_all
        Keep every column, zero or not (the dense template).
    whole_kernels
        Where a group keeps every position of a channel's kernel, make that one entry of the
        whole ``kh x kw`` shape instead of ``kh * kw`` single-column entries: one index load
        instead of ``kh * kw``, and the unrolled members share input vectors (the same row of
        ``X`` serves several kernel rows of a tile), as a direct convolution does.
    """
    _check_rows(rows, weight, groups)
    f, cg, kh, kw = weight.shape
    ng, k2 = -(-f // rows), kh * kw
    matrix = np.zeros((ng * rows, cg * k2), dtype=np.float32)
    matrix[:f] = weight.reshape(f, -1)
    blocks = matrix.reshape(ng, rows, -1)
    used = np.ones((ng, blocks.shape[2]), bool) if keep_all else np.any(blocks != 0, axis=1)
    c0 = np.minimum(np.arange(ng) * rows, f - 1) // (f // groups) * cg  # conv group's channel 0
    shapes, parts = [((0, 0, 0),)], []
    whole = np.zeros((ng, cg), bool)
    if whole_kernels and k2 > 1:
        whole = used.reshape(ng, cg, k2).all(axis=2)
        used = used & ~np.repeat(whole, k2, axis=1)
    group, col = np.nonzero(used)  # row-major: by group, then column
    c, rest = np.divmod(col, k2)
    base = np.stack([c0[group] + c, rest // kw, rest % kw], axis=1)
    parts.append((group, base, blocks[group, :, col][:, None, :]))  # (n, 1, rows)
    if whole.any():
        group, c = np.nonzero(whole)
        base = np.stack([c0[group] + c, 0 * c, 0 * c], axis=1)
        vals = blocks.reshape(ng, rows, cg, k2)[group, :, c]  # (n, rows, k2)
        shapes.append(tuple((0, p // kw, p % kw) for p in range(k2)))
        parts.append((group, base, vals.transpose(0, 2, 1)))
    return _assemble(rows, f, shapes, parts)


def kernel_layout(weight: np.ndarray, *, groups: int = 1, keep_all: bool = False) -> GatherLayout:
    """One entry per kept kernel ``(f, c)``, its shape the kernel's non-zero positions (R = 1).

    The pattern layout (every kept 3x3 kernel has one of a few 4-position patterns) and the
    depthwise layout (every filter has one kernel; ``keep_all``: every position of every kernel,
    the dense depthwise template).
    """
    f, cg, kh, kw = weight.shape
    per_group = f // groups
    kernels = weight.reshape(f, cg, kh * kw)
    nonzero = np.ones_like(kernels, dtype=bool) if keep_all else kernels != 0
    codes = (nonzero.astype(np.int64) << np.arange(kh * kw)).sum(-1)  # (f, cg) position sets
    distinct = np.unique(codes[codes != 0])
    if len(distinct) > MAX_SHAPES:
        raise KernelError(
            f"the weight has {len(distinct)} distinct kernel patterns (kept-position sets); the "
            f"pattern/depthwise lowering unrolls one code path per pattern and allows at most "
            f"{MAX_SHAPES} (prune with scheme='pattern' first)"
        )
    shapes, parts = [], []
    for code in distinct.tolist():
        positions = [p for p in range(kh * kw) if code >> p & 1]
        shapes.append(tuple((0, p // kw, p % kw) for p in positions))
        fi, ci = np.nonzero(codes == code)
        base = np.stack([fi // per_group * cg + ci, 0 * fi, 0 * fi], axis=1)
        parts.append((fi, base, kernels[fi, ci][:, positions][:, :, None]))
    return _assemble(1, f, shapes, parts)


def segment_layout(weight: np.ndarray, cols: int) -> GatherLayout:
    """One entry per kept row segment of ``cols`` channels of a 1x1 conv (R = 1).

    The layout of block pruning with ``prune="rows"``: inside a ``rows x cols`` tile whole row
    segments (one filter, ``cols`` consecutive channels) are kept or pruned. A segment at the
    ragged right edge has fewer members (its own shape).
    """
    f, c, kh, kw = weight.shape
    if (kh, kw) != (1, 1):
        raise KernelError(f"block pruning lowers 1x1 convs (matrices); got {kh}x{kw} kernels")
    matrix = weight.reshape(f, c)
    shapes, parts = [], []
    full, edge = c // cols, c % cols
    for start, count, width in ((0, full, cols), (full * cols, 1 if edge else 0, edge)):
        if count == 0:
            continue
        segs = matrix[:, start : start + count * width].reshape(f, count, width)
        fi, si = np.nonzero(np.any(segs != 0, axis=2))
        base = np.stack([start + si * width, 0 * fi, 0 * fi], axis=1)
        shapes.append(tuple((d, 0, 0) for d in range(width)))
        parts.append((fi, base, segs[fi, si][:, :, None]))
    return _assemble(1, f, shapes, parts)


def pad_groups(layout: GatherLayout) -> GatherLayout:
    """Return ``layout`` with every group padded to its shape's longest group (zero weights).

    The padding entries repeat the group's first base position (or channel 0), so they read
    valid input and add zero: the "pad to the layer's max count" way of handling ragged blocks.
    """
    ng, rows = layout.groups, layout.rows
    parts = []
    for k, shape in enumerate(layout.shapes):
        start, count = layout.shape_entries(k)
        vb, size = layout.value_base(k), len(shape) * rows
        counts = np.diff(layout.ptr[k * ng : (k + 1) * ng + 1])
        longest = int(counts.max(initial=0))
        vals = layout.values[vb : vb + count * size].reshape(count, len(shape), rows)
        group = np.repeat(np.arange(ng), counts)
        base = layout.base[start : start + count]
        firsts = layout.ptr[k * ng : (k + 1) * ng] - start
        missing = longest - counts
        pad_group = np.repeat(np.arange(ng), missing)
        pad_base = np.where(
            (counts[pad_group] > 0)[:, None],
            base[np.minimum(firsts[pad_group], max(count - 1, 0))] if count else 0,
            0,
        )
        parts.append(
            (
                np.concatenate([group, pad_group]),
                np.concatenate([base, np.reshape(pad_base, (-1, 3))]),
                np.concatenate([vals, np.zeros((len(pad_group), len(shape), rows), np.float32)]),
            )
        )
    return _assemble(rows, layout.filters, list(layout.shapes), parts)
