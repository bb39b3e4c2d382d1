"""Evaluation: the DCASE 2024 Task 2 metrics, decision thresholds and submission files.

This module follows the official evaluator of the challenge
(``nttcslab/dcase2024_task2_evaluator``, file ``dcase2024_task2_evaluator.py``)
and the decision rule of the official baseline
(``nttcslab/dcase2023_task2_baseline_ae``, which serves the 2024 task).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from asdflow.errors import ModelError

__all__ = ["gamma_threshold"]


def gamma_threshold(scores: Sequence[float] | np.ndarray, quantile: float = 0.9) -> float:
    """Decision threshold: a quantile of a gamma distribution fitted to normal scores.

    This is the decision rule of the DCASE 2024 Task 2 baseline: it fits the
    three gamma parameters (shape, location, scale) by maximum likelihood with
    ``scipy.stats.gamma.fit(scores)`` and takes
    ``scipy.stats.gamma.ppf(quantile, shape, loc=loc, scale=scale)``. A clip
    whose score is strictly greater than the threshold is declared anomalous.
    Because the location is fitted too, the scores may be negative or offset.

    Parameters
    ----------
    scores : array-like [shape=(n,)]
        Anomaly scores of normal training clips (higher = more anomalous).
        Any real values; they must be finite.
    quantile : float
        Probability in (0, 1); the baseline uses 0.9, so about 10 % of
        normal clips are expected above the threshold.

    Returns
    -------
    float
        The threshold, in the units of ``scores``.

    Raises
    ------
    ModelError
        If ``scores`` is empty or contains NaN or infinity, or ``quantile``
        is outside (0, 1).

    Notes
    -----
    Degenerate inputs do not crash:

    - if all scores are equal (this includes a single score), there is no
      spread to fit and the threshold is that common value, so only scores
      above every normal training score count as anomalous;
    - if the gamma fit fails or gives a non-finite quantile, the threshold
      falls back to the empirical ``quantile`` of the scores
      (``numpy.quantile``) and a ``RuntimeWarning`` says so.

    The official baseline fits the gamma distribution to mean losses of
    training batches; asdflow fits it to clip scores of normal training
    clips, the quantity the threshold is compared with.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = gamma_threshold(rng.gamma(2.0, 1.0, size=2000))
    >>> bool(3.5 < t < 4.2)  # true 0.9 quantile of Gamma(2, 1): 3.89
    True
    """
    if not 0.0 < quantile < 1.0:
        raise ModelError(f"quantile must lie strictly between 0 and 1, got {quantile!r}.")
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ModelError("cannot fit a threshold to no scores: pass the scores of normal clips.")
    if not np.all(np.isfinite(values)):
        bad = int(np.sum(~np.isfinite(values)))
        raise ModelError(
            f"{bad} of {values.size} scores are NaN or infinite; a threshold needs finite "
            "scores (check the detector's training)."
        )
    if np.ptp(values) == 0.0:
        return float(values[0])

    # Imported here: scipy.stats is slow to import and not needed otherwise.
    from scipy import stats

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            shape, loc, scale = stats.gamma.fit(values)
            threshold = float(stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    except (ValueError, RuntimeError, FloatingPointError, stats.FitError):
        threshold = float("nan")
    if not np.isfinite(threshold):
        warnings.warn(
            f"the gamma fit to {values.size} scores failed; using their empirical "
            f"{quantile} quantile as the threshold instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        threshold = float(np.quantile(values, quantile))
    return threshold
