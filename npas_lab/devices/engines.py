"""Inference engines behind one interface: ``Engine.prepare(model, x, device=...) -> Runner``.

Registered engines (:data:`ENGINES`)
------------------------------------
``tvm``
    :func:`npas_lab.compiler.compile_model` (by default: convs on the project's scheduled
    templates, the rest through the fusing pipeline; options such as ``plan``, ``kernel_tune``
    or ``tune`` are passed through), run by the Relax VM in process or through TVM RPC
    (:func:`npas_lab.devices.runtime.load_on_device`).
``pytorch``
    Eager PyTorch under ``torch.inference_mode`` (the model in eval mode).
``onnxruntime``
    ``torch.onnx.export`` (the ``torch.export``-based "dynamo" exporter by default, the legacy
    TorchScript one as fallback or on request), opset 18, run by an ``InferenceSession`` with the
    ``CPUExecutionProvider``.
``mnn``
    The same ONNX export, converted to an ``.mnn`` file by MNN's converter (in a subprocess),
    run by an MNN ``Interpreter`` session on the CPU backend in fp32 (``precision="high"``): the
    path of MNN's own ``benchmark`` tool. The NPAS paper's strongest baseline.

Threads: every engine computes with the device's ``num_threads`` (by default the cores this
process may use): TVM through its target's ``num-cores`` and its runtime pool size, PyTorch with
``torch.set_num_threads`` (set for the timed runs and restored afterwards), ONNX Runtime with
``intra_op_num_threads`` (one inter-op thread, sequential execution), MNN with the session's
``numThread``. PyTorch, ONNX Runtime and MNN run only on the local CPU; remote devices are TVM's.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
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
    "MNNEngine",
    "ONNXRuntimeEngine",
    "PyTorchEngine",
    "TVMEngine",
    "convert_onnx_to_mnn",
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


def _export_onnx_eval(
    model: nn.Module, example_input: torch.Tensor, exporter: str, opset: int
) -> tuple[bytes, str]:
    """:func:`_export_onnx` of ``model`` in eval mode; the caller's mode is restored."""
    was_training = model.training
    try:
        return _export_onnx(model.eval(), example_input.detach(), exporter=exporter, opset=opset)
    finally:
        model.train(was_training)


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
        blob, used = _export_onnx_eval(model, example_input, self.exporter, self.opset)
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


# ---------------------------------------------------------------------------------------- MNN
# The converter is called through MNN's C extension ``_tools``, never ``MNN.tools.mnnconvert``:
# importing that wrapper (MNN 3.6.1) runs ``os.system("pip install -U aliyun-log-python-sdk")``
# into whatever ``pip`` is on PATH and then sends usage logs to an Aliyun endpoint. It runs in a
# subprocess so a converter abort (it calls ``exit`` on some models) cannot take the caller down.
_MNN_CONVERT = (
    "import sys, _tools; _tools.mnnconvert(['mnnconvert', '-f', 'ONNX', '--modelFile', "
    "sys.argv[1], '--MNNModel', sys.argv[2], '--bizCode', 'npas-lab'])"
)
_MNN_PRECISIONS = ("high", "normal", "low")


