"""Build a PyTorch model with TVM for a device: :func:`compile_model` -> :class:`CompiledModel`.

The build is ``tvm.compile`` with its default Relax and TIR pipelines (no tuning): this is the
"untuned TVM" point of every comparison. Untuned CPU code leaves convolutions unscheduled and is
slow (see TVM_NOTES.md); tuning comes with MetaSchedule in a later module.

A :class:`CompiledModel` is callable like the PyTorch model (in process, when the target runs on
this machine) and can export its library for a TVM RPC server (``export_library``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import tvm
from torch import nn
from tvm import relax

from npas_lab.compiler.export import export_to_relax

if TYPE_CHECKING:  # devices/ imports compiler/, not the other way round (see compile_model)
    from npas_lab.devices.profiles import DeviceProfile

__all__ = ["CompiledModel", "compile_model", "set_runtime_threads"]


@functools.cache
def set_runtime_threads(num_threads: int) -> None:
    """Make TVM's in-process thread pool use ``num_threads`` threads (once per process).

    TVM sizes its pool as ``TVM_NUM_THREADS`` or, on x86, *half* the hardware threads (it assumes
    hyper-threading): 1 thread on a 2-core VM, while PyTorch and ONNX Runtime use 2. The pool is
    built on first use with the then-current size and cannot grow afterwards, so this runs before
    the first VM call. (The default, unscheduled build has no parallel loops, so it only matters
    for tuned code, but comparisons must not depend on that.)
    """
    cpus = sorted(os.sched_getaffinity(0))[:num_threads] if hasattr(os, "sched_getaffinity") else []
    cpus = cpus if len(cpus) == num_threads else list(range(num_threads))
    # Mode -3 (kSpecifyThreadShareAllCore): every worker may run on any of `cpus`, as PyTorch's
    # and ONNX Runtime's threads do; it also raises the pool's max concurrency to len(cpus).
    tvm.get_global_func("runtime.config_threadpool")(-3, num_threads, [str(c) for c in cpus])


def _to_torch(value: Any) -> torch.Tensor | tuple:
    if isinstance(value, tvm.runtime.Tensor):
        return torch.from_numpy(value.numpy())
    if isinstance(value, list | tuple) or type(value).__name__ == "Array":
        return tuple(_to_torch(v) for v in value)
    raise TypeError(f"unexpected TVM output of type {type(value).__name__}")


class CompiledModel:
    """A model built by TVM for one device; call it like the PyTorch model.

    Do not construct directly: use :func:`compile_model`.

    Attributes
    ----------
    name : str
        Model name (for messages and records).
    device : str
        Name of the device profile it was built for.
    profile : DeviceProfile
        That profile.
    target : dict
        The TVM target, canonicalised by TVM (JSON-able).
    input_shape : tuple of int
    input_dtype : torch.dtype
    executable : tvm.relax.VMExecutable
        What ``tvm.compile`` returned; :meth:`export_library` writes it.
    mod : tvm.IRModule
        The imported Relax module (before the build pipeline).
    timings : dict
        Seconds spent in ``export``, ``import`` and ``build``.

    Examples
    --------
    >>> cm = compile_model(model, torch.randn(1, 3, 32, 32))  # doctest: +SKIP
    >>> cm(torch.randn(1, 3, 32, 32)).shape  # doctest: +SKIP
    torch.Size([1, 10])
    """

    def __init__(
        self,
        *,
        name: str,
        profile: DeviceProfile,
        target: Mapping[str, Any],
        executable: relax.VMExecutable,
        mod: tvm.IRModule,
        input_shape: tuple[int, ...],
        input_dtype: torch.dtype,
        timings: Mapping[str, float],
    ) -> None:
        self.name = name
        self.profile = profile
        self.device = profile.name
        self.target = dict(target)
        self.executable = executable
        self.mod = mod
        self.input_shape = tuple(input_shape)
        self.input_dtype = input_dtype
        self.timings = dict(timings)
        self._vm: relax.VirtualMachine | None = None

    def __repr__(self) -> str:
        return (
            f"CompiledModel(name={self.name!r}, device={self.device!r}, "
            f"input_shape={self.input_shape}, target={self.target_json()})"
        )

    def target_json(self) -> str:
        """Return the target as a canonical JSON string (sorted keys)."""
        return json.dumps(self.target, sort_keys=True)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as a contiguous CPU tensor, or raise if it is not what was compiled for.

        Raises
        ------
        ValueError
            If the shape or dtype differs from the example input (the build is static-shape).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape) != self.input_shape or x.dtype != self.input_dtype:
            raise ValueError(
                f"{self.name} was compiled for input shape {self.input_shape} dtype "
                f"{self.input_dtype}, got shape {tuple(x.shape)} dtype {x.dtype}; "
                "compile again for the new shape"
            )
        return x.detach().cpu().contiguous()

    def to_tvm(self, x: torch.Tensor, device: tvm.runtime.Device | None = None) -> Any:
        """Return ``x`` checked and copied into a TVM tensor on ``device`` (default CPU)."""
        return tvm.runtime.tensor(self.check_input(x).numpy(), device=device or tvm.cpu())

    @property
    def vm(self) -> relax.VirtualMachine:
        """The in-process virtual machine (created on first use; needs a target of this host)."""
        if self._vm is None:
            set_runtime_threads(int(self.target.get("num-cores", 1)))
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
        return self._vm

    @staticmethod
    def to_torch(output: Any) -> torch.Tensor | tuple:
        """Return a VM output (a TVM tensor or tuple of them, local or remote) as torch copies."""
        return _to_torch(output)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple:
        """Run in process and return the output as torch tensor(s) (copies)."""
        return _to_torch(self.vm["main"](self.to_tvm(x)))

    def export_library(self, path: str | Path) -> Path:
        """Write the compiled library (weights included) to ``path`` (``.so``) and return it.

        The library is linked with the profile's ``cross_compiler`` if it has one, else with the
        host compiler; load it with ``remote.load_module`` on an RPC session or
        ``tvm.runtime.load_module`` in process.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fcompile = None
        if self.profile.cross_compiler:
            from tvm.support import cc

            fcompile = cc.cross_compiler(self.profile.cross_compiler)
        self.executable.export_library(str(path), fcompile=fcompile)
        return path


