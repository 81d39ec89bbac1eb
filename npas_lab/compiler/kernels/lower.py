"""Lower a (masked) conv weight under a scheme to a :class:`Kernel`; the tuning space.

Scheme -> layout (see :mod:`~npas_lab.compiler.kernels.layouts`) -> gather template with one
configuration. A configuration is a plain dict:

``form``
    Input staging, ``"rows"`` or ``"flat"`` (:mod:`~npas_lab.compiler.kernels.geometry`).
``rows``
    ``R``, filters per row group (register tile height). For block_punched it divides ``bf``
    (a block's filters share their columns); for unstructured ``R > 1`` multiplies the union
    of the group's columns (stored zeros) to reuse each input vector ``R`` times; 1 for pattern,
    depthwise and row-pruned blocks.
``tr``, ``tc``
    Output tile: grid rows x columns (``flat``: ``tr = 1``).
``order``
    ``"group"`` or ``"spatial"`` tile order.
``lanes``
    float32 vector lanes of the target (from ``llvm_get_vector_width``).
``ragged``
    ``"exact"`` (each group has its own entry count, the default) or ``"pad"`` (every group
    padded with zero weights to the longest; kept for the comparison in the benchmarks).
``whole_kernels``
    Column layouts: a channel whose whole ``kh x kw`` kernel a group keeps becomes one entry
    (default True; :func:`~npas_lab.compiler.kernels.layouts.column_layout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm

from npas_lab.compiler.kernels.gather import build_gather, gather_constants
from npas_lab.compiler.kernels.geometry import plan_input
from npas_lab.compiler.kernels.layouts import (
    GatherLayout,
    column_layout,
    kernel_layout,
    pad_groups,
    segment_layout,
)
from npas_lab.compiler.kernels.spec import SCHEMES, ConvSpec, Kernel, KernelError

__all__ = ["TEMPLATE_VERSION", "config_space", "conv_kernel", "default_lanes", "target_lanes"]

#: Bumped when the template or its configuration space changes: tuning records of another
#: version are not reused (it is part of the tuning database key).
TEMPLATE_VERSION = 2

#: At most this many accumulator vectors per tile (AVX-512 has 32 vector registers; the
#: loads and the broadcast weight need a few).
MAX_ACC = 24
_KEYS = ("form", "rows", "tr", "tc", "order", "lanes", "ragged", "whole_kernels")


def target_lanes(target: Mapping[str, Any] | None) -> int:
    """Return float32 vector lanes of an LLVM ``target`` dict (the host CPU when None)."""
    if target is None:
        return default_lanes()
    bits = tvm.target.codegen.llvm_get_vector_width(tvm.target.Target(dict(target)))
    return max(1, int(bits) // 32)


def default_lanes() -> int:
    """Return float32 vector lanes of the host CPU."""
    from npas_lab.devices.profiles import host_cpu_target  # devices/ imports compiler/

    return target_lanes(host_cpu_target())


def _resolve_scheme(spec: ConvSpec, scheme: str) -> str:
    if scheme not in SCHEMES:
        raise KernelError(f"unknown kernel scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if scheme == "depthwise" and spec.weight_shape[1] != 1:
        raise KernelError(
            f"depthwise kernels need one input channel per filter (groups == in_channels); "
            f"this spec has groups={spec.groups}, in_channels={spec.in_channels}"
        )
    if scheme == "dense" and spec.weight_shape[1] == 1 and spec.groups > 1:
        return "depthwise"
    if spec.groups > 1 and spec.weight_shape[1] > 1 and scheme not in ("dense", "channel"):
        raise KernelError(
            f"{scheme} kernels support groups == 1 or depthwise convs, not groups={spec.groups}"
        )
    if scheme == "pattern" and spec.kernel != (3, 3):
        raise KernelError(
            f"pattern kernels need 3x3 kernels; this spec has {spec.kernel[0]}x{spec.kernel[1]} "
            "kernels (use block_punched or unstructured)"
        )
    if scheme == "block" and spec.kernel != (1, 1):
        raise KernelError(
            f"block kernels lower 1x1 convs (matrices); this spec has "
            f"{spec.kernel[0]}x{spec.kernel[1]} kernels (use block_punched)"
        )
    return scheme


def _block(scheme: str, block: tuple[int, int] | None) -> tuple[int, int] | None:
    if block is None:
        return (8, 4) if scheme in ("block_punched", "block") else None
    if (
        len(tuple(block)) != 2
        or not all(isinstance(b, int | np.integer) and b >= 1 for b in block)
        or any(isinstance(b, bool) for b in block)
    ):
        raise KernelError(f"block must be two positive ints (filters, channels), got {block!r}")
    return tuple(int(b) for b in block)  # type: ignore[return-value]


def _row_options(spec: ConvSpec, scheme: str, block: tuple[int, int] | None) -> list[int]:
    f = spec.out_channels
    if scheme in ("depthwise", "pattern") or (spec.groups > 1 and spec.weight_shape[1] == 1):
        return [1]
    if scheme in ("block_punched", "block"):
        bf = block[0] if block else 8
        if spec.is_depthwise:
            return [1]
        opts = [r for r in (16, 8, 4, 2, 1) if bf % r == 0 and r <= max(bf, 1)][:2]
        return opts + ([1] if scheme == "block" and 1 not in opts else [])
    if scheme == "unstructured":
        return [1, 2, 4]
    per_group = f // spec.groups
    exact = [d for d in range(16, 3, -1) if per_group % d == 0 and d not in (8, 16, 4)]
    opts = [r for r in (8, 16, 4, *exact[:2]) if spec.groups == 1 or per_group % r == 0]
    if per_group < 4:
        opts.append(per_group)  # a few filters: one row group, no padding rows
    return opts or [1]


def _tiles(spec: ConvSpec, form: str, rows: int, lanes: int) -> list[tuple[int, int]]:
    oh, ow = spec.out_hw
    out: list[tuple[int, int]] = []
    if form == "rows":
        if ow >= lanes:
            widths = [w for w in (lanes, 2 * lanes) if w <= -(-ow // lanes) * lanes]
        else:
            widths = [1 << (ow - 1).bit_length()]  # one (narrower) vector per row
        for tc in widths:
            for tr in (1, 2, 3, 4, 8):
                if tr <= oh:
                    out.append((tr, tc))
    else:
        total = oh * ow
        for tc in (lanes, 2 * lanes, 4 * lanes, 8 * lanes):
            if tc <= -(-total // lanes) * lanes:
                out.append((1, tc))
    good = []
    for tr, tc in out:
        vectors = rows * tr * -(-tc // lanes)
        if vectors <= MAX_ACC:
            good.append((tr, tc, vectors))
    if not good:  # always keep the smallest tile
        tr, tc = min(out, key=lambda t: t[0] * t[1])
        good.append((tr, tc, rows * tr * -(-tc // lanes)))
    return [(tr, tc) for tr, tc, _ in good]


def _score(spec: ConvSpec, cfg: Mapping[str, Any]) -> float:
    """Heuristic rank (lower first) from a per-member cycle model of the register tile.

    Per kernel position (member) a tile issues ``R * tr * nvec`` FMAs (2 per cycle), loads
    ``tr * nvec`` input vectors and broadcasts ``R`` weights (about one per cycle), plus about a
    cycle of loop and index overhead; tiles past the output edge or padding rows are wasted.
    """
    oh, ow = spec.out_hw
    lanes, rows, tr, tc = cfg["lanes"], cfg["rows"], cfg["tr"], cfg["tc"]
    nvec = -(-tc // lanes)
    vectors, xloads = rows * tr * nvec, tr * nvec
    cycles = max(vectors / 2, (xloads + rows) / 2, rows) + 1
    efficiency = vectors / cycles / 2
    if cfg["form"] == "rows":
        used = oh * ow / (-(-oh // tr) * tr * -(-ow // tc) * tc)
        used *= min(tc, lanes) / lanes  # narrow vectors
    else:
        used = oh * ow / (-(-(oh * ow) // tc) * tc)
        used /= 1.0 + 0.15 * (spec.kernel[1] - 1) / max(1, ow)  # kw-fold staging
    f = spec.out_channels // spec.groups if spec.groups > 1 else spec.out_channels
    used *= f / (-(-f // rows) * rows)  # padding rows of the last row group
    score = -used * efficiency
    return score + (0.01 if cfg["order"] == "spatial" else 0.0)  # try the other tiles first


def config_space(
    spec: ConvSpec,
    scheme: str = "dense",
    *,
    block: tuple[int, int] | None = None,
    lanes: int | None = None,
) -> list[dict[str, Any]]:
    """Return the tuning space of ``scheme`` on ``spec``, most promising first.

    A handful to a few dozen configurations: input form x row-group size x output tile
    (bounded by the register file) x tile order.

    Parameters
    ----------
    spec
        The layer.
    scheme
        One of :data:`~npas_lab.compiler.kernels.spec.SCHEMES`.
    block
        ``(bf, bc)`` for block_punched, ``(rows, cols)`` for block; default ``(8, 4)``.
    lanes
        float32 vector lanes; default the host CPU's.
    """
    scheme = _resolve_scheme(spec, scheme)
    block = _block(scheme, block)
    lanes = lanes or default_lanes()
    simple = spec.kernel == (1, 1) and spec.stride == (1, 1) and spec.padding == (0, 0)
    forms = ["flat"] if simple else ["rows", "flat"]
    space = []
    for form in forms:
        for rows in _row_options(spec, scheme, block):
            for tr, tc in _tiles(spec, form, rows, lanes):
                orders = ["group", "spatial"] if rows <= 2 else ["group"]
                for order in orders:
                    space.append(
                        {
                            "form": form,
                            "rows": rows,
                            "tr": tr,
                            "tc": tc,
                            "order": order,
                            "lanes": lanes,
                            "ragged": "exact",
                            "whole_kernels": True,
                        }
                    )
    space.sort(key=lambda cfg: _score(spec, cfg))
    return space


def layout_for(
    spec: ConvSpec,
    weight: np.ndarray,
    scheme: str,
    *,
    rows: int,
    block: tuple[int, int] | None = None,
    whole_kernels: bool = True,
) -> GatherLayout:
    """Return the compact layout of ``weight`` under ``scheme`` with row groups of ``rows``."""
    groups = spec.groups
    if scheme == "depthwise":
        return kernel_layout(weight, groups=groups, keep_all=True)
    if spec.weight_shape[1] == 1 and scheme != "dense":  # pruned depthwise: kept positions
        return kernel_layout(weight, groups=groups)
    if scheme == "pattern":
        kept = (weight.reshape(weight.shape[0], weight.shape[1], 9) != 0).sum(-1)
        if kept.max(initial=0) > 4:
            f, c = np.unravel_index(int(kept.argmax()), kept.shape)
            raise KernelError(
                f"pattern kernels keep at most 4 weights per 3x3 kernel; kernel (filter {f}, "
                f"channel {c}) keeps {int(kept.max())} (prune the weight with scheme 'pattern')"
            )
        return kernel_layout(weight, groups=groups)
    if scheme == "block" and rows == 1:
        return segment_layout(weight, block[1] if block else 4)
    return column_layout(
        weight, rows, groups=groups, keep_all=scheme == "dense", whole_kernels=whole_kernels
    )


def _check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(_KEYS))
    if unknown:
        raise KernelError(f"unknown config key(s) {unknown}; valid: {list(_KEYS)}")
    return dict(config)


def conv_kernel(
    spec: ConvSpec,
    weight: np.ndarray,
    scheme: str = "dense",
    *,
    block: tuple[int, int] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Kernel:
    """Return the kernel computing ``conv2d(data, weight)`` (+ epilogue) for ``spec``.

    Parameters
    ----------
    spec
        The layer.
    weight
        The dense masked weight ``(F, C / groups, kh, kw)``, zeros where pruned (numpy or
        torch). The kernel derives its compact layout from it: it is exact for any weight, the
        scheme only decides what structure is exploited.
    scheme
        One of :data:`~npas_lab.compiler.kernels.spec.SCHEMES`; ``dense`` on a depthwise spec
        becomes ``depthwise``.
    block
        ``(bf, bc)`` for block_punched, ``(rows, cols)`` for block (default ``(8, 4)``).
    config
        A point of :func:`config_space` (missing keys take the first point's values).

    Raises
    ------
    KernelError
        Unknown scheme or config key, a weight that does not match ``spec``, pattern on
        non-3x3 kernels, block on kernels that are not 1x1, ...

    Examples
    --------
    >>> spec = ConvSpec(16, 16, 3, 1, 1, input_hw=8)
    >>> k = conv_kernel(spec, np.ones((16, 16, 3, 3), np.float32))
    >>> k.out_shape, [c.dtype.name for c in k.constants]
    ((1, 16, 8, 8), ['float32', 'int32', 'int32'])
    """
    scheme = _resolve_scheme(spec, scheme)
    weight = spec.check_weight(weight)
    block = _block(scheme, block)
    given = _check_config(config or {})
    lanes = int(given.get("lanes") or default_lanes())
    cfg = {**config_space(spec, scheme, block=block, lanes=lanes)[0], **given}
    rows = int(cfg["rows"])
    if scheme == "block_punched" and not spec.is_depthwise and block[0] % rows:
        raise KernelError(f"block_punched rows={rows} must divide the block's {block[0]} filters")
    layout = layout_for(
        spec, weight, scheme, rows=rows, block=block, whole_kernels=bool(cfg["whole_kernels"])
    )
    if cfg["ragged"] == "pad":
        layout = pad_groups(layout)
    elif cfg["ragged"] != "exact":
        raise KernelError(f"config ragged must be 'exact' or 'pad', got {cfg['ragged']!r}")
    channels = layout.channels() or (0,)
    plan = plan_input(spec, cfg["form"], (cfg["tr"], cfg["tc"]), channels=channels)
    if cfg["order"] not in ("group", "spatial"):
        raise KernelError(f"config order must be 'group' or 'spatial', got {cfg['order']!r}")
    primfunc = build_gather(spec, layout, plan, lanes=lanes, order=cfg["order"])
    constants = gather_constants(layout, plan)
    oh, ow = spec.out_hw
    ntr, ntc = plan.tiles
    pixels = spec.batch * ntr * plan.tr * ntc * plan.tc
    info = {
        "macs": spec.macs,
        "kept": int(np.count_nonzero(weight)) * spec.batch * oh * ow,
        "executed": layout.multiply_adds() * pixels,
        "entries": layout.entries,
        "rows": layout.rows,
        "shapes": len(layout.shapes),
        "staged_channels": 0 if plan.identity else len(plan.channels),
    }
    k = spec.kernel
    name = f"{scheme}_{spec.in_channels}x{spec.out_channels}_k{k[0]}x{k[1]}_{spec.input_hw[0]}"
    return Kernel(name, scheme, spec, cfg, primfunc, constants, spec.out_shape, info)
