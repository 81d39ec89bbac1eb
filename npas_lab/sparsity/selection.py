"""Keep the best-scored groups of a layer at a requested pruning rate, with one threshold.

Every scheme reduces to this step: it partitions the weights into groups (single weights,
filters, punches, kernels, ...), scores each group, and keeps the groups above one per-layer
threshold, chosen so that the kept weights come as close as possible to ``total / rate``.
"""

from __future__ import annotations

import math
import numbers

import torch

from npas_lab.sparsity.errors import SparsityError

__all__ = ["check_rate", "group_norms", "select_groups"]


def check_rate(rate: object, *, scheme: str, layer: str) -> float:
    """Return ``rate`` as a float after checking it is a finite number >= 1.

    Parameters
    ----------
    rate
        Pruning rate: dense weights / kept weights (6 keeps one weight in six).
    scheme, layer
        Named in the error message.

    Raises
    ------
    SparsityError
        For a non-number, NaN, infinity or a rate below 1.
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise SparsityError(
            f"{scheme} pruning of layer {layer!r}: rate must be a number >= 1, got {rate!r}"
        )
    value = float(rate)
    if not math.isfinite(value) or value < 1.0:
        raise SparsityError(
            f"{scheme} pruning of layer {layer!r}: rate must be a finite number >= 1 "
            f"(dense weights / kept weights; 1 keeps everything), got {rate!r}"
        )
    return value


def group_norms(scores: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Return the L2 norm of the per-weight ``scores`` of every group (float64, ``num_groups``).

    Parameters
    ----------
    scores
        Per-weight importance scores.
    group_ids
        Group index of every weight, same shape as ``scores``, values in ``[0, num_groups)``.
    num_groups
        Number of groups.
    """
    # float64: summing many float32 squares loses the low bits that break near-ties.
    squares = scores.detach().reshape(-1).to(torch.float64) ** 2
    sums = torch.zeros(num_groups, dtype=torch.float64, device=scores.device)
    sums.index_add_(0, group_ids.reshape(-1), squares)
    return sums.sqrt()


def select_groups(
    scores: torch.Tensor,
    sizes: torch.Tensor,
    rate: float,
    *,
    total: int | None = None,
    scheme: str = "?",
    layer: str = "?",
    unit: str = "group",
) -> torch.Tensor:
    """Return a boolean keep flag per group: the best-scored groups, about ``total / rate`` weights.

    Groups are ranked by score (ties: lower index first, so the result is deterministic) and the
    kept prefix is the one whose weight count is closest to ``total / rate``; it is therefore
    exact up to half a group, and never empty (at least one group is kept).

    Parameters
    ----------
    scores
        Score per group (larger is more important), 1-D.
    sizes
        Weights per group, 1-D integers, same length.
    rate
        Pruning rate (dense / kept), already checked by :func:`check_rate`.
    total
        Weights of the dense layer; by default ``sizes.sum()``. Larger when the groups only cover
        part of the layer (pattern pruning: 4 of the 9 weights of every kernel).
    scheme, layer, unit
        Named in error messages (``unit`` is what a group is: "filter", "punch", ...).

    Raises
    ------
    SparsityError
        If the rate is below what keeping every group gives, or above what keeping the smallest
        group gives (the scheme would have to remove every group).
    """
    if not torch.isfinite(scores).all():
        raise SparsityError(f"importance scores of layer {layer!r} contain NaN or infinity")
    sizes = sizes.to(torch.int64)
    kept_all = int(sizes.sum())
    total = kept_all if total is None else int(total)
    low, high = total / kept_all, total / int(sizes.min())
    # A relative slack so that e.g. 9 / 4 typed as 2.25 is not refused for rounding.
    if rate < low * (1 - 1e-9) or rate > high * (1 + 1e-9):
        units = unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")
        raise SparsityError(
            f"{scheme} pruning cannot reach rate {rate:g} on layer {layer!r} ({total} weights "
            f"in {len(sizes)} {units} of at least {int(sizes.min())} weights): valid rates are "
            f"{low:.4g} (every {unit} kept) to {high:.4g} (one {unit} kept)"
        )
    target = total / rate
    flags = torch.zeros(len(sizes), dtype=torch.bool, device=scores.device)
    if int(sizes.min()) == int(sizes.max()):
        # Equal groups (every scheme but ragged blocks): the count is plain arithmetic and a
        # k-th-value threshold replaces the O(n log n) stable sort (5x faster on big layers).
        quotient = target / int(sizes[0])
        keep = math.floor(quotient) + (quotient - math.floor(quotient) > 0.5)
        keep = min(max(keep, 1), len(sizes))
        threshold = torch.kthvalue(scores.cpu(), len(sizes) - keep + 1).values.to(scores.device)
        flags = scores > threshold
        ties = (scores == threshold).nonzero()[:, 0]
        flags[ties[: keep - int(flags.sum())]] = True  # lower index first, like the sort below
        return flags
    order = torch.sort(scores, descending=True, stable=True).indices
    cumulative = torch.cumsum(sizes[order], 0)
    # cumulative is increasing: the best prefix ends just below or just above the target.
    probe = torch.tensor([target], dtype=torch.float64, device=cumulative.device)
    above = int(torch.searchsorted(cumulative.to(torch.float64), probe)[0])
    below_count = int(cumulative[above - 1]) if above > 0 else 0
    above_count = int(cumulative[min(above, len(sizes) - 1)])
    keep = above if target - below_count <= above_count - target else above + 1
    keep = min(max(keep, 1), len(sizes))
    flags[order[:keep]] = True
    return flags
