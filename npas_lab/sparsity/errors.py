"""The one error class of the sparsity package."""

from __future__ import annotations

__all__ = ["SparsityError"]


class SparsityError(ValueError):
    """Raise for an invalid sparsity request: unknown scheme, unreachable rate, misfit block, ...

    Messages name the layer (the ``layer=`` argument threaded through every call), the request
    and what would be valid. Subclassing ``ValueError`` lets callers that only know the standard
    library catch it.
    """
