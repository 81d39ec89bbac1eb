"""The one TIR template every scheme lowers to: stage the input, then a gather GEMM per tile.

Given a :class:`~npas_lab.compiler.kernels.layouts.GatherLayout` and an
:class:`~npas_lab.compiler.kernels.geometry.InputPlan`, :func:`build_gather` writes the
``PrimFunc`` with TVM's IR builder (Python-level loops unroll into straight-line TIR, so shapes,
offsets and tile sizes are compile-time constants)::

    for n in batch:
        parallel for staged channel cs:            # stage: zero-padded, phase-split copy of data
            X[plane(cs, phase) ...] = data[n, channels[cs], ...]   (vector runs, zero borders)
        parallel for tile in groups x spatial tiles:   # order: group-major or spatial-major
            acc[R][tr][tc] = 0                          # registers (R * tr * tc / lanes vectors)
            for each shape k (unrolled):
                for e in ptr[k, g] .. ptr[k, g + 1]:    # exact per-group count, no padding
                    o = offsets[e]                      # the only index load
                    for member m, row r, tile row, vector (all unrolled):
                        acc[r][..] += values[...] * X[o + rel[k][m] + ...]   # broadcast FMA
            out[n, g * R + r, tile] = epilogue(acc)     # bias, relu; guarded ragged edges

The "register tile" is ``R`` filters x ``tr`` output rows x ``tc`` output columns: each input
vector loaded feeds ``R`` FMAs, each broadcast weight ``tr * tc / lanes`` FMAs.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import tvm
import tvm.script.ir_builder.tirx as T
from tvm import tirx
from tvm.script.ir_builder import IRBuilder

from npas_lab.compiler.kernels.geometry import InputPlan
from npas_lab.compiler.kernels.layouts import GatherLayout
from npas_lab.compiler.kernels.spec import ConvSpec

__all__ = ["build_gather", "gather_constants"]

F32 = "float32"


def _zero(lanes: int = 1) -> tirx.PrimExpr:
    zero = tirx.FloatImm(F32, 0.0)
    return zero if lanes == 1 else tirx.Broadcast(zero, lanes)


def _ramp(start, lanes: int, stride: int = 1):
    return start if lanes == 1 else tirx.Ramp(start, stride, lanes)


def _emit_run(dst, dst_start, count: int, lanes: int, src=None, src_start=None, stride: int = 1):
    """Store ``count`` consecutive elements of ``dst``: zeros, or ``src`` read with ``stride``."""
    if count <= 0:
        return
    full = count // lanes
    if full:
        with T.serial(0, full) as v:
            value = (
                _zero(lanes)
                if src is None
                else src[_ramp(src_start + v * (lanes * stride), lanes, stride)]
            )
            T.buffer_store(dst, value, [_ramp(dst_start + v * lanes, lanes)])
    for t in range(full * lanes, count):
        value = _zero() if src is None else src[src_start + t * stride]
        T.buffer_store(dst, value, [dst_start + t])


def _emit_stage(spec: ConvSpec, plan: InputPlan, n, data_flat, X, chan_map, lanes: int) -> None:
    """Write the staged planes of batch item ``n`` into ``X`` (zeros where padding)."""
    c_in, h, w = spec.in_channels, *spec.input_hw
    (sh, sw), (ph, pw), (_, dw) = spec.stride, spec.padding, spec.dilation
    planes = len(plan.channels) * sh * plan.U
    with T.parallel(0, len(plan.channels)) as cs:
        c = chan_map[cs] if chan_map is not None else cs
        for pi in range(sh):
            a_lo = max(0, -(-(ph - pi) // sh))
            a_hi = min(plan.Ha, max(a_lo, (h - 1 + ph - pi) // sh + 1))
            for u in range(plan.U):
                cu = u if plan.form == "rows" else u * dw
                b_lo = max(0, -(-(pw - cu) // sw))
                b_hi = min(plan.PX, max(b_lo, (w - 1 + pw - cu) // sw + 1))
                base = ((cs * sh + pi) * plan.U + u) * plan.PL
                _emit_run(X, base, a_lo * plan.PX, lanes)
                _emit_run(X, base + a_hi * plan.PX, (plan.Ha - a_hi) * plan.PX, lanes)
                if a_hi <= a_lo:
                    continue
                with T.serial(a_lo, a_hi) as a:
                    row = base + a * plan.PX
                    src = ((n * c_in + c) * h + (a * sh + pi - ph)) * w + (b_lo * sw + cu - pw)
                    _emit_run(X, row, b_lo, lanes)
                    _emit_run(X, row + b_lo, b_hi - b_lo, lanes, data_flat, src, sw)
                    _emit_run(X, row + b_hi, plan.PX - b_hi, lanes)
    _emit_run(X, planes * plan.PL, plan.XL - planes * plan.PL, lanes)


def _lanes_for(tc: int, lanes: int) -> int:
    while lanes > 1 and tc % lanes:
        lanes //= 2
    return lanes


def gather_constants(layout: GatherLayout, plan: InputPlan) -> tuple[np.ndarray, ...]:
    """Return the constant arrays the kernel reads: values, offsets, pointers[, channels]."""
    base = layout.base
    offsets = (
        plan.offsets(base[:, 0], base[:, 1], base[:, 2])
        if len(base)
        else np.zeros(0, dtype=np.int64)
    )
    consts = [
        np.ascontiguousarray(layout.values if len(layout.values) else np.zeros(1), np.float32),
        np.ascontiguousarray(offsets if len(offsets) else np.zeros(1), np.int32),
        np.ascontiguousarray(layout.ptr, np.int32),
    ]
    if _maps_channels(plan):
        consts.append(np.asarray(plan.channels, dtype=np.int32))
    return tuple(consts)


def _maps_channels(plan: InputPlan) -> bool:
    """Whether only some input channels are staged (the kernel then reads a channel map)."""
    return not plan.identity and len(plan.channels) < plan.spec.in_channels


def _member_offsets(layout: GatherLayout, plan: InputPlan) -> list[list[int]]:
    """Return, per shape, each member's constant distance from its entry's offset."""
    c0 = plan.channels[0]
    rel = []
    for shape in layout.shapes:
        di = np.array([d[1] for d in shape])
        dj = np.array([d[2] for d in shape])
        dc = np.array([d[0] for d in shape])
        # Offsets are linear in the staged channel (cstride apart), so members of any entry sit
        # at the same distances as in an entry at the first staged channel.
        here = plan.offsets(np.full(len(shape), c0), di, dj) - plan.offsets([c0], [0], [0])
        step = plan.cstride if not plan.identity else int(np.prod(plan.spec.input_hw))
        rel.append((here + dc * step).astype(int).tolist())
    return rel


def build_gather(
    spec: ConvSpec,
    layout: GatherLayout,
    plan: InputPlan,
    *,
    lanes: int,
    order: str = "group",
) -> tvm.tirx.PrimFunc:
    """Return the ``PrimFunc(data, values, offsets, ptr[, channels][, bias], out)``.

    Parameters
    ----------
    spec, layout, plan
        The layer, its compact weight and its input staging / output tiling.
    lanes
        Vector lanes of float32 on the target (16 with AVX-512); a tile column count that is
        not a multiple uses the largest power-of-two divisor.
    order
        ``"group"``: tiles of one row group are consecutive (weights stay in cache);
        ``"spatial"``: tiles of one spatial region are consecutive (the input does).
    """
    n_batch = spec.batch
    rows, ng = layout.rows, layout.groups
    tr, tc = plan.tr, plan.tc
    vl = _lanes_for(tc, lanes)
    nvec = tc // vl
    ntr, ntc = plan.tiles
    ns = ntr * ntc
    pxr = plan.row_pitch
    rel = _member_offsets(layout, plan)
    epi = spec.epilogue
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            data = T.arg("data", T.buffer(spec.in_shape, F32))
            values = T.arg("values", T.buffer((max(len(layout.values), 1),), F32))
            offsets = T.arg("offsets", T.buffer((max(layout.entries, 1),), "int32"))
            ptr = T.arg("ptr", T.buffer((len(layout.ptr),), "int32"))
            chan_map = None
            if _maps_channels(plan):
                chan_map = T.arg("channels", T.buffer((len(plan.channels),), "int32"))
            bias = T.arg("bias", T.buffer(spec.bias_shape, F32)) if epi != "none" else None
            out = T.arg("out", T.buffer(spec.out_shape, F32))
            out_flat = T.decl_buffer((int(np.prod(spec.out_shape)),), F32, data=out.data)
            data_flat = T.decl_buffer((int(np.prod(spec.in_shape)),), F32, data=data.data)
            X = data_flat if plan.identity else T.alloc_buffer((plan.XL,), F32)
            with T.serial(0, n_batch) as n:
                x_base = n * int(np.prod(spec.in_shape[1:])) if plan.identity else 0
                if not plan.identity:
                    _emit_stage(spec, plan, n, data_flat, X, chan_map, lanes)
                with T.parallel(0, ng * ns) as tile:
                    if order == "group":
                        g, st = tile // ns, tile % ns
                    else:
                        g, st = tile % ng, tile // ng
                    r0 = st // ntc * tr
                    c0 = st % ntc * tc
                    acc = T.alloc_buffer((rows * tr * tc,), F32, scope="local")

                    def slot(r, rr, vo):
                        return _ramp((r * tr + rr) * tc + vo * vl, vl)

                    for z in range(rows * tr * nvec):
                        T.buffer_store(acc, _zero(vl), [_ramp(z * vl, vl)])
                    for k, shape in enumerate(layout.shapes):
                        ebase, _ = layout.shape_entries(k)
                        vbase = layout.value_base(k)
                        width = len(shape)
                        with T.serial(ptr[k * ng + g], ptr[k * ng + g + 1]) as e:
                            o = T.bind(x_base + offsets[e] + r0 * pxr + c0)
                            vb = T.bind(vbase + (e - ebase) * (width * rows))
                            for m in range(width):
                                xs = [
                                    [
                                        X[_ramp(o + rel[k][m] + rr * pxr + vo * vl, vl)]
                                        for vo in range(nvec)
                                    ]
                                    for rr in range(tr)
                                ]
                                for r in range(rows):
                                    wv = values[vb + (m * rows + r)]
                                    wv = wv if vl == 1 else tirx.Broadcast(wv, vl)
                                    for rr in range(tr):
                                        for vo in range(nvec):
                                            idx = slot(r, rr, vo)
                                            T.buffer_store(acc, acc[idx] + wv * xs[rr][vo], [idx])
                    _emit_epilogue(
                        spec, plan, out_flat, bias, acc, n, g, r0, c0, rows, vl, nvec, epi
                    )
    return ib.get()


def _epi(value, bias_value, epi: str, lanes: int):
    """Apply the epilogue; ``bias_value`` is a scalar (``bias``) or ``lanes`` values (``map``)."""
    if epi in ("bias", "bias_relu"):
        value = value + (bias_value if lanes == 1 else tirx.Broadcast(bias_value, lanes))
    elif epi != "none":
        value = value + bias_value
    if epi.endswith("relu"):
        value = tirx.Max(value, _zero(lanes))
    return value


def _bias_at(bias, epi: str, f, offset, lanes: int):
    """The epilogue's bias for filter ``f`` at output offset ``offset`` (in the plane)."""
    if bias is None:
        return None
    if epi.startswith("map"):
        return bias[offset] if lanes == 1 else bias[_ramp(offset, lanes)]
    return bias[f]


