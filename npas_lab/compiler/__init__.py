"""TVM compilation: export from PyTorch, build for a device, compiled artifacts.

Only ``npas_lab.compiler`` and ``npas_lab.devices`` import ``tvm``.

Examples
--------
>>> from npas_lab.compiler import compile_model
>>> cm = compile_model(model, torch.randn(1, 3, 32, 32), "host-cpu")  # doctest: +SKIP
>>> cm(x)  # same as model.eval()(x), within 1e-4  # doctest: +SKIP
>>> fusion_report(cm)  # which operators each kernel computes  # doctest: +SKIP
>>> tuned = compile_model(model, x, tune=TuneConfig(max_trials_global=64))  # doctest: +SKIP
>>> load_artifact(save_artifact(tuned))(x)  # doctest: +SKIP

Modules: ``export`` (PyTorch -> Relax), ``pipeline`` (the fusing Relax pipeline), ``tuning``
(MetaSchedule with a persistent database), ``build`` (:func:`compile_model`), ``fusion`` (the
fusion report), ``artifact`` (save/load compiled libraries).
"""

from npas_lab.compiler.artifact import LoadedModel, load_artifact, save_artifact
from npas_lab.compiler.build import CompiledModel, compile_model, set_runtime_threads
from npas_lab.compiler.export import (
    ExportError,
    ExportResult,
    UnsupportedOperatorError,
    export_to_relax,
)
from npas_lab.compiler.fusion import fusion_report
from npas_lab.compiler.tuning import TuneConfig, TuneSummary

__all__ = [
    "CompiledModel",
    "ExportError",
    "ExportResult",
    "LoadedModel",
    "TuneConfig",
    "TuneSummary",
    "UnsupportedOperatorError",
    "compile_model",
    "export_to_relax",
    "fusion_report",
    "load_artifact",
    "save_artifact",
    "set_runtime_threads",
]
