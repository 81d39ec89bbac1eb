"""Build a PyTorch model with TVM for a device: :func:`compile_model` -> :class:`CompiledModel`.

Three builds, chosen by keyword options:

``fuse=False``
    ``tvm.compile``'s default Relax and TIR pipelines: one kernel per operator, no schedules.
``fuse=True`` (the default)
    The fusing pipeline of :mod:`npas_lab.compiler.pipeline`: batch norm folded into convs,
    conv + bias + activation (+ residual add) fused into one kernel. Still unscheduled: untuned
    CPU convolutions are slow (see TVM_NOTES.md), never a baseline.
``tune=TuneConfig(...)``
    Fused, then the kernels are tuned with MetaSchedule into the target's persistent database
    (:mod:`npas_lab.compiler.tuning`; already tuned kernels are not tuned again) and built with
    the best records.

Independently, ``kernels="templates"`` (the default on CPU targets) first bakes the pruning
``plan`` into the model (:func:`~npas_lab.compiler.prepare.prepare_model`: masks applied, BN
folded, filter/channel-pruned convs shrunk) and replaces every conv (+ bias + ReLU) by the
project's kernel for its scheme (:mod:`npas_lab.compiler.kernels`, via
:func:`~npas_lab.compiler.lower.lower_convs`): dense, depthwise, block-punched, block, pattern
and unstructured convs then run compact, scheduled code, tuned per layer with ``kernel_tune``
configurations. The rest of the graph (pooling, adds, linear layers) goes through the fusing
pipeline (and MetaSchedule when ``tune`` is given). ``kernels="tvm"`` leaves convs to TVM.

A :class:`CompiledModel` is callable like the PyTorch model (in process, when the target runs on
this machine) and can export its library for a TVM RPC server (``export_library``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import tvm
from torch import nn
from tvm import relax

from npas_lab.compiler.export import export_to_relax

if TYPE_CHECKING:  # devices/ imports compiler/, not the other way round (see compile_model)
    import pandas as pd

    from npas_lab.compiler.tuning import TuneConfig, TuneSummary
    from npas_lab.devices.profiles import DeviceProfile
    from npas_lab.sparsity import PruningPlan

KERNEL_MODES = ("auto", "templates", "tvm")

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
        Seconds spent in ``export``, ``import`` and ``build`` (and ``tune`` when tuning).
    lowered : tvm.IRModule or None
        The module after the Relax pipeline, before VM code generation: its TIR functions are
        the kernels (see :func:`npas_lab.compiler.fusion_report`).
    options : dict
        How it was built: ``fuse``, ``tune`` (a :class:`TuneConfig` dict or None), pipelines.
    tuning : TuneSummary or None
        What the tuning session did (``trials == 0`` when everything was in the database).
    plan : PruningPlan or None
        The pruning plan baked into the build (None: the model as given).
    kernels : pandas.DataFrame or None
        One row per conv layer: ``layer, scheme, rate, block, kernel, ms`` -- which kernel runs
        it (a template with its configuration, or ``tvm`` with the reason no template was used)
        and its tuned time alone (NaN when not tuned). None for ``kernels="tvm"`` builds.
    propagation : pandas.DataFrame or None
        The convs whose outputs were narrowed because filter/channel pruning was propagated
        into their readers (see :func:`~npas_lab.compiler.prepare.propagate_pruning`).

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
        lowered: tvm.IRModule | None = None,
        options: Mapping[str, Any] | None = None,
        tuning: TuneSummary | None = None,
        plan: PruningPlan | None = None,
        kernels: pd.DataFrame | None = None,
        propagation: pd.DataFrame | None = None,
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
        self.lowered = lowered
        self.options = dict(options or {})
        self.tuning = tuning
        self.plan = plan
        self.kernels = kernels
        self.propagation = propagation
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

        The library is linked by the device's toolchain
        (:func:`npas_lab.devices.cross.library_compiler`: the NDK when ``TVM_NDK_CC`` is set,
        the profile's cross compiler, else the host compiler); load it with
        ``remote.load_module`` on an RPC session or ``tvm.runtime.load_module`` in process.
        """
        # Deferred: devices/ imports compiler/. The device's toolchain (NDK, Debian cross gcc,
        # host) is chosen there; a missing one raises ToolchainError saying what to install.
        from npas_lab.devices.cross import export_for_device

        return export_for_device(self, path)


