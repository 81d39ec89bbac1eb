"""Where a kernel reads its input from: the staged input buffer ``X`` and its offsets.

Every kernel first *stages* the input into a zero-padded buffer ``X`` laid out so that any GEMM
column (kernel position ``(c, i, j)``) is one base offset into ``X`` and a tile of outputs is a
contiguous run from there: the gather of an implicit im2col is then a plain vector load at
``X[offset(c, i, j) + spatial]``, with no im2col matrix in memory. Two forms:

``rows``
    One plane per (channel, row phase, column phase): the zero-padded input split by stride
    phase, ``X[c, pi, pj, a, b] = data[c, s_h * a + pi - p_h, s_w * b + pj - p_w]``. The output
    grid is ``OH x OW`` and plane rows have pitch ``PX >= OW``: a tile is ``tr`` output rows by
    ``tc`` columns. Staging costs about one copy of the input.
``flat``
    One plane per (channel, row phase, kernel column ``j``) of exactly ``OW`` columns, so the
    output is one flat run of ``OH * OW`` values and a tile is ``tc`` consecutive outputs that
    may span rows: full vectors even when ``OW`` is smaller than the vector width, at the cost
    of staging ``kw`` copies of the input.

A 1x1 stride-1 unpadded conv reads ``data`` itself (``identity``: nothing is staged) when its
tiles fit exactly. Only the channels some kept weight uses are staged (``channels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npas_lab.compiler.kernels.spec import ConvSpec, KernelError

__all__ = ["FORMS", "InputPlan", "plan_input"]

FORMS = ("rows", "flat")


@dataclass(frozen=True)
class InputPlan:
    """Layout of the staged input and of the output tiles (see the module docstring).

    Attributes
    ----------
    form : {"rows", "flat"}
    identity : bool
        ``X`` is ``data`` itself (no staging).
    channels : tuple of int
        Input channels staged, in plane order (their index is the *staged channel*).
    U : int
        Column phases per row phase: ``s_w`` (rows) or ``kw`` (flat).
    Ha, PX, PL : int
        Rows per plane, row pitch, plane length (``Ha * PX``).
    cstride : int
        Offset between consecutive staged channels (``s_h * U * PL``).
    XL : int
        Length of ``X`` including the slack that ragged tiles read past the last plane.
    NR, NC, PO : int
        Output grid rows and columns, and output row pitch (``rows``: ``OH, OW, OW``;
        ``flat``: ``1, OH * OW, OH * OW``).
    tr, tc : int
        Tile rows and columns.
    """

    spec: ConvSpec
    form: str
    identity: bool
    channels: tuple[int, ...]
    U: int
    Ha: int
    PX: int
    PL: int
    cstride: int
    XL: int
    NR: int
    NC: int
    PO: int
    tr: int
    tc: int

    @property
    def tiles(self) -> tuple[int, int]:
        """Number of tiles along the output grid rows and columns."""
        return -(-self.NR // self.tr), -(-self.NC // self.tc)

    @property
    def row_pitch(self) -> int:
        """Offset in ``X`` between consecutive tile rows (0 for ``flat``: one grid row)."""
        return self.PX if self.form == "rows" else 0

    def offsets(self, c: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Return the ``X`` offsets of kernel positions ``(c, i, j)`` (``c``: input channel)."""
        c, i, j = (np.asarray(v, dtype=np.int64) for v in (c, i, j))
        s = self.spec
        if self.identity:
            h, w = s.input_hw
            return c * h * w
        lookup = np.full(s.in_channels, -1, dtype=np.int64)
        lookup[list(self.channels)] = np.arange(len(self.channels))
        cs = lookup[c]
        if np.any(cs < 0):
            raise KernelError("internal: an offset refers to a channel that is not staged")
        (sh, sw), (dh, dw) = s.stride, s.dilation
        ri, rj = i * dh, j * dw
        if self.form == "rows":
            q = (cs * sh + ri % sh) * self.U + rj % sw
            return q * self.PL + (ri // sh) * self.PX + rj // sw
        q = (cs * sh + ri % sh) * self.U + j
        return q * self.PL + (ri // sh) * self.PX


def plan_input(
    spec: ConvSpec, form: str, tile: tuple[int, int], *, channels: tuple[int, ...] | None = None
) -> InputPlan:
    """Return the staging plan of ``spec`` in ``form`` with output tiles ``tile = (tr, tc)``.

    Parameters
    ----------
    spec
        The layer.
    form
        ``"rows"`` or ``"flat"``.
    tile
        ``(tr, tc)``; ``flat`` needs ``tr == 1``.
    channels
        Input channels to stage (default all); offsets of others are refused.
    """
    if form not in FORMS:
        raise KernelError(f"unknown input form {form!r}; valid: {FORMS}")
    tr, tc = (int(t) for t in tile)
    if tr < 1 or tc < 1 or (form == "flat" and tr != 1):
        raise KernelError(f"bad tile {tile} for form {form!r} (flat tiles are (1, tc))")
    (h, w), (kh, kw) = spec.input_hw, spec.kernel
    (sh, sw), (ph, pw), (dh, dw) = spec.stride, spec.padding, spec.dilation
    oh, ow = spec.out_hw
    channels = tuple(range(spec.in_channels)) if channels is None else tuple(channels)
    qi, qj = (dh * (kh - 1)) // sh, (dw * (kw - 1)) // sw
    if form == "rows":
        nr, nc, po = oh, ow, ow
    else:
        nr, nc, po = 1, oh * ow, oh * ow
    ntr, ntc = -(-nr // tr), -(-nc // tc)
    simple = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
    if simple and ntr * tr == nr and ntc * tc == nc:  # tiles never read past the input
        c = spec.in_channels
        return InputPlan(spec, form, True, tuple(range(c)), 1, h, w, h * w, h * w, c * h * w,
                         nr, nc, po, tr, tc)  # fmt: skip
    if form == "rows":
        u, px = sw, ow + qj
        reach = qi * px + qj + (ntr * tr - 1) * px + ntc * tc
    else:
        u, px = kw, ow
        reach = qi * px + ntc * tc
    ha = oh + qi
    pl = ha * px
    planes = len(channels) * sh * u
    cstride = sh * u * pl
    xl = max(planes * pl, (planes - 1) * pl + reach, 1)
    return InputPlan(spec, form, False, channels, u, ha, px, pl, cstride, xl, nr, nc, po, tr, tc)
