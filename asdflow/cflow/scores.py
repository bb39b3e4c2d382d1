"""The pure math of CFlow: log-likelihoods, the loss, the learning-rate schedule, anomaly maps and scores.

Each function is testable without training (see :mod:`asdflow.cflow`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from asdflow.cflow.config import _AGGREGATIONS
from asdflow.errors import ModelError, ParameterError
from asdflow.flows import gaussian_log_likelihood, logsigmoid_loss

# ---------------------------------------------------------------------------
# Pure math: log-likelihoods, learning rate, anomaly maps, scores
# ---------------------------------------------------------------------------


def log_likelihood_per_dim(z: Tensor, log_det: Tensor) -> Tensor:
    """Log-likelihood of each fiber divided by its number of channels.

    ``log p / C`` with ``log p = -C/2 ln(2 pi) - ||z||^2 / 2 + log|det J|``
    (:func:`asdflow.flows.gaussian_log_likelihood`). Dividing by ``C`` makes
    the three scales (e.g. 512, 1024 and 2048 channels) comparable.

    Parameters
    ----------
    z : Tensor [shape=(N, C)]
        Flow outputs; computed in float32 whatever their dtype.
    log_det : Tensor [shape=(N,)]
        ``log |det dz/dx|`` per fiber, in nats.

    Returns
    -------
    Tensor [shape=(N,), dtype=float32]
        Nats per dimension.
    """
    z = z.float()
    return gaussian_log_likelihood(z, log_det.float()) / z.shape[1]


def learning_rate_factor(
    step: int, total_steps: int, warmup_steps: int, *, min_factor: float = 1e-3
) -> float:
    """Learning rate at an optimiser step, as a fraction of the peak rate.

    A linear warm-up from 0.1 to 1 over ``warmup_steps``, then a cosine
    decay from 1 to ``min_factor`` at ``total_steps`` (CFLOW-AD warms up
    from ``lr / 10`` over two meta epochs and decays to ``lr * 0.1**3``).

    Parameters
    ----------
    step : int
        Number of steps already taken (0 for the first step).
    total_steps, warmup_steps : int
        Length of the whole schedule and of the warm-up, in steps.
    min_factor : float
        Final fraction of the peak rate.

    Returns
    -------
    float
        Multiplier of the peak learning rate, in ``[min_factor, 1]``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return 0.1 + 0.9 * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def interleave_scales(n_batches: Sequence[int]) -> np.ndarray:
    """Order in which the fiber batches of the scales are visited in one epoch.

    Batch ``k`` of a scale with ``n`` batches sits at relative position
    ``(k + 0.5) / n`` of the epoch, so every scale is spread evenly over the
    epoch and sees the same stretch of the learning-rate schedule.

    Parameters
    ----------
    n_batches : sequence of int
        Number of fiber batches of each scale.

    Returns
    -------
    np.ndarray [shape=(sum(n_batches),), dtype=int64]
        The scale index of each step.
    """
    keys = [(k + 0.5) / n for n in n_batches for k in range(n)]
    scales = [s for s, n in enumerate(n_batches) for _ in range(n)]
    order = np.argsort(np.asarray(keys, dtype=np.float64), kind="stable")
    return np.asarray(scales, dtype=np.int64)[order]


@dataclass(frozen=True)
class ScoreConstants:
    """The two normalisation constants of the anomaly map, frozen after training.

    Attributes
    ----------
    scale_max : tuple of float
        Per scale, the largest ``log p / C`` over all positions of the
        training clips. Subtracted before ``exp``, so a training position has
        a probability of at most 1 at every scale.
    map_max : float
        The largest summed probability map value over the training clips.
        ``anomaly map = map_max - probability map`` is then at least 0 on
        every training clip.
    """

    scale_max: tuple[float, ...]
    map_max: float


