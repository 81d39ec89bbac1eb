"""Tests for npas_lab.sparsity.schemes / selection / importance: masks at exact rates."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npas_lab.sparsity import SCHEMES, Importance, SparsityError, compute_mask, schemes_for
from npas_lab.sparsity.masks import get_scheme, list_schemes
from npas_lab.sparsity.patterns import PatternLibrary
from npas_lab.sparsity.selection import check_rate, select_groups

SETTINGS = settings(max_examples=30, deadline=None)


def randn(shape, seed):
    """Return a tie-free (almost surely) random weight."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@st.composite
def conv_case(draw, kernels=((1, 1), (3, 3), (1, 3), (5, 5))):
    """Draw (weight, block) for a conv layer; blocks may be ragged."""
    f, c = draw(st.integers(1, 20)), draw(st.integers(1, 10))
    kh, kw = draw(st.sampled_from(kernels))
    weight = randn((f, c, kh, kw), draw(st.integers(0, 2**31 - 1)))
    block = (draw(st.integers(1, f)), draw(st.integers(1, c)))
    return weight, block


def draw_rate(data, scheme, weight, **opts):
    low, high = get_scheme(scheme).rate_range(tuple(weight.shape), **opts)
    return low + data.draw(st.floats(0, 1)) * (high - low)


def group_size(scheme, weight, block=None, prune="rows"):
    """Largest group of ``scheme`` on ``weight`` (how far the kept count may be off)."""
    f, c = weight.shape[:2]
    k = weight[0, 0].numel()
    return {
        "unstructured": 1,
        "filter": c * k,
        "channel": f * k,
        "column": f,
        "pattern": 4,
        "block_punched": block[0] if block else 8,
        "block": (block[1] if prune == "rows" else block[0]) if block else 8,
    }[scheme]


def assert_rate(mask, scheme, rate, weight, **kw):
    expected = round(weight.numel() / rate)
    assert abs(int(mask.sum()) - expected) <= group_size(scheme, weight, **kw)
    assert mask.any()


# --- achieved rate and structure, per scheme -------------------------------------------------


@SETTINGS
@given(conv_case(), st.data())
def test_unstructured_keeps_the_largest_weights_at_the_rate(case, data):
    weight, _ = case
    rate = draw_rate(data, "unstructured", weight)
    mask = compute_mask(weight, "unstructured", rate)
    assert abs(int(mask.sum()) - round(weight.numel() / rate)) <= 1
    if mask.any() and (~mask).any():
        assert weight.abs()[mask].min() > weight.abs()[~mask].max()


@SETTINGS
@given(conv_case(), st.data())
def test_filter_pruning_keeps_whole_filters(case, data):
    weight, _ = case
    rate = draw_rate(data, "filter", weight)
    mask = compute_mask(weight, "filter", rate)
    rows = mask.flatten(1)
    assert (rows.all(1) | ~rows.any(1)).all()
    assert_rate(mask, "filter", rate, weight)


@SETTINGS
@given(conv_case(), st.data())
def test_channel_pruning_keeps_whole_input_channels(case, data):
    weight, _ = case
    rate = draw_rate(data, "channel", weight)
    mask = compute_mask(weight, "channel", rate)
    channels = mask.transpose(0, 1).flatten(1)
    assert (channels.all(1) | ~channels.any(1)).all()
    assert_rate(mask, "channel", rate, weight)


@SETTINGS
@given(conv_case(), st.data())
def test_column_pruning_keeps_the_same_positions_in_every_filter(case, data):
    weight, _ = case
    rate = draw_rate(data, "column", weight)
    mask = compute_mask(weight, "column", rate)
    assert torch.equal(mask, mask[:1].expand_as(mask))
    assert_rate(mask, "column", rate, weight)


@SETTINGS
@given(conv_case(), st.data())
def test_block_punched_filters_of_a_block_keep_identical_positions(case, data):
    weight, block = case
    rate = draw_rate(data, "block_punched", weight, block=block)
    mask = compute_mask(weight, "block_punched", rate, block=block)
    for start in range(0, weight.shape[0], block[0]):  # the last block may be ragged
        rows = mask[start : start + block[0]]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    assert_rate(mask, "block_punched", rate, weight, block=block)