def compile_model(
    model: nn.Module,
    example_input: torch.Tensor,
    device: str | DeviceProfile = "host-cpu",
    *,
    name: str | None = None,
    relax_pipeline: str | tvm.transform.Pass = "default",
    tir_pipeline: str | tvm.transform.Pass = "default",
) -> CompiledModel:
    """Export ``model`` with ``torch.export``, import it into Relax and build it with TVM.

    Parameters
    ----------
    model : nn.Module
        Exported in eval mode (its mode is restored afterwards); weights become constants.
    example_input : torch.Tensor
        Fixes the input shape and dtype of the compiled model.
    device : str or DeviceProfile
        A registered device name (see :func:`npas_lab.devices.list_devices`) or a profile; its
        target (and host) is what code is generated for.
    name : str, optional
        Model name for messages and records; default the class name.
    relax_pipeline, tir_pipeline : str or tvm.transform.Pass
        Passed to ``tvm.compile``; ``"default"`` is TVM's default (untuned) build.

    Returns
    -------
    CompiledModel

    Raises
    ------
    npas_lab.compiler.ExportError
        If the model cannot be exported or imported (the message names the model and ops).
    ValueError
        For an unknown device name.
    """
    # Deferred: devices/ imports compiler/ (DESIGN.md), so a module-level import would cycle.
    from npas_lab.devices.profiles import get_device

    profile = get_device(device)
    name = name or type(model).__name__
    exported = export_to_relax(model, example_input, name=name)
    target = tvm.target.Target(
        dict(profile.target), host=dict(profile.host) if profile.host else None
    )
    start = time.perf_counter()
    executable = tvm.compile(
        exported.mod, target, relax_pipeline=relax_pipeline, tir_pipeline=tir_pipeline
    )
    build_s = time.perf_counter() - start
    return CompiledModel(
        name=name,
        profile=profile,
        target=json.loads(str(target)),
        executable=executable,
        mod=exported.mod,
        input_shape=tuple(example_input.shape),
        input_dtype=example_input.dtype,
        timings={"export": exported.export_s, "import": exported.import_s, "build": build_s},
    )