def convert_onnx_to_mnn(onnx_path: Path, mnn_path: Path, *, timeout_s: float = 600.0) -> str:
    """Convert an ONNX file with MNN's converter; return the converter's log.

    Parameters
    ----------
    onnx_path : Path
        The ONNX model.
    mnn_path : Path
        Where the ``.mnn`` model is written.
    timeout_s : float
        Seconds before the converter is stopped.

    Raises
    ------
    RuntimeError
        The converter failed or reported unsupported operators; the message quotes its log.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MNN_CONVERT, str(onnx_path), str(mnn_path)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"MNN converter did not finish in {timeout_s:.0f} s") from err
    log = (done.stdout or "") + (done.stderr or "")
    # The converter returns True and exit status 0 even when it fails: read its log.
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    problems = [
        line
        for line in lines
        if any(word in line.lower() for word in ("error", "not support", "failed"))
    ]
    if done.returncode != 0 or "Converted Success" not in log or not mnn_path.exists():
        detail = "; ".join(problems[-4:] or lines[-4:]) or f"exit status {done.returncode}"
        raise RuntimeError(f"MNN converter failed: {detail}")
    if any("not support" in line.lower() for line in problems):
        raise RuntimeError(f"MNN converter: unsupported operators: {'; '.join(problems[-4:])}")
    return log


class _MNNRunner(Runner):
    engine = "mnn"

    def __init__(
        self,
        interpreter: Any,
        session: Any,
        example_input: torch.Tensor,
        device: DeviceProfile,
        target: str,
        workdir: Path,
    ):
        self.interpreter = interpreter
        self.session = session
        self.device = device.name
        self.num_threads = device.num_threads
        self.target = target
        self._workdir = workdir
        self._input = interpreter.getSessionInput(session)
        self._shape, self._dtype = tuple(example_input.shape), example_input.dtype

    def prepare_input(self, x: torch.Tensor) -> None:
        import MNN

        _check_shape(x, self._shape, self._dtype, "the MNN session")
        data = x.detach().cpu().contiguous().numpy().astype(np.float32, copy=False)
        host = MNN.Tensor(self._shape, MNN.Halide_Type_Float, data, MNN.Tensor_DimensionType_Caffe)
        # Bound once, like TVM's set_input: the timed runs only call runSession.
        self._input.copyFrom(host)

    def run_prepared(self, native: None) -> None:
        code = self.interpreter.runSession(self.session)
        if code != 0:  # MNN's ErrorCode: 0 is NO_ERROR
            raise RuntimeError(f"MNN runSession failed with error code {code}")

    def to_torch(self, output: None) -> torch.Tensor | tuple:
        import MNN

        tensors = []
        for out in self.interpreter.getSessionOutputAll(self.session).values():
            shape = tuple(out.getShape())
            host = MNN.Tensor(
                shape,
                MNN.Halide_Type_Float,
                np.zeros(shape, dtype=np.float32),
                MNN.Tensor_DimensionType_Caffe,
            )
            out.copyToHostTensor(host)
            array = np.array(host.getNumpyData(), dtype=np.float32).reshape(shape)
            tensors.append(torch.from_numpy(array))
        return tensors[0] if len(tensors) == 1 else tuple(tensors)

    def close(self) -> None:
        self.session = self.interpreter = self._input = None
        shutil.rmtree(self._workdir, ignore_errors=True)


class MNNEngine(Engine):
    """Export to ONNX, convert with MNN's converter and run an MNN session on the CPU.

    Parameters
    ----------
    exporter : {"auto", "dynamo", "legacy"}
        The ONNX exporter, as for :class:`ONNXRuntimeEngine` (the same export).
    opset : int
        ONNX opset version.
    precision : {"high", "normal", "low"}
        MNN's precision mode. ``"high"`` (default) computes in fp32 like the other engines;
        ``"normal"`` lets MNN use fp16 where the CPU has it (ARMv8.2), not on x86.

    Examples
    --------
    >>> host = get_device("host-cpu")
    >>> with MNNEngine().prepare(model, x, device=host) as runner:  # doctest: +SKIP
    ...     y = runner(x)
    """

    name = "mnn"

    def __init__(self, *, exporter: str = "auto", opset: int = 18, precision: str = "high") -> None:
        if exporter not in _EXPORTERS:
            raise ValueError(f"exporter={exporter!r} is not one of {_EXPORTERS}")
        if precision not in _MNN_PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {_MNN_PRECISIONS}")
        self.exporter = exporter
        self.opset = opset
        self.precision = precision

    def prepare(
        self, model: nn.Module, example_input: torch.Tensor, *, device: DeviceProfile
    ) -> Runner:
        try:
            import MNN
        except ImportError as err:
            raise RuntimeError(
                "engine 'mnn' needs the MNN package: pip install MNN==3.6.1 (pinned in "
                "pyproject.toml)"
            ) from err
        self._require_local(device)
        blob, used = _export_onnx_eval(model, example_input, self.exporter, self.opset)
        workdir = Path(tempfile.mkdtemp(prefix="npas-mnn-"))
        try:
            (workdir / "model.onnx").write_bytes(blob)
            convert_onnx_to_mnn(workdir / "model.onnx", workdir / "model.mnn")
            interpreter = MNN.Interpreter(str(workdir / "model.mnn"))
            config = {"backend": "CPU", "numThread": device.num_threads}
            config["precision"] = self.precision
            why = "it returned no session"
            try:
                session = interpreter.createSession(config)
            except Exception as err:  # pybind raises a bare Exception
                session, why = None, str(err)
            if session is None:
                raise RuntimeError(
                    "MNN could not create a CPU session for the converted model (MNN's session "
                    f"API cannot run models whose shapes depend on input values): {why}"
                )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        version = getattr(MNN, "version", lambda: "?")
        target = (
            f"mnn-{version() if callable(version) else version} CPU precision={self.precision} "
            f"({used} export, opset {self.opset})"
        )
        runner = _MNNRunner(interpreter, session, example_input, device, target, workdir)
        runner.model_name = type(model).__name__
        return runner


# ---------------------------------------------------------------------------------- registry
#: Engine name -> class; ``get_engine`` passes keyword options to the constructor.
ENGINES: dict[str, type[Engine]] = {
    "tvm": TVMEngine,
    "pytorch": PyTorchEngine,
    "onnxruntime": ONNXRuntimeEngine,
    "mnn": MNNEngine,
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
