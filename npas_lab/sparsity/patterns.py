"""Pattern pruning of 3x3 kernels (PatDNN / PCONV) with connectivity pruning on top.

A pattern keeps 4 of the 9 weights of a 3x3 kernel, the centre always among them. A layer (or a
whole model) uses a small library of patterns, by default the 8 shapes that occur most often as
the "centre + 3 largest" weights of its kernels. Every kernel is projected onto the library
pattern that keeps the most of its L2 energy, which alone gives a rate of exactly 9/4;
**connectivity pruning** then removes whole kernels (the lowest L2 norm after projection) to reach
any higher rate. Positions are numbered row-major, 0..8, the centre is 4.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from npas_lab.sparsity.errors import SparsityError
from npas_lab.sparsity.importance import Importance, Magnitude
from npas_lab.sparsity.selection import select_groups

__all__ = [
    "CENTER",
    "DEFAULT_NUM_PATTERNS",
    "PATTERN_ONLY_RATE",
    "PatternLibrary",
    "candidate_patterns",
    "check_kernel",
    "pattern_mask",
]

#: Flat index of the centre of a 3x3 kernel (row-major).
CENTER = 4
#: Patterns in a library unless asked otherwise (PatDNN and NPAS use 8).
DEFAULT_NUM_PATTERNS = 8
#: Weights kept by one pattern.
PATTERN_SIZE = 4
#: The rate of pattern pruning alone: 9 weights per kernel, 4 kept.
PATTERN_ONLY_RATE = 9 / PATTERN_SIZE


def candidate_patterns() -> list[tuple[int, ...]]:
    """Return the 56 possible patterns (centre + 3 of the other 8 positions), in sorted order."""
    others = [p for p in range(9) if p != CENTER]
    return [tuple(sorted((CENTER, *three))) for three in itertools.combinations(others, 3)]


def check_kernel(shape: tuple[int, ...], *, layer: str = "?") -> None:
    """Raise :class:`SparsityError` unless ``shape`` is a conv weight with 3x3 kernels."""
    if len(shape) != 4 or tuple(shape[-2:]) != (3, 3):
        kernel = "x".join(map(str, shape[2:])) + " kernels" if len(shape) == 4 else "no kernels"
        raise SparsityError(
            f"pattern pruning needs 3x3 kernels; layer {layer!r} has {kernel} "
            f"(use unstructured, filter, channel, column or block_punched there)"
        )


def _kernel_scores(scores: torch.Tensor, layer: str) -> torch.Tensor:
    """Return the scores of a (F, C, 3, 3) tensor as (F * C, 9), refusing other kernels."""
    check_kernel(tuple(scores.shape), layer=layer)
    return scores.detach().reshape(-1, 9)


@dataclass(frozen=True)
class PatternLibrary:
    """An ordered set of 3x3 patterns, each a sorted tuple of 4 kept positions including 4.

    Parameters
    ----------
    patterns
        The patterns, most frequent first when extracted; positions are row-major 0..8.

    Examples
    --------
    >>> library = PatternLibrary.from_weights(torch.randn(16, 8, 3, 3), size=4)
    >>> len(library), library.masks().shape
    (4, torch.Size([4, 3, 3]))
    """

    patterns: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        patterns = tuple(tuple(sorted(int(p) for p in pattern)) for pattern in self.patterns)
        valid = set(candidate_patterns())
        bad = [p for p in patterns if p not in valid]
        if not patterns or bad or len(set(patterns)) != len(patterns):
            raise SparsityError(
                f"a pattern library needs 1 to 56 distinct patterns of 4 positions in 0..8 "
                f"including the centre 4; got {self.patterns!r}"
            )
        object.__setattr__(self, "patterns", patterns)

    def __len__(self) -> int:
        return len(self.patterns)

    def masks(self) -> torch.Tensor:
        """Return the patterns as a boolean tensor of shape (K, 3, 3)."""
        flat = torch.zeros(len(self.patterns), 9, dtype=torch.bool)
        for k, pattern in enumerate(self.patterns):
            flat[k, list(pattern)] = True
        return flat.reshape(-1, 3, 3)

    @classmethod
    def from_scores(
        cls, scores: torch.Tensor | Sequence[torch.Tensor], *, size: int = DEFAULT_NUM_PATTERNS
    ) -> PatternLibrary:
        """Extract the ``size`` most frequent "centre + top 3" shapes of 3x3 importance scores.

        Parameters
        ----------
        scores
            Per-weight scores of one (F, C, 3, 3) layer, or a list of them (a whole model).
        size
            Patterns in the library, 1 to 56. Frequency ties, and shapes that never occur (when
            fewer than ``size`` distinct shapes do), are ordered by :func:`candidate_patterns`.
        """
        tensors = [scores] if isinstance(scores, torch.Tensor) else list(scores)
        candidates = candidate_patterns()
        if not 1 <= size <= len(candidates) or isinstance(size, bool):
            raise SparsityError(f"a pattern library has 1 to 56 patterns, got size={size!r}")
        counts = torch.zeros(1 << 9, dtype=torch.int64)
        others = torch.tensor([p for p in range(9) if p != CENTER])
        for tensor in tensors:
            kernels = _kernel_scores(tensor, "?").cpu()
            if len(kernels) == 0:
                continue
            # Stable sort: on equal scores the lower position wins, so the result is reproducible.
            top3 = others[
                torch.sort(kernels[:, others], dim=1, descending=True, stable=True).indices
            ]
            codes = (1 << top3[:, :3]).sum(1) + (1 << CENTER)
            counts += torch.bincount(codes, minlength=1 << 9)
        codes = [sum(1 << p for p in pattern) for pattern in candidates]
        ranked = sorted(range(len(candidates)), key=lambda i: (-int(counts[codes[i]]), i))
        return cls(tuple(candidates[i] for i in ranked[:size]))

    @classmethod
    def from_weights(
        cls,
        weights: torch.Tensor | Sequence[torch.Tensor],
        *,
        size: int = DEFAULT_NUM_PATTERNS,
        importance: Importance | None = None,
    ) -> PatternLibrary:
        """Extract a library from 3x3 conv weights, scored by ``importance`` (magnitude).

        Parameters
        ----------
        weights
            One (F, C, 3, 3) weight or a list of them (the model-wide library of PatDNN).
        size
            Patterns in the library.
        importance
            Per-weight scores; :class:`~npas_lab.sparsity.importance.Magnitude` by default.
        """
        score = importance or Magnitude()
        tensors = [weights] if isinstance(weights, torch.Tensor) else list(weights)
        return cls.from_scores([score(w).detach() for w in tensors], size=size)


def pattern_mask(
    scores: torch.Tensor,
    rate: float,
    *,
    library: PatternLibrary | None = None,
    num_patterns: int = DEFAULT_NUM_PATTERNS,
    layer: str = "?",
) -> torch.Tensor:
    """Return the pattern + connectivity keep-mask of a (F, C, 3, 3) layer from its scores.

    Parameters
    ----------
    scores
        Per-weight importance scores of the layer.
    rate
        Pruning rate: exactly 9/4 is pattern pruning alone; above it, connectivity pruning keeps
        the kernels with the largest L2 norm after projection, ``9 * F * C / rate`` weights up to
        one kernel (4 weights). Below 9/4 is refused.
    library
        The patterns to project on; by default extracted from this layer's scores.
    num_patterns
        Library size when it is extracted here.
    layer
        Named in error messages.
    """
    kernels = _kernel_scores(scores, layer)
    if rate < PATTERN_ONLY_RATE * (1 - 1e-9):
        raise SparsityError(
            f"pattern pruning cannot reach rate {rate:g} on layer {layer!r}: a pattern keeps 4 of "
            f"9 weights, so rates start at 9/4 = 2.25 (patterns alone); higher rates add "
            f"connectivity pruning, up to {kernels.numel() / PATTERN_SIZE:g} (one kernel kept)"
        )
    if library is not None and not isinstance(library, PatternLibrary):
        raise SparsityError(
            f"pattern pruning of layer {layer!r}: library must be a PatternLibrary, got "
            f"{type(library).__name__}"
        )
    if library is None:
        library = PatternLibrary.from_scores(scores, size=num_patterns)
    patterns = library.masks().reshape(-1, 9).to(kernels.device)
    # Energy each pattern keeps of each kernel; argmax picks the first pattern on ties.
    energy = (kernels.to(torch.float64) ** 2) @ patterns.to(torch.float64).T
    best = energy.argmax(1)
    norms = energy.gather(1, best[:, None])[:, 0].sqrt()
    sizes = torch.full((len(kernels),), PATTERN_SIZE, dtype=torch.int64, device=kernels.device)
    kept = select_groups(
        norms, sizes, rate, total=kernels.numel(), scheme="pattern", layer=layer, unit="kernel"
    )
    mask = patterns[best] & kept[:, None]
    return mask.reshape(scores.shape)
