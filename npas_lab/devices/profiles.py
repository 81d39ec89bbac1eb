"""Device profiles: what to compile for, how to link, and how to reach the hardware.

A :class:`DeviceProfile` is plain data (frozen, JSON round trip). The registry :data:`DEVICES`
maps a name to a factory rather than to a profile because a profile can depend on the machine
it is asked on: ``host-cpu`` targets *this* CPU (``llvm_get_system_cpu()``) with *these* cores,
and is never hard-coded.

Registered devices
------------------
``host-cpu``
    The CPU running Python, in process (``tvm.cpu()``).
``host-cpu-rpc``
    The same target, reached through a TVM RPC tracker under key ``$NPAS_LAB_RPC_KEY`` (default
    ``"local"``). :class:`npas_lab.devices.LocalRPC` serves this key on loopback and hands out a
    profile pointing at its own tracker.
``android-arm64``
    An Android phone's CPU (``aarch64-linux-android``, NEON) running the TVM RPC app, key
    ``"android"``. Linked by the NDK (``$TVM_NDK_CC``), else by Debian's ``aarch64-linux-gnu-gcc``.
``android-opencl``
    The same phone's GPU through OpenCL (``device="adreno"``), host code as ``android-arm64``.
``linux-arm64``
    A Linux arm64 board (Raspberry Pi 4/5, Jetson CPU, ...) running ``python -m
    tvm.exec.rpc_server``, key ``"linux-arm64"``, linked by ``aarch64-linux-gnu-gcc``.
``cuda``
    An NVIDIA GPU in this process (kernels built by NVRTC, or nvcc with
    ``TVM_CUDA_COMPILE_MODE=nvcc``).

Every RPC profile reaches the tracker at ``$NPAS_LAB_TRACKER`` (default ``127.0.0.1:9190``).
How each profile is linked and what is missing is :func:`npas_lab.devices.cross.check_toolchain`.

User profiles live in a TOML file (``$NPAS_LAB_DEVICES``, else ``devices.toml`` under
``$NPAS_LAB_HOME``, see :mod:`npas_lab.devices.config`); :func:`get_device` and
:func:`list_devices` include them. In code, add a device with :func:`register_device` (or
``DEVICES["mine"] = factory``), where ``factory()`` returns a :class:`DeviceProfile`.

Examples
--------
>>> dev = get_device("host-cpu")
>>> dev.target["kind"], dev.reach
('llvm', 'local')
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARM_THREADS",
    "DEVICES",
    "DeviceProfile",
    "available_cores",
    "get_device",
    "host_cpu_target",
    "list_devices",
    "register_device",
]

_REACHES = ("local", "rpc")
DEFAULT_TRACKER = "127.0.0.1:9190"
DEFAULT_RPC_KEY = "local"


def available_cores() -> int:
    """Return the number of CPU cores this process may run on (its affinity mask).

    ``os.cpu_count()`` counts the machine; a container or ``taskset`` may allow fewer, and every
    engine must be given the same count to be comparable.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_cpu_target(num_cores: int | None = None) -> dict[str, Any]:
    """Return the TVM target dict for the CPU running Python.

    Parameters
    ----------
    num_cores : int, optional
        Cores the generated code may use (TVM target attribute ``num-cores``); default
        :func:`available_cores`.
    """
    import tvm  # devices/ may import tvm; deferred so that reading profiles stays cheap

    return {
        "kind": "llvm",
        "mcpu": str(tvm.target.codegen.llvm_get_system_cpu()),
        "num-cores": int(num_cores or available_cores()),
    }


