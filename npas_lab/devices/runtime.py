"""Run a :class:`~npas_lab.compiler.CompiledModel` on its device, in process or through TVM RPC.

:func:`load_on_device` returns a :class:`TVMRunner`. For ``reach="rpc"`` it exports the library to
a temporary folder, requests a session from the tracker under the device key, uploads the
library and loads it remotely. The library is linked by the device's toolchain
(:func:`npas_lab.devices.cross.export_for_device`: the NDK or a cross gcc for a phone). Both
paths drive the Relax VM with the stateful API (``set_input`` / ``invoke_stateful`` /
``get_outputs``): over RPC ``vm["main"](x)`` returns an ``RPCObjectRef`` that cannot be read,
and using the same calls in process keeps the two timings comparable. Timing uses
``vm.time_evaluator("invoke_stateful", ...)``, i.e. TVM's C++ timer on the device itself: RPC
round trips are not part of the latency.
"""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import tvm
from tvm import relax

from npas_lab.compiler import CompiledModel
from npas_lab.devices.cross import export_for_device
from npas_lab.devices.profiles import DeviceProfile, get_device
from npas_lab.devices.rpc import connect_tracker, request_session
from npas_lab.devices.runner import Runner

__all__ = ["TVMRunner", "load_on_device"]


def _canonical_target(profile: DeviceProfile) -> dict[str, Any]:
    host = dict(profile.host) if profile.host else None
    return json.loads(str(tvm.target.Target(dict(profile.target), host=host)))


# TVM target kind -> runtime device type (what `tvm.runtime.device` and `session.device` take).
_DEVICE_TYPE = {"llvm": "cpu", "c": "cpu", "opencl": "opencl", "cuda": "cuda"}


class TVMRunner(Runner):
    """A compiled model loaded on its device (in process or over RPC).

    Use :func:`load_on_device` to create one; close it (or use ``with``) to end an RPC session.

    Attributes
    ----------
    key : str or None
        The tracker key it was requested under (None in process).
    server : str or None
        ``"host:port"`` of the RPC server that runs it (None in process).
    """

    engine = "tvm"

    def __init__(
        self,
        compiled: CompiledModel,
        device: DeviceProfile,
        *,
        session_timeout_s: float = 0.0,
        tracker_timeout_s: float = 5.0,
        request_timeout_s: float | None = None,
    ) -> None:
        self.compiled = compiled
        self.device = device.name
        self.profile = device
        self.target = compiled.target_json()
        self.num_threads = device.num_threads
        self.model_name = compiled.name
        self._session: Any = None
        self.key: str | None = None
        self.server: str | None = None
        kind = _DEVICE_TYPE.get(str(compiled.target["kind"]), str(compiled.target["kind"]))
        if device.reach == "local":
            self.vm = compiled.vm
            self.dev = tvm.runtime.device(kind)
            return
        # Link first: a missing cross linker must not hold one of the tracker's servers.
        with tempfile.TemporaryDirectory(prefix="npas-upload-") as tmp:
            lib = export_for_device(compiled, Path(tmp) / f"{compiled.name}.so")
            host, port = device.tracker_address
            # The clear TrackerUnreachableError when nothing listens (TVM would retry for 60 s).
            connect_tracker(host, port, timeout_s=tracker_timeout_s).close()
            self._session, self.server = request_session(
                host,
                port,
                str(device.key),
                timeout_s=request_timeout_s,
                session_timeout_s=session_timeout_s,
            )
            self.key = device.key
            self._session.upload(str(lib))
            remote_lib = self._session.load_module(lib.name)
        self.dev = self._session.device(kind)
        self.vm = relax.VirtualMachine(remote_lib, self.dev)

    @property
    def remote(self) -> bool:
        """Whether this runner drives an RPC session."""
        return self._session is not None

    def prepare_input(self, x: torch.Tensor) -> None:
        # Copy to the device once and bind it as the VM's input; the timed calls reuse it.
        self.vm.set_input("main", self.compiled.to_tvm(x, self.dev))

    def run_prepared(self, native: Any) -> None:
        self.vm.invoke_stateful("main")

    def to_torch(self, output: Any) -> torch.Tensor | tuple:
        return self.compiled.to_torch(self.vm.get_outputs("main"))

    def time(
        self, x: torch.Tensor, *, warmup: int, number: int, repeat: int, min_repeat_ms: float
    ) -> list[float]:
        """Warm up, then time on the device with TVM's ``time_evaluator`` (seconds per run)."""
        self.prepare_input(x)
        for _ in range(warmup):
            self.vm.invoke_stateful("main")
        timer = self.vm.time_evaluator(
            "invoke_stateful",
            self.dev,
            number=number,
            repeat=repeat,
            min_repeat_ms=round(min_repeat_ms),
        )
        return [float(t) for t in timer("main").results]

    def close(self) -> None:
        # An RPC session ends when the last object referring to it is freed: the VM, the remote
        # library and tensors inside it, and the device (which keeps `_rpc_sess`). The server
        # serves one session at a time, so a leaked one blocks the next request forever.
        remote = self._session is not None
        self.vm = None
        self.dev = None
        self._session = None
        if remote:
            gc.collect()


def load_on_device(
    compiled: CompiledModel,
    device: str | DeviceProfile | None = None,
    *,
    session_timeout_s: float = 0.0,
    tracker_timeout_s: float = 5.0,
    request_timeout_s: float | None = None,
) -> TVMRunner:
    """Load ``compiled`` on ``device`` (default: the device it was compiled for).

    Parameters
    ----------
    compiled : CompiledModel
    device : str or DeviceProfile, optional
        Must have the same target as ``compiled`` (e.g. ``host-cpu`` code runs on
        ``host-cpu-rpc``).
    session_timeout_s : float
        RPC session limit enforced by the server; 0 = none.
    tracker_timeout_s : float
        How long to wait for the tracker to accept a connection.
    request_timeout_s : float, optional
        How long to wait for a free server under the device key (None: as long as it takes).

    Raises
    ------
    ValueError
        If the device's target differs from the one the model was compiled for.
    TrackerUnreachableError
        For an RPC device whose tracker does not answer.
    DeviceUnavailableError
        If no server under the key is free within ``request_timeout_s``.
    ToolchainError
        If the library cannot be linked for the device (missing cross compiler).
    """
    profile = get_device(device if device is not None else compiled.profile)
    target = _canonical_target(profile)
    if target != compiled.target:
        raise ValueError(
            f"{compiled.name} was compiled for target {compiled.target_json()} "
            f"(device {compiled.device!r}) but device {profile.name!r} has target "
            f"{json.dumps(target, sort_keys=True)}; compile for that device"
        )
    return TVMRunner(
        compiled,
        profile,
        session_timeout_s=session_timeout_s,
        tracker_timeout_s=tracker_timeout_s,
        request_timeout_s=request_timeout_s,
    )
