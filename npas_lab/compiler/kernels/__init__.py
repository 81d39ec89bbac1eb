"""Project-owned conv kernels for every sparsity scheme, with a small tuned configuration space.

Public API (see the modules for the design):

- :class:`ConvSpec`, :class:`Kernel`, :class:`KernelError` (:mod:`.spec`);
- :func:`conv_kernel` and :func:`config_space` (:mod:`.lower`);
- :func:`tune_kernel` and :class:`TuningDatabase` (:mod:`.tuning`);
- :func:`run_kernel`, :func:`build_kernel`, :func:`time_kernel` (:mod:`.runtime`).

Examples
--------
>>> spec = ConvSpec(64, 64, 3, 1, 1, input_hw=32)
>>> kernel = conv_kernel(spec, masked_weight, "block_punched", block=(8, 4))  # doctest: +SKIP
>>> out = run_kernel(kernel, x)  # == torch conv2d(x, masked_weight, padding=1)  # doctest: +SKIP
>>> best, ms = tune_kernel(spec, masked_weight, "block_punched", block=(8, 4))  # doctest: +SKIP
"""

from npas_lab.compiler.kernels.lower import config_space, conv_kernel
from npas_lab.compiler.kernels.runtime import Timing, build_kernel, run_kernel, time_kernel
from npas_lab.compiler.kernels.spec import EPILOGUES, SCHEMES, ConvSpec, Kernel, KernelError
from npas_lab.compiler.kernels.tuning import TuningDatabase, tune_kernel

__all__ = [
    "EPILOGUES",
    "SCHEMES",
    "ConvSpec",
    "Kernel",
    "KernelError",
    "Timing",
    "TuningDatabase",
    "build_kernel",
    "config_space",
    "conv_kernel",
    "run_kernel",
    "time_kernel",
    "tune_kernel",
]