@dataclass(frozen=True)
class DeviceProfile:
    """Where a compiled model runs and how it gets there.

    Parameters
    ----------
    name : str
        Registry name, recorded with every measurement.
    target : dict
        TVM target as a JSON dict, e.g. ``{"kind": "llvm", "mcpu": "znver3", "num-cores": 2}``.
    host : dict or None
        TVM host target for device targets (CUDA, OpenCL); None for CPU targets.
    num_threads : int
        Threads every engine uses on this device (TVM runtime pool, ``torch.set_num_threads``,
        ONNX Runtime ``intra_op_num_threads``), so engines are compared on the same cores.
    reach : {"local", "rpc"}
        ``"local"``: run in this process. ``"rpc"``: request a session from the tracker at
        ``tracker`` under ``key`` and run there.
    tracker : str or None
        ``"host:port"`` of the TVM RPC tracker (``reach="rpc"`` only).
    key : str or None
        Device key the RPC servers register under (``reach="rpc"`` only).
    cross_compiler : str or None
        Compiler driver that links the exported library (e.g. ``"aarch64-linux-gnu-gcc"``);
        None links with the host compiler. For Android targets it is the fallback used when
        ``$TVM_NDK_CC`` (the NDK's clang) is not set.
    description : str
        One line for listings and dropdowns (how to reach the device).
    """

    name: str
    target: Mapping[str, Any]
    host: Mapping[str, Any] | None = None
    num_threads: int = 1
    reach: str = "local"
    tracker: str | None = None
    key: str | None = None
    cross_compiler: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.reach not in _REACHES:
            raise ValueError(f"reach={self.reach!r} is not one of {_REACHES}")
        if "kind" not in self.target:
            raise ValueError(f"device {self.name!r}: target {dict(self.target)!r} has no 'kind'")
        if self.reach == "rpc" and (not self.tracker or not self.key):
            raise ValueError(f"device {self.name!r} is reached by RPC but has no tracker/key")
        if self.host is not None and "kind" not in self.host:
            raise ValueError(f"device {self.name!r}: host {dict(self.host)!r} has no 'kind'")
        if not isinstance(self.num_threads, int) or self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        # Read-only copies: a frozen profile must not change under an artifact cached by its hash.
        object.__setattr__(self, "target", _ReadOnlyDict(self.target))
        if self.host is not None:
            object.__setattr__(self, "host", _ReadOnlyDict(self.host))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def tracker_address(self) -> tuple[str, int]:
        """Return the tracker as ``(host, port)``."""
        if not self.tracker:
            raise ValueError(f"device {self.name!r} has no RPC tracker (reach={self.reach!r})")
        host, _, port = self.tracker.rpartition(":")
        return host, int(port)

    def with_tracker(self, tracker: str, *, key: str | None = None) -> DeviceProfile:
        """Return a copy reached through ``tracker`` (``"host:port"``), optionally under ``key``."""
        return dataclasses.replace(self, reach="rpc", tracker=tracker, key=key or self.key)

    def target_json(self) -> str:
        """Return the target as a canonical JSON string (sorted keys), for records and hashes."""
        return json.dumps(dict(self.target), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as JSON-able data (inverse of :meth:`from_dict`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["target"] = dict(self.target)
        out["host"] = dict(self.host) if self.host is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        """Rebuild a profile written by :meth:`to_dict`.

        Raises
        ------
        ValueError
            For a field that is not a profile field (the message lists the valid ones).
        """
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown device profile field(s) {sorted(unknown)}; valid fields: "
                f"{', '.join(f.name for f in dataclasses.fields(cls))}"
            )
        return cls(**dict(data))


class _ReadOnlyDict(dict):
    """A dict that refuses changes (still a dict, so json and TVM accept it as is)."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("device profile targets are read-only; use dataclasses.replace")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        # pickle/deepcopy would refill an empty instance item by item (refused): rebuild instead,
        # so profiles travel to executor workers (DESIGN.md, "Scale").
        return (_ReadOnlyDict, (dict(self),))


def _tracker() -> str:
    # From the environment so that `npas-lab device serve` on another terminal (or a tracker on
    # another host, the one the phone registers with) needs no code change.
    return os.environ.get("NPAS_LAB_TRACKER", DEFAULT_TRACKER)


def _host_cpu() -> DeviceProfile:
    cores = available_cores()
    return DeviceProfile(
        name="host-cpu",
        target=host_cpu_target(cores),
        num_threads=cores,
        description="this machine's CPU, in process",
    )


def _host_cpu_rpc() -> DeviceProfile:
    return dataclasses.replace(
        _host_cpu(),
        name="host-cpu-rpc",
        reach="rpc",
        tracker=_tracker(),
        key=os.environ.get("NPAS_LAB_RPC_KEY", DEFAULT_RPC_KEY),
        description="this machine's CPU through a TVM RPC server (npas-lab device serve)",
    )


#: Threads on a phone or board: the big cluster of a typical 4+4 (or 1+3+4) arm64 SoC. TVM's
#: runtime on the device binds to the big cores first; a user profile can say otherwise.
ARM_THREADS = 4
#: Debian's cross compiler (package ``gcc-aarch64-linux-gnu``), the link step without the NDK.
GNU_AARCH64 = "aarch64-linux-gnu-gcc"
ANDROID_ARM64 = {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon"]}


def _android_arm64() -> DeviceProfile:
    return DeviceProfile(
        name="android-arm64",
        target={**ANDROID_ARM64, "num-cores": ARM_THREADS},
        num_threads=ARM_THREADS,
        reach="rpc",
        tracker=_tracker(),
        key="android",
        cross_compiler=GNU_AARCH64,
        description="Android phone CPU (arm64, NEON) via the TVM RPC app, key 'android'",
    )


def _android_opencl() -> DeviceProfile:
    # Kernels are OpenCL C compiled by the phone's driver when the module loads; only the host
    # part (the VM glue, weights) is an aarch64 library that needs the cross linker.
    return DeviceProfile(
        name="android-opencl",
        target={"kind": "opencl", "device": "adreno"},
        host=ANDROID_ARM64,
        num_threads=1,
        reach="rpc",
        tracker=_tracker(),
        key="android",
        cross_compiler=GNU_AARCH64,
        description="Android phone GPU (OpenCL, Adreno) via the TVM RPC app, key 'android'",
    )


def _linux_arm64() -> DeviceProfile:
    return DeviceProfile(
        name="linux-arm64",
        target={
            "kind": "llvm",
            "mtriple": "aarch64-linux-gnu",
            "mattr": ["+neon"],
            "num-cores": ARM_THREADS,
        },
        num_threads=ARM_THREADS,
        reach="rpc",
        tracker=_tracker(),
        key="linux-arm64",
        cross_compiler=GNU_AARCH64,
        description="Linux arm64 board running tvm.exec.rpc_server, key 'linux-arm64'",
    )


def _cuda() -> DeviceProfile:
    # No "arch": TVM reads it from the GPU present at build time; a user profile for a remote GPU
    # names it (e.g. "arch": "sm_86") since this host may have none.
    return DeviceProfile(
        name="cuda",
        target={"kind": "cuda"},
        host=host_cpu_target(),
        num_threads=1,
        description="NVIDIA GPU in this process (CUDA)",
    )


#: Device name -> factory returning its :class:`DeviceProfile`.
DEVICES: dict[str, Callable[[], DeviceProfile]] = {
    "host-cpu": _host_cpu,
    "host-cpu-rpc": _host_cpu_rpc,
    "android-arm64": _android_arm64,
    "android-opencl": _android_opencl,
    "linux-arm64": _linux_arm64,
    "cuda": _cuda,
}


def _user_devices() -> dict[str, DeviceProfile]:
    from npas_lab.devices.config import load_user_devices  # config builds on this module

    return load_user_devices()


def list_devices() -> list[str]:
    """Return the registered and user-defined device names, sorted.

    Raises
    ------
    ValueError
        If the user devices file is malformed (the message names the file and the device).
    """
    return sorted(set(DEVICES) | set(_user_devices()))


def register_device(name: str, factory: Callable[[], DeviceProfile]) -> None:
    """Register ``factory`` under ``name`` (refuses to replace an existing device)."""
    if name in DEVICES:
        raise ValueError(f"device {name!r} is already registered")
    DEVICES[name] = factory


def get_device(device: str | DeviceProfile) -> DeviceProfile:
    """Return the profile for ``device`` (a registered name, or a profile passed through).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones (user devices included).
    """
    if isinstance(device, DeviceProfile):
        return device
    if isinstance(device, str) and device in DEVICES:
        return DEVICES[device]()
    user = _user_devices()
    if isinstance(device, str) and device in user:
        return user[device]
    raise ValueError(f"Unknown device {device!r}; valid names: {', '.join(list_devices())}")