@SETTINGS
@given(conv_case(kernels=((3, 3),)), st.data())
def test_pattern_kernels_keep_four_weights_of_one_library_pattern(case, data):
    weight, _ = case
    rate = draw_rate(data, "pattern", weight)
    mask = compute_mask(weight, "pattern", rate)
    kernels = mask.reshape(-1, 9)
    counts = kernels.sum(1)
    assert ((counts == 0) | (counts == 4)).all()
    kept = kernels[counts == 4]
    assert kept[:, 4].all()  # centre
    library = {tuple(p) for p in PatternLibrary.from_weights(weight).patterns}
    assert {tuple(k.nonzero()[:, 0].tolist()) for k in kept} <= library
    assert_rate(mask, "pattern", rate, weight)


@SETTINGS
@given(
    st.integers(1, 24),
    st.integers(1, 24),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["rows", "cols"]),
    st.data(),
)
def test_block_pruning_removes_whole_rows_or_columns_of_each_tile(f, c, seed, prune, data):
    weight = randn((f, c), seed)
    block = (data.draw(st.integers(1, f)), data.draw(st.integers(1, c)))
    rate = draw_rate(data, "block", weight, block=block, prune=prune)
    mask = compute_mask(weight, "block", rate, block=block, prune=prune)
    for r0 in range(0, f, block[0]):
        for c0 in range(0, c, block[1]):
            tile = mask[r0 : r0 + block[0], c0 : c0 + block[1]]
            lines = tile if prune == "rows" else tile.T
            assert (lines.all(1) | ~lines.any(1)).all()
    assert_rate(
        mask[:, :, None, None], "block", rate, weight[:, :, None, None], block=block, prune=prune
    )


# --- special cases of block_punched ----------------------------------------------------------


@SETTINGS
@given(conv_case(), st.data())
def test_block_punched_with_a_1x1_block_is_unstructured(case, data):
    weight, _ = case
    rate = draw_rate(data, "unstructured", weight)
    punched = compute_mask(weight, "block_punched", rate, block=(1, 1))
    assert torch.equal(punched, compute_mask(weight, "unstructured", rate))


@SETTINGS
@given(conv_case(), st.data())
def test_block_punched_with_a_whole_layer_block_is_column_pruning(case, data):
    weight, _ = case
    rate = draw_rate(data, "column", weight)
    whole = tuple(weight.shape[:2])
    punched = compute_mask(weight, "block_punched", rate, block=whole)
    assert torch.equal(punched, compute_mask(weight, "column", rate))


@SETTINGS
@given(conv_case(kernels=((1, 1),)), st.data())
def test_block_punched_on_1x1_conv_is_block_pruning_of_columns(case, data):
    weight, block = case
    rate = draw_rate(data, "block_punched", weight, block=block)
    punched = compute_mask(weight, "block_punched", rate, block=block)
    blocked = compute_mask(weight, "block", rate, block=block, prune="cols")
    assert torch.equal(punched, blocked)


def test_block_channel_extent_does_not_change_the_mask():
    # A punch lies in one channel: bc only tiles the storage (module docstring of schemes).
    weight = randn((16, 8, 3, 3), 1)
    masks = [compute_mask(weight, "block_punched", 5.0, block=(8, bc)) for bc in (1, 2, 4, 8)]
    assert all(torch.equal(masks[0], m) for m in masks[1:])


def test_block_punched_maps_depthwise_blocks_to_filters_of_one_channel():
    weight = randn((20, 1, 3, 3), 2)  # depthwise: one input channel per filter
    mask = compute_mask(weight, "block_punched", 3.0, block=(8, 4))
    for start in (0, 8, 16):  # ragged last block of 4 filters
        rows = mask[start : start + 8]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    assert abs(int(mask.sum()) - 60) <= 8


