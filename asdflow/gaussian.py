"""A Gaussian per position: the simplest density model of the CFlow fibers.

PaDiM (Defard et al., ICPR 2021 workshops) models the fibers of a frozen
CNN's feature maps with one multivariate Gaussian per position and scores a
fiber by its Mahalanobis distance to the Gaussian of its position. It is the
natural baseline of a conditional flow: where CFlow learns ``p(x | c)`` with a
flow conditioned on the position code ``c``, :class:`PositionGaussian` fits a
mean and a covariance to the training fibers of every position ``(i, j)`` of
every scale, and nothing else.

With a few dozen training clips and hundreds of channels, a position has
fewer samples than dimensions and its sample covariance is singular. The
covariance is therefore shrunk towards a multiple of the identity,

.. math::

    \\Sigma = (1 - \\alpha) S + \\alpha \\frac{\\operatorname{tr} S}{C} I + \\varepsilon I,

with ``alpha`` fixed or estimated per position by the Ledoit-Wolf formula
(Ledoit and Wolf, J. Multivariate Analysis 2004; the estimate of
``sklearn.covariance.ledoit_wolf``), and a small ridge ``eps`` relative to
the average variance of the scale that keeps ``Sigma`` invertible even at a
position whose fibers never vary.

The log-likelihoods are returned per dimension, ``log p / C``, in the same
layout as :meth:`asdflow.cflow.CFlowDetector.log_likelihood_maps`, so the
score functions of :mod:`asdflow.cflow` (constants, anomaly map, clip score)
apply to both models unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from asdflow.errors import ModelError

__all__ = ["PositionGaussian", "ledoit_wolf_shrinkage"]


def ledoit_wolf_shrinkage(x: Tensor) -> Tensor:
    """Ledoit-Wolf shrinkage weight of centred samples, for many sample sets at once.

    For ``n`` centred samples ``x_i`` of dimension ``C`` with sample covariance
    ``S = sum_i x_i x_i^T / n`` and ``mu = tr(S) / C``, the weight is
    ``min(b, d) / d`` with ``d = ||S - mu I||_F^2 / C`` and
    ``b = (sum_i ||x_i||^4 / n - ||S||_F^2) / (n C)``; 0 when ``d = 0``.

    Parameters
    ----------
    x : Tensor [shape=(P, n, C)]
        ``P`` sets of ``n`` samples each, already centred (mean 0 per set).

    Returns
    -------
    Tensor [shape=(P,)]
        Weight ``alpha`` in [0, 1] of the scaled identity, per set.
    """
    _, n, c = x.shape
    cov = x.transpose(1, 2) @ x / n
    mu = torch.diagonal(cov, dim1=1, dim2=2).sum(dim=1) / c
    cov_sq = cov.pow(2).sum(dim=(1, 2))
    # ||S - mu I||^2 = ||S||^2 - 2 mu tr(S) + C mu^2 = ||S||^2 - C mu^2
    delta = (cov_sq - c * mu.pow(2)) / c
    beta = (x.pow(2).sum(dim=2).pow(2).sum(dim=1) / n - cov_sq) / (n * c)
    beta = torch.minimum(beta.clamp(min=0.0), delta)
    return torch.where(delta > 0, beta / delta.clamp(min=torch.finfo(x.dtype).tiny), 0.0)


class PositionGaussian:
    """One multivariate Gaussian per position and scale of a feature pyramid (PaDiM-like).

    Parameters
    ----------
    shrinkage : float or None
        Weight ``alpha`` of the scaled identity in the covariance, in [0, 1];
        None (default) estimates it per position with
        :func:`ledoit_wolf_shrinkage`.
    ridge : float
        ``eps`` as a fraction of the scale's average variance (the mean of
        ``tr(S) / C`` over its positions), added to every diagonal; keeps the
        covariance invertible at positions that do not vary. 0 turns it off.
    chunk : int
        Positions handled together; bounds the memory of ``fit`` and
        :meth:`log_likelihood_maps` to ``chunk * C * C`` float64 values.

    Attributes
    ----------
    means_ : list of Tensor [shape=(H_k, W_k, C_k), dtype=float64]
        Mean fiber of every position of each scale.
    cholesky_ : list of Tensor [shape=(H_k, W_k, C_k, C_k), dtype=float64]
        Lower Cholesky factor ``L`` of each position's covariance
        (``Sigma = L L^T``). Memory: ``H_k W_k C_k^2`` float64 values per
        scale, 0.2 GB for 100 positions of 512 channels.
    shrinkage_ : list of Tensor [shape=(H_k, W_k)]
        The weight ``alpha`` used at each position.

    Examples
    --------
    >>> import torch
    >>> maps = [torch.randn(30, 8, 4, 5), torch.randn(30, 16, 2, 3)]  # 30 clips, 2 scales
    >>> model = PositionGaussian().fit(maps)
    >>> [tuple(m.shape) for m in model.log_likelihood_maps([m[:2] for m in maps])]
    [(2, 4, 5), (2, 2, 3)]
    """

    def __init__(
        self, *, shrinkage: float | None = None, ridge: float = 1e-3, chunk: int = 64
    ) -> None:
        if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
            raise ModelError(f"shrinkage must be in [0, 1] or None, got {shrinkage}")
        if ridge < 0 or chunk < 1:
            raise ModelError(f"need ridge >= 0 and chunk >= 1, got ridge={ridge}, chunk={chunk}")
        self.shrinkage = shrinkage
        self.ridge = float(ridge)
        self.chunk = int(chunk)

    @staticmethod
    def _by_position(fmap: Tensor | np.ndarray) -> Tensor:
        """(N, C, H, W) maps to (H * W, N, C) float64 fibers, position-major."""
        maps = torch.as_tensor(fmap)
        if maps.ndim != 4:
            raise ModelError(
                f"expected feature maps of shape (N, C, H, W), got {tuple(maps.shape)}"
            )
        n, c, h, w = maps.shape
        return maps.detach().to("cpu", torch.float64).permute(2, 3, 0, 1).reshape(h * w, n, c)

    def fit(self, maps: Sequence[Tensor | np.ndarray]) -> PositionGaussian:
        """Fit the mean and shrunk covariance of every position of every scale.

        Parameters
        ----------
        maps : sequence of Tensor [shape=(N, C_k, H_k, W_k)]
            One tensor per scale: the feature maps of ``N >= 2`` normal
            training images of one size (the fibers of position ``(i, j)``
            are ``maps[k][:, :, i, j]``).

        Returns
        -------
        self
        """
        if len(maps) == 0:
            raise ModelError("no feature maps given: pass one (N, C, H, W) tensor per scale")
        means, factors, weights = [], [], []
        for fmap in maps:
            fibers = self._by_position(fmap)
            n_positions, n, c = fibers.shape
            if n < 2:
                raise ModelError(f"a covariance needs at least 2 training maps, got {n}")
            mean = fibers.mean(dim=1)
            centred = fibers - mean[:, None]
            variance = centred.pow(2).sum(dim=(1, 2)) / (n * c)  # tr(S) / C per position
            eps = self.ridge * float(variance.mean())
            if eps == 0.0 and self.ridge > 0:  # a scale that never varies: any positive floor
                eps = self.ridge
            eye = torch.eye(c, dtype=torch.float64)
            chol, alphas = [], []
            for start in range(0, n_positions, self.chunk):
                x = centred[start : start + self.chunk]
                if self.shrinkage is None:
                    alpha = ledoit_wolf_shrinkage(x)
                else:
                    alpha = torch.full((x.shape[0],), self.shrinkage, dtype=torch.float64)
                mu = variance[start : start + self.chunk]
                cov = (1 - alpha)[:, None, None] * (x.transpose(1, 2) @ x / n)
                cov = cov + (alpha * mu + eps)[:, None, None] * eye
                factor, info = torch.linalg.cholesky_ex(cov)
                if bool((info != 0).any()):
                    raise ModelError(
                        "a position's covariance is singular (its fibers never vary); "
                        "fit with ridge > 0"
                    )
                chol.append(factor)
                alphas.append(alpha)
            _, _, h, w = torch.as_tensor(fmap).shape
            means.append(mean.reshape(h, w, c))
            factors.append(torch.cat(chol).reshape(h, w, c, c))
            weights.append(torch.cat(alphas).reshape(h, w))
        self.means_, self.cholesky_, self.shrinkage_ = means, factors, weights
        return self

    def log_likelihood_maps(self, maps: Sequence[Tensor | np.ndarray]) -> list[Tensor]:
        """Per scale, the log-likelihood per dimension ``log p / C`` of every position.

        Parameters
        ----------
        maps : sequence of Tensor [shape=(B, C_k, H_k, W_k)]
            Feature maps of the images to score, of the training size.

        Returns
        -------
        list of Tensor [shape=(B, H_k, W_k), dtype=float32]
            ``log N(x | mean, Sigma) / C_k`` of the fiber at each position
            under that position's Gaussian: the layout of
            :meth:`asdflow.cflow.CFlowDetector.log_likelihood_maps`.
        """
        if not hasattr(self, "means_"):
            raise ModelError("this PositionGaussian is not fitted yet: call fit first")
        if len(maps) != len(self.means_):
            raise ModelError(f"expected {len(self.means_)} scales, got {len(maps)}")
        out = []
        for fmap, mean, factor in zip(maps, self.means_, self.cholesky_, strict=True):
            h, w, c = mean.shape
            fibers = self._by_position(fmap)
            if fibers.shape[0] != h * w or fibers.shape[2] != c:
                raise ModelError(
                    f"expected maps of {c} channels and {h} x {w} positions, got "
                    f"{tuple(torch.as_tensor(fmap).shape)}; a per-position model needs the "
                    "training image size"
                )
            n = fibers.shape[1]
            flat_mean, flat_factor = mean.reshape(h * w, c), factor.reshape(h * w, c, c)
            log_p = []
            for start in range(0, h * w, self.chunk):
                stop = start + self.chunk
                diff = (fibers[start:stop] - flat_mean[start:stop, None]).transpose(1, 2)
                solved = torch.linalg.solve_triangular(flat_factor[start:stop], diff, upper=False)
                mahalanobis = solved.pow(2).sum(dim=1)  # (positions, n)
                log_det = 2 * torch.log(torch.diagonal(flat_factor[start:stop], dim1=1, dim2=2))
                log_p.append(
                    -0.5 * (c * math.log(2 * math.pi) + log_det.sum(dim=1, keepdim=True))
                    - 0.5 * mahalanobis
                )
            per_dim = torch.cat(log_p) / c  # (h * w, n)
            out.append(per_dim.T.reshape(n, h, w).float())
        return out
