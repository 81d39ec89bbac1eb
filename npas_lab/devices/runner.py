"""The :class:`Runner` interface: a model made runnable by an engine on a device.

An engine (``engines.py``) turns a model into a Runner; ``measure.py`` times any Runner with one
protocol. A runner converts the input once (:meth:`Runner.prepare_input`), and the timed loop
calls only :meth:`Runner.run_prepared`, so the conversion cost is not part of the latency.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import torch

__all__ = ["Runner", "time_loop"]


def time_loop(
    fn: Any, *, number: int, repeat: int, min_repeat_ms: float, discard_first: bool = True
) -> list[float]:
    """Time ``fn()`` as TVM's ``time_evaluator`` does and return seconds per run, per repeat.

    One discarded call, then ``repeat`` repeats of ``number`` back-to-back calls timed together
    with ``time.perf_counter``. A repeat shorter than ``min_repeat_ms`` is thrown away and rerun
    with ``number = max(min_repeat_ms / per_run + 1, 1.618 * number)``, and the grown ``number``
    is kept for later repeats -- the same rule as ``src/runtime/timer.cc`` in TVM, so Python
    engines and TVM are timed alike.
    """
    if discard_first:
        fn()
    results = []
    for _ in range(repeat):
        duration_ms = 0.0
        while True:
            if duration_ms > 0.0:
                number = int(max(min_repeat_ms / (duration_ms / number) + 1, number * 1.618))
            start = time.perf_counter()
            for _ in range(number):
                fn()
            duration_ms = (time.perf_counter() - start) * 1e3
            if duration_ms >= min_repeat_ms:
                break
        results.append(duration_ms / 1e3 / number)
    return results


class Runner(ABC):
    """A model prepared by one engine for one device.

    Attributes
    ----------
    engine : str
        Engine name (``"tvm"``, ``"pytorch"``, ``"onnxruntime"``).
    device : str
        Device profile name.
    target : str
        What the code was generated for: the TVM target JSON, or the engine, version and
        execution provider for the others.
    num_threads : int
        Threads the engine computes with.
    model_name : str or None
        Name of the model it runs, for records.
    """

    engine: str
    device: str
    target: str
    num_threads: int
    model_name: str | None = None

    @abstractmethod
    def prepare_input(self, x: torch.Tensor) -> Any:
        """Convert ``x`` to what :meth:`run_prepared` takes (checked, copied)."""

    @abstractmethod
    def run_prepared(self, native: Any) -> Any:
        """Run once on a prepared input and return the engine's raw output."""

    @abstractmethod
    def to_torch(self, output: Any) -> torch.Tensor | tuple:
        """Convert a raw output to torch tensor(s) on the CPU."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple:
        """Run once on ``x`` and return the output as torch tensor(s)."""
        return self.to_torch(self.run_prepared(self.prepare_input(x)))

    def time(
        self, x: torch.Tensor, *, warmup: int, number: int, repeat: int, min_repeat_ms: float
    ) -> list[float]:
        """Warm up, then return the seconds per run of each repeat (see :func:`time_loop`)."""
        native = self.prepare_input(x)
        for _ in range(warmup):
            self.run_prepared(native)
        return time_loop(
            lambda: self.run_prepared(native),
            number=number,
            repeat=repeat,
            min_repeat_ms=min_repeat_ms,
        )

    def close(self) -> None:  # noqa: B027 - optional hook: most runners hold nothing to release
        """Release sessions and files (idempotent)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
