"""The Bayesian-optimisation meta-model: a Gaussian process over candidate encodings.

:class:`Surrogate` fits scikit-optimize's Gaussian process (a Matern-5/2 kernel times a constant,
plus white noise for the measurement noise of latency and the fine-tune's accuracy) to the
rewards seen so far, on :meth:`~npas_lab.search.space.SearchSpace.encode` vectors, and ranks new
candidates by expected improvement (skopt's ``gaussian_ei``). It is refitted from scratch after
every evaluation: with at most a few hundred points a fit takes milliseconds to a second.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from skopt.acquisition import gaussian_ei
from skopt.learning import GaussianProcessRegressor
from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from npas_lab.search.space import Candidate, SearchSpace

__all__ = ["Surrogate"]


class Surrogate:
    """Predict the reward of candidates from their encoding; rank them by expected improvement.

    Parameters
    ----------
    space
        Encodes candidates.
    seed
        Seeds the kernel hyper-parameter restarts.
    xi
        Exploration margin of expected improvement (in units of the normalised reward).

    Examples
    --------
    >>> surrogate = Surrogate(space)  # doctest: +SKIP
    >>> surrogate.fit(candidates, rewards)  # doctest: +SKIP
    >>> order = np.argsort(-surrogate.expected_improvement(proposals))  # doctest: +SKIP
    """

    def __init__(self, space: SearchSpace, *, seed: int = 0, xi: float = 0.01) -> None:
        self.space, self.seed, self.xi = space, seed, xi
        self.model: GaussianProcessRegressor | None = None
        self.best = -np.inf

    def fit(self, candidates: Sequence[Candidate], rewards: Sequence[float]) -> None:
        """Fit the Gaussian process to ``rewards`` of ``candidates`` (replacing the last fit)."""
        if len(candidates) != len(rewards) or not candidates:
            raise ValueError("fit needs one reward per candidate, and at least one candidate")
        X = self.space.encode_many(candidates)
        y = -np.asarray(rewards, dtype=float)  # skopt minimises
        kernel = ConstantKernel(1.0) * Matern(length_scale=1.0, nu=2.5) + WhiteKernel(1e-2)
        self.model = GaussianProcessRegressor(
            kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=self.seed
        )
        with warnings.catch_warnings():
            # Bounds hit by the noise level on smooth data are expected, not a problem.
            warnings.simplefilter("ignore")
            self.model.fit(X, y)
        self.best = float(np.max(rewards))

    def predict(self, candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """Return the predicted reward and its standard deviation for each candidate."""
        if self.model is None:
            raise RuntimeError("Surrogate.predict before fit: fit it on evaluated candidates")
        with warnings.catch_warnings():
            # skopt clips tiny negative variances (round-off) to 0 and says so every time.
            warnings.simplefilter("ignore")
            mean, std = self.model.predict(self.space.encode_many(candidates), return_std=True)
        return -mean, std

    def expected_improvement(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """Return the expected improvement over the best reward seen, per candidate."""
        if self.model is None:
            raise RuntimeError("Surrogate.expected_improvement before fit")
        X = self.space.encode_many(candidates)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gaussian_ei(X, self.model, y_opt=-self.best, xi=self.xi)
