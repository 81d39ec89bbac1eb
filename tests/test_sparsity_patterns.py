"""Tests for npas_lab.sparsity.patterns: library extraction, projection, connectivity pruning."""

from __future__ import annotations

import pytest
import torch

from npas_lab.sparsity import PatternLibrary, SparsityError, compute_mask
from npas_lab.sparsity.patterns import CENTER, candidate_patterns, pattern_mask


def kernel(*positions, big=1.0, small=0.01):
    """Return a 3x3 kernel with large values at ``positions`` (flat, row-major)."""
    k = torch.full((9,), small)
    k[list(positions)] = big
    return k.reshape(3, 3)


def test_there_are_56_candidates_all_with_the_centre():
    candidates = candidate_patterns()
    assert len(candidates) == len(set(candidates)) == 56
    assert all(len(p) == 4 and CENTER in p for p in candidates)


def test_library_holds_the_most_frequent_top4_shapes_most_frequent_first():
    kernels = [kernel(0, 1, 2)] * 5 + [kernel(6, 7, 8)] * 3 + [kernel(0, 3, 6)] * 1
    weight = torch.stack(kernels).reshape(9, 1, 3, 3)
    library = PatternLibrary.from_weights(weight, size=3)
    assert library.patterns == ((0, 1, 2, 4), (4, 6, 7, 8), (0, 3, 4, 6))


def test_library_is_padded_in_candidate_order_when_few_shapes_occur():
    weight = torch.stack([kernel(0, 1, 2)] * 4).reshape(4, 1, 3, 3)
    library = PatternLibrary.from_weights(weight, size=3)
    assert library.patterns[0] == (0, 1, 2, 4)
    assert library.patterns[1:] == tuple(p for p in candidate_patterns() if p != (0, 1, 2, 4))[:2]


def test_model_wide_library_counts_every_layer():
    a = torch.stack([kernel(0, 1, 2)] * 2).reshape(2, 1, 3, 3)
    b = torch.stack([kernel(6, 7, 8)] * 3).reshape(1, 3, 3, 3)
    assert PatternLibrary.from_weights([a, b], size=1).patterns == ((4, 6, 7, 8),)
    assert PatternLibrary.from_weights(a, size=1).patterns == ((0, 1, 2, 4),)


def test_every_kernel_is_projected_on_the_pattern_keeping_most_energy():
    library = PatternLibrary(((0, 1, 2, 4), (4, 6, 7, 8)))
    weight = torch.stack([kernel(6, 7, 8), kernel(0, 1, 2), kernel(6, 7, 2)]).reshape(3, 1, 3, 3)
    mask = compute_mask(weight, "pattern", 9 / 4, library=library).reshape(3, 9)
    assert mask[0].nonzero()[:, 0].tolist() == [4, 6, 7, 8]
    assert mask[1].nonzero()[:, 0].tolist() == [0, 1, 2, 4]
    assert mask[2].nonzero()[:, 0].tolist() == [4, 6, 7, 8]  # 2 of 3 large weights, not 1


def test_connectivity_pruning_removes_the_weakest_kernels_after_projection():
    # Kernel 1 has the largest total energy but off-pattern, so after projection it is weakest.
    library = PatternLibrary(((0, 1, 2, 4),))
    weight = torch.stack(
        [kernel(0, 1, 2, big=1.0), kernel(5, 6, 7, 8, big=3.0), kernel(0, 1, 2, big=0.8)]
    ).reshape(1, 3, 3, 3)
    mask = compute_mask(weight, "pattern", 27 / 8, library=library)  # keep 2 kernels of 3
    assert mask.reshape(3, 9).any(1).tolist() == [True, False, True]


def test_pattern_is_reproducible_and_uses_only_the_library():
    weight = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    library = PatternLibrary.from_weights(weight, size=4)
    first = compute_mask(weight, "pattern", 4.0, library=library)
    assert torch.equal(first, compute_mask(weight, "pattern", 4.0, library=library))
    shapes = {tuple(k.nonzero()[:, 0].tolist()) for k in first.reshape(-1, 9) if k.any()}
    assert shapes <= set(library.patterns)


def test_num_patterns_sets_the_extracted_library_size():
    weight = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    mask = compute_mask(weight, "pattern", 9 / 4, num_patterns=2)
    shapes = {tuple(k.nonzero()[:, 0].tolist()) for k in mask.reshape(-1, 9)}
    assert len(shapes) <= 2


def test_library_masks_and_validation():
    library = PatternLibrary(((4, 0, 1, 2),))  # normalised to sorted order
    assert library.patterns == ((0, 1, 2, 4),)
    assert library.masks().shape == (1, 3, 3) and library.masks()[0, 1, 1]
    for bad in ((), ((0, 1, 2, 3),), ((0, 1, 4),), ((0, 1, 2, 4), (0, 1, 2, 4))):
        with pytest.raises(SparsityError, match="pattern library"):
            PatternLibrary(bad)
    with pytest.raises(SparsityError, match="1 to 56"):
        PatternLibrary.from_weights(torch.randn(2, 2, 3, 3), size=57)


def test_pattern_refuses_a_library_of_the_wrong_type_and_low_rates():
    scores = torch.rand(2, 2, 3, 3)
    with pytest.raises(SparsityError, match="PatternLibrary"):
        pattern_mask(scores, 3.0, library=[(0, 1, 2, 4)], layer="c")
    with pytest.raises(SparsityError, match=r"'c'.*9/4"):
        pattern_mask(scores, 2.0, layer="c")
