"""Model registry, small-input stems, and a per-layer table of shapes, parameters and MACs.

Models
------
``small_cnn``
    Three conv-BN-ReLU-maxpool blocks (3x3 convs, 32/64/128 channels), global average pooling and a
    linear classifier: ~93k parameters. Reaches >=95 % test accuracy on ``digits`` in seconds.
``resnet18``, ``resnet50``
    torchvision ResNets.
``mobilenet_v3_small``, ``mobilenet_v3_large``
    torchvision MobileNet-V3.
``efficientnet_b0``, ``efficientnet_b0_70``, ``efficientnet_b0_50``
    torchvision EfficientNet-B0 and two width-scaled versions at ~70 % and ~50 % of its MACs, the
    comparison points of the NPAS paper (see :data:`EFFICIENTNET_SCALING`).

Every model is built from scratch (``weights=None``: nothing is ever downloaded) for any class
count, input channel count and input size. Inputs smaller than :data:`SMALL_INPUT_THRESHOLD`
pixels get a small-input stem (see :func:`uses_small_stem`).

The registry :data:`MODELS` is a plain dict, so a project can add its own model with
``MODELS["mine"] = builder``, where ``builder(*, num_classes, in_channels, input_size)`` returns
an ``nn.Module``; :func:`create_model` validates arguments before calling it.

Examples
--------
>>> model = create_model("resnet18", num_classes=10, input_size=32)
>>> table = layer_table(model, (1, 3, 32, 32))
>>> int(table["macs"].sum()) == count_macs(model, (1, 3, 32, 32))
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import partial

import pandas as pd
import torch
import torchvision
from torch import nn
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

__all__ = [
    "EFFICIENTNET_SCALING",
    "LAYER_COLUMNS",
    "MODELS",
    "SMALL_INPUT_THRESHOLD",
    "SmallCNN",
    "count_macs",
    "create_model",
    "layer_kind",
    "layer_table",
    "list_models",
    "min_input_size",
    "uses_small_stem",
]

#: Inputs with fewer pixels per side than this get a small-input stem (see :func:`uses_small_stem`).
SMALL_INPUT_THRESHOLD = 64

#: ``(width_mult, depth_mult)`` of the scaled EfficientNet-B0 versions, and the MAC ratio to B0
#: measured with :func:`count_macs` at 224x224, 3 channels, 1000 classes: 0.6946 and 0.5037.
#: Only the width is scaled: torchvision rounds stage lengths up (``ceil(n * depth_mult)``), so any
#: depth_mult above 0.75 changes nothing and below it whole blocks drop in coarse steps, while
#: width alone lands within 0.6 percentage points of both targets and keeps B0's layer names.
EFFICIENTNET_SCALING: dict[str, tuple[float, float]] = {
    "efficientnet_b0_70": (0.77, 1.0),
    "efficientnet_b0_50": (0.65, 1.0),
}

#: Columns of :func:`layer_table`, in order.
LAYER_COLUMNS = (
    *("name", "kind", "kernel", "stride", "groups", "in_channels", "out_channels"),
    *("input_hw", "output_hw", "params", "macs"),
)


def uses_small_stem(input_size: int) -> bool:
    """Return whether a model for ``input_size`` x ``input_size`` inputs gets a small-input stem.

    Below :data:`SMALL_INPUT_THRESHOLD` (64) pixels the ImageNet stems throw away too much
    resolution: a ResNet would reduce 32x32 CIFAR images to 8x8 before its first block. There
    ResNets use a 3x3 stride-1 first conv and no maxpool (the CIFAR convention of He et al. 2016,
    Sec. 4.2), and MobileNet-V3 / EfficientNet reduce the stride of their first conv to 1.

    Parameters
    ----------
    input_size : int
        Height (= width) of the input images in pixels.

    Returns
    -------
    bool
        ``input_size < SMALL_INPUT_THRESHOLD``.
    """
    return input_size < SMALL_INPUT_THRESHOLD


class SmallCNN(nn.Module):
    """Plain CNN: conv3x3-BN-ReLU-maxpool blocks, global average pooling, a linear classifier.

    Parameters
    ----------
    num_classes : int
        Output classes.
    in_channels : int
        Input image channels.
    widths : tuple of int
        Output channels of each block; each block halves the resolution.

    Examples
    --------
    >>> SmallCNN(num_classes=10)(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128),
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _replace_conv(conv: nn.Conv2d, **changes: object) -> nn.Conv2d:
    """Return a fresh ``nn.Conv2d`` like ``conv`` with some constructor arguments changed."""
    same = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    kwargs = {key: getattr(conv, key) for key in (*same, "padding_mode")}
    kwargs |= {"bias": conv.bias is not None, **changes}
    new = nn.Conv2d(**kwargs)  # type: ignore[arg-type]
    # Same init as torchvision gives the convs it builds (ResNet, MobileNet-V3 and EfficientNet all
    # use Kaiming-normal, fan_out), not nn.Conv2d's default Kaiming-uniform.
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _build_small_cnn(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
    del input_size  # global pooling makes the net size-agnostic
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)


