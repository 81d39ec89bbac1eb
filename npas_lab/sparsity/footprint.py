"""Pick the compact storage format of a scheme and tabulate bytes against dense and CSR.

Examples
--------
>>> w = torch.randn(64, 64, 3, 3)
>>> table = storage_table(w, rates=(4.0,), schemes=("unstructured", "block_punched"))
>>> list(table["scheme"])
['unstructured', 'block_punched']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from npas_lab.sparsity.errors import SparsityError
from npas_lab.sparsity.importance import Importance
from npas_lab.sparsity.masks import compute_mask, list_schemes
from npas_lab.sparsity.schemes import DEFAULT_BLOCK
from npas_lab.sparsity.storage import (
    CompactWeight,
    CSRStorage,
    DenseStorage,
    PatternStorage,
    ShrunkStorage,
    TiledStorage,
)

__all__ = ["STORAGE_FORMATS", "TABLE_RATES", "compact", "storage_table"]

#: Rates of :func:`storage_table` by default (the range the NPAS figures sweep).
TABLE_RATES = (2.0, 3.0, 4.0, 6.0, 8.0, 10.0)


def _block_punched(weight, mask, *, block=None, **_):
    bf, bc = block or DEFAULT_BLOCK
    bc = 1 if weight.shape[1] == 1 else bc  # depthwise: one channel per block (see schemes)
    kernel = int(torch.Size(weight.shape[2:]).numel())
    return TiledStorage.from_dense(weight, mask, tile=(bf, bc * kernel), axis="cols")


def _block(weight, mask, *, block=None, prune="rows", **_):
    return TiledStorage.from_dense(weight, mask, tile=block or DEFAULT_BLOCK, axis=prune)


#: Scheme -> ``factory(weight, mask, *, block=None, prune="rows") -> CompactWeight``.
STORAGE_FORMATS: dict[str, Callable[..., CompactWeight]] = {
    "dense": lambda w, m, **_: DenseStorage.from_dense(w, m),
    "unstructured": lambda w, m, **_: CSRStorage.from_dense(w, m),
    "filter": lambda w, m, **_: ShrunkStorage.from_dense(w, m),
    "channel": lambda w, m, **_: ShrunkStorage.from_dense(w, m),
    "column": lambda w, m, **_: TiledStorage.from_dense(w, m, axis="cols"),
    "pattern": lambda w, m, **_: PatternStorage.from_dense(w, m),
    "block": _block,
    "block_punched": _block_punched,
}


def compact(
    weight: torch.Tensor,
    mask: torch.Tensor,
    scheme: str,
    *,
    block: tuple[int, int] | None = None,
    prune: str = "rows",
) -> CompactWeight:
    """Store ``weight`` under ``mask`` in the compact format of ``scheme``.

    Parameters
    ----------
    weight, mask
        The dense weight and its boolean keep-mask (as from
        :func:`~npas_lab.sparsity.masks.compute_mask`).
    scheme
        A key of :data:`STORAGE_FORMATS`; the error lists the valid ones.
    block, prune
        The block (block_punched, block) and pruned axis (block) the mask was computed with.
    """
    if scheme not in STORAGE_FORMATS:
        raise SparsityError(
            f"no storage format for scheme {scheme!r}; valid: {', '.join(STORAGE_FORMATS)}"
        )
    return STORAGE_FORMATS[scheme](weight.detach(), mask, block=block, prune=prune)


def storage_table(
    weight: torch.Tensor,
    *,
    rates: Sequence[float] = TABLE_RATES,
    schemes: Sequence[str] | None = None,
    block: tuple[int, int] | None = None,
    importance: Importance | None = None,
    layer: str = "?",
) -> pd.DataFrame:
    """Return the bytes of every scheme's compact format at every rate, vs dense and vs CSR.

    Parameters
    ----------
    weight
        One layer weight, e.g. ResNet-18's ``layer3.0.conv2`` (256 x 256 x 3 x 3).
    rates
        Pruning rates to tabulate.
    schemes
        Schemes to tabulate; by default every registered one but dense, or, for a matrix weight,
        those that apply to it.
    block
        Block of block_punched and tile of block (:data:`DEFAULT_BLOCK` if None).
    importance
        Per-weight scores for the masks (magnitude by default).
    layer
        Named in error messages.

    Returns
    -------
    pandas.DataFrame
        One row per (scheme, rate): ``achieved_rate``, ``kept`` weights, ``bytes``,
        ``dense_bytes``, ``csr_bytes`` (CSR of the same mask), ``vs_dense`` and ``vs_csr``
        (``bytes`` divided by them) and ``note`` (why a row is empty: an unreachable rate).
    """
    if schemes is None:
        names = [s for s in list_schemes() if s in STORAGE_FORMATS and s != "dense"]
        matrix = weight.dim() == 2 or tuple(weight.shape[2:]) == (1, 1)
        conv3 = weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3)
        schemes = [s for s in names if (s != "block" or matrix) and (s != "pattern" or conv3)]
    dense_bytes = weight.numel() * 4
    rows: list[dict[str, Any]] = []
    for scheme in schemes:
        for rate in rates:
            row: dict[str, Any] = {"scheme": scheme, "rate": float(rate)}
            try:
                mask = compute_mask(
                    weight, scheme, rate, block=block, importance=importance, layer=layer
                )
            except SparsityError as err:
                rows.append({**row, "dense_bytes": dense_bytes, "note": str(err)})
                continue
            kept = int(mask.sum())
            size = compact(weight, mask, scheme, block=block).nbytes()
            csr = CSRStorage.from_dense(weight.detach(), mask).nbytes()
            rows.append(
                {
                    **row,
                    "achieved_rate": weight.numel() / kept,
                    "kept": kept,
                    "bytes": size,
                    "dense_bytes": dense_bytes,
                    "csr_bytes": csr,
                    "vs_dense": size / dense_bytes,
                    "vs_csr": size / csr,
                    "note": "",
                }
            )
    columns = ["scheme", "rate", "achieved_rate", "kept", "bytes", "dense_bytes", "csr_bytes"]
    return pd.DataFrame(rows, columns=[*columns, "vs_dense", "vs_csr", "note"])
