"""Export a PyTorch model to a Relax ``IRModule`` (``torch.export`` -> Relax frontend).

Two steps can fail, and each failure names the model and what went wrong:

1. ``torch.export.export`` traces the model in eval mode (data-dependent control flow, unsupported
   Python) -> :class:`ExportError`.
2. TVM's ExportedProgram importer translates the decomposed ATen graph. An ATen op without a
   converter -> :class:`UnsupportedOperatorError`, listing the ops (checked before translation so
   every missing op is named at once, not only the first).

Parameters are bound into the module as constants (``keep_params_as_input=False``): the compiled
library is then self-contained (one file to upload to a phone), constant folding can see the
weights, the compiled model is called with the input alone like the PyTorch model, and a pruned
model -- whose sparse kernels are specialised to its masks anyway -- is a new artifact per plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ExportError", "ExportResult", "UnsupportedOperatorError", "export_to_relax"]


class ExportError(RuntimeError):
    """``torch.export`` or the Relax importer could not handle a model."""


class UnsupportedOperatorError(ExportError):
    """The Relax importer has no converter for some ATen operators of a model.

    Attributes
    ----------
    model_name : str
    operators : list of str
        The ATen operator names without converter, sorted.
    """

    def __init__(self, model_name: str, operators: list[str]) -> None:
        self.model_name = model_name
        self.operators = sorted(operators)
        super().__init__(
            f"model {model_name!r} uses ATen operators the TVM Relax importer cannot convert: "
            f"{', '.join(self.operators)}. Replace them (see npas_lab.operators) or pass a "
            "custom converter."
        )


@dataclass(frozen=True)
class ExportResult:
    """The Relax module of a model plus what it took to get it.

    Attributes
    ----------
    mod : tvm.IRModule
        Relax module whose ``main`` takes the input and returns the output (a unit tuple is
        unwrapped to the tensor).
    exported_program : torch.export.ExportedProgram
        The decomposed program that was translated.
    export_s, import_s : float
        Seconds spent in ``torch.export`` (+ decomposition) and in the Relax importer.
    """

    mod: object
    exported_program: torch.export.ExportedProgram
    export_s: float
    import_s: float


def _unsupported_ops(program: torch.export.ExportedProgram) -> list[str]:
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    # Same test as the importer's own assert (`_check_unsupported_func_type`), but it only
    # reports through an AssertionError string; doing it here gives a typed error.
    known = ExportedProgramImporter().convert_map
    return sorted(
        {
            node.target.__name__
            for node in program.graph.nodes
            if node.op == "call_function" and node.target.__name__ not in known
        }
    )


def export_to_relax(
    model: nn.Module, example_input: torch.Tensor, *, name: str | None = None
) -> ExportResult:
    """Export ``model`` at ``example_input``'s shape and import it into Relax.

    The model is put in eval mode for the export (batch norm uses running statistics, dropout is
    off) and restored to its previous mode afterwards.

    Parameters
    ----------
    model : nn.Module
        The model; its parameters become constants of the module.
    example_input : torch.Tensor
        Fixes the (static) input shape and dtype.
    name : str, optional
        Model name used in error messages; default the class name.

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        If ``torch.export`` fails or the importer fails for another reason.
    UnsupportedOperatorError
        If some ATen operators have no Relax converter.
    """
    from tvm.relax.frontend.torch import from_exported_program

    name = name or type(model).__name__
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        program = torch.export.export(model, (example_input.detach(),))
        # Decompose here (as from_exported_program would) so the op check sees the final graph.
        program = program.run_decompositions()
    except Exception as err:
        raise ExportError(
            f"torch.export could not trace model {name!r} at input shape "
            f"{tuple(example_input.shape)}: {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    export_s = time.perf_counter() - start

    missing = _unsupported_ops(program)
    if missing:
        raise UnsupportedOperatorError(name, missing)
    start = time.perf_counter()
    try:
        mod = from_exported_program(
            program,
            keep_params_as_input=False,
            unwrap_unit_return_tuple=True,
            run_ep_decomposition=False,
        )
    except Exception as err:
        raise ExportError(
            f"TVM's Relax importer failed on model {name!r}: {type(err).__name__}: {err}"
        ) from err
    return ExportResult(
        mod=mod,
        exported_program=program,
        export_s=export_s,
        import_s=time.perf_counter() - start,
    )
