"""TVM compilation: export from PyTorch, build for a device, compiled artifacts.

Only ``npas_lab.compiler`` and ``npas_lab.devices`` import ``tvm``.

Examples
--------
>>> from npas_lab.compiler import compile_model
>>> cm = compile_model(model, torch.randn(1, 3, 32, 32), "host-cpu")  # doctest: +SKIP
>>> cm(x)  # same as model.eval()(x), within 1e-4  # doctest: +SKIP
"""

from npas_lab.compiler.build import CompiledModel, compile_model, set_runtime_threads
from npas_lab.compiler.export import (
    ExportError,
    ExportResult,
    UnsupportedOperatorError,
    export_to_relax,
)

__all__ = [
    "CompiledModel",
    "ExportError",
    "ExportResult",
    "UnsupportedOperatorError",
    "compile_model",
    "export_to_relax",
    "set_runtime_threads",
]