def test_ragged_blocks_still_reach_the_rate():
    weight = randn((10, 6, 3, 3), 3)  # 10 filters in blocks of 8: a block of 8 and one of 2
    mask = compute_mask(weight, "block_punched", 4.0, block=(8, 4))
    assert abs(int(mask.sum()) - 135) <= 8
    assert torch.equal(mask[8], mask[9])


def test_linear_weights_are_treated_as_1x1_convs():
    weight = randn((12, 20), 4)
    for scheme in ("unstructured", "filter", "channel", "column", "block", "block_punched"):
        mask = compute_mask(weight, scheme, 2.0, block=(4, 4) if "block" in scheme else None)
        assert mask.shape == weight.shape and mask.dtype == torch.bool
        assert abs(int(mask.sum()) - 120) <= 20


def test_rate_one_keeps_everything_and_dense_only_takes_rate_one():
    weight = randn((8, 4, 3, 3), 5)
    for scheme in ("dense", "unstructured", "filter", "block_punched"):
        assert compute_mask(weight, scheme, 1).all()
    with pytest.raises(SparsityError, match="rate 1"):
        compute_mask(weight, "dense", 2.0, layer="l")


def test_pattern_at_exactly_nine_quarters_is_pattern_pruning_alone():
    mask = compute_mask(randn((8, 8, 3, 3), 6), "pattern", 9 / 4)
    assert (mask.reshape(-1, 9).sum(1) == 4).all()


# --- importance ------------------------------------------------------------------------------


class Smallest(Importance):
    """Prefer small weights: the opposite of magnitude."""

    def __call__(self, weight):
        return 1.0 / (weight.abs() + 1e-3)


def test_importance_is_pluggable():
    weight = randn((8, 8), 7)
    mask = compute_mask(weight, "unstructured", 4.0, importance=Smallest())
    assert weight.abs()[mask].max() < weight.abs()[~mask].min()


def test_an_importance_of_the_wrong_shape_is_refused():
    class Flat(Importance):
        def __call__(self, weight):
            return weight.abs().flatten()

    with pytest.raises(SparsityError, match=r"'fc'.*shape"):
        compute_mask(randn((4, 4), 0), "unstructured", 2.0, importance=Flat(), layer="fc")


def test_groups_are_scored_by_the_l2_norm_of_their_weights():
    weight = torch.zeros(3, 4)
    weight[0] = torch.tensor([3.0, 0, 0, 0])  # L2 3, L1 3
    weight[1] = torch.tensor([1.0, 1, 1, 1])  # L2 2, L1 4
    weight[2] = torch.tensor([0.5, 0, 0, 0])
    mask = compute_mask(weight, "filter", 3.0)
    assert mask[0].all() and not mask[1:].any()


# --- selection -------------------------------------------------------------------------------


def test_select_groups_keeps_the_best_and_breaks_ties_by_index():
    keep = select_groups(torch.tensor([3.0, 1.0, 2.0]), torch.ones(3), 1.5)
    assert keep.tolist() == [True, False, True]
    tied = select_groups(torch.ones(4, dtype=torch.float64), torch.ones(4), 2.0)
    assert tied.tolist() == [True, True, False, False]


def test_select_groups_picks_the_prefix_closest_to_the_target():
    # sizes 5, 1, 1: target 10 / 1.6 = 6.25 -> keep 5 + 1 = 6, not 7
    keep = select_groups(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([5, 1, 1]), 1.6, total=10)
    assert keep.tolist() == [True, True, False]


