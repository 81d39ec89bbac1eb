"""Compute a layer's keep-mask by scheme name: the scheme registry and the entry point.

The schemes themselves, and the decisions behind them (punch scores, ragged blocks, depthwise
convs), are in :mod:`~npas_lab.sparsity.schemes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from npas_lab.sparsity.errors import SparsityError
from npas_lab.sparsity.importance import Importance, Magnitude
from npas_lab.sparsity.schemes import (
    Block,
    BlockPunched,
    Channel,
    Column,
    Dense,
    Filter,
    Pattern,
    Scheme,
    Unstructured,
)
from npas_lab.sparsity.selection import check_rate

__all__ = ["SCHEMES", "compute_mask", "get_scheme", "list_schemes", "schemes_for"]

#: Scheme name -> scheme. Add your own with ``SCHEMES["mine"] = MyScheme()``.
SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Dense(),
        Unstructured(),
        Filter(),
        Channel(),
        Column(),
        Pattern(),
        Block(),
        BlockPunched(),
    )
}


def list_schemes() -> list[str]:
    """Return the registered scheme names in registry order (dense first)."""
    return list(SCHEMES)


def get_scheme(name: str, *, layer: str = "?") -> Scheme:
    """Return the registered scheme ``name``; the error lists the valid names."""
    if name not in SCHEMES:
        raise SparsityError(
            f"unknown sparsity scheme {name!r} for layer {layer!r}; valid: "
            + ", ".join(list_schemes())
        )
    return SCHEMES[name]


def schemes_for(layer: Mapping[str, Any]) -> list[str]:
    """Return the schemes meant for a layer, given its :func:`~npas_lab.models.layer_table` row.

    Pattern only for 3x3 non-depthwise convs, block only for linear and 1x1 convs, block_punched
    for every conv, channel for everything but depthwise convs; the others everywhere.

    Examples
    --------
    >>> schemes_for({"kind": "pointwise", "kernel": (1, 1)})
    ['dense', 'unstructured', 'filter', 'channel', 'column', 'block', 'block_punched']
    """
    return [name for name, scheme in SCHEMES.items() if scheme.fits(layer)]


def compute_mask(
    weight: torch.Tensor,
    scheme: str,
    rate: float,
    *,
    block: tuple[int, int] | None = None,
    importance: Importance | None = None,
    layer: str = "?",
    **opts: Any,
) -> torch.Tensor:
    """Return the boolean keep-mask of ``weight`` under ``scheme`` at pruning rate ``rate``.

    Parameters
    ----------
    weight
        A conv weight ``(F, C / groups, kh, kw)`` or a linear weight ``(F, C)``.
    scheme
        A key of :data:`SCHEMES` (see :func:`list_schemes`).
    rate
        Dense weights / kept weights, >= 1. The kept count is ``round(numel / rate)`` up to one
        group of the scheme (one filter, one punch, one kernel, ...).
    block
        ``(bf, bc)`` for block_punched, ``(rows, cols)`` for block; :data:`DEFAULT_BLOCK` if None.
    importance
        Per-weight scores; :class:`~npas_lab.sparsity.importance.Magnitude` by default. It is
        called with ``weight`` itself (so it may read ``weight.grad``) and must not modify it.
    layer
        The layer's name, quoted in error messages.
    **opts
        Scheme options: ``prune="rows"|"cols"`` (block); ``library=PatternLibrary`` and
        ``num_patterns=8`` (pattern).

    Returns
    -------
    torch.Tensor
        Boolean, shape and device of ``weight``; True = kept.

    Raises
    ------
    SparsityError
        Unknown scheme or option, rate < 1 or unreachable, block that does not fit, pattern on a
        kernel that is not 3x3; the message names the layer and what is valid.

    Examples
    --------
    >>> w = torch.randn(16, 8, 3, 3)
    >>> mask = compute_mask(w, "block_punched", 4.0, block=(8, 4))
    >>> int(mask.sum()) == w.numel() // 4
    True
    """
    spec = get_scheme(scheme, layer=layer)
    if weight.dim() not in (2, 4):
        raise SparsityError(
            f"layer {layer!r}: expected a conv (4-D) or linear (2-D) weight, got shape "
            f"{tuple(weight.shape)}"
        )
    rate = check_rate(rate, scheme=scheme, layer=layer)
    # The weight itself, not a detached copy, so that gradient-based scores can read .grad.
    scores = (importance or Magnitude())(weight).detach()
    if scores.shape != weight.shape:
        raise SparsityError(
            f"importance for layer {layer!r} returned shape {tuple(scores.shape)}, expected "
            f"{tuple(weight.shape)}"
        )
    scores4 = scores.reshape(*weight.shape, 1, 1) if weight.dim() == 2 else scores
    mask = spec.mask(scores4, rate, block=block, layer=layer, **opts)
    return mask.reshape(weight.shape).to(device=weight.device, dtype=torch.bool)


def scheme_masks(weight: torch.Tensor, rate: float, *, layer: str = "?") -> dict[str, torch.Tensor]:
    """Return the keep-mask of ``weight`` at ``rate`` under every scheme meant for its shape.

    For pictures (:func:`npas_lab.plotting.mask_gallery_figure`): the layer kind is read from
    the weight's shape (``F x C x kh x kw`` conv, 1x1 pointwise, ``F x C`` linear), schemes in
    registry order, ``dense`` left out; a scheme that cannot reach ``rate`` on this weight (e.g.
    pattern below 9/4x) is left out too.
    """
    weight = torch.as_tensor(weight)
    if weight.dim() == 4:
        kernel = tuple(weight.shape[2:])
        kind = "pointwise" if kernel == (1, 1) else "conv"
    else:
        kernel, kind = (1, 1), "linear"
    row = {"kind": kind, "kernel": kernel, "groups": 1, "in": weight.shape[1]}
    masks = {}
    for name in schemes_for(row):
        if name == "dense":
            continue
        try:
            masks[name] = compute_mask(weight, name, rate, layer=layer)
        except SparsityError:
            continue
    return masks
