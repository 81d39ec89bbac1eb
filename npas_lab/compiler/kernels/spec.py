"""What a kernel computes (:class:`ConvSpec`) and what a kernel is (:class:`Kernel`).

A :class:`ConvSpec` is one conv layer instance: shapes, stride, padding, dilation, groups, the
input size and the fused epilogue. A :class:`Kernel` is a scheduled TIR ``PrimFunc`` for that
layer and a weight, with the compact constant arrays it reads; its parameters are always
``(data, *constants, [bias], out)`` with ``data`` NCHW and ``out`` NCHW.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm

__all__ = ["EPILOGUES", "SCHEMES", "ConvSpec", "Kernel", "KernelError"]

#: Schemes :func:`~npas_lab.compiler.kernels.conv_kernel` lowers. ``filter`` and ``channel`` are
#: in-place lowerings (whole zero rows / columns are skipped); a physically smaller layer is a
#: ``dense`` kernel of a smaller :class:`ConvSpec`.
SCHEMES = (
    "dense",
    "depthwise",
    "block_punched",
    "block",
    "pattern",
    "unstructured",
    "filter",
    "channel",
)
#: Fused epilogues: nothing, ``+ bias[f]``, ``max(. + bias[f], 0)``, and the same with a bias
#: *map* ``bias[f, y, x]`` (what a filter-pruned producer leaves its consumer: the removed
#: channels' constant, convolved with zero padding, differs at the borders).
EPILOGUES = ("none", "bias", "bias_relu", "map", "map_relu")


class KernelError(ValueError):
    """A kernel cannot be made for these inputs; the message names the problem."""


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(isinstance(v, bool) for v in value):
        raise KernelError(f"ConvSpec.{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer instance (NCHW).

    Parameters
    ----------
    in_channels, out_channels : int
        ``C`` and ``F``.
    kernel, stride, padding : pair of int (an int means both)
        Kernel size, stride and zero padding (rows, columns).
    dilation : pair of int
        Kernel dilation.
    groups : int
        ``1`` (ordinary conv), ``C`` (depthwise, with ``F`` a multiple of ``C``) or any divisor.
    input_hw : pair of int
        Input height and width (keyword only).
    batch : int
        Batch size (the kernels loop over it).
    dtype : str
        Only ``"float32"``.
    epilogue : {"none", "bias", "bias_relu", "map", "map_relu"}
        What is fused after the convolution; ``bias`` kernels take a ``(F,)`` bias argument,
        ``map`` kernels an ``(F * OH * OW,)`` one (see :attr:`bias_shape`).

    Examples
    --------
    >>> spec = ConvSpec(64, 64, 3, 1, 1, input_hw=32)
    >>> spec.out_shape, spec.macs
    ((1, 64, 32, 32), 37748736)
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    input_hw: tuple[int, int] = field(kw_only=True)
    batch: int = field(default=1, kw_only=True)
    dtype: str = field(default="float32", kw_only=True)
    epilogue: str = field(default="none", kw_only=True)

    def __post_init__(self) -> None:
        for name in ("kernel", "stride", "padding", "dilation", "input_hw"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        for name in ("in_channels", "out_channels", "groups", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise KernelError(f"ConvSpec.{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if min(*self.kernel, *self.stride, *self.dilation, *self.input_hw) < 1:
            raise KernelError(f"ConvSpec sizes must be >= 1: {self}")
        if min(self.padding) < 0:
            raise KernelError(f"ConvSpec.padding must be >= 0, got {self.padding}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise KernelError(
                f"ConvSpec.groups={self.groups} must divide in_channels={self.in_channels} and "
                f"out_channels={self.out_channels}"
            )
        if self.dtype != "float32":
            raise KernelError(f"only float32 kernels exist, got dtype={self.dtype!r}")
        if self.epilogue not in EPILOGUES:
            raise KernelError(f"epilogue must be one of {EPILOGUES}, got {self.epilogue!r}")
        if min(self.out_hw) < 1:
            raise KernelError(
                f"kernel {self.kernel} (dilation {self.dilation}) does not fit input "
                f"{self.input_hw} with padding {self.padding}"
            )

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output height and width."""
        return tuple(  # type: ignore[return-value]
            (size + 2 * pad - dil * (k - 1) - 1) // st + 1
            for size, pad, dil, k, st in zip(
                self.input_hw, self.padding, self.dilation, self.kernel, self.stride, strict=True
            )
        )

    @property
    def in_shape(self) -> tuple[int, int, int, int]:
        """Shape of ``data``: ``(batch, C, H, W)``."""
        return (self.batch, self.in_channels, *self.input_hw)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """Shape of ``out``: ``(batch, F, OH, OW)``."""
        return (self.batch, self.out_channels, *self.out_hw)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """Shape of the weight: ``(F, C / groups, kh, kw)``."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        """Shape of the epilogue's bias argument: ``(F,)``, ``(F * OH * OW,)`` or ``None``."""
        if self.epilogue == "none":
            return None
        if self.epilogue.startswith("map"):
            return (self.out_channels * self.out_hw[0] * self.out_hw[1],)
        return (self.out_channels,)

    @property
    def is_depthwise(self) -> bool:
        """True when every input channel is its own group (``groups == C``)."""
        return self.groups == self.in_channels and self.groups > 1

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the dense layer."""
        f, cg, kh, kw = self.weight_shape
        return self.batch * f * cg * kh * kw * self.out_hw[0] * self.out_hw[1]

    def with_(self, **changes: Any) -> ConvSpec:
        """Return a copy with some fields changed (e.g. ``spec.with_(out_channels=32)``)."""
        return ConvSpec(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as JSON-able data (pairs as lists)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "input_hw": list(self.input_hw),
            "batch": self.batch,
            "dtype": self.dtype,
            "epilogue": self.epilogue,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConvSpec:
        """Rebuild a spec written by :meth:`to_dict`."""
        return cls(**dict(data))

    def check_weight(self, weight: np.ndarray) -> np.ndarray:
        """Return ``weight`` as a C-contiguous float32 array, or raise naming the mismatch."""
        if hasattr(weight, "detach"):  # a torch tensor
            weight = weight.detach().cpu().numpy()
        weight = np.asarray(weight)
        if weight.shape != self.weight_shape:
            raise KernelError(
                f"weight shape {tuple(weight.shape)} does not match the spec: expected "
                f"{self.weight_shape} = (out_channels, in_channels / groups, kh, kw)"
            )
        if not np.all(np.isfinite(weight)):
            raise KernelError("weight has NaN or infinite values")
        return np.ascontiguousarray(weight, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Kernel:
    """A scheduled conv kernel for one layer and one (masked) weight.

    Attributes
    ----------
    name : str
        ``"<scheme>_<template>"`` plus shape, for messages.
    scheme : str
        The sparsity scheme it was lowered for.
    spec : ConvSpec
    config : dict
        The schedule configuration (one point of :func:`config_space`).
    primfunc : tvm.tirx.PrimFunc
        Parameters ``(data, *constants, [bias], out)``.
    constants : tuple of np.ndarray
        Compact storage passed after ``data`` (values, offsets, pointers, ...).
    out_shape : tuple of int
    info : dict
        Facts about the lowering: ``macs`` (dense), ``kept`` (non-zero weights), ``executed``
        (multiply-adds the kernel really issues, padding included), ``entries``, ``layout``.
    """

    name: str
    scheme: str
    spec: ConvSpec
    config: Mapping[str, Any]
    primfunc: tvm.tirx.PrimFunc
    constants: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]
    info: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Kernel(name={self.name!r}, scheme={self.scheme!r}, config={dict(self.config)}, "
            f"out_shape={self.out_shape})"
        )

    def config_json(self) -> str:
        """Return the config as canonical JSON."""
        return json.dumps(dict(self.config), sort_keys=True)


def structure_hash(weight: np.ndarray) -> str:
    """Return a short hash of the non-zero structure (the mask) of ``weight``."""
    mask = np.ascontiguousarray(np.asarray(weight) != 0)
    digest = hashlib.sha256(str(mask.shape).encode() + np.packbits(mask).tobytes())
    return digest.hexdigest()[:16]
