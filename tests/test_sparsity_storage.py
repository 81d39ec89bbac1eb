"""Tests for npas_lab.sparsity.storage and footprint: exact round trips and byte counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npas_lab.sparsity import (
    CSRStorage,
    PatternStorage,
    ShrunkStorage,
    SparsityError,
    TiledStorage,
    compact,
    compute_mask,
    storage_table,
)
from npas_lab.sparsity.masks import get_scheme
from npas_lab.sparsity.storage import index_bytes

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def pruned(draw, scheme):
    """Draw (weight, mask, block) pruned by ``scheme`` at a reachable random rate."""
    kernels = (
        [(3, 3)]
        if scheme == "pattern"
        else [(1, 1)]
        if scheme == "block"
        else [(1, 1), (3, 3), (1, 3)]
    )
    f, c = draw(st.integers(1, 18)), draw(st.integers(1, 9))
    kh, kw = draw(st.sampled_from(kernels))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    weight = torch.randn(f, c, kh, kw, generator=gen)
    if scheme == "block" and draw(st.booleans()):
        weight = weight[:, :, 0, 0]  # a linear weight
    block = None
    if scheme in ("block", "block_punched"):
        block = (draw(st.integers(1, f)), draw(st.integers(1, c)))
    low, high = get_scheme(scheme).rate_range(tuple(weight.shape), block=block)
    rate = low + draw(st.floats(0, 1)) * (high - low)
    return weight, compute_mask(weight, scheme, rate, block=block), block


@pytest.mark.parametrize(
    "scheme", ["unstructured", "filter", "channel", "column", "pattern", "block", "block_punched"]
)
def test_every_format_round_trips_exactly(scheme):
    @SETTINGS
    @given(pruned(scheme))
    def check(case):
        weight, mask, block = case
        stored = compact(weight, mask, scheme, block=block)
        assert torch.equal(stored.to_dense(), weight * mask)
        assert 0 < stored.nbytes()

    check()


@SETTINGS
@given(pruned("block"))
def test_block_storage_round_trips_with_column_pruning_inside_tiles(case):
    weight, _, block = case
    mask = compute_mask(
        weight, "block", 2.0 if weight.shape[1] > 1 else 1.0, block=block, prune="cols"
    )
    stored = compact(weight, mask, "block", block=block, prune="cols")
    assert torch.equal(stored.to_dense(), weight * mask)


@SETTINGS
@given(pruned("unstructured"))
def test_csr_round_trips_any_mask(case):
    weight, mask, _ = case
    assert torch.equal(CSRStorage.from_dense(weight, mask).to_dense(), weight * mask)


def test_index_bytes_uses_the_smallest_unsigned_type():
    assert [index_bytes(v) for v in (0, 255, 256, 65535, 65536, 2**32 - 1, 2**32)] == [
        1,
        1,
        2,
        2,
        4,
        4,
        8,
    ]


def test_csr_bytes_known_answer():
    weight = torch.arange(1.0, 13.0).reshape(3, 4)
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    stored = CSRStorage.from_dense(weight, mask)
    assert stored.row_ptr.tolist() == [0, 2, 2, 6]
    assert stored.col_idx.tolist() == [0, 3, 0, 1, 2, 3]
    assert stored.nbytes() == 4 * 1 + 6 * 1 + 6 * 4


def test_block_punched_storage_keeps_per_block_indices_and_a_dense_matrix():
    weight = torch.randn(16, 8, 3, 3)
    mask = compute_mask(weight, "block_punched", 4.0, block=(8, 4))
    stored = compact(weight, mask, "block_punched", block=(8, 4))
    assert stored.tile == (8, 36) and len(stored.counts) == 2 * 2
    assert stored.values.numel() == int(mask.sum())
    # 4 tile counts (<= 36: 1 byte) + one 1-byte local index per kept punch + float32 values
    assert stored.nbytes() == 4 + int(mask.sum()) // 8 + 4 * int(mask.sum())


def test_depthwise_block_punched_storage_uses_one_channel_blocks():
    weight = torch.randn(12, 1, 3, 3)
    mask = compute_mask(weight, "block_punched", 3.0)
    stored = compact(weight, mask, "block_punched")
    assert stored.tile == (8, 9)
    assert torch.equal(stored.to_dense(), weight * mask)


def test_shrunk_storage_is_the_smaller_dense_tensor():
    weight = torch.randn(8, 6, 3, 3)
    mask = compute_mask(weight, "filter", 4.0)
    stored = ShrunkStorage.from_dense(weight, mask)
    assert stored.values.shape == (2, 6, 3, 3) and stored.channels is None
    assert stored.nbytes() == 2 * 6 * 9 * 4 + 2


def test_pattern_storage_groups_kernels_by_pattern_within_each_filter():
    weight = torch.randn(4, 16, 3, 3)
    mask = compute_mask(weight, "pattern", 4.0)
    stored = PatternStorage.from_dense(weight, mask)
    assert stored.values.shape == (int(mask.sum()) // 4, 4)
    assert stored.filter_counts.sum() == len(stored.channels) == len(stored.pattern_ids)
    start = 0
    for count in stored.filter_counts.tolist():
        ids = stored.pattern_ids[start : start + count]
        assert torch.equal(ids, ids.sort().values)
        start += count


@pytest.mark.parametrize(
    ("cls", "scheme", "match"),
    [
        (ShrunkStorage, "unstructured", "whole filters"),
        (PatternStorage, "unstructured", "0 or 4"),
        (TiledStorage, "unstructured", "same"),
    ],
)
def test_formats_refuse_masks_without_their_structure(cls, scheme, match):
    weight = torch.randn(8, 8, 3, 3)
    mask = compute_mask(weight, scheme, 3.0)
    with pytest.raises(SparsityError, match=match):
        cls.from_dense(weight, mask)


def test_compact_names_valid_schemes_for_an_unknown_one():
    with pytest.raises(SparsityError, match="valid: dense, unstructured"):
        compact(torch.randn(2, 2), torch.ones(2, 2, dtype=torch.bool), "nope")


def test_storage_table_compares_every_scheme_with_dense_and_csr():
    weight = torch.randn(32, 32, 3, 3, generator=torch.Generator().manual_seed(0))
    table = storage_table(weight, rates=(2.0, 6.0))
    assert set(table["scheme"]) == {
        "unstructured",
        "filter",
        "channel",
        "column",
        "pattern",
        "block_punched",
    }
    unreachable = table[(table["scheme"] == "pattern") & (table["rate"] == 2.0)].iloc[0]
    assert math.isnan(unreachable["bytes"]) and "9/4" in unreachable["note"]
    done = table.dropna(subset=["bytes"])
    assert (done["vs_dense"] < 1).all()
    unstructured = done[done["scheme"] == "unstructured"]
    assert (unstructured["vs_csr"] == 1).all()
    structured = done[done["scheme"].isin(["filter", "channel", "column", "block_punched"])]
    assert (structured["vs_csr"] < 0.75).all()
    assert ((done["achieved_rate"] - done["rate"]).abs() / done["rate"] < 0.1).all()


def test_storage_table_of_a_matrix_includes_block_but_not_pattern():
    table = storage_table(torch.randn(16, 16), rates=(4.0,))
    assert "block" in set(table["scheme"]) and "pattern" not in set(table["scheme"])