def _build_resnet(
    factory: Callable[..., torchvision.models.ResNet],
    *,
    num_classes: int,
    in_channels: int,
    input_size: int,
) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if uses_small_stem(input_size):
        model.conv1 = _replace_conv(
            model.conv1, in_channels=in_channels, kernel_size=3, stride=1, padding=1
        )
        model.maxpool = nn.Identity()
    elif in_channels != model.conv1.in_channels:
        model.conv1 = _replace_conv(model.conv1, in_channels=in_channels)
    return model


def _adapt_features_stem(model: nn.Module, *, in_channels: int, input_size: int) -> nn.Module:
    """Adapt the first conv of a MobileNet-V3 / EfficientNet (``features[0][0]``)."""
    stem = model.features[0]
    conv = stem[0]
    stride = (1, 1) if uses_small_stem(input_size) else conv.stride
    if in_channels != conv.in_channels or stride != conv.stride:
        stem[0] = _replace_conv(conv, in_channels=in_channels, stride=stride)
    return model


def _build_mobilenet_v3(
    factory: Callable[..., nn.Module], *, num_classes: int, in_channels: int, input_size: int
) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    return _adapt_features_stem(model, in_channels=in_channels, input_size=input_size)


def _build_efficientnet_b0(
    width_mult: float,
    depth_mult: float,
    *,
    num_classes: int,
    in_channels: int,
    input_size: int,
) -> nn.Module:
    # torchvision's EfficientNet-B0 is exactly this with (1.0, 1.0) and dropout 0.2. The private
    # _efficientnet_conf is the only way to get scaled MBConv settings (torchvision 0.29).
    setting, last_channel = _efficientnet_conf(
        "efficientnet_b0", width_mult=width_mult, depth_mult=depth_mult
    )
    model = EfficientNet(setting, dropout=0.2, num_classes=num_classes, last_channel=last_channel)
    return _adapt_features_stem(model, in_channels=in_channels, input_size=input_size)


#: Model name -> builder ``(*, num_classes, in_channels, input_size) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": _build_small_cnn,
    "resnet18": partial(_build_resnet, torchvision.models.resnet18),
    "resnet50": partial(_build_resnet, torchvision.models.resnet50),
    "mobilenet_v3_small": partial(_build_mobilenet_v3, torchvision.models.mobilenet_v3_small),
    "mobilenet_v3_large": partial(_build_mobilenet_v3, torchvision.models.mobilenet_v3_large),
    "efficientnet_b0": partial(_build_efficientnet_b0, 1.0, 1.0),
    **{
        name: partial(_build_efficientnet_b0, *multipliers)
        for name, multipliers in EFFICIENTNET_SCALING.items()
    },
}

# Smallest input_size per model: its total downsampling with the small stem, so every stride-2
# stage still has at least 2x2 pixels to reduce (smaller inputs run but degenerate to 1x1 early).
_MIN_INPUT_SIZE = {
    **dict.fromkeys(("small_cnn", "resnet18", "resnet50"), 8),
    **dict.fromkeys(("mobilenet_v3_small", "mobilenet_v3_large"), 16),
    **dict.fromkeys(("efficientnet_b0", *EFFICIENTNET_SCALING), 16),
}


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(MODELS)


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(list_models())}")


def min_input_size(name: str) -> int:
    """Return the smallest ``input_size`` accepted for model ``name`` (1 for unlisted models)."""
    _check_name(name)
    return _MIN_INPUT_SIZE.get(name, 1)


