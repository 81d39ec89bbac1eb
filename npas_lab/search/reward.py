"""Rewards that fold the overall latency constraint T into one number per candidate.

``soft`` (MnasNet, Tan et al. 2019, eq. 2 with alpha = beta = w)
    ``accuracy * (latency / T) ** w``, ``w = -0.07`` by default: 2x faster is worth ~5 % relative
    accuracy, on both sides of T, so the search trades accuracy for speed smoothly.
``hard``
    ``accuracy`` when ``latency <= T``, else ``-(latency / T - 1)``: any candidate that meets the
    constraint beats every candidate that misses it (accuracy >= 0 > penalty), and a miss is
    graded by how far it is over T, so the learners still get a direction instead of a flat
    floor (NPAS.md: "a hard penalty above T").

Examples
--------
>>> reward = RewardConfig(target_ms=2.0)
>>> round(reward(0.9, 1.0), 4)  # twice as fast as T
0.9447
>>> RewardConfig(form="hard", target_ms=2.0)(0.9, 3.0)
-0.5
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["REWARD_FORMS", "RewardConfig"]

#: The reward forms :class:`RewardConfig` knows.
REWARD_FORMS = ("soft", "hard")


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """How a search scores (accuracy, latency): the form, the latency target T and w."""

    target_ms: float  # the overall latency constraint T, in milliseconds
    form: str = "soft"  # "soft" (MnasNet acc * (lat/T)^w) or "hard" (see the module docstring)
    w: float = -0.07  # MnasNet's exponent for "soft"

    def __post_init__(self) -> None:
        if self.form not in REWARD_FORMS:
            raise ValueError(
                f"RewardConfig.form={self.form!r}: choose one of {', '.join(REWARD_FORMS)}"
            )
        if not (isinstance(self.target_ms, int | float) and math.isfinite(self.target_ms)) or (
            self.target_ms <= 0
        ):
            raise ValueError(f"RewardConfig.target_ms={self.target_ms!r} must be a latency > 0")
        if not math.isfinite(self.w) or self.w > 0:
            raise ValueError(f"RewardConfig.w={self.w!r} must be <= 0 (slower must not pay)")

    def __call__(self, accuracy: float, latency_ms: float) -> float:
        """Return the reward of a candidate with this accuracy (0..1) and latency (ms)."""
        if not latency_ms > 0:
            raise ValueError(f"latency_ms={latency_ms!r} must be > 0")
        ratio = latency_ms / self.target_ms
        if self.form == "soft":
            return float(accuracy * ratio**self.w)
        return float(accuracy) if ratio <= 1 else float(-(ratio - 1))

    def feasible(self, latency_ms: float) -> bool:
        """Return whether ``latency_ms`` meets the constraint T."""
        return latency_ms <= self.target_ms

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-able data."""
        return asdict(self)
