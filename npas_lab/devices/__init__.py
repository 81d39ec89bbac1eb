"""Devices and measurement: profiles, TVM RPC, engines, and the latency protocol.

``profiles``
    :class:`DeviceProfile` and the device registry (``host-cpu``, ``host-cpu-rpc``).
``rpc``
    :class:`LocalRPC`: a TVM RPC tracker and server(s) on loopback, started and stopped cleanly.
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
from npas_lab.devices.engines import (
    ENGINES,
    Engine,
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
from npas_lab.devices.rpc import (
    LocalRPC,
    TrackerUnreachableError,
    connect_tracker,
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
    "Engine",
    "LocalRPC",
    "MeasureConfig",
    "Measurement",
    "ONNXRuntimeEngine",
    "PyTorchEngine",
    "Runner",
    "TVMEngine",
    "TVMRunner",
    "TrackerUnreachableError",
    "available_cores",
    "compare_engines",
    "connect_tracker",
    "get_device",
    "get_engine",
    "host_cpu_target",
    "list_devices",
    "list_engines",
    "load_on_device",
    "measure",
    "register_device",
    "time_loop",
    "tracker_summary",
    "wait_for_servers",
]