def _default_relax(
    mod: tvm.IRModule, target: tvm.target.Target, relax_pipeline: str | tvm.transform.Pass
) -> tvm.IRModule:
    """Run a named or given Relax pipeline as ``tvm.compile`` does for CPU targets."""
    if isinstance(relax_pipeline, str):
        relax_pipeline = relax.get_pipeline(relax_pipeline)  # vm_build.py: generic pipeline
    with target:
        return relax_pipeline(mod)


def _conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Return the plain convs of ``model`` by the name of the layer they implement.

    The small conv inside a :class:`~npas_lab.compiler.prepare.ShrunkConv2d` stands for the
    shrunk layer itself (its plan entry).
    """
    from npas_lab.compiler.prepare import ShrunkConv2d

    found: dict[str, nn.Conv2d] = {}
    for name, module in model.named_modules():
        if isinstance(module, ShrunkConv2d):
            found[name] = module.small
        elif isinstance(module, nn.Conv2d) and not name.endswith(".small"):
            found.setdefault(name, module)
    return found


def _lower_with_templates(
    mod: tvm.IRModule,
    prepared_model: nn.Module,
    plan: PruningPlan,
    target: tvm.target.Target,
    kernel_tune: int,
    progress: bool | Callable[[str], None],
) -> tuple[tvm.IRModule, pd.DataFrame]:
    """Replace every conv of ``mod`` by its template kernel; return the module and the table."""
    import pandas as pd

    from npas_lab.compiler.kernels import KernelError
    from npas_lab.compiler.lower import lower_convs, template_provider, weight_digest
    from npas_lab.sparsity import LayerChoice

    dense = LayerChoice(scheme="dense", rate=1.0)
    convs = _conv_layers(prepared_model)
    layers = {}
    for name, conv in convs.items():
        weight = conv.weight.detach().cpu().numpy()
        layers[weight_digest(weight)] = (name, plan.get(name, dense))
    provider = template_provider(
        target=json.loads(str(target)), tune_budget=kernel_tune, progress=progress is True
    )
    declined: dict[str, str] = {}

    def provide(site):
        # A scheme's template may not cover a layer (e.g. pattern on a 5x5 conv, a grouped conv):
        # the weight is still exact under the unstructured and dense templates, which are tried
        # next; only a shape no template covers is left to TVM's own conv. Reported, not hidden.
        reasons = []
        for scheme in dict.fromkeys((site.scheme, "unstructured", "dense")):
            if scheme == "unstructured" and site.scheme == "dense":
                continue
            try:
                kernel = provider(dataclasses.replace(site, scheme=scheme))
            except KernelError as err:
                reasons.append(f"{scheme}: {err}")
                continue
            if kernel is None:
                declined[site.layer] = "tvm conv (asymmetric padding)"
                return None
            if reasons:
                kernel = dataclasses.replace(
                    kernel, description=f"{kernel.description} (instead of {'; '.join(reasons)})"
                )
            return kernel
        declined[site.layer] = f"tvm conv ({'; '.join(reasons)})"
        return None

    lowered, report = lower_convs(mod, layers, provide)
    described = dict(zip(report.layer, report.description, strict=True))
    timed = dict(zip(report.layer, report.ms, strict=True))
    rows = []
    for name in convs:
        choice = plan.get(name, dense)
        kernel = described.get(name) or declined.get(name) or "tvm conv (not matched in graph)"
        rows.append(
            {
                "layer": name,
                "scheme": choice.scheme,
                "rate": choice.rate,
                "block": choice.block,
                "kernel": kernel,
                "ms": timed.get(name),
            }
        )
    columns = ["layer", "scheme", "rate", "block", "kernel", "ms"]
    return lowered, pd.DataFrame(rows, columns=columns)


def compile_model(
    model: nn.Module,
    example_input: torch.Tensor,
    device: str | DeviceProfile = "host-cpu",
    *,
    plan: PruningPlan | None = None,
    kernels: str = "auto",
    kernel_tune: int = 0,
    name: str | None = None,
    relax_pipeline: str | tvm.transform.Pass = "default",
    tir_pipeline: str | tvm.transform.Pass = "default",
    fuse: bool | None = None,
    tune: TuneConfig | None = None,
    progress: bool | Callable[[str], None] = True,
    propagate: bool = True,
) -> CompiledModel:
    """Export ``model`` with ``torch.export``, import it into Relax and build it with TVM.

    Parameters
    ----------
    model : nn.Module
        Exported in eval mode (its mode is restored afterwards); weights become constants. A
        model pruned in phase 3 (carrying masks) keeps its masks; ``plan`` then names schemes.
    example_input : torch.Tensor
        Fixes the input shape and dtype of the compiled model.
    device : str or DeviceProfile
        A registered device name (see :func:`npas_lab.devices.list_devices`) or a profile; its
        target (and host) is what code is generated for.
    plan : PruningPlan, optional
        Per-layer pruning; its masks are applied (unless the model has its own) and each pruned
        conv is lowered to its scheme's compact kernel. None: compile the model as it is.
    kernels : {"auto", "templates", "tvm"}
        ``templates``: every conv runs the project's kernel for its scheme (dense convs too);
        ``tvm``: convs stay TVM operators (a plan is still applied, as zeros). ``auto``:
        templates on LLVM (CPU) targets, else ``tvm``.
    kernel_tune : int
        Template configurations measured per conv layer (0: the default configuration, nothing
        measured). Results go to the kernel tuning database: a second compile measures nothing.
    name : str, optional
        Model name for messages and records; default the class name.
    relax_pipeline, tir_pipeline : str or tvm.transform.Pass
        Passed to ``tvm.compile``; ``"default"`` is TVM's default (untuned) build. A Relax
        pipeline other than ``"default"`` is used as given (no fusion, no templates).
    fuse : bool, optional
        Build with the fusing pipeline (:mod:`npas_lab.compiler.pipeline`). Default: True when
        ``relax_pipeline`` is ``"default"``, else False.
    tune : TuneConfig, optional
        Tune the fused kernels with MetaSchedule (kernels already in the target's database to
        this budget are not tuned again) and build with the best records. Needs ``fuse``, and a
        target that runs on this machine. Template kernels are already scheduled: not tuned.
    progress : bool or callable
        Tuning progress: a tqdm bar (True), one line per batch to a callable, or logs only.
    propagate : bool
        Propagate filter/channel pruning into the neighbouring convs (the reader of a pruned
        filter stops reading it; see :func:`~npas_lab.compiler.prepare.propagate_pruning`).
        False keeps every layer's output channel count (to measure what propagation buys).

    Returns
    -------
    CompiledModel
        With ``plan``, the per-layer ``kernels`` table and the ``propagation`` table.

    Raises
    ------
    npas_lab.compiler.ExportError
        If the model cannot be exported or imported (the message names the model and ops).
    npas_lab.sparsity.SparsityError
        If ``plan`` does not fit the model (the message names the layer).
    ValueError
        For an unknown device name or ``kernels`` mode, ``fuse``/``tune`` with a custom Relax
        pipeline, or templates on a non-CPU target.
    """
    # Deferred: devices/ imports compiler/ (DESIGN.md), so a module-level import would cycle.
    from npas_lab.devices.profiles import get_device

    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels={kernels!r}: choose one of {', '.join(KERNEL_MODES)}")
    if not isinstance(kernel_tune, int) or isinstance(kernel_tune, bool) or kernel_tune < 0:
        raise ValueError(f"kernel_tune={kernel_tune!r}: a number of configurations >= 0")
    custom = not (isinstance(relax_pipeline, str) and relax_pipeline == "default")
    auto_fuse = fuse is None
    if fuse is None:
        fuse = not custom
    if fuse and custom:
        raise ValueError(
            f"fuse=True builds with npas_lab's fusing pipeline; relax_pipeline={relax_pipeline!r} "
            "would be ignored: pass one or the other"
        )
    if tune is not None and not fuse:
        raise ValueError("tune= tunes the fused kernels: it needs fuse=True")
    profile = get_device(device)
    name = name or type(model).__name__
    cpu_target = profile.target.get("kind") == "llvm"
    if kernels == "auto":
        kernels = "templates" if cpu_target and not custom else "tvm"
    if kernels == "templates" and not cpu_target:
        raise ValueError(
            f"kernels='templates': the templates are CPU (LLVM) code, device {profile.name!r} "
            f"has target kind {profile.target.get('kind')!r}; use kernels='tvm'"
        )
    if kernels == "templates" and custom:
        raise ValueError("kernels='templates' needs relax_pipeline='default'")
    prepared = None
    if plan is not None or kernels == "templates":
        from npas_lab.compiler.prepare import prepare_model

        # Masks baked in, BN folded into the convs, filter/channel-pruned convs shrunk and
        # their removed channels propagated into the neighbouring convs: what remains is plain
        # convs whose weights identify their layers in the Relax graph.
        prepared = prepare_model(
            model,
            plan,
            example_input=example_input if propagate else None,
            gather_in_kernel=kernels == "templates",
        )
        plan = prepared.plan
        export_model = prepared.model
    else:
        export_model = model
    exported = export_to_relax(export_model, example_input, name=name)
    target = tvm.target.Target(
        dict(profile.target), host=dict(profile.host) if profile.host else None
    )
    timings = {"export": exported.export_s, "import": exported.import_s}
    summary = None
    start = time.perf_counter()
    mod, table = exported.mod, None
    if kernels == "templates":
        mod, table = _lower_with_templates(mod, prepared.model, plan, target, kernel_tune, progress)
        timings["kernels"] = time.perf_counter() - start
    if fuse:
        from npas_lab.compiler import pipeline

        # Run the Relax pipeline here rather than inside tvm.compile so that the fused module
        # (the tuning tasks) and the lowered one (for the fusion report) stay visible.
        try:
            fused = pipeline.fuse_module(mod, target)
        except pipeline.UnsupportedForFusionError:
            if not auto_fuse or tune is not None:
                raise
            fuse, fused = False, None  # the default pipeline handles side-effecting calls
    if fuse:
        database = None
        if tune is not None:
            from npas_lab.compiler import tuning

            tune_start = time.perf_counter()
            database, summary = tuning.tune_module(fused, target, tune, progress=progress)
            timings["tune"] = time.perf_counter() - tune_start
        scheduled = pipeline.schedule_module(fused, target, database=database)
        lowered = pipeline.lowering_pipeline(target)(scheduled)
    else:
        lowered = _default_relax(mod, target, relax_pipeline)
    executable = tvm.compile(lowered, target, relax_pipeline=None, tir_pipeline=tir_pipeline)
    timings["build"] = (
        time.perf_counter() - start - timings.get("tune", 0.0) - timings.get("kernels", 0.0)
    )
    return CompiledModel(
        name=name,
        profile=profile,
        target=json.loads(str(target)),
        executable=executable,
        mod=exported.mod,
        input_shape=tuple(example_input.shape),
        input_dtype=example_input.dtype,
        timings=timings,
        lowered=lowered,
        options={
            "fuse": fuse,
            "tune": tune.to_dict() if tune is not None else None,
            "kernels": kernels,
            "kernel_tune": kernel_tune,
            "relax_pipeline": relax_pipeline if isinstance(relax_pipeline, str) else "custom",
            "tir_pipeline": tir_pipeline if isinstance(tir_pipeline, str) else "custom",
        },
        tuning=summary,
        plan=plan,
        kernels=table,
        propagation=prepared.propagation if prepared is not None else None,
    )
