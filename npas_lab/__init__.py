"""npas-lab: a workbench for compiler-aware pruning and architecture search (NPAS).

The package does the work; the numbered notebooks in ``notebooks/`` tell the story. Modules are
named after pipeline stages (see DESIGN.md): ``data`` -> ``models`` -> ``training`` ->
``compiler`` -> ``devices`` -> ``results`` -> ``plotting``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
