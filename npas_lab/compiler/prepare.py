"""Torch-level lowering of a pruned model, before export: bake masks, fold BN, shrink layers.

What reaches TVM is a plain ``nn.Module`` whose pruned layers already have their final shape:

1. the plan's masks are computed and baked into the weights (zeros where pruned);
2. batch norm is folded into the preceding conv (``torch.fx`` conv-BN fusion), so a conv carries
   its bias and the compiler sees ``conv2d + add + activation`` (what NPAS fuses);
3. **filter / channel** pruned convs become physically smaller dense convs
   (:class:`ShrunkConv2d`): removed input channels are skipped with a gather, removed filters are
   not computed and their outputs are filled with the constant they would have produced (the
   folded BN shift), so the result equals the masked model exactly whatever follows the layer;
4. given an example input, :func:`propagate_pruning` then removes that put-back wherever the
   layer's readers are convs (through element-wise activations): they stop reading the removed
   channels and add the constants' contribution as a bias (map), and a producer stops computing
   channels that its channel-pruned readers ignore.

The other schemes keep the conv's original shape here: :mod:`npas_lab.compiler.lower` replaces
them by compact kernels after export.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import fx, nn

from npas_lab.sparsity import PruningPlan, apply_plan, get_masks, make_permanent

__all__ = [
    "PreparedModel",
    "ShrunkConv2d",
    "fold_batchnorm",
    "prepare_model",
    "propagate_pruning",
]

#: Schemes realised by physically smaller dense layers.
STRUCTURED = frozenset({"filter", "channel"})


def _conv_like(
    conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, *, depthwise: bool
) -> nn.Conv2d:
    """Return a conv with ``conv``'s geometry holding ``weight`` (and ``bias``)."""
    groups = weight.shape[0] if depthwise else 1
    small = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=groups,
        bias=bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        small.weight.copy_(weight)
        if bias is not None:
            small.bias.copy_(bias)
    return small


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
        bias = conv.bias.detach()[kept_out] if conv.bias is not None else None
        self.small = _conv_like(conv, small_weight, bias, depthwise=depthwise)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.input_channels = conv.in_channels  # of the tensor it reads (propagation changes it)
        self.gather_in = len(kept_in) < conv.in_channels
        self.scatter_out = len(kept_out) < conv.out_channels
        self.register_buffer("kept_in", kept_in.clone())
        removed = torch.tensor(
            sorted(set(range(conv.out_channels)) - set(kept_out.tolist())), dtype=torch.long
        )
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("removed_value", bias[removed].reshape(1, -1, 1, 1).clone())
        self.register_buffer("removed", removed)
        self.register_buffer("kept_out", kept_out.clone())
        # position of every output channel in cat([computed, removed])
        order = torch.cat([kept_out, removed])
        self.register_buffer("order", torch.argsort(order))
        # Set by propagation (propagate_pruning): a bias that varies over the output plane.
        self.register_buffer("bias_map", None)

    @property
    def depthwise(self) -> bool:
        """True when the small conv is depthwise."""
        return self.small.groups > 1

    def _resize(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.small = _conv_like(self.small, weight, bias, depthwise=self.depthwise)

    def compute_only(self, rows: torch.Tensor) -> None:
        """Compute and output only the computed filters at positions ``rows`` (sorted).

        The removed filters are no longer put back: the caller has made every reader of this
        layer's output independent of them (:func:`propagate_pruning`).
        """
        small = self.small
        weight = small.weight.detach()[rows]
        bias = small.bias.detach()[rows] if small.bias is not None else None
        if self.depthwise:  # a depthwise filter reads its own channel: drop that read too
            self.kept_in = self.kept_in[rows]
            self.gather_in = True
        self.kept_out = self.kept_out[rows]
        if self.bias_map is not None:
            self.bias_map = self.bias_map[:, rows].contiguous()
        self._resize(weight, bias)
        self.scatter_out = False

    def read_only(
        self,
        new_index: torch.Tensor,
        constants: dict[int, float],
        spatial: tuple[int, int],
    ) -> str:
        """Re-target this conv at a compacted input; return how the constants were absorbed.

        Parameters
        ----------
        new_index
            For every channel of the current input, its index in the new input (-1: gone).
        constants
            Value of every gone channel this conv may read (a pruned filter's constant after
            the activations in between); a gone channel it reads must be listed.
        spatial
            Input height and width (the constants' contribution depends on the padding).

        Returns
        -------
        str
            ``"none"``, ``"bias"`` (the contribution is uniform: folded into the bias) or
            ``"map"`` (it differs at the borders: a per-position bias map).
        """
        if self.depthwise:
            raise ValueError("a depthwise conv cannot read a compacted input")
        small = self.small
        weight = small.weight.detach()
        old_channels = self.kept_in
        moved = new_index[old_channels]
        keep = (moved >= 0).nonzero().flatten()
        gone = (moved < 0).nonzero().flatten()
        how = "none"
        contribution = None
        if len(gone):
            values = torch.tensor([constants[int(c)] for c in old_channels[gone]])
            if bool(values.ne(0).any()):
                plane = values.reshape(1, -1, 1, 1).expand(1, -1, *spatial)
                contribution = nn.functional.conv2d(
                    plane,
                    weight[:, gone],
                    stride=small.stride,
                    padding=small.padding,
                    dilation=small.dilation,
                )
        bias = small.bias.detach() if small.bias is not None else None
        if contribution is not None:
            if all(p == 0 for p in small.padding):  # no border: the same value everywhere
                uniform = contribution[0, :, 0, 0]
                bias = uniform if bias is None else bias + uniform
                how = "bias"
            else:
                full = contribution if bias is None else contribution + bias.reshape(1, -1, 1, 1)
                self.bias_map = full if self.bias_map is None else self.bias_map + full
                bias, how = None, "map"
        if self.bias_map is not None and bias is not None:  # one bias argument per kernel
            self.bias_map = self.bias_map + bias.reshape(1, -1, 1, 1)
            bias = None
        self.kept_in = moved[keep]
        n_new = int(new_index.max().item()) + 1
        self.input_channels = n_new
        self.gather_in = not torch.equal(self.kept_in, torch.arange(n_new))
        self._resize(weight[:, keep], bias)
        return how

    def read_in_kernel(self) -> bool:
        """Drop the input gather: read the full input through zero weight columns instead.

        The ``channel`` template skips zero columns and stages only the channels it reads, so
        the gather happens inside the conv kernel rather than as a separate pass over the input
        (TVM's ``take``). Returns whether anything changed (depthwise convs keep their gather).
        """
        if not self.gather_in or self.depthwise:
            return False
        small = self.small
        n_in = self.input_channels
        weight = small.weight.detach()
        full = weight.new_zeros((weight.shape[0], n_in, *weight.shape[2:]))
        full[:, self.kept_in] = weight
        bias = small.bias.detach() if small.bias is not None else None
        self._resize(full, bias)
        self.kept_in = torch.arange(n_in)
        self.gather_in = False
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output of the original masked conv."""
        if self.gather_in:
            x = x.index_select(1, self.kept_in)
        y = self.small(x)
        if self.bias_map is not None:
            y = y + self.bias_map
        if not self.scatter_out:
            return y
        n, _, h, w = y.shape
        constant = self.removed_value.expand(n, -1, h, w)
        return torch.cat([y, constant], dim=1).index_select(1, self.order)


@dataclass
class PreparedModel:
    """A model ready for export: masks baked in, BN folded, structured layers shrunk.

    ``propagation`` has one row per conv whose output was narrowed because its readers no
    longer need some channels (:func:`propagate_pruning`); when it is not empty the model is
    specialised to the example input's height and width.
    """

    model: nn.Module
    plan: PruningPlan
    report: pd.DataFrame = field(repr=False)
    bn_folded: bool = True
    propagation: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)


#: Element-wise operators: a channel that is constant before one is constant after it.
_POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
    nn.Identity,
    nn.Dropout,  # the model is in eval mode: the identity
)
_POINTWISE_FUNCTIONS = frozenset(
    {
        torch.relu,
        torch.sigmoid,
        torch.tanh,
        nn.functional.relu,
        nn.functional.relu6,
        nn.functional.hardswish,
        nn.functional.hardsigmoid,
        nn.functional.hardtanh,
        nn.functional.silu,
        nn.functional.gelu,
        nn.functional.leaky_relu,
        nn.functional.elu,
        nn.functional.mish,
    }
)
_POINTWISE_METHODS = frozenset({"relu", "relu_", "sigmoid", "tanh"})


def _only_input(node: fx.Node, source: fx.Node) -> bool:
    """True when ``source`` is the first argument of ``node`` and no other argument is a node."""
    others = [*node.args[1:], *node.kwargs.values()]
    return (
        bool(node.args)
        and node.args[0] is source
        and not any(isinstance(a, fx.Node) for a in others)
    )


def _pointwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _POINTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _POINTWISE_METHODS


def _apply(gm: fx.GraphModule, node: fx.Node, value: torch.Tensor) -> torch.Tensor:
    """Run the element-wise operator of ``node`` on ``value`` (a copy: some act in place)."""
    value = value.clone()
    if node.op == "call_module":
        return gm.get_submodule(node.target)(value)
    if node.op == "call_function":
        return node.target(value, *node.args[1:], **node.kwargs)
    return getattr(value, node.target)(*node.args[1:], **node.kwargs)


def _conv_role(gm: fx.GraphModule, node: fx.Node, plan: PruningPlan, consumer: bool):
    """Return the conv module at ``node`` if propagation may reshape it, else ``None``.

    Shrunk convs and dense convs qualify; a conv lowered to a scheme's kernel keeps its shape
    (its blocks and patterns are laid out over the full channel count). Readers must be
    ``groups == 1``; a depthwise producer only when it already gathers its input: narrowing one
    that reads its whole input would add a gather (a separate pass over an early, large map).
    """
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    if isinstance(module, ShrunkConv2d):
        # (a reader's absorbed constants are computed with zero padding)
        if module.small.padding_mode != "zeros":
            return None
        if module.depthwise and (consumer or not module.gather_in):
            return None
        return module
    if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros":
        return None
    choice = plan.get(node.target)
    if choice is not None and choice.scheme != "dense":
        return None
    return module if module.groups == 1 else None


def _shrunk(gm: fx.GraphModule, name: str, module: nn.Module) -> ShrunkConv2d:
    """Return ``module`` as a :class:`ShrunkConv2d` (a dense conv is wrapped, keeping all)."""
    if isinstance(module, ShrunkConv2d):
        return module
    wrapped = ShrunkConv2d(
        module, torch.arange(module.in_channels), torch.arange(module.out_channels)
    )
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, wrapped)
    return wrapped


def propagate_pruning(
    gm: fx.GraphModule, plan: PruningPlan, example_input: torch.Tensor
) -> pd.DataFrame:
    """Narrow conv outputs that their readers no longer need, in place; return what changed.

    For every conv whose output reaches only plain convs through element-wise operators
    (``conv -> [BN folded] -> ReLU -> conv``, the common chain):

    * a **filter-pruned** producer stops putting its removed filters back: they were constant
      planes (the folded BN shift), so each reader drops those input channels and adds their
      contribution as a bias, or as a per-position bias *map* when zero padding makes the
      borders differ;
    * a **channel-pruned** reader's unread channels are not computed by the producer at all.

    Residual adds and concatenations stop the walk (a removed filter's constant meets another
    branch there), as do convs lowered to a scheme's kernel (their layout spans all channels).
    The result equals the masked model exactly, at ``example_input``'s height and width.

    Returns
    -------
    DataFrame
        One row per narrowed producer: ``layer``, ``readers``, ``channels`` (before),
        ``computed`` (after), ``constant`` and ``dead`` (dropped channels of each kind) and
        ``absorbed`` (``none`` / ``bias`` / ``map`` per reader).
    """
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(example_input)
    rows = []
    for node in list(gm.graph.nodes):
        producer = _conv_role(gm, node, plan, consumer=False)
        if producer is None:
            continue
        chain, end = [], node
        while len(end.users) == 1:
            (user,) = end.users
            if not (_pointwise(gm, user) and _only_input(user, end)):
                break
            chain.append(user)
            end = user
        readers = list(end.users)
        modules = [_conv_role(gm, u, plan, consumer=True) for u in readers]
        if not readers or any(m is None for m in modules):
            continue
        if not all(_only_input(u, end) and len(u.args) == 1 for u in readers):
            continue
        n_out = int(end.meta["tensor_meta"].shape[1])
        read = torch.zeros(n_out, dtype=torch.bool)
        for module in modules:
            read[module.kept_in if isinstance(module, ShrunkConv2d) else slice(None)] = True
        removed = producer.removed if isinstance(producer, ShrunkConv2d) else torch.tensor([])
        computed = producer.kept_out if isinstance(producer, ShrunkConv2d) else torch.arange(n_out)
        keep = computed[read[computed]]
        dead = int((~read[computed]).sum())
        if len(keep) == 0 or (len(removed) == 0 and dead == 0):
            continue
        constants: dict[int, float] = {}
        if len(removed):
            value = producer.removed_value
            for op in chain:
                value = _apply(gm, op, value)
            constants = dict(zip(removed.tolist(), value.flatten().tolist(), strict=True))
        producer = _shrunk(gm, node.target, producer)
        producer.compute_only(torch.searchsorted(producer.kept_out, keep))
        new_index = torch.full((n_out,), -1, dtype=torch.long)
        new_index[keep] = torch.arange(len(keep))
        spatial = tuple(int(v) for v in end.meta["tensor_meta"].shape[2:])
        absorbed = []
        for user, module in zip(readers, modules, strict=True):
            reader = _shrunk(gm, user.target, module)
            absorbed.append(reader.read_only(new_index, constants, spatial))
        rows.append(
            {
                "layer": node.target,
                "readers": ", ".join(str(u.target) for u in readers),
                "channels": n_out,
                "computed": len(keep),
                "constant": len(removed),
                "dead": dead,
                "absorbed": ", ".join(absorbed),
            }
        )
    columns = ["layer", "readers", "channels", "computed", "constant", "dead", "absorbed"]
    return pd.DataFrame(rows, columns=columns)


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


def prepare_model(
    model: nn.Module,
    plan: PruningPlan | None = None,
    *,
    example_input: torch.Tensor | None = None,
    gather_in_kernel: bool = False,
) -> PreparedModel:
    """Bake ``plan`` into a copy of ``model``, fold BN and shrink filter/channel-pruned convs.

    Parameters
    ----------
    model
        The trained network (left untouched). If it already carries masks (a pruned model from
        phase 3), those masks are used and ``plan`` only names the schemes.
    plan
        Per-layer choices; ``None`` or an empty plan compiles the dense model.
    example_input
        When given (and BN could be folded), filter/channel pruning is propagated into the
        neighbouring convs (:func:`propagate_pruning`) and the model is specialised to this
        input's height and width.
    gather_in_kernel
        Leave the input gather of channel-pruned convs to the conv kernel (zero weight columns
        that the ``channel`` template skips) instead of a separate ``index_select``; what
        ``compile_model`` does for its templates.

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
    propagation = pd.DataFrame()
    if example_input is not None and folded and isinstance(work, fx.GraphModule):
        with torch.no_grad():
            propagation = propagate_pruning(work, plan, example_input)
    if gather_in_kernel:
        with torch.no_grad():
            for module in work.modules():
                if isinstance(module, ShrunkConv2d):
                    module.read_in_kernel()
    return PreparedModel(
        model=work,
        plan=plan,
        report=pd.DataFrame(rows),
        bn_folded=folded,
        propagation=propagation,
    )
