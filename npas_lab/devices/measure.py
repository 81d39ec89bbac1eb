"""The latency measurement protocol, the same for every engine and device.

Protocol (:class:`MeasureConfig`)
---------------------------------
1. The input is converted once (to a TVM tensor on the device, a numpy array for ONNX Runtime)
   and bound; conversion and transfer are not timed.
2. ``warmup`` untimed runs (first-call allocation, caches, thread pools; lazy initialisation).
3. One more untimed run, then ``repeat`` repeats; a repeat is ``number`` back-to-back runs timed
   together, giving one per-run time (repeat duration / number). A repeat shorter than
   ``min_repeat_ms`` is rerun with a larger ``number`` (kept for later repeats), so short models
   are not dominated by timer resolution. Steps 3's rules are TVM's ``time_evaluator``: TVM is
   timed by it on the device (over RPC too: the round trip is not in the latency), PyTorch and
   ONNX Runtime by the same rule in Python with ``time.perf_counter``
   (:func:`npas_lab.devices.runner.time_loop`).
4. ``latency_ms`` is the median of the per-repeat times; ``spread_ms`` is their interquartile
   range (75th - 25th percentile, numpy's linear interpolation), robust to the odd preempted
   repeat like the median. Raw per-repeat times are kept in ``times_ms``.

Every engine computes with the device's ``num_threads`` (see ``engines.py``), batch as given.

The device fingerprint goes with every figure: profile name, target JSON, threads, and for RPC
the tracker key and the server that ran it. A figure that could not be measured (a phone that
dropped off, see :func:`npas_lab.devices.remote.measure_on_device`) is a :class:`Measurement`
with ``status="failed"``, NaN latency and the error, so a search records it and carries on.

Examples
--------
>>> m = measure(model, torch.randn(1, 3, 32, 32), engine="pytorch")  # doctest: +SKIP
>>> m.latency_ms, m.spread_ms  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from npas_lab.compiler import CompiledModel
from npas_lab.devices.engines import Engine, get_engine
from npas_lab.devices.profiles import DeviceProfile, get_device
from npas_lab.devices.runner import Runner

__all__ = ["MeasureConfig", "Measurement", "measure"]


@dataclass(frozen=True)
class MeasureConfig:
    """How to time one model (see the module docstring for the protocol).

    Parameters
    ----------
    warmup : int
        Untimed runs before timing (TVM's timer adds one more, and so does the Python loop).
    repeat : int
        Timed repeats; the latency is their median.
    number : int
        Runs per repeat (at least; grown to reach ``min_repeat_ms``).
    min_repeat_ms : float
        Minimum duration of one repeat in milliseconds (TVM rounds it to an integer).
    """

    warmup: int = 2
    repeat: int = 10
    number: int = 1
    min_repeat_ms: float = 100.0

    def __post_init__(self) -> None:
        for name in ("warmup", "repeat", "number", "min_repeat_ms"):
            value = getattr(self, name)
            minimum = 1 if name in ("repeat", "number") else 0
            if value < minimum:
                raise ValueError(f"MeasureConfig.{name} must be >= {minimum}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-able data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasureConfig:
        """Rebuild a config written by :meth:`to_dict`."""
        return cls(**dict(data))


@dataclass(frozen=True)
class Measurement:
    """One latency figure with the protocol that produced it.

    Attributes
    ----------
    latency_ms : float
        Median over repeats of the per-run time.
    spread_ms : float
        Interquartile range of the per-repeat times.
    repeats : int
        Number of repeats (``len(times_ms)``).
    device : str
        Device profile name.
    engine : str
        ``"tvm"``, ``"pytorch"`` or ``"onnxruntime"``.
    target : str
        The TVM target JSON, or the engine/version/provider for the others.
    times_ms : tuple of float
        Per-run time of each repeat, in measurement order.
    config : MeasureConfig
        The protocol.
    num_threads : int
        Threads the engine computed with.
    input_shape : tuple of int
    model : str or None
        Model name if known.
    key : str or None
        TVM RPC tracker key of the device (None in process).
    server : str or None
        ``"host:port"`` of the RPC server that ran it (None in process).
    status : {"ok", "failed"}
        ``"failed"``: no figure (latency and spread are NaN, ``error`` says why).
    error : str or None
        The last error of a failed measurement.
    attempts : int
        Tries it took (1 + retries used).
    """

    latency_ms: float
    spread_ms: float
    repeats: int
    device: str
    engine: str
    target: str
    times_ms: tuple[float, ...] = ()
    config: MeasureConfig = field(default_factory=MeasureConfig)
    num_threads: int = 1
    input_shape: tuple[int, ...] = ()
    model: str | None = None
    key: str | None = None
    server: str | None = None
    status: str = "ok"
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """Whether this is a real figure (``status == "ok"``)."""
        return self.status == "ok"

    @classmethod
    def failed(cls, error: str, **fields: Any) -> Measurement:
        """Return the record of a measurement that produced no figure (NaN latency)."""
        nan = float("nan")
        return cls(latency_ms=nan, spread_ms=nan, repeats=0, status="failed", error=error, **fields)

    @classmethod
    def from_times(cls, times_s: list[float], **fields: Any) -> Measurement:
        """Summarise per-repeat times in seconds (median, IQR) into a measurement."""
        times_ms = np.asarray(times_s, dtype=float) * 1e3
        q25, q50, q75 = np.percentile(times_ms, [25, 50, 75])
        return cls(
            latency_ms=float(q50),
            spread_ms=float(q75 - q25),
            repeats=len(times_ms),
            times_ms=tuple(float(t) for t in times_ms),
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the measurement as JSON-able data (inverse of :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        out["times_ms"] = list(self.times_ms)
        out["input_shape"] = list(self.input_shape)
        out["config"] = self.config.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Rebuild a measurement written by :meth:`to_dict` (extra keys are an error)."""
        data = dict(data)
        data["times_ms"] = tuple(data.get("times_ms", ()))
        data["input_shape"] = tuple(data.get("input_shape", ()))
        data["config"] = MeasureConfig.from_dict(data.get("config", {}))
        for name in ("latency_ms", "spread_ms"):  # the results store writes NaN as null
            data[name] = float("nan") if data.get(name) is None else data[name]
        return cls(**data)


def _resolve(
    runnable: nn.Module | CompiledModel | Runner,
    example_input: torch.Tensor,
    engine: str | Engine | None,
    device: str | DeviceProfile | None,
) -> tuple[Runner, bool]:
    """Return the runner to time and whether ``measure`` created it (and must close it)."""
    if isinstance(runnable, Runner):
        if engine is not None and get_engine(engine).name != runnable.engine:
            raise ValueError(f"engine={engine!r} but the runner is a {runnable.engine!r} runner")
        if device is not None and get_device(device).name != runnable.device:
            raise ValueError(f"device={device!r} but the runner runs on {runnable.device!r}")
        return runnable, False
    if isinstance(runnable, CompiledModel):
        engine = "tvm" if engine is None else engine
        if get_engine(engine).name != "tvm":
            raise ValueError(f"a CompiledModel is measured with engine 'tvm', not {engine!r}")
        device = runnable.profile if device is None else device
    elif not isinstance(runnable, nn.Module):
        raise TypeError(
            "measure() takes an nn.Module, a CompiledModel or a Runner, "
            f"got {type(runnable).__name__}"
        )
    profile = get_device("host-cpu" if device is None else device)
    chosen = get_engine("pytorch" if engine is None else engine)
    return chosen.prepare(runnable, example_input, device=profile), True


def measure(
    runnable: nn.Module | CompiledModel | Runner,
    example_input: torch.Tensor,
    *,
    engine: str | Engine | None = None,
    device: str | DeviceProfile | None = None,
    config: MeasureConfig | None = None,
    model_name: str | None = None,
) -> Measurement:
    """Measure the latency of ``runnable`` on ``example_input`` with the shared protocol.

    Parameters
    ----------
    runnable : nn.Module, CompiledModel or Runner
        A module is prepared by ``engine`` (default ``"pytorch"``); a
        :class:`~npas_lab.compiler.CompiledModel` is timed by TVM on ``device`` (default the
        device it was compiled for; ``host-cpu`` code can run on ``host-cpu-rpc``); a runner from
        an engine is timed as is (and not closed).
    example_input : torch.Tensor
        The input every timed run uses.
    engine : str or Engine, optional
        ``"tvm"``, ``"pytorch"`` or ``"onnxruntime"`` (see :func:`~npas_lab.devices.list_engines`).
    device : str or DeviceProfile, optional
        Default ``"host-cpu"`` (or the compiled model's device).
    config : MeasureConfig, optional
        The protocol; default ``MeasureConfig()``.
    model_name : str, optional
        Recorded in the measurement; default the compiled model's name or the class name.

    Returns
    -------
    Measurement

    Raises
    ------
    ValueError
        Unknown engine/device (the message lists the valid names), an input of the wrong shape, or
        an engine that cannot reach the device.
    """
    config = config or MeasureConfig()
    runner, owned = _resolve(runnable, example_input, engine, device)
    try:
        times = runner.time(
            example_input,
            warmup=config.warmup,
            number=config.number,
            repeat=config.repeat,
            min_repeat_ms=config.min_repeat_ms,
        )
    finally:
        if owned:
            runner.close()
    return Measurement.from_times(
        times,
        device=runner.device,
        engine=runner.engine,
        target=runner.target,
        config=config,
        num_threads=runner.num_threads,
        input_shape=tuple(example_input.shape),
        model=model_name or runner.model_name,
        key=getattr(runner, "key", None),
        server=getattr(runner, "server", None),
    )
