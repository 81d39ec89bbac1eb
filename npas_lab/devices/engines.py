"""Inference engines behind one interface: ``Engine.prepare(model, x, device=...) -> Runner``.

Registered engines (:data:`ENGINES`)
------------------------------------
``tvm``
    :func:`npas_lab.compiler.compile_model` (default ``tvm.compile``, untuned), run by the Relax
    VM in process or through TVM RPC (:func:`npas_lab.devices.runtime.load_on_device`).
``pytorch``
    Eager PyTorch under ``torch.inference_mode`` (the model in eval mode).
``onnxruntime``
    ``torch.onnx.export`` (the ``torch.export``-based "dynamo" exporter by default, the legacy
    TorchScript one as fallback or on request), opset 18, run by an ``InferenceSession`` with the
    ``CPUExecutionProvider``.

Threads: every engine computes with the device's ``num_threads`` (by default the cores this
process may use): TVM through its target's ``num-cores`` and its runtime pool size, PyTorch with
``torch.set_num_threads`` (set for the timed runs and restored afterwards), ONNX Runtime with
``intra_op_num_threads`` (one inter-op thread, sequential execution). PyTorch and ONNX Runtime run
only on the local CPU; remote devices are TVM's.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from npas_lab.compiler import CompiledModel, compile_model
from npas_lab.devices.profiles import DeviceProfile
from npas_lab.devices.runner import Runner
from npas_lab.devices.runtime import TVMRunner, load_on_device

__all__ = [
    "ENGINES",
    "Engine",
    "ONNXRuntimeEngine",
    "PyTorchEngine",
    "TVMEngine",
    "get_engine",
    "list_engines",
]


class Engine(ABC):
    """Turns a PyTorch model into a :class:`~npas_lab.devices.runner.Runner` on a device."""

    name: ClassVar[str]

    @abstractmethod
    def prepare(
        self, model: nn.Module, example_input: torch.Tensor, *, device: DeviceProfile
    ) -> Runner:
        """Return a runner of ``model`` (in eval mode) for inputs shaped like ``example_input``."""

    def _require_local(self, device: DeviceProfile) -> None:
        if device.reach != "local":
            raise ValueError(
                f"engine {self.name!r} runs only in process; device {device.name!r} is reached by "
                f"{device.reach} (only the 'tvm' engine runs on remote devices)"
            )


def _check_shape(x: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, who: str) -> None:
    if tuple(x.shape) != shape or x.dtype != dtype:
        raise ValueError(
            f"{who} was prepared for input shape {shape} dtype {dtype}, "
            f"got shape {tuple(x.shape)} dtype {x.dtype}"
        )


# --------------------------------------------------------------------------------------- TVM
class TVMEngine(Engine):
    """Compile with TVM (unless given a :class:`CompiledModel`) and load on the device.

    Parameters
    ----------
    **compile_options
        Keyword options of :func:`npas_lab.compiler.compile_model` (``name``, pipelines).
    """

    name = "tvm"

    def __init__(self, **compile_options: Any) -> None:
        self.compile_options = compile_options

    def prepare(
        self,
        model: nn.Module | CompiledModel,
        example_input: torch.Tensor,
        *,
        device: DeviceProfile,
    ) -> TVMRunner:
        if isinstance(model, CompiledModel):
            compiled = model
            compiled.check_input(example_input)
        else:
            compiled = compile_model(model, example_input, device, **self.compile_options)
        return load_on_device(compiled, device)


# ----------------------------------------------------------------------------------- PyTorch
@contextlib.contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    # A process-wide setting: restore it so measuring does not change the caller's training.
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _PyTorchRunner(Runner):
    engine = "pytorch"

    def __init__(self, model: nn.Module, example_input: torch.Tensor, device: DeviceProfile):
        self.model = model
        self._was_training = model.training
        model.eval()
        self.model_name = type(model).__name__
        self.device = device.name
        self.num_threads = device.num_threads
        self.target = f"pytorch-{torch.__version__} eager cpu"
        self._shape, self._dtype = tuple(example_input.shape), example_input.dtype

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        _check_shape(x, self._shape, self._dtype, "the PyTorch runner")
        return x.detach().cpu().contiguous()

    def run_prepared(self, native: torch.Tensor) -> Any:
        with torch.inference_mode():
            return self.model(native)

    def to_torch(self, output: Any) -> torch.Tensor | tuple:
        return output.clone() if isinstance(output, torch.Tensor) else tuple(output)

    def time(self, x: torch.Tensor, **protocol: Any) -> list[float]:
        with _torch_threads(self.num_threads):
            return super().time(x, **protocol)

    def close(self) -> None:
        # Measuring must not leave a model that is being trained in eval mode.
        self.model.train(self._was_training)


class PyTorchEngine(Engine):
    """Eager PyTorch on the local CPU (the reference every speedup is relative to).

    The model runs in eval mode; closing the runner restores its previous mode.
    """

    name = "pytorch"

    def prepare(
        self, model: nn.Module, example_input: torch.Tensor, *, device: DeviceProfile
    ) -> Runner:
        self._require_local(device)
        return _PyTorchRunner(model, example_input, device)


# ------------------------------------------------------------------------------ ONNX Runtime
_EXPORTERS = ("auto", "dynamo", "legacy")


def _export_onnx(
    model: nn.Module, x: torch.Tensor, *, exporter: str, opset: int
) -> tuple[bytes, str]:
    """Return the serialised ONNX model and the exporter that produced it."""
    if exporter in ("auto", "dynamo"):
        try:
            program = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=opset, verbose=False,
                input_names=["input"], external_data=False,
            )  # fmt: skip
            return program.model_proto.SerializeToString(), "dynamo"
        except Exception as err:
            if exporter == "dynamo":
                raise RuntimeError(f"torch.onnx dynamo export failed: {err}") from err
            warnings.warn(
                f"torch.onnx dynamo export failed ({type(err).__name__}: {err}); "
                "falling back to the legacy TorchScript exporter",
                RuntimeWarning,
                stacklevel=3,
            )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is deprecated since torch 2.9 but still works here; we chose it.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (x,), buffer, dynamo=False, opset_version=opset, input_names=["input"]
        )
    return buffer.getvalue(), "legacy"


class _ONNXRuntimeRunner(Runner):
    engine = "onnxruntime"

    def __init__(
        self, session: Any, example_input: torch.Tensor, device: DeviceProfile, target: str
    ):
        self.session = session
        self.device = device.name
        self.num_threads = device.num_threads
        self.target = target
        self._input_name = session.get_inputs()[0].name
        self._shape, self._dtype = tuple(example_input.shape), example_input.dtype

    def prepare_input(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        _check_shape(x, self._shape, self._dtype, "the ONNX Runtime session")
        return {self._input_name: x.detach().cpu().contiguous().numpy()}

    def run_prepared(self, native: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, native)

    def to_torch(self, output: list[np.ndarray]) -> torch.Tensor | tuple:
        tensors = tuple(torch.from_numpy(np.asarray(o)) for o in output)
        return tensors[0] if len(tensors) == 1 else tensors

    def close(self) -> None:
        self.session = None


class ONNXRuntimeEngine(Engine):
    """Export to ONNX and run with ONNX Runtime's CPU execution provider.

    Parameters
    ----------
    exporter : {"auto", "dynamo", "legacy"}
        ``"auto"`` tries the ``torch.export``-based exporter (the one torch maintains) and falls
        back to the legacy TorchScript exporter with a warning. The one used is in the runner's
        ``target``.
    opset : int
        ONNX opset version.
    """

    name = "onnxruntime"

    def __init__(self, *, exporter: str = "auto", opset: int = 18) -> None:
        if exporter not in _EXPORTERS:
            raise ValueError(f"exporter={exporter!r} is not one of {_EXPORTERS}")
        self.exporter = exporter
        self.opset = opset

    def prepare(
        self, model: nn.Module, example_input: torch.Tensor, *, device: DeviceProfile
    ) -> Runner:
        import onnxruntime as ort

        self._require_local(device)
        was_training = model.training
        try:
            blob, used = _export_onnx(
                model.eval(), example_input.detach(), exporter=self.exporter, opset=self.opset
            )
        finally:
            model.train(was_training)
        options = ort.SessionOptions()
        options.intra_op_num_threads = device.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        target = (
            f"onnxruntime-{ort.__version__} CPUExecutionProvider "
            f"({used} export, opset {self.opset})"
        )
        runner = _ONNXRuntimeRunner(session, example_input, device, target)
        runner.model_name = type(model).__name__
        return runner


# ---------------------------------------------------------------------------------- registry
#: Engine name -> class; ``get_engine`` passes keyword options to the constructor.
ENGINES: dict[str, type[Engine]] = {
    "tvm": TVMEngine,
    "pytorch": PyTorchEngine,
    "onnxruntime": ONNXRuntimeEngine,
}


def list_engines() -> list[str]:
    """Return the registered engine names, sorted."""
    return sorted(ENGINES)


def get_engine(engine: str | Engine, **options: Any) -> Engine:
    """Return engine ``engine`` built with ``options`` (an :class:`Engine` passes through).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    if isinstance(engine, Engine):
        return engine
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; valid names: {', '.join(list_engines())}")
    return ENGINES[engine](**options)
