"""Devices and measurement: profiles, TVM RPC, engines, and the latency protocol.

``profiles``
    :class:`DeviceProfile` and the device registry (``host-cpu``, ``host-cpu-rpc``,
    ``android-arm64``, ``android-opencl``, ``linux-arm64``, ``cuda``).
``config``
    User-defined profiles from ``devices.toml`` (:func:`load_user_devices`).
``cross``
    Toolchains: :func:`check_toolchain`, :func:`compile_for_device`, :func:`export_for_device`.
``rpc``
    :class:`LocalRPC`: a TVM RPC tracker and server(s) on loopback, started and stopped cleanly;
    :func:`request_session` with a deadline.
``remote``
    :func:`measure_on_device` (retries, failed figures recorded) and :func:`measure_many`
    (concurrent, one server each).
``cli``
    ``npas-lab device tracker | serve | list``.
``runtime``
    :func:`load_on_device`: a compiled model on its device, in process or over RPC.
``engines``
    ``tvm``, ``pytorch`` and ``onnxruntime`` behind ``Engine.prepare(model, x, device=...)``.
``measure``
    :func:`measure`, :class:`MeasureConfig`, :class:`Measurement` (the protocol is documented
    there).
``compare``
    :func:`compare_engines`: one model, every engine, one table.

Only ``npas_lab.compiler`` and ``npas_lab.devices`` import ``tvm``.
"""

from npas_lab.devices.compare import COMPARE_COLUMNS, compare_engines
from npas_lab.devices.config import devices_file, load_user_devices
from npas_lab.devices.cross import (
    Toolchain,
    ToolchainError,
    check_toolchain,
    compile_for_device,
    device_table,
    elf_machine,
    export_for_device,
)
from npas_lab.devices.engines import (
    ENGINES,
    Engine,
    MNNEngine,
    ONNXRuntimeEngine,
    PyTorchEngine,
    TVMEngine,
    get_engine,
    list_engines,
)
from npas_lab.devices.measure import MeasureConfig, Measurement, measure
from npas_lab.devices.profiles import (
    DEVICES,
    DeviceProfile,
    available_cores,
    get_device,
    host_cpu_target,
    list_devices,
    register_device,
)
from npas_lab.devices.remote import RetryPolicy, free_servers, measure_many, measure_on_device
from npas_lab.devices.rpc import (
    DeviceUnavailableError,
    LocalRPC,
    TrackerUnreachableError,
    connect_tracker,
    request_session,
    tracker_summary,
    wait_for_servers,
)
from npas_lab.devices.runner import Runner, time_loop
from npas_lab.devices.runtime import TVMRunner, load_on_device

__all__ = [
    "COMPARE_COLUMNS",
    "DEVICES",
    "ENGINES",
    "DeviceProfile",
    "DeviceUnavailableError",
    "Engine",
    "LocalRPC",
    "MNNEngine",
    "MeasureConfig",
    "Measurement",
    "ONNXRuntimeEngine",
    "PyTorchEngine",
    "RetryPolicy",
    "Runner",
    "TVMEngine",
    "TVMRunner",
    "Toolchain",
    "ToolchainError",
    "TrackerUnreachableError",
    "available_cores",
    "check_toolchain",
    "compare_engines",
    "compile_for_device",
    "connect_tracker",
    "device_table",
    "devices_file",
    "elf_machine",
    "export_for_device",
    "free_servers",
    "get_device",
    "get_engine",
    "host_cpu_target",
    "list_devices",
    "list_engines",
    "load_on_device",
    "load_user_devices",
    "measure",
    "measure_many",
    "measure_on_device",
    "register_device",
    "request_session",
    "time_loop",
    "tracker_summary",
    "wait_for_servers",
]
