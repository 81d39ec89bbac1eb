"""Per-weight importance scores: the pluggable input of every sparsity scheme."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["Importance", "Magnitude"]


class Importance(ABC):
    """Score every weight of a layer; schemes keep the groups with the largest scores.

    A scheme scores a group of weights (a filter, a punch, a kernel, ...) by the L2 norm of its
    per-weight scores, so an importance only has to say how much each single weight matters.

    Examples
    --------
    A custom importance that prefers weights with large gradients (a first-order Taylor score):

    >>> class Taylor(Importance):
    ...     def __call__(self, weight: torch.Tensor) -> torch.Tensor:
    ...         return (weight * weight.grad).abs()
    """

    @abstractmethod
    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """Return non-negative scores with the shape of ``weight``."""


class Magnitude(Importance):
    """Score each weight by its magnitude, so groups are scored by their L2 norm (the default).

    Examples
    --------
    >>> Magnitude()(torch.tensor([[-3.0, 1.0]]))
    tensor([[3., 1.]])
    """

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """Return ``|weight|``."""
        return weight.detach().abs()