@contextmanager
def _when(condition, active: bool):
    """Emit the body under ``if condition`` when ``active``, unguarded otherwise."""
    if not active:
        yield
        return
    with T.If(condition):
        with T.Then():
            yield


def _emit_epilogue(spec, plan, out_flat, bias, acc, n, g, r0, c0, rows, vl, nvec, epi) -> None:
    """Write the accumulator tile to ``out`` with the epilogue, guarding ragged edges."""
    f_out = spec.out_channels
    oh, ow = spec.out_hw
    tr, tc = plan.tr, plan.tc
    for r in range(rows):
        f = g * rows + r
        with _when(f < f_out, f_out % rows != 0):
            for rr in range(tr):
                with _when(r0 + rr < plan.NR, plan.NR % tr != 0):
                    # ``at``: the offset in filter f's output plane (and in its bias map row).
                    at = f * oh * ow + (r0 + rr) * plan.PO + c0
                    dst = n * f_out * oh * ow + at
                    src = (r * tr + rr) * tc
                    if plan.NC % tc == 0:
                        _store_vectors(out_flat, acc, dst, src, bias, f, at, epi, vl, nvec)
                        continue
                    with T.If(c0 + tc <= plan.NC):
                        with T.Then():
                            _store_vectors(out_flat, acc, dst, src, bias, f, at, epi, vl, nvec)
                        with T.Else():
                            with T.serial(0, tc) as v:
                                with T.If(c0 + v < plan.NC):
                                    with T.Then():
                                        b = _bias_at(bias, epi, f, at + v, 1)
                                        value = _epi(acc[src + v], b, epi, 1)
                                        T.buffer_store(out_flat, value, [dst + v])


def _store_vectors(out_flat, acc, dst, src, bias, f, at, epi: str, vl: int, nvec: int) -> None:
    for vo in range(nvec):
        b = _bias_at(bias, epi, f, at + vo * vl, vl)
        value = _epi(acc[_ramp(src + vo * vl, vl)], b, epi, vl)
        T.buffer_store(out_flat, value, [_ramp(dst + vo * vl, vl)])