def probability_map(
    log_p: Sequence[Tensor], scale_max: Sequence[float], size: tuple[int, int]
) -> Tensor:
    """Sum over scales of the upsampled, normalised likelihood maps.

    For every scale ``l``: ``exp(min(log_p[l] - scale_max[l], 0))``,
    upsampled bilinearly (corners aligned, as CFLOW-AD) to the image size;
    the result is the sum over scales. The exponent is capped at 0: with
    constants frozen from held-out clips, a position more likely than any
    held-out position (a training clip the flow has fitted closely) counts
    as fully normal, probability 1, instead of overflowing. CFLOW-AD takes
    the constants from the very maps it normalises, so its exponents are
    never positive and the cap changes nothing there.

    Parameters
    ----------
    log_p : sequence of Tensor [shape=(B, H_l, W_l)]
        Log-likelihood per dimension of every position, one tensor per scale.
    scale_max : sequence of float
        The constant subtracted at each scale (:class:`ScoreConstants`).
    size : (int, int)
        Image size ``(rows, frames)``, e.g. ``(158, 313)``.

    Returns
    -------
    Tensor [shape=(B, rows, frames), dtype=float64]
        Between 0 and ``len(log_p)`` for positions as likely as the training data.
    """
    if len(log_p) != len(scale_max):
        raise ModelError(f"got {len(log_p)} log-likelihood maps but {len(scale_max)} constants")
    if not log_p:
        raise ModelError("no log-likelihood maps given")
    total = torch.zeros((), dtype=torch.float64)
    for maps, constant in zip(log_p, scale_max, strict=True):
        prob = torch.exp(torch.clamp(maps.to(torch.float64) - constant, max=0.0))
        up = F.interpolate(prob[:, None], size=tuple(size), mode="bilinear", align_corners=True)
        total = total + up[:, 0]
    return total


def fit_score_constants(
    batches: Sequence[tuple[Sequence[Tensor], tuple[int, int]]],
) -> ScoreConstants:
    """Score constants from the log-likelihood maps of the training clips.

    Parameters
    ----------
    batches : sequence of (log_p, size)
        Each item holds the per-scale maps ``log_p[l]`` of shape
        ``(B, H_l, W_l)`` of a batch of training images of one size, and
        that image size ``(rows, frames)``.

    Returns
    -------
    ScoreConstants
    """
    if not batches:
        raise ModelError("cannot fit score constants to no training clips")
    n_scales = len(batches[0][0])
    scale_max = tuple(max(float(log_p[s].max()) for log_p, _ in batches) for s in range(n_scales))
    map_max = max(float(probability_map(log_p, scale_max, size).max()) for log_p, size in batches)
    return ScoreConstants(scale_max=scale_max, map_max=map_max)


def anomaly_map(
    log_p: Sequence[Tensor], constants: ScoreConstants, size: tuple[int, int]
) -> Tensor:
    """Anomaly map: ``map_max`` minus the probability map (higher = more anomalous).

    Parameters
    ----------
    log_p : sequence of Tensor [shape=(B, H_l, W_l)]
        Log-likelihood per dimension at every position, one tensor per scale.
    constants : ScoreConstants
        Frozen from the training clips.
    size : (int, int)
        Image size ``(rows, frames)``.

    Returns
    -------
    Tensor [shape=(B, rows, frames), dtype=float64]
    """
    return constants.map_max - probability_map(log_p, constants.scale_max, size)


def aggregate_map(maps: Tensor, how: str = "max") -> Tensor:
    """Clip scores from anomaly maps: the maximum or the mean over positions.

    Parameters
    ----------
    maps : Tensor [shape=(B, rows, frames)]
    how : {"max", "mean"}

    Returns
    -------
    Tensor [shape=(B,)]
    """
    flat = maps.reshape(maps.shape[0], -1)
    if how == "max":
        return flat.max(dim=1).values
    if how == "mean":
        return flat.mean(dim=1)
    raise ParameterError(f"aggregation must be one of {_AGGREGATIONS}, got {how!r}")


def fiber_loss(
    z: Tensor, log_det: Tensor, loss: Callable[[Tensor, int], Tensor] | None = None
) -> Tensor:
    """CFLOW-AD's loss of one fiber batch, computed in float32.

    Parameters
    ----------
    z : Tensor [shape=(N, C)]
    log_det : Tensor [shape=(N,)]
    loss : callable or None
        ``loss(log_p, C)``; default :func:`asdflow.flows.logsigmoid_loss`,
        ``mean(-logsigmoid(log p / C))``.

    Returns
    -------
    Tensor [shape=()]
    """
    fn = loss if loss is not None else logsigmoid_loss
    z = z.float()
    return fn(gaussian_log_likelihood(z, log_det.float()), z.shape[1])
