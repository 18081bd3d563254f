"""Gaussian-mixture segments: membership probabilities from a fitted mixture's parameters.

When a bundle serves the Gaussian mixture (``[segmentation] model = "gaussian_mixture"``), a
customer's segment is the component with the highest posterior probability and the answer also
carries every component's probability (``membership``). This module is the one place that rule
lives: the vectorised engine and the one-customer path both call :meth:`MixtureRule.memberships`,
so they cannot disagree.

The arithmetic is scikit-learn's ``GaussianMixture`` with full covariances (``predict_proba``):
``log p(k | x) = log w_k + log N(x | mu_k, Sigma_k) - logsumexp_j(...)``, with
``log N = -d/2 log(2 pi) + log det(L_k) - |(x - mu_k) L_k|^2 / 2`` where ``L_k`` is the Cholesky
factor of the precision (``precisions_cholesky_``). It is written out here (40 lines) rather
than calling ``predict_proba`` so that the parameters are read once at load time, a call does no
estimator validation, and every sum runs column by column with elementwise operations (no BLAS,
whose summation order depends on the batch size): a customer gets the same bits alone or in a
batch, as the engine and the one-customer path require of each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MixtureRule:
    """The fitted mixture's parameters in the form the scoring needs."""

    #: (k, d) component means, in PCA space
    means: np.ndarray
    #: (k, d, d) Cholesky factors of the precision matrices
    precisions_cholesky: np.ndarray
    #: (k,) log of the mixture weights plus the log-determinant and constant of each component
    offsets: np.ndarray

    @classmethod
    def from_estimator(cls, gmm: Any) -> MixtureRule:
        """From a fitted ``sklearn.mixture.GaussianMixture(covariance_type="full")``."""
        if getattr(gmm, "covariance_type", None) != "full":
            raise ValueError(
                f"covariance_type={getattr(gmm, 'covariance_type', None)!r}, expected 'full'"
            )
        means = np.asarray(gmm.means_, dtype=np.float64)
        chol = np.asarray(gmm.precisions_cholesky_, dtype=np.float64)
        d = means.shape[1]
        log_det = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        offsets = np.log(np.asarray(gmm.weights_, dtype=np.float64)) + log_det
        offsets = offsets - 0.5 * d * np.log(2.0 * np.pi)
        return cls(means, chol, offsets)

    @property
    def k(self) -> int:
        """Number of components (segments)."""
        return int(self.means.shape[0])

    def log_joint(self, P: np.ndarray) -> np.ndarray:
        """(n, k) log of weight x density of each component at each row of ``P`` (n, d)."""
        n, d = P.shape
        out = np.empty((n, self.k), dtype=np.float64)
        for j in range(self.k):
            mean, chol = self.means[j], self.precisions_cholesky[j]
            y = np.zeros((n, d), dtype=np.float64)
            for i in range(d):
                y += (P[:, i, None] - mean[i]) * chol[i]
            quad = np.zeros(n, dtype=np.float64)
            for c in range(d):
                quad += y[:, c] * y[:, c]
            out[:, j] = self.offsets[j] - 0.5 * quad
        return out

    def memberships(self, P: np.ndarray) -> np.ndarray:
        """(n, k) posterior probability of each component; rows sum to 1."""
        weights = self.log_joint(P)
        weights -= weights.max(axis=1, keepdims=True)
        np.exp(weights, out=weights)
        total = np.zeros(weights.shape[0], dtype=np.float64)
        for j in range(self.k):
            total += weights[:, j]
        weights /= total[:, None]
        return weights

    def segments(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The most probable component of each row (the first on ties) and the memberships."""
        member = self.memberships(P)
        return np.argmax(member, axis=1), member