def _check_int(arg: str, value: object, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{arg} must be an integer >= {minimum}{why}, got {value!r}")
    return int(value)


def create_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> nn.Module:
    """Build registered model ``name`` with random weights for the given data.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (see :func:`list_models`).
    num_classes : int
        Outputs of the classifier head.
    in_channels : int
        Channels of the input images; anything but 3 replaces the first conv.
    input_size : int
        Height (= width) of the input images; below :data:`SMALL_INPUT_THRESHOLD` the stem is
        adapted (see :func:`uses_small_stem`). Must be at least :func:`min_input_size`.

    Returns
    -------
    nn.Module
        The model in training mode, mapping ``(N, in_channels, input_size, input_size)`` to
        ``(N, num_classes)`` logits.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones) or an invalid argument (the message
        names it and says what is valid).
    """
    _check_name(name)
    num_classes = _check_int("num_classes", num_classes, 1)
    in_channels = _check_int("in_channels", in_channels, 1)
    minimum = min_input_size(name)
    input_size = _check_int("input_size", input_size, minimum, f" for model {name!r}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, input_size=input_size)


def layer_kind(module: nn.Module) -> str:
    """Classify a Conv2d or Linear module for pruning-scheme choices.

    Returns
    -------
    str
        ``"depthwise"`` (a conv with ``groups == in_channels > 1``, any kernel),
        ``"pointwise"`` (a 1x1 conv with ``groups == 1``), ``"conv"`` (any other conv, including
        grouped ones) or ``"linear"``.

    Raises
    ------
    TypeError
        If ``module`` is neither ``nn.Conv2d`` nor ``nn.Linear``.
    """
    if isinstance(module, nn.Linear):
        return "linear"
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"layer_kind expects nn.Conv2d or nn.Linear, got {type(module).__name__}")
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    if module.kernel_size == (1, 1) and module.groups == 1:
        return "pointwise"
    return "conv"


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates of one call, per sample (dimension 0 of ``output`` is the batch)."""
    if isinstance(module, nn.Conv2d):
        out_h, out_w = output.shape[-2:]
        kh, kw = module.kernel_size
        per_pixel = module.out_channels * (module.in_channels // module.groups) * kh * kw
        return int(out_h * out_w * per_pixel)
    positions = math.prod(output.shape[1:-1]) if output.dim() > 1 else 1
    return int(positions * module.in_features * module.out_features)


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> pd.DataFrame:
    """Return one row per ``nn.Conv2d`` and ``nn.Linear`` in ``model`` with shapes and cost.

    Shapes come from forward hooks during one forward pass of a zero tensor of ``input_shape``,
    in eval mode without gradients; every module's training flag is restored afterwards.

    Parameters
    ----------
    model : nn.Module
        The network; the input is created on the device and dtype of its first parameter.
    input_shape : tuple of int
        Full shape of the input tensor, batch dimension first, e.g. ``(1, 3, 32, 32)``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LAYER_COLUMNS`, rows in ``named_modules()`` order:

        - ``name``: qualified module name; ``kind``: see :func:`layer_kind`;
        - ``kernel``, ``stride``: ``(h, w)`` tuples, None for linear layers;
        - ``groups`` (1 for linear), ``in_channels``, ``out_channels`` (features for linear);
        - ``input_hw``, ``output_hw``: ``(h, w)`` of the first call, None for linear layers and
          for modules the forward pass never reached;
        - ``params``: weight + bias elements of the layer itself (BatchNorm etc. not counted);
        - ``macs``: multiply-accumulates **per sample** (independent of the batch size), summed
          over all calls of the module: ``out_h * out_w * out_channels * in_channels / groups *
          kh * kw`` for a conv, ``in * out`` times the positions between batch and feature
          dimension for a linear layer; 0 if never called.

        Totals are ``df["macs"].sum()`` and ``df["params"].sum()`` (also kept, with the input
        shape, in ``df.attrs["total_macs"]``, ``df.attrs["total_params"]`` and
        ``df.attrs["input_shape"]``; pandas may drop ``attrs`` on some operations).
    """
    shape = tuple(input_shape)
    if not shape or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape
    ):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    calls: dict[nn.Module, dict[str, object]] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        record = calls.setdefault(module, {"input_hw": None, "output_hw": None, "macs": 0})
        if isinstance(module, nn.Conv2d) and record["input_hw"] is None:
            record["input_hw"] = tuple(int(s) for s in args[0].shape[-2:])
            record["output_hw"] = tuple(int(s) for s in output.shape[-2:])
        record["macs"] += _layer_macs(module, output)  # type: ignore[operator]

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for _, m in layers]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    rows = []
    for name, module in layers:
        record = calls.get(module, {"input_hw": None, "output_hw": None, "macs": 0})
        conv = isinstance(module, nn.Conv2d)
        rows.append(
            {
                "name": name,
                "kind": layer_kind(module),
                "kernel": tuple(module.kernel_size) if conv else None,
                "stride": tuple(module.stride) if conv else None,
                "groups": module.groups if conv else 1,
                "in_channels": module.in_channels if conv else module.in_features,
                "out_channels": module.out_channels if conv else module.out_features,
                "input_hw": record["input_hw"],
                "output_hw": record["output_hw"],
                "params": sum(p.numel() for p in module.parameters(recurse=False)),
                "macs": record["macs"],
            }
        )
    table = pd.DataFrame(rows, columns=list(LAYER_COLUMNS))
    table = table.astype({c: "int64" for c in ("groups", "in_channels", "out_channels")})
    table = table.astype({"params": "int64", "macs": "int64"})
    table.attrs.update(
        input_shape=shape,
        total_macs=int(table["macs"].sum()),
        total_params=int(table["params"].sum()),
    )
    return table


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Return the per-sample MACs of all Conv2d and Linear layers.

    That is ``layer_table(model, input_shape)["macs"].sum()``; see :func:`layer_table` for the
    parameters (``input_shape`` is the full input shape, batch first, e.g. ``(1, 3, 224, 224)``).
    """
    return int(layer_table(model, input_shape)["macs"].sum())