def reference_selection(scores, sizes, rate, total):
    """Brute force: rank by (-score, index), keep the prefix closest to total / rate."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    counts = [sum(sizes[i] for i in order[:k]) for k in range(len(order) + 1)]
    target = total / rate
    best = min(range(1, len(order) + 1), key=lambda k: (abs(counts[k] - target), k))
    return {order[i] for i in range(best)}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=12),  # few values: many ties
    st.booleans(),
    st.data(),
)
def test_select_groups_matches_a_brute_force_reference(values, equal, data):
    n = len(values)
    sizes = [3] * n if equal else data.draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    total = sum(sizes)
    rate = data.draw(st.floats(1, total / min(sizes)))
    keep = select_groups(
        torch.tensor(values, dtype=torch.float64), torch.tensor(sizes), rate, total=total
    )
    assert set(keep.nonzero()[:, 0].tolist()) == reference_selection(values, sizes, rate, total)


def test_check_rate_refuses_non_numbers_and_rates_below_one():
    assert check_rate(6, scheme="s", layer="l") == 6.0
    for bad in (0.5, -1, math.nan, math.inf, True, "6"):
        with pytest.raises(SparsityError, match="'l'"):
            check_rate(bad, scheme="s", layer="l")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight_shape", "scheme", "rate", "kwargs", "match"),
    [
        ((4, 4, 3, 3), "nope", 2.0, {}, "unknown sparsity scheme 'nope'.*valid: dense, "),
        ((4, 4, 3, 3), "unstructured", 0.5, {}, "rate must be"),
        ((4, 4, 1, 1), "pattern", 3.0, {}, "pattern pruning needs 3x3 kernels.*1x1"),
        ((4, 4, 5, 5), "pattern", 3.0, {}, "5x5 kernels"),
        ((4, 4, 3, 3), "pattern", 2.0, {}, "9/4 = 2.25"),
        ((4, 4, 3, 3), "filter", 10.0, {}, "valid rates are 1 .* to 4 "),
        ((4, 4, 3, 3), "block_punched", 2.0, {"block": (8, 4)}, "larger than layer.*bf <= 4"),
        ((4, 4), "block", 2.0, {"block": (2, 8)}, "larger than layer"),
        ((4, 4, 3, 3), "block", 2.0, {}, "needs a matrix"),
        ((4, 4, 3, 3), "filter", 2.0, {"block": (2, 2)}, "takes no block"),
        ((4, 4, 3, 3), "block_punched", 2.0, {"block": (0, 2)}, "two positive ints"),
        ((4, 4), "block", 2.0, {"block": (2, 2), "prune": "diag"}, "'rows' or 'cols'"),
        ((4, 4, 3, 3), "column", 2.0, {"prune": "rows"}, "unknown option"),
        ((4, 4, 3), "filter", 2.0, {}, "expected a conv"),
    ],
)
def test_invalid_requests_raise_one_error_naming_the_layer(
    weight_shape, scheme, rate, kwargs, match
):
    with pytest.raises(SparsityError, match=match) as info:
        compute_mask(torch.randn(weight_shape), scheme, rate, layer="blocks.3.conv", **kwargs)
    assert "blocks.3.conv" in str(info.value) or scheme == "nope"
    assert isinstance(info.value, ValueError)


def test_unknown_scheme_error_names_the_layer():
    with pytest.raises(SparsityError, match=r"'x\.conv'"):
        compute_mask(torch.randn(2, 2), "nope", 2.0, layer="x.conv")


# --- registry and fit ------------------------------------------------------------------------


def test_registry_lists_every_scheme():
    assert list_schemes() == list(SCHEMES)
    assert set(list_schemes()) == {
        "dense",
        "unstructured",
        "filter",
        "channel",
        "column",
        "pattern",
        "block",
        "block_punched",
    }


@pytest.mark.parametrize(
    ("row", "present", "absent"),
    [
        ({"kind": "conv", "kernel": (3, 3)}, {"pattern", "block_punched", "channel"}, {"block"}),
        ({"kind": "conv", "kernel": (5, 5)}, {"block_punched"}, {"pattern", "block"}),
        ({"kind": "depthwise", "kernel": (3, 3)}, {"block_punched"}, {"pattern", "channel"}),
        ({"kind": "pointwise", "kernel": (1, 1)}, {"block", "block_punched"}, {"pattern"}),
        ({"kind": "linear", "kernel": None}, {"block", "column"}, {"pattern", "block_punched"}),
    ],
)
def test_schemes_for_matches_layer_kinds(row, present, absent):
    schemes = set(schemes_for(row))
    assert present <= schemes and not absent & schemes
    assert {"dense", "unstructured", "filter", "column"} <= schemes
