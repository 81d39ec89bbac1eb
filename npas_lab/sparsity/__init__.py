"""Sparsity schemes, compact storage and pruning plans (NPAS.md, "Sparsity schemes").

Modules, in the order data flows:

- :mod:`~npas_lab.sparsity.importance`: per-weight scores (``Importance``, ``Magnitude``).
- :mod:`~npas_lab.sparsity.selection`: keep the best groups at a rate, one threshold per layer.
- :mod:`~npas_lab.sparsity.patterns`: the 3x3 pattern library and pattern + connectivity masks.
- :mod:`~npas_lab.sparsity.schemes`: the ``Scheme`` interface and the built-in schemes.
- :mod:`~npas_lab.sparsity.masks`: the scheme registry and :func:`compute_mask`.
- :mod:`~npas_lab.sparsity.storage` / :mod:`~npas_lab.sparsity.footprint`: compact formats per
  scheme and a bytes table against dense and CSR.
- :mod:`~npas_lab.sparsity.plan`: ``LayerChoice`` / ``PruningPlan`` (frozen, JSON, stable key).
- :mod:`~npas_lab.sparsity.apply`: masks that stay applied through training.

Vocabulary: the pruning *rate* is dense weights / kept weights (6x keeps one in six).
Measured storage of ResNet-18 ``layer3.0.conv2`` is in ``docs/sparsity.md``.

Examples
--------
>>> from npas_lab.models import create_model
>>> model = create_model("resnet18")
>>> plan = uniform_plan(model, "block_punched", 6.0)
>>> rates = achieved_rates(apply_plan(model, plan))
>>> rates["conv1"], rates["layer3.0.conv2"]
(1.0, 6.0)
"""

from npas_lab.sparsity.apply import (
    WeightMask,
    achieved_rates,
    apply_plan,
    get_masks,
    make_permanent,
    update_masks,
)
from npas_lab.sparsity.errors import SparsityError
from npas_lab.sparsity.footprint import STORAGE_FORMATS, compact, storage_table
from npas_lab.sparsity.importance import Importance, Magnitude
from npas_lab.sparsity.masks import (
    SCHEMES,
    compute_mask,
    get_scheme,
    list_schemes,
    scheme_masks,
    schemes_for,
)
from npas_lab.sparsity.patterns import PatternLibrary
from npas_lab.sparsity.plan import LayerChoice, PruningPlan, uniform_plan, validate_plan
from npas_lab.sparsity.schemes import DEFAULT_BLOCK, Scheme
from npas_lab.sparsity.storage import (
    CompactWeight,
    CSRStorage,
    DenseStorage,
    PatternStorage,
    ShrunkStorage,
    TiledStorage,
)

__all__ = [
    "DEFAULT_BLOCK",
    "SCHEMES",
    "STORAGE_FORMATS",
    "CSRStorage",
    "CompactWeight",
    "DenseStorage",
    "Importance",
    "LayerChoice",
    "Magnitude",
    "PatternLibrary",
    "PatternStorage",
    "PruningPlan",
    "Scheme",
    "ShrunkStorage",
    "SparsityError",
    "TiledStorage",
    "WeightMask",
    "achieved_rates",
    "apply_plan",
    "compact",
    "compute_mask",
    "get_masks",
    "get_scheme",
    "list_schemes",
    "make_permanent",
    "scheme_masks",
    "schemes_for",
    "storage_table",
    "uniform_plan",
    "update_masks",
    "validate_plan",
]
