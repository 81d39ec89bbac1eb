"""Measure on devices behind a TVM RPC tracker: retries when a device drops, many devices at once.

:func:`measure_on_device` is the protocol of :mod:`npas_lab.devices.measure` plus what a phone
needs: the library is linked for the device and uploaded, a session is requested from the
tracker with a deadline, and a device that drops mid-measurement (the app closed, Wi-Fi lost,
the server killed) is retried on whichever server is free under the key. When every attempt
fails the figure is recorded as failed (NaN latency, the error kept) and returned, not raised,
so a search records it and goes on with the next candidate.

:func:`measure_many` measures several compiled models concurrently, one thread per free server
under the key: each thread holds its own session, and the tracker hands each to a different
server (several phones of one model, or several ``npas-lab device serve`` processes).

Examples
--------
>>> with LocalRPC(key="local", num_servers=2) as rpc:  # doctest: +SKIP
...     m = measure_on_device(compiled, x, device=rpc.device())
...     ms = measure_many([dense, pruned], x, device=rpc.device())
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from npas_lab import results
from npas_lab.compiler import CompiledModel
from npas_lab.devices.cross import ToolchainError
from npas_lab.devices.measure import MeasureConfig, Measurement, measure
from npas_lab.devices.profiles import DeviceProfile, get_device
from npas_lab.devices.rpc import TrackerUnreachableError, tracker_summary
from npas_lab.devices.runtime import load_on_device

__all__ = ["RetryPolicy", "free_servers", "measure_many", "measure_on_device"]


@dataclass(frozen=True)
class RetryPolicy:
    """What to do when a device is busy or drops during a measurement.

    Parameters
    ----------
    retries : int
        Attempts after the first one (each requests a fresh session, possibly another server).
    request_timeout_s : float
        How long one attempt waits for a free server under the key before it counts as failed.
    backoff_s : float
        Pause before a retry, doubled after each (a phone app restarting needs a moment).
    session_timeout_s : float
        Session limit enforced by the server (0: none); a hung device is then cut off.
    """

    retries: int = 2
    request_timeout_s: float = 30.0
    backoff_s: float = 1.0
    session_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"RetryPolicy.retries must be >= 0, got {self.retries}")
        for name in ("request_timeout_s", "backoff_s", "session_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetryPolicy.{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """Return the policy as JSON-able data."""
        return dataclasses.asdict(self)


# Errors that mean "the caller asked for something wrong": retrying cannot help, so they raise.
_CALLER_ERRORS = (ValueError, TypeError, ToolchainError, TrackerUnreachableError)


def _fingerprint(profile: DeviceProfile, compiled: CompiledModel, x: torch.Tensor) -> dict:
    return {
        "device": profile.name,
        "engine": "tvm",
        "target": compiled.target_json(),
        "num_threads": profile.num_threads,
        "key": profile.key,
        "input_shape": tuple(x.shape),
    }


def measure_on_device(
    compiled: CompiledModel,
    example_input: torch.Tensor,
    *,
    device: str | DeviceProfile | None = None,
    config: MeasureConfig | None = None,
    policy: RetryPolicy | None = None,
    model_name: str | None = None,
    record: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Measurement:
    """Measure ``compiled`` on ``device`` with retries; a device that stays away gives a failed row.

    Parameters
    ----------
    compiled : CompiledModel
        Compiled for the device's target (:func:`npas_lab.devices.cross.compile_for_device`).
    example_input : torch.Tensor
    device : str or DeviceProfile, optional
        Default: the device it was compiled for. In-process devices are measured once, as
        :func:`~npas_lab.devices.measure` does.
    config : MeasureConfig, optional
        The timing protocol.
    policy : RetryPolicy, optional
        Retries and timeouts; default ``RetryPolicy()``.
    model_name : str, optional
        Recorded with the figure; default the compiled model's name.
    record : bool
        Append the figure (ok or failed) to the ``measurements`` table of the results store.
    progress : callable, optional
        Called with one line per event: session opened (with the server), each failure, the
        figure.

    Returns
    -------
    Measurement
        ``status="ok"`` with ``attempts`` tries, or ``status="failed"`` with the last error.

    Raises
    ------
    ValueError
        Wrong target or input (not retried: the request is wrong, not the device).
    TrackerUnreachableError
        No tracker at the device's address (a configuration error, not a dropped device).
    ToolchainError
        The library cannot be linked for the device.
    """
    profile = get_device(device if device is not None else compiled.profile)
    config = config or MeasureConfig()
    policy = policy or RetryPolicy()
    name = model_name or compiled.name
    say = progress or (lambda message: None)
    fields = {**_fingerprint(profile, compiled, example_input), "config": config, "model": name}
    attempts = 1 + (policy.retries if profile.reach == "rpc" else 0)
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            runner = load_on_device(
                compiled,
                profile,
                session_timeout_s=policy.session_timeout_s,
                request_timeout_s=policy.request_timeout_s,
            )
        except _CALLER_ERRORS:
            raise
        except Exception as err:  # busy or gone: the tracker found no server in time
            error = f"{type(err).__name__}: {err}"
        else:
            say(f"[{name}] session on {runner.server or profile.name} (attempt {attempt})")
            try:
                m = measure(runner, example_input, config=config, model_name=name)
            except _CALLER_ERRORS:
                raise
            except Exception as err:  # the device dropped mid-measurement
                error = f"{type(err).__name__} on {runner.server}: {err}"
            else:
                m = dataclasses.replace(m, attempts=attempt)
                say(f"[{name}] {m.latency_ms:.3f} ms (IQR {m.spread_ms:.3f}) on {m.server}")
                return _record(m, policy, record)
            finally:
                runner.close()
        say(f"[{name}] attempt {attempt}/{attempts} failed: {error.splitlines()[0][:200]}")
        if attempt < attempts:
            time.sleep(policy.backoff_s * 2 ** (attempt - 1))
    failed = Measurement.failed(error, attempts=attempts, **fields)
    return _record(failed, policy, record)


def _record(m: Measurement, policy: RetryPolicy, record: bool) -> Measurement:
    if record:
        results.append("measurements", {"kind": "device", **m.to_dict(), "retry": policy.to_dict()})
    return m


def free_servers(device: str | DeviceProfile, *, timeout_s: float = 5.0) -> int:
    """Return how many servers under the device's key are free at its tracker now.

    Raises
    ------
    ValueError
        If the device is not reached by RPC.
    TrackerUnreachableError
        If its tracker does not answer.
    """
    profile = get_device(device)
    if profile.reach != "rpc":
        raise ValueError(f"device {profile.name!r} runs in process; it has no tracker to ask")
    summary = tracker_summary(*profile.tracker_address, timeout_s=timeout_s)
    queue: Mapping[str, Any] = summary.get("queue_info", {}).get(profile.key, {})
    return int(queue.get("free", 0))


def measure_many(
    compiled: Sequence[CompiledModel],
    example_input: torch.Tensor,
    *,
    device: str | DeviceProfile,
    config: MeasureConfig | None = None,
    policy: RetryPolicy | None = None,
    max_workers: int | None = None,
    record: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Measure several compiled models at once, one per free server under the device's key.

    Parameters
    ----------
    compiled : sequence of CompiledModel
        All compiled for the device's target.
    example_input : torch.Tensor
    device : str or DeviceProfile
        An RPC device; each concurrent measurement holds one of its servers.
    config, policy, record, progress
        As :func:`measure_on_device`.
    max_workers : int, optional
        Concurrent measurements; default the number of free servers (at least 1).

    Returns
    -------
    list of Measurement
        In the order of ``compiled``; failed ones have ``status="failed"``.
    """
    profile = get_device(device)
    if max_workers is None:
        max_workers = max(1, free_servers(profile)) if profile.reach == "rpc" else 1
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")

    def one(item: CompiledModel) -> Measurement:
        return measure_on_device(
            item,
            example_input,
            device=profile,
            config=config,
            policy=policy,
            record=record,
            progress=progress,
        )

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="npas-measure") as pool:
        return list(pool.map(one, compiled))
