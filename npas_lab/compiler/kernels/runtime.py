"""Build, run and time a :class:`~npas_lab.compiler.kernels.spec.Kernel` in this process.

Timing protocol (:func:`time_kernel`): one untimed call, then ``repeat`` repeats of TVM's
``time_evaluator`` with ``number`` runs each, ``number`` grown until a repeat lasts
``min_repeat_ms``; the latency is the median of the per-run times, and the minimum and
interquartile range are kept. On a machine shared with other jobs the minimum is the more stable
figure for comparisons (interference only ever slows a run down); callers compare variants
measured side by side (see ``benchmarks/schemes.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm

from npas_lab.compiler.build import set_runtime_threads
from npas_lab.compiler.kernels.spec import ConvSpec, Kernel, KernelError

__all__ = [
    "Timing",
    "build_kernel",
    "compile_kernel",
    "kernel_args",
    "run_kernel",
    "time_function",
    "time_interleaved",
    "time_kernel",
    "timing_bias",
]


def _target(target: Mapping[str, Any] | None) -> dict[str, Any]:
    if target is None:
        from npas_lab.devices.profiles import host_cpu_target  # devices/ imports compiler/

        target = host_cpu_target()
    return dict(target)


def compile_kernel(kernel: Kernel, target: Mapping[str, Any] | None = None) -> Any:
    """Compile ``kernel.primfunc`` for ``target`` (any LLVM target, e.g. a phone's) without
    loading it; returns TVM's executable (``export_library`` writes it)."""
    mod = tvm.IRModule({"main": kernel.primfunc})
    return tvm.compile(mod, target=tvm.target.Target(_target(target)))


def build_kernel(kernel: Kernel, target: Mapping[str, Any] | None = None) -> tvm.runtime.Module:
    """Compile ``kernel.primfunc`` for ``target`` (default: this CPU) and load it here.

    The TVM thread pool is sized to the target's ``num-cores`` first (once per process).
    """
    target = _target(target)
    set_runtime_threads(int(target.get("num-cores", 1)))
    return compile_kernel(kernel, target).jit()


def kernel_args(
    kernel: Kernel,
    data: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    device: tvm.runtime.Device | None = None,
) -> list[tvm.runtime.Tensor]:
    """Return the TVM argument list ``(data, *constants, [bias], out)`` for ``kernel``.

    Raises
    ------
    KernelError
        If ``data`` or ``bias`` does not match the spec, or a bias is missing or unexpected.
    """
    spec = kernel.spec
    data = np.asarray(data)
    if data.shape != spec.in_shape:
        raise KernelError(f"data shape {data.shape} does not match the spec's {spec.in_shape}")
    wants_bias = spec.bias_shape is not None
    if wants_bias and bias is None:
        raise KernelError(
            f"kernel epilogue {spec.epilogue!r} needs a bias of shape {spec.bias_shape}"
        )
    if not wants_bias and bias is not None:
        raise KernelError("kernel has no bias epilogue (spec.epilogue='none') but got a bias")
    device = device or tvm.cpu()
    arrays = [np.ascontiguousarray(data, np.float32), *kernel.constants]
    if wants_bias:
        bias = np.ascontiguousarray(bias, np.float32).reshape(-1)
        if bias.shape != spec.bias_shape:
            raise KernelError(f"bias shape {bias.shape} != {spec.bias_shape} (flattened)")
        arrays.append(bias)
    arrays.append(np.zeros(kernel.out_shape, np.float32))
    return [tvm.runtime.tensor(a, device) for a in arrays]


def run_kernel(
    kernel: Kernel,
    data: np.ndarray,
    *,
    target: Mapping[str, Any] | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Build ``kernel``, run it once on ``data`` (NCHW) and return the output.

    Examples
    --------
    >>> out = run_kernel(conv_kernel(spec, w), x)  # doctest: +SKIP
    """
    lib = build_kernel(kernel, target)
    args = kernel_args(kernel, data, bias=bias)
    lib["main"](*args)
    return args[-1].numpy()


@dataclass(frozen=True)
class Timing:
    """One kernel's latency: median, minimum and IQR of per-run times over repeats (ms)."""

    ms: float
    min_ms: float
    iqr_ms: float
    times_ms: tuple[float, ...]
    number: int

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-able data."""
        return {
            "ms": self.ms,
            "min_ms": self.min_ms,
            "iqr_ms": self.iqr_ms,
            "times_ms": list(self.times_ms),
            "number": self.number,
        }


def time_function(
    lib: tvm.runtime.Module,
    args: list,
    *,
    repeat: int = 10,
    min_repeat_ms: float = 20.0,
) -> Timing:
    """Time ``lib["main"](*args)`` (see the module docstring for the protocol)."""
    lib["main"](*args)  # warm-up: first-touch allocation of the staging buffer, thread pool
    evaluator = lib.time_evaluator(
        "main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=int(max(1, min_repeat_ms))
    )
    result = evaluator(*args)
    times = np.asarray(result.results, dtype=float) * 1e3
    q1, q3 = np.percentile(times, [25, 75])
    return Timing(
        float(np.median(times)), float(times.min()), float(q3 - q1), tuple(times.tolist()), 0
    )


def time_interleaved(
    runs: Mapping[str, tuple[Any, list]],
    *,
    rounds: int = 10,
    min_repeat_ms: float = 10.0,
) -> dict[str, Timing]:
    """Time several functions side by side: each round times every one once, in turn.

    ``runs`` maps a name to ``(lib, args)`` (a built module and its arguments) or to a
    zero-argument Python callable (e.g. a PyTorch call), timed by the same rule with
    ``time.perf_counter``. Interleaving spreads slow phases of a shared machine over all
    variants, so their ratios stay meaningful when absolute times drift.
    """
    import time

    timers = {}
    for name, run in runs.items():
        if callable(run):
            run()
            number = 1
            start = time.perf_counter()
            while time.perf_counter() - start < min_repeat_ms / 1e3 and number < 1 << 20:
                run()
                number += 1

            def timer(run=run, number=number):
                start = time.perf_counter()
                for _ in range(number):
                    run()
                return (time.perf_counter() - start) / number * 1e3

            timers[name] = (timer, number)
        else:
            lib, args = run
            lib["main"](*args)
            probe = lib.time_evaluator("main", tvm.cpu(), number=1, repeat=1)(*args).mean
            number = max(1, int(min_repeat_ms / 1e3 / max(probe, 1e-7)))
            evaluator = lib.time_evaluator("main", tvm.cpu(), number=number, repeat=1)

            def timer(evaluator=evaluator, args=args):
                return evaluator(*args).mean * 1e3

            timers[name] = (timer, number)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (timer, _) in timers.items():
            samples[name].append(timer())
    out = {}
    for name, times in samples.items():
        arr = np.asarray(times)
        q1, q3 = np.percentile(arr, [25, 75])
        out[name] = Timing(
            float(np.median(arr)), float(arr.min()), float(q3 - q1), tuple(arr.tolist()),
            timers[name][1],
        )  # fmt: skip
    return out


def time_kernel(
    kernel: Kernel,
    *,
    target: Mapping[str, Any] | None = None,
    repeat: int = 10,
    min_repeat_ms: float = 20.0,
    seed: int = 0,
) -> Timing:
    """Build ``kernel`` and time it on random data (bias of ones when the epilogue has one)."""
    lib = build_kernel(kernel, target)
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(kernel.spec.in_shape).astype(np.float32)
    bias = timing_bias(kernel.spec)
    return time_function(
        lib, kernel_args(kernel, data, bias=bias), repeat=repeat, min_repeat_ms=min_repeat_ms
    )


def timing_bias(spec: ConvSpec) -> np.ndarray | None:
    """Return the bias of ones a kernel of ``spec`` is timed with (``None`` without epilogue)."""
    return None if spec.bias_shape is None else np.ones(spec.bias_shape, np.float32)


def target_json(target: Mapping[str, Any] | None) -> str:
    """Return the canonical JSON of ``target`` (default: this CPU) as TVM normalises it."""
    return json.dumps(json.loads(str(tvm.target.Target(_target(target)))), sort_keys=True)
