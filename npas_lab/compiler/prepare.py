"""Torch-level lowering of a pruned model, before export: bake masks, fold BN, shrink layers.

What reaches TVM is a plain ``nn.Module`` whose pruned layers already have their final shape:

1. the plan's masks are computed and baked into the weights (zeros where pruned);
2. batch norm is folded into the preceding conv (``torch.fx`` conv-BN fusion), so a conv carries
   its bias and the compiler sees ``conv2d + add + activation`` (what NPAS fuses);
3. **filter / channel** pruned convs become physically smaller dense convs
   (:class:`ShrunkConv2d`): removed input channels are skipped with a gather, removed filters are
   not computed and their outputs are filled with the constant they would have produced (the
   folded BN shift), so the result equals the masked model exactly whatever follows the layer
   (residual adds and concatenations included, which is why no producer/consumer surgery is
   needed).

The other schemes keep the conv's original shape here: :mod:`npas_lab.compiler.lower` replaces
them by compact kernels after export.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from npas_lab.sparsity import PruningPlan, apply_plan, get_masks, make_permanent

__all__ = ["PreparedModel", "ShrunkConv2d", "fold_batchnorm", "prepare_model"]

#: Schemes realised by physically smaller dense layers.
STRUCTURED = frozenset({"filter", "channel"})


class ShrunkConv2d(nn.Module):
    """A conv that computes only its kept filters from its kept input channels.

    Parameters
    ----------
    conv
        The masked conv (weights zero where pruned); copied, not shared.
    kept_in
        Indices of the input channels that any filter still reads (sorted).
    kept_out
        Indices of the filters that are computed (sorted).

    Notes
    -----
    A removed filter's output is the constant ``bias[f]`` over the whole feature map (0 without
    bias); it is concatenated after the computed channels and a single ``index_select`` puts
    every channel back in its place, which exports to one Relax ``take``.
    """

    def __init__(self, conv: nn.Conv2d, kept_in: torch.Tensor, kept_out: torch.Tensor) -> None:
        super().__init__()
        depthwise = conv.groups == conv.in_channels and conv.groups > 1
        if conv.groups > 1 and not depthwise:
            raise ValueError(
                f"ShrunkConv2d supports groups=1 and depthwise convs, not groups={conv.groups}"
            )
        weight = conv.weight.detach()
        if depthwise:
            kept_in = kept_out  # a depthwise filter reads exactly its own channel
            small_weight = weight[kept_out]
        else:
            small_weight = weight[kept_out][:, kept_in]
        self.small = nn.Conv2d(
            len(kept_in),
            len(kept_out),
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=len(kept_out) if depthwise else 1,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        with torch.no_grad():
            self.small.weight.copy_(small_weight)
            if conv.bias is not None:
                self.small.bias.copy_(conv.bias.detach()[kept_out])
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.gather_in = len(kept_in) < conv.in_channels
        self.scatter_out = len(kept_out) < conv.out_channels
        self.register_buffer("kept_in", kept_in.clone())
        removed = torch.tensor(
            sorted(set(range(conv.out_channels)) - set(kept_out.tolist())), dtype=torch.long
        )
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("removed_value", bias[removed].reshape(1, -1, 1, 1).clone())
        # position of every output channel in cat([computed, removed])
        order = torch.cat([kept_out, removed])
        self.register_buffer("order", torch.argsort(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output of the original masked conv."""
        if self.gather_in:
            x = x.index_select(1, self.kept_in)
        y = self.small(x)
        if not self.scatter_out:
            return y
        n, _, h, w = y.shape
        constant = self.removed_value.expand(n, -1, h, w)
        return torch.cat([y, constant], dim=1).index_select(1, self.order)


@dataclass
class PreparedModel:
    """A model ready for export: masks baked in, BN folded, structured layers shrunk."""

    model: nn.Module
    plan: PruningPlan
    report: pd.DataFrame = field(repr=False)
    bn_folded: bool = True


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, bool]:
    """Return an eval-mode copy of ``model`` with BN folded into convs, and whether it worked.

    Models that ``torch.fx`` cannot trace are returned unfolded (a copy) with a warning: they
    still compile, BN then stays a separate operator.
    """
    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).eval()
    try:
        return fuse(model), True
    except Exception as err:  # fx raises many types on untraceable Python control flow
        warnings.warn(
            f"batch norm not folded ({type(err).__name__}: {err}); it stays a separate operator",
            RuntimeWarning,
            stacklevel=2,
        )
        return model, False


def _kept(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = mask.flatten(1).any(dim=1)
    cols = mask.transpose(0, 1).flatten(1).any(dim=1)
    return cols.nonzero().flatten(), rows.nonzero().flatten()


def prepare_model(model: nn.Module, plan: PruningPlan | None = None) -> PreparedModel:
    """Bake ``plan`` into a copy of ``model``, fold BN and shrink filter/channel-pruned convs.

    Parameters
    ----------
    model
        The trained network (left untouched). If it already carries masks (a pruned model from
        phase 3), those masks are used and ``plan`` only names the schemes.
    plan
        Per-layer choices; ``None`` or an empty plan compiles the dense model.

    Returns
    -------
    PreparedModel
        With ``report``: one row per pruned layer (name, scheme, rate, how it was lowered).
    """
    plan = plan or PruningPlan({})
    work = copy.deepcopy(model).eval()
    if not get_masks(work) and plan.pruned():
        apply_plan(work, plan)
    masks = {name: mask.clone() for name, mask in get_masks(work).items()}
    make_permanent(work)
    work, folded = fold_batchnorm(work)
    rows = []
    for name, choice in plan.items():
        if choice.scheme == "dense":
            continue
        module = work.get_submodule(name)
        mask = masks.get(name)
        lowering = "kernel"
        if choice.scheme in STRUCTURED and isinstance(module, nn.Conv2d) and mask is not None:
            kept_in, kept_out = _kept(mask)
            if module.groups == module.in_channels and module.groups > 1:
                kept_in = torch.arange(module.in_channels)
            shrunk = ShrunkConv2d(module, kept_in, kept_out)
            parent, _, child = name.rpartition(".")
            setattr(work.get_submodule(parent) if parent else work, child, shrunk)
            lowering = f"shrunk to {len(kept_out)}x{shrunk.small.in_channels} dense conv"
        rows.append(
            {
                "layer": name,
                "scheme": choice.scheme,
                "rate": choice.rate,
                "block": choice.block,
                "lowering": lowering,
            }
        )
    return PreparedModel(model=work, plan=plan, report=pd.DataFrame(rows), bn_folded=folded)
