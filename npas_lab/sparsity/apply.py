"""Install masks on a model so they stay applied through training, update them, bake them in.

Masks are ``torch.nn.utils.parametrize`` parametrizations: the layer's ``weight`` becomes
``original * mask``, so whatever an optimizer does to ``original`` (momentum, weight decay), a
pruned weight stays exactly 0 and receives zero gradient. The state dict then holds
``<layer>.parametrizations.weight.original`` and ``<layer>.parametrizations.weight.0.mask``;
:func:`make_permanent` turns the layers back into plain ones with zeros in the weights.

Examples
--------
>>> from npas_lab.sparsity.plan import uniform_plan
>>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
>>> plan = uniform_plan(model, "block_punched", 4.0)
>>> rates = achieved_rates(apply_plan(model, plan))
>>> rates["0"], rates["2"]
(1.0, 4.0)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from npas_lab.sparsity.errors import SparsityError
from npas_lab.sparsity.importance import Importance, Magnitude
from npas_lab.sparsity.masks import compute_mask
from npas_lab.sparsity.patterns import PatternLibrary
from npas_lab.sparsity.plan import LayerChoice, PruningPlan, validate_plan

__all__ = [
    "WeightMask",
    "achieved_rates",
    "apply_plan",
    "get_masks",
    "make_permanent",
    "update_masks",
]


class WeightMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` with the boolean mask as a buffer.

    Parameters
    ----------
    mask
        Boolean keep-mask of the weight's shape.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return the masked weight."""
        return weight * self.mask


def _mask_of(module: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    found = [p for p in module.parametrizations.weight if isinstance(p, WeightMask)]
    if len(found) != 1 or len(module.parametrizations.weight) != 1:
        raise SparsityError(
            f"{type(module).__name__} has weight parametrizations other than one WeightMask; "
            "sparsity masks cannot be combined with them"
        )
    return found[0]


def _base_weight(module: nn.Module) -> torch.Tensor:
    """Return the unmasked weight tensor the optimizer updates."""
    if _mask_of(module) is not None:
        return module.parametrizations.weight.original
    return module.weight


def _libraries(
    model: nn.Module, plan: PruningPlan, importance: Importance
) -> dict[int, PatternLibrary]:
    """Extract one pattern library per library size from all the plan's pattern layers."""
    sizes: dict[int, list[torch.Tensor]] = {}
    for name, choice in plan.items():
        if choice.scheme == "pattern":
            weight = _base_weight(model.get_submodule(name))
            sizes.setdefault(choice.patterns, []).append(weight)
    return {
        size: PatternLibrary.from_weights(weights, size=size, importance=importance)
        for size, weights in sizes.items()
    }


def _install(
    model: nn.Module, plan: PruningPlan, importance: Importance | None, *, update_only: bool
) -> nn.Module:
    validate_plan(plan, model)
    importance = importance or Magnitude()
    libraries = _libraries(model, plan, importance)
    for name, choice in plan.items():
        module = model.get_submodule(name)
        existing = _mask_of(module)
        if update_only and existing is None and choice != LayerChoice():
            raise SparsityError(
                f"layer {name!r} has no mask to update; install masks with apply_plan first"
            )
        if existing is None and choice == LayerChoice():
            continue  # dense and never masked: leave the layer plain
        weight = _base_weight(module)
        options = choice.mask_options()
        if choice.scheme == "pattern":
            options["library"] = libraries[options.pop("num_patterns")]
        mask = compute_mask(
            weight, choice.scheme, choice.rate, importance=importance, layer=name, **options
        )
        with torch.no_grad():
            weight.mul_(mask)  # pruned weights are 0 in the stored tensor too, not just masked
        if existing is None:
            parametrize.register_parametrization(module, "weight", WeightMask(mask))
        else:
            existing.mask.copy_(mask)  # in place: optimizer state and module identity survive
    return model


def apply_plan(
    model: nn.Module, plan: PruningPlan, *, importance: Importance | None = None
) -> nn.Module:
    """Compute masks for ``plan`` from the current weights and install them, in place.

    Layers already masked get their masks recomputed; dense entries leave plain layers plain.
    Pattern layers share one library extracted from all of them (PatDNN's model-wide library).
    The pruned weights are zeroed in the stored tensor as well.

    Parameters
    ----------
    model
        The network; modified in place.
    plan
        The plan; validated against the model first.
    importance
        Per-weight scores (magnitude by default); for a masked layer it sees the unmasked
        parameter, so gradient-based scores can read ``weight.grad``.

    Returns
    -------
    nn.Module
        ``model``.
    """
    return _install(model, plan, importance, update_only=False)


def update_masks(
    model: nn.Module, plan: PruningPlan, *, importance: Importance | None = None
) -> nn.Module:
    """Recompute the masks of already-masked layers (e.g. the next step of gradual pruning).

    Like :func:`apply_plan`, but every non-dense layer of ``plan`` must carry a mask already,
    which catches a plan meant for another model. Masks are updated in place.
    """
    return _install(model, plan, importance, update_only=True)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return ``{layer_name: mask}`` of every masked layer (the live buffers)."""
    masks = {}
    for name, module in model.named_modules():
        found = _mask_of(module) if isinstance(module, (nn.Conv2d, nn.Linear)) else None
        if found is not None:
            masks[name] = found.mask
    return masks


def achieved_rates(model: nn.Module) -> dict[str, float]:
    """Return the pruning rate of every Conv2d / Linear layer, in ``named_modules`` order.

    Masked layers: weights / kept by the mask. Plain layers (e.g. after :func:`make_permanent`):
    weights / nonzero weights. ``inf`` for a layer with nothing kept.
    """
    rates = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            found = _mask_of(module)
            kept = (
                int(found.mask.sum()) if found is not None else int(module.weight.count_nonzero())
            )
            rates[name] = module.weight.numel() / kept if kept else math.inf
    return rates


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove the masks, leaving plain weights with the pruned entries at 0; return ``model``.

    Safe on deep copies: ``copy.deepcopy`` of a masked model shares the class torch injected
    for the parametrization, and removing it deletes the ``weight`` property from that class,
    which would break every other copy. Each module is given a private copy of its class first.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and _mask_of(module) is not None:
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
