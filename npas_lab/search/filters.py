"""Filter types: the per-layer operator choice of NPAS phase 2 (kernel-size changes).

NPAS searches, per layer, a filter type besides the pruning scheme and rate. The project's
*choice* (NPAS.md, phase 2): keep the layer as it is (``"keep"``), or replace a ``k x k`` conv by
a smaller odd ``k' x k'`` one (``"3x3"``, ``"1x1"``), initialised from the centre of the larger
kernel, with the padding reduced so the output shape is unchanged. Groups stay as they are, so a
5x5 depthwise conv becomes a 3x3 depthwise conv, as in the paper's example.

Why not :mod:`npas_lab.operators`: phase 1 there swaps activation functions (sigmoid, swish) by
rules over operator kinds; a kernel-size change is a per-layer decision of the search with a
shape and an initialisation, so it lives here, next to the space that offers it.

Rules for what is offered (:func:`filter_types_for`):

- only square, odd kernels larger than 1 shrink; the new size is any smaller odd size;
- depthwise convs do not shrink below 3x3 (a 1x1 depthwise conv is a per-channel scale);
- the padding must stay >= 0 after the change (``p' = p - dilation * (k - k') / 2``), so a
  "valid" (unpadded) conv keeps its kernel: shrinking it would change the output shape.

Examples
--------
>>> from npas_lab.models import create_model
>>> model = create_model("small_cnn", in_channels=1, input_size=16)
>>> filter_types_for(model.features[1][0])
['keep', '1x1']
>>> plan = PruningPlan({"features.1.0": LayerChoice(filter_type="1x1")})
>>> new, sparsity_plan = apply_filter_types(model, plan)
>>> new.features[1][0].kernel_size, sparsity_plan["features.1.0"].filter_type
((1, 1), 'keep')
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from npas_lab.sparsity import LayerChoice, PruningPlan, SparsityError
from npas_lab.sparsity.plan import KEEP

__all__ = [
    "KEEP",
    "apply_filter_types",
    "filter_types_for",
    "kernel_of",
    "shrink_conv",
    "sparsity_plan",
]

_SIZE = re.compile(r"^([1-9][0-9]*)x\1$")


def kernel_of(filter_type: str) -> int | None:
    """Return the kernel size a filter type names (``"3x3"`` -> 3), None for ``"keep"``.

    Raises
    ------
    ValueError
        For anything but ``"keep"`` or ``"<k>x<k>"`` with an odd ``k``.
    """
    if filter_type == KEEP:
        return None
    match = _SIZE.match(filter_type) if isinstance(filter_type, str) else None
    if match is None or int(match.group(1)) % 2 == 0:
        raise ValueError(
            f"filter_type={filter_type!r}: valid filter types are 'keep' and '<k>x<k>' with an "
            "odd k smaller than the layer's kernel, e.g. '3x3' or '1x1'"
        )
    return int(match.group(1))


def filter_types_for(module: nn.Module) -> list[str]:
    """Return the filter types a layer can take, ``"keep"`` first (see the module docstring)."""
    if not isinstance(module, nn.Conv2d):
        return [KEEP]
    kh, kw = module.kernel_size
    if kh != kw or kh % 2 == 0 or kh == 1 or isinstance(module.padding, str):
        return [KEEP]
    depthwise = module.groups > 1 and module.groups == module.in_channels
    smallest = 3 if depthwise else 1
    options = [KEEP]
    for size in range(kh - 2, smallest - 1, -2):
        shrink = (kh - size) // 2
        if all(p - d * shrink >= 0 for p, d in zip(module.padding, module.dilation, strict=True)):
            options.append(f"{size}x{size}")
    return options


@torch.no_grad()
def shrink_conv(conv: nn.Conv2d, size: int, *, layer: str = "?") -> nn.Conv2d:
    """Return a ``size x size`` copy of ``conv`` initialised from the centre of its kernel.

    Parameters
    ----------
    conv
        A square-kernel conv; not modified.
    size
        The new (odd, smaller) kernel size.
    layer
        The layer's name, for error messages.

    Raises
    ------
    ValueError
        If ``size`` is not one of the layer's filter types (the message lists them).
    """
    if f"{size}x{size}" not in filter_types_for(conv):
        raise ValueError(
            f"layer {layer!r} ({conv.kernel_size[0]}x{conv.kernel_size[1]} conv, groups "
            f"{conv.groups}, padding {conv.padding}) cannot become {size}x{size}; its filter "
            f"types: {', '.join(filter_types_for(conv))}"
        )
    shrink = (conv.kernel_size[0] - size) // 2
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        size,
        stride=conv.stride,
        padding=tuple(p - d * shrink for p, d in zip(conv.padding, conv.dilation, strict=True)),
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.copy_(conv.weight[:, :, shrink : shrink + size, shrink : shrink + size])
    if conv.bias is not None:
        new.bias.copy_(conv.bias)
    return new.train(conv.training)


def sparsity_plan(plan: PruningPlan) -> PruningPlan:
    """Return ``plan`` with every filter type reset to ``"keep"`` (what sparsity/ applies).

    Used on the model :func:`apply_filter_types` returns, whose layers already have their new
    kernels.
    """
    layers = {}
    for name, choice in plan.items():
        data = choice.to_dict()
        data["filter_type"] = KEEP
        layers[name] = LayerChoice.from_dict(data)
    return PruningPlan(layers)


def apply_filter_types(model: nn.Module, plan: PruningPlan) -> tuple[nn.Module, PruningPlan]:
    """Return a copy of ``model`` with the plan's filter types applied, and the plan for it.

    Parameters
    ----------
    model
        Not modified.
    plan
        A search candidate; its non-``"keep"`` filter types name layers of ``model``.

    Returns
    -------
    model, plan
        The new model (same layer names) and :func:`sparsity_plan` of ``plan``, which
        :func:`~npas_lab.sparsity.apply_plan` and the compiler accept.

    Raises
    ------
    SparsityError
        A filter type on a layer that does not exist or cannot take it.
    """
    new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    for name, choice in plan.items():
        if choice.filter_type == KEEP:
            continue
        if not isinstance(modules.get(name), nn.Conv2d):
            raise SparsityError(f"filter type {choice.filter_type!r} on {name!r}: not a Conv2d")
        try:
            size = kernel_of(choice.filter_type)
            replacement = shrink_conv(modules[name], size, layer=name)
        except ValueError as err:
            raise SparsityError(str(err)) from None
        parent_name, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent_name) if parent_name else new, child, replacement)
    return new, sparsity_plan(plan)
