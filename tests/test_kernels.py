"""Conv kernels of every scheme against torch's conv2d on small random layers; tuning database."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as tnf

from npas_lab.compiler.kernels import (
    ConvSpec,
    KernelError,
    TuningDatabase,
    config_space,
    conv_kernel,
    run_kernel,
    tune_kernel,
)
from npas_lab.compiler.kernels import tuning as tuning_module
from npas_lab.compiler.kernels.layouts import column_layout, kernel_layout, pad_groups
from npas_lab.compiler.kernels.lower import target_lanes
from npas_lab.compiler.kernels.runtime import compile_kernel
from npas_lab.sparsity import compute_mask

TOL = 1e-4
# Single-core targets keep builds and timings cheap and independent of the machine's cores.
TARGET = None


def _reference(spec: ConvSpec, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None):
    out = tnf.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(weight),
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=spec.groups,
    )
    if bias is not None:  # (F,) per filter, or a (F, OH, OW) map flattened
        per_filter = bias.shape == (spec.out_channels,)
        out = out + torch.from_numpy(bias).reshape((-1, 1, 1) if per_filter else out.shape[1:])
    return (out.relu() if spec.epilogue.endswith("relu") else out).numpy()


def _masked(spec: ConvSpec, scheme: str, rate: float | None, block=None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(spec.weight_shape, generator=gen)
    if rate is not None:
        weight = weight * compute_mask(weight, scheme, rate, block=block)
    return weight.numpy()


def _check(spec, scheme, weight, *, block=None, config=None, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.in_shape).astype(np.float32)
    bias = None
    if spec.bias_shape is not None:
        bias = rng.standard_normal(spec.bias_shape).astype(np.float32)
    kernel = conv_kernel(spec, weight, scheme, block=block, config=config)
    out = run_kernel(kernel, x, bias=bias, target=TARGET)
    ref = _reference(spec, x, weight, bias)
    assert out.shape == ref.shape == kernel.out_shape
    err = float(np.abs(out - ref).max())
    assert err < TOL, f"{kernel!r}: max error {err:g}"
    return kernel


CASES = [
    # (id, spec, scheme, rate, block, config)
    ("dense-3x3", ConvSpec(8, 12, 3, 1, 1, input_hw=9), "dense", None, None, None),
    (
        "dense-3x3-s2-relu",
        ConvSpec(8, 12, 3, 2, 1, input_hw=9, epilogue="bias_relu"),
        "dense",
        None,
        None,
        {"form": "rows", "tr": 2, "tc": 8},
    ),
    ("dense-5x5-s2-flat", ConvSpec(6, 10, 5, 2, 2, input_hw=11), "dense", None, None, None),
    (
        "dense-1x1-bias",
        ConvSpec(8, 12, 1, 1, 0, input_hw=7, epilogue="bias"),
        "dense",
        None,
        None,
        None,
    ),
    ("dense-1x1-s2", ConvSpec(8, 12, 1, 2, 0, input_hw=9), "dense", None, None, None),
    ("dense-dilated", ConvSpec(8, 12, 3, 1, 2, dilation=2, input_hw=9), "dense", None, None, None),
    (
        "dense-rect",
        ConvSpec(5, 7, (3, 1), (2, 1), (1, 0), input_hw=(9, 6)),
        "dense",
        None,
        None,
        None,
    ),
    ("stem-7x7-s2", ConvSpec(3, 8, 7, 2, 3, input_hw=17), "dense", None, None, None),
    ("two-filters", ConvSpec(3, 2, 3, 1, 1, input_hw=5), "dense", None, None, None),
    ("depthwise-3x3", ConvSpec(8, 8, 3, 1, 1, groups=8, input_hw=9), "depthwise", None, None, None),
    (
        "depthwise-5x5-s2-mult2",
        ConvSpec(6, 12, 5, 2, 2, groups=6, input_hw=9, epilogue="bias_relu"),
        "dense",
        None,
        None,
        None,
    ),
    ("grouped", ConvSpec(8, 16, 3, 1, 1, groups=2, input_hw=6), "dense", None, None, None),
    ("bp-3x3", ConvSpec(8, 12, 3, 1, 1, input_hw=9), "block_punched", 3.0, (4, 4), None),
    (
        "bp-3x3-ragged-rows",
        ConvSpec(10, 12, 3, 1, 1, input_hw=9),
        "block_punched",
        4.0,
        (8, 4),
        {"form": "rows", "rows": 8, "tr": 2, "tc": 16},
    ),
    (
        "bp-5x5-s2",
        ConvSpec(8, 12, 5, 2, 2, input_hw=11, epilogue="bias"),
        "block_punched",
        3.0,
        (4, 4),
        None,
    ),
    ("bp-1x1", ConvSpec(10, 13, 1, 1, 0, input_hw=8), "block_punched", 2.0, (4, 4), None),
    (
        "bp-1x1-ragged-tiles",
        ConvSpec(8, 12, 1, 1, 0, input_hw=9),
        "block_punched",
        3.0,
        (4, 4),
        None,
    ),
    (
        "bp-depthwise",
        ConvSpec(8, 8, 3, 1, 1, groups=8, input_hw=9),
        "block_punched",
        2.0,
        (4, 1),
        None,
    ),
    ("block-cols", ConvSpec(8, 12, 1, 1, 0, input_hw=9), "block", 3.0, (4, 4), {"rows": 4}),
    (
        "block-rows-segments",
        ConvSpec(10, 12, 1, 1, 0, input_hw=9),
        "block",
        3.0,
        (4, 4),
        {"rows": 1},
    ),
    ("pattern", ConvSpec(8, 12, 3, 1, 1, input_hw=9), "pattern", 4.0, None, None),
    (
        "pattern-s2-flat",
        ConvSpec(8, 12, 3, 2, 1, input_hw=10),
        "pattern",
        3.0,
        None,
        {"form": "flat"},
    ),
    (
        "unstructured-r1",
        ConvSpec(8, 12, 3, 1, 1, input_hw=9),
        "unstructured",
        3.0,
        None,
        {"rows": 1},
    ),
    (
        "unstructured-r2-spatial",
        ConvSpec(8, 12, 3, 1, 1, input_hw=9),
        "unstructured",
        5.0,
        None,
        {"rows": 2, "order": "spatial"},
    ),
    ("unstructured-5x5", ConvSpec(4, 6, 5, 1, 2, input_hw=7), "unstructured", 6.0, None, None),
    ("channel", ConvSpec(8, 12, 3, 1, 1, input_hw=9), "channel", 2.0, None, None),
    ("filter", ConvSpec(8, 12, 3, 1, 1, input_hw=9), "filter", 2.0, None, None),
    (
        "batch2",
        ConvSpec(4, 8, 3, 1, 1, input_hw=(5, 18), batch=2),
        "block_punched",
        2.0,
        (4, 4),
        None,
    ),
    # Bias maps: what a reader of a filter-pruned layer adds (differs at the borders).
    (
        "map-dense-ragged",
        ConvSpec(8, 12, 3, 1, 1, input_hw=9, epilogue="map_relu"),
        "dense",
        None,
        None,
        {"form": "rows", "tr": 2, "tc": 8},
    ),
    (
        "map-dense-flat-s2",
        ConvSpec(6, 10, 5, 2, 2, input_hw=11, epilogue="map"),
        "dense",
        None,
        None,
        {"form": "flat"},
    ),
    (
        "map-bp-batch2",
        ConvSpec(8, 12, 3, 1, 1, input_hw=(5, 18), batch=2, epilogue="map_relu"),
        "block_punched",
        3.0,
        (4, 4),
        None,
    ),
    (
        "map-depthwise",
        ConvSpec(8, 8, 3, 1, 1, groups=8, input_hw=9, epilogue="map"),
        "depthwise",
        None,
        None,
        None,
    ),
    (
        "map-unstructured",
        ConvSpec(8, 12, 3, 1, 1, input_hw=9, epilogue="map_relu"),
        "unstructured",
        4.0,
        None,
        {"rows": 2, "order": "spatial"},
    ),
]


@pytest.mark.parametrize(
    ("spec", "scheme", "rate", "block", "config"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_kernel_matches_torch(spec, scheme, rate, block, config):
    mask_scheme = scheme if scheme not in ("dense", "depthwise") else None
    weight = _masked(spec, mask_scheme, rate if mask_scheme else None, block)
    _check(spec, scheme, weight, block=block, config=config)


def test_every_config_of_the_space_is_correct():
    spec = ConvSpec(6, 10, 3, 1, 1, input_hw=(7, 20), epilogue="bias")
    weight = _masked(spec, "block_punched", 2.0, (4, 4))
    space = config_space(spec, "block_punched", block=(4, 4))
    assert 3 <= len(space) <= 48
    assert {c["form"] for c in space} == {"rows", "flat"}
    for config in space:
        _check(spec, "block_punched", weight, block=(4, 4), config=config)


def test_ragged_blocks_pad_and_exact_agree():
    # F = 13 is not a multiple of bf = 4, C = 6 not of bc = 4; blocks keep different counts.
    spec = ConvSpec(6, 13, 3, 1, 1, input_hw=8)
    weight = _masked(spec, "block_punched", 3.0, (4, 4))
    layout = column_layout(weight, 4)
    counts = np.diff(layout.ptr)
    assert counts.min() != counts.max()  # really ragged
    padded = pad_groups(layout)
    assert np.all(np.diff(padded.ptr) == counts.max())
    exact = _check(spec, "block_punched", weight, block=(4, 4), config={"ragged": "exact"})
    pad = _check(spec, "block_punched", weight, block=(4, 4), config={"ragged": "pad"})
    assert pad.info["executed"] > exact.info["executed"]


def _to_dense(layout, shape) -> np.ndarray:
    """Rebuild a groups=1 weight from its layout (the inverse of the lowering)."""
    f, c_in, kh, kw = shape
    dense = np.zeros((layout.groups * layout.rows, c_in, kh, kw), np.float32)
    ng = layout.groups
    for k, members in enumerate(layout.shapes):
        start, count = layout.shape_entries(k)
        vb, size = layout.value_base(k), len(members) * layout.rows
        for e in range(start, start + count):
            g = int(np.searchsorted(layout.ptr[k * ng : (k + 1) * ng + 1], e, side="right")) - 1
            block = layout.values[vb + (e - start) * size : vb + (e - start + 1) * size]
            c, i, j = layout.base[e]
            for m, (dc, di, dj) in enumerate(members):
                rows = slice(g * layout.rows, (g + 1) * layout.rows)
                dense[rows, c + dc, i + di, j + dj] += block.reshape(len(members), -1)[m]
    return dense[:f]


@pytest.mark.parametrize("scheme", ["block_punched", "unstructured", "pattern", "whole"])
def test_layouts_store_exactly_the_weight(scheme):
    spec = ConvSpec(8, 11, 3, 1, 1, input_hw=6)
    if scheme == "whole":  # half the channels dense, half punched: both entry shapes
        weight = _masked(spec, None, None)
        weight[:, 4:] *= _masked(spec, "block_punched", 2.0, (4, 4))[:, 4:] != 0
        layout = column_layout(weight, 4, whole_kernels=True)
        assert len(layout.shapes) == 2 and layout.shape_entries(1)[1] > 0
    elif scheme == "pattern":
        weight = _masked(spec, scheme, 4.0)
        layout = kernel_layout(weight)
        assert all(len(shape) == 4 for shape in layout.shapes) and layout.rows == 1
    else:
        weight = _masked(spec, scheme, 4.0, (4, 4) if scheme == "block_punched" else None)
        layout = column_layout(weight, 4)
    np.testing.assert_array_equal(_to_dense(layout, weight.shape), weight)


def test_kernel_info_counts_the_work():
    spec = ConvSpec(16, 16, 3, 1, 1, input_hw=8)
    weight = _masked(spec, "block_punched", 4.0, (8, 4))
    kernel = conv_kernel(spec, weight, "block_punched", block=(8, 4), config={"form": "flat"})
    assert kernel.info["macs"] == spec.macs
    assert kernel.info["kept"] == pytest.approx(spec.macs / 4, rel=0.1)
    assert kernel.info["executed"] == kernel.info["kept"]  # punches: no stored zeros
    dense = conv_kernel(spec, weight, "dense", config={"form": "flat"})
    assert dense.info["executed"] == spec.macs


def test_tuning_database_round_trip(tmp_path):
    spec = ConvSpec(4, 8, 3, 1, 1, input_hw=6)
    weight = _masked(spec, "block_punched", 2.0, (4, 4))
    db_path = tmp_path / "tuning.jsonl"
    target = {"kind": "llvm", "num-cores": 1}
    before = tuning_module.MEASUREMENTS["count"]
    kernel, ms = tune_kernel(
        spec, weight, "block_punched", block=(4, 4), target=target, budget=2,
        database=db_path, progress=False,
    )  # fmt: skip
    measured = tuning_module.MEASUREMENTS["count"] - before
    assert measured == 2 and ms > 0
    db = TuningDatabase(db_path)
    assert len(db) == 1
    record = next(db.records())
    assert record["config"] == dict(kernel.config) and len(record["candidates"]) == 2
    again, ms_again = tune_kernel(
        spec, weight, "block_punched", block=(4, 4), target=target, budget=2,
        database=db_path, progress=False,
    )  # fmt: skip
    assert tuning_module.MEASUREMENTS["count"] - before == measured  # nothing re-measured
    assert ms_again == ms and dict(again.config) == dict(kernel.config)
    assert len(TuningDatabase(db_path)) == 1
    x = np.ones(spec.in_shape, np.float32)
    np.testing.assert_allclose(
        run_kernel(again, x), _reference(spec, x, weight, None), atol=TOL, rtol=0
    )
    other = _masked(spec, "block_punched", 2.0, (4, 4), seed=7)  # another mask: another key
    assert (other != 0).tolist() != (weight != 0).tolist()
    tune_kernel(
        spec, other, "block_punched", block=(4, 4), target=target, budget=1,
        database=db_path, progress=False,
    )  # fmt: skip
    assert tuning_module.MEASUREMENTS["count"] - before == measured + 1
    assert len(TuningDatabase(db_path)) == 2


def test_tuning_default_database_is_under_results(isolated_home):
    spec = ConvSpec(2, 4, 1, 1, 0, input_hw=4)
    weight = _masked(spec, None, None)
    tune_kernel(spec, weight, "dense", target={"kind": "llvm", "num-cores": 1}, budget=1,
                progress=False)  # fmt: skip
    assert (isolated_home / "results" / "tuning" / "kernels.jsonl").exists()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            lambda: conv_kernel(
                ConvSpec(4, 4, 5, 1, 2, input_hw=6), np.ones((4, 4, 5, 5)), "pattern"
            ),
            ["pattern", "3x3", "5x5"],
        ),
        (
            lambda: conv_kernel(ConvSpec(4, 4, 3, 1, 1, input_hw=6), np.ones((4, 4, 1, 1))),
            ["weight shape", "(4, 4, 1, 1)", "(4, 4, 3, 3)"],
        ),
        (
            lambda: conv_kernel(ConvSpec(4, 4, 3, 1, 1, input_hw=6), np.ones((4, 4, 3, 3)), "nope"),
            ["unknown kernel scheme", "block_punched"],
        ),
        (
            lambda: conv_kernel(
                ConvSpec(4, 4, 3, 1, 1, input_hw=6), np.ones((4, 4, 3, 3)), "block"
            ),
            ["block", "1x1", "3x3"],
        ),
        (
            lambda: conv_kernel(
                ConvSpec(4, 4, 3, 1, 1, input_hw=6), np.ones((4, 4, 3, 3)), config={"tile": 3}
            ),
            ["unknown config key", "tile"],
        ),
        (
            lambda: conv_kernel(
                ConvSpec(4, 4, 3, 1, 1, input_hw=6), np.ones((4, 4, 3, 3)), "pattern"
            ),
            ["at most 4 weights", "kernel"],
        ),
        (
            lambda: conv_kernel(
                ConvSpec(4, 4, 3, 1, 1, input_hw=6), np.ones((4, 4, 3, 3)), "depthwise"
            ),
            ["depthwise", "groups"],
        ),
        (
            lambda: conv_kernel(
                ConvSpec(4, 8, 3, 1, 1, input_hw=6),
                np.ones((8, 4, 3, 3)),
                "block_punched",
                block=(8, 4),
                config={"rows": 3},
            ),
            ["divide"],
        ),
        (lambda: ConvSpec(4, 4, 7, 1, 0, input_hw=5), ["does not fit"]),
        (lambda: ConvSpec(4, 6, 3, 1, 1, groups=4, input_hw=5), ["groups"]),
        (lambda: ConvSpec(4, 4, 3, 1, 1, input_hw=5, dtype="float16"), ["float32"]),
        (lambda: ConvSpec(4, 4, 3, 1, 1, input_hw=5, epilogue="relu"), ["epilogue"]),
    ],
)
def test_invalid_inputs_name_the_problem(make, words):
    with pytest.raises(KernelError) as err:
        make()
    for word in words:
        assert word in str(err.value)


def test_run_kernel_checks_data_and_bias():
    spec = ConvSpec(4, 4, 3, 1, 1, input_hw=6, epilogue="bias")
    kernel = conv_kernel(spec, np.ones(spec.weight_shape, np.float32))
    with pytest.raises(KernelError, match="needs a bias"):
        run_kernel(kernel, np.ones(spec.in_shape, np.float32))
    with pytest.raises(KernelError, match="data shape"):
        run_kernel(kernel, np.ones((1, 4, 5, 5), np.float32), bias=np.ones(4, np.float32))
    mapped = conv_kernel(spec.with_(epilogue="map"), np.ones(spec.weight_shape, np.float32))
    assert mapped.spec.bias_shape == (4 * 6 * 6,)
    with pytest.raises(KernelError, match=r"bias shape \(4,\) != \(144,\)"):
        run_kernel(mapped, np.ones(spec.in_shape, np.float32), bias=np.ones(4, np.float32))


def test_kernel_cross_compiles_for_an_arm_phone():
    spec = ConvSpec(8, 8, 3, 1, 1, input_hw=8)
    weight = _masked(spec, "block_punched", 2.0, (8, 4))
    kernel = conv_kernel(spec, weight, "block_punched", config={"lanes": 4})  # 128-bit NEON
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
    assert target_lanes(target) == 4
    executable = compile_kernel(kernel, target)
    assert "fmla" in executable.mod.inspect_source("asm")  # NEON fused multiply-adds


def test_spec_round_trip_and_shapes():
    spec = ConvSpec(16, 32, 3, 2, 1, input_hw=(15, 16), epilogue="bias_relu")
    assert spec.out_shape == (1, 32, 8, 8)
    assert spec.macs == 32 * 16 * 9 * 64
    assert ConvSpec.from_dict(spec.to_dict()) == spec
    assert spec.with_(out_channels=8).weight_shape == (8, 16, 3, 3)
