"""The constraint set of a plan, seen two ways: a Euclidean projection (ADMM) and groups (Lasso).

Both follow the layer's scheme exactly as :func:`~npas_lab.sparsity.apply_plan` does, so what the
regularised phase pushes towards is what the final hard prune keeps.

Groups per scheme (:func:`scheme_groups`):

================  =====================================================================
unstructured      every single weight (group Lasso becomes plain L1)
filter            a filter (output channel)
channel           an input channel (all filters, all kernel positions)
column            a GEMM column: one kernel position ``(c, i, j)`` in every filter
block_punched     a punch: one position ``(c, i, j)`` in the ``bf`` filters of a block
block             a row (``prune="rows"``) or column segment of one ``rows x cols`` tile
pattern           a 3x3 kernel (what connectivity pruning removes; the 4-of-9 shape inside
                  a kept kernel is a projection, not a group)
================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from npas_lab.sparsity import (
    Importance,
    LayerChoice,
    Magnitude,
    PatternLibrary,
    PruningPlan,
    compute_mask,
    get_scheme,
)

__all__ = ["group_norm_penalty", "plan_masks", "project", "scheme_groups"]


def scheme_groups(
    shape: tuple[int, ...] | torch.Size, choice: LayerChoice, *, layer: str = "?"
) -> tuple[torch.Tensor, int]:
    """Return the group index of every weight of a layer (int64, ``shape``) and the group count.

    Parameters
    ----------
    shape
        The weight's shape: ``(F, C, kh, kw)`` or ``(F, C)`` for a linear layer.
    choice
        The layer's plan entry; its scheme, block and options decide the groups (module table).
    layer
        Named in error messages.

    Raises
    ------
    ValueError
        For ``dense`` (nothing to regularise) and for a registered scheme that defines no groups.
    """
    shape = tuple(shape)
    shape4 = (*shape, 1, 1) if len(shape) == 2 else shape
    spec = get_scheme(choice.scheme, layer=layer)
    if choice.scheme == "pattern":
        f, c = shape4[:2]
        ids = torch.arange(f * c).reshape(f, c, 1, 1).expand(shape4)
        return ids.reshape(shape), f * c
    if choice.scheme == "dense" or not hasattr(spec, "group_ids"):
        raise ValueError(
            f"scheme {choice.scheme!r} of layer {layer!r} defines no weight groups to regularise"
        )
    options = {k: v for k, v in choice.mask_options().items() if k in spec.options}
    block = spec.resolve_block(choice.block, shape4, layer)
    ids, count = spec.group_ids(shape4, block, layer=layer, **options)
    return ids.reshape(shape), int(count)


def group_norm_penalty(weight: torch.Tensor, ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Return ``sum_g sqrt(|g|) * ||w_g||_2``, differentiable in ``weight``.

    The ``sqrt(|g|)`` weighting is Yuan & Lin's (2006): without it ragged groups (the last block
    of a layer whose size is not a multiple of the block) would be favoured for their size.

    Parameters
    ----------
    weight
        The layer's weight.
    ids, num_groups
        From :func:`scheme_groups`.

    Examples
    --------
    Two filters of 4 weights, norms 5 and 0: ``sqrt(4) * 5 + sqrt(4) * 0``.

    >>> w = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    >>> ids = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    >>> group_norm_penalty(w, ids, 2)
    tensor(10.)
    """
    flat = ids.reshape(-1).to(weight.device)
    squares = weight.new_zeros(num_groups).index_add(0, flat, weight.reshape(-1) ** 2)
    sizes = torch.bincount(flat, minlength=num_groups).to(weight.dtype)
    # sqrt has an infinite slope at 0; clamping gives an all-zero group the subgradient 0.
    norms = squares.clamp_min(torch.finfo(weight.dtype).tiny).sqrt()
    norms = torch.where(squares > 0, norms, torch.zeros_like(norms))
    return (sizes.sqrt() * norms).sum()


def plan_masks(
    weights: Mapping[str, torch.Tensor],
    plan: PruningPlan,
    *,
    importance: Importance | None = None,
) -> dict[str, torch.Tensor]:
    """Return the keep-masks :func:`~npas_lab.sparsity.apply_plan` would install on ``weights``.

    Parameters
    ----------
    weights
        ``{layer_name: tensor}`` for every pruned (non-dense) layer of ``plan``.
    plan
        The plan; pattern layers share one library extracted from all their ``weights``, as
        ``apply_plan`` extracts it from the model.
    importance
        Per-weight scores (magnitude by default).
    """
    importance = importance or Magnitude()
    pruned = plan.pruned()
    missing = sorted(set(pruned) - set(weights))
    if missing:
        raise ValueError(f"plan_masks: no tensor given for pruned layer(s) {missing}")
    by_size: dict[int, list[torch.Tensor]] = {}
    for name, choice in pruned.items():
        if choice.scheme == "pattern":
            by_size.setdefault(choice.patterns, []).append(weights[name])
    libraries = {
        size: PatternLibrary.from_weights(tensors, size=size, importance=importance)
        for size, tensors in by_size.items()
    }
    masks = {}
    for name, choice in pruned.items():
        options = choice.mask_options()
        if choice.scheme == "pattern":
            options["library"] = libraries[options.pop("num_patterns")]
        masks[name] = compute_mask(
            weights[name].detach(),
            choice.scheme,
            choice.rate,
            importance=importance,
            layer=name,
            **options,
        )
    return masks


def project(weights: Mapping[str, torch.Tensor], plan: PruningPlan) -> dict[str, torch.Tensor]:
    """Return the Euclidean projection of ``weights`` on the plan's constraint set.

    For every scheme here the set is "the weights a mask of the scheme at the plan's rate keeps";
    the nearest such point keeps the highest-magnitude groups (the mask of
    :func:`plan_masks`) and zeroes the rest. (For pattern pruning the model-wide library makes
    this the projection given that library, the same approximation ADMM-based PatDNN makes.)
    """
    masks = plan_masks(weights, plan)
    return {name: weights[name].detach() * mask for name, mask in masks.items()}
