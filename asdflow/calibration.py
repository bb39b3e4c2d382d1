"""Decisions that hold on unseen normal clips: a held-out split and a threshold for both domains.

A detector's scores of the clips it was trained on are optimistic: a flow
that has fitted a clip gives it a high likelihood, so its anomaly score is
low. In quick mode, unseen normal clips score several times higher than
the training clips of a CFlow detector, and a threshold fitted to the
training scores flags nearly every normal test clip (chapter 8 of the book
measures it). Everything that must
generalise to unseen clips (the decision threshold, and for CFlow the score
constants) is therefore fitted on *held-out* normal clips, which the model
never saw:

- :func:`holdout_split` sets aside a share of the training clips of each
  domain (stratified, seeded). The model is trained on the rest.
- :func:`domain_threshold` turns the held-out scores into one threshold.
  Test clips come without their domain, so one threshold must serve both;
  it is the larger of the two domains' thresholds, so that in neither
  domain are normal clips flagged much more often than ``1 - quantile``.

Why a split and not cross-fitting: cross-fitting (train K models, score each
clip with the model that did not see it) uses every clip for training but
costs K + 1 trainings of the flows; the split costs nothing. The price is
fewer training clips (10 % fewer by default) and, in the target domain, very
few held-out clips: DCASE 2024 gives 10 target training clips per machine
type, the quick factory 4. Half of them are held out; their scores say where
the target domain's normal clips lie, and the spread around them is taken
from the source domain (see :func:`domain_threshold`). The nearest-neighbour detector
of :mod:`asdflow.knn` needs no split: it scores each training clip with the
clip itself left out of the memory, which is exact cross-fitting for free.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from asdflow.errors import ModelError, ParameterError

__all__ = [
    "MIN_FIT",
    "domain_threshold",
    "gamma_threshold",
    "holdout_split",
    "training_domains",
]

MIN_FIT = 3
"""Held-out scores a domain needs for a gamma fit of its own; fewer borrow the spread of the other domain."""


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
    # deferred: scipy.stats takes about a second to import
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


def holdout_split(
    domains: Sequence[str], fraction: float, seed: int, target_fraction: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the clips to train on and of the clips to hold out, per domain.

    Each domain with ``n >= 2`` clips holds out ``round(fraction * n)`` of
    them (``target_fraction`` for the target domain), at least 1 and at most
    ``n - 1``; a domain with a single clip keeps it for training. A fraction
    of 0 holds nothing of that domain out.

    Parameters
    ----------
    domains : sequence of str
        ``"source"`` or ``"target"`` per training clip.
    fraction : float
        Share of each domain's clips to hold out, in [0, 1).
    seed : int
        Seed of the draw (the same seed gives the same split).
    target_fraction : float or None
        Share of the target domain's clips to hold out (None: ``fraction``).
        The detectors hold out half of the target clips: the flows learn
        their density from the source domain's hundreds of clips anyway, and
        the few target clips tell more about where target normals score.

    Returns
    -------
    fit, held : np.ndarray of int
        Sorted indices into ``domains``; together they cover every clip once.

    Examples
    --------
    >>> fit, held = holdout_split(["source"] * 40 + ["target"] * 10, 0.1, seed=0, target_fraction=0.5)
    >>> len(fit), len(held)
    (41, 9)
    """
    fractions = {
        "source": fraction,
        "target": fraction if target_fraction is None else target_fraction,
    }
    for value in fractions.values():
        if not 0.0 <= value < 1.0:
            raise ParameterError(f"a held-out fraction must lie in [0, 1), got {value!r}")
    labels = np.asarray(list(domains))
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for domain in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == domain)
        n = members.size
        share = fractions.get(domain, fraction)
        if n < 2 or share == 0:
            continue
        k = min(max(int(round(share * n)), 1), n - 1)
        held += rng.choice(members, size=k, replace=False).tolist()
    held_array = np.array(sorted(held), dtype=np.int64)
    fit = np.setdiff1d(np.arange(labels.size), held_array)
    return fit, held_array


def domain_threshold(
    scores: Sequence[float] | np.ndarray,
    domains: Sequence[str] | np.ndarray,
    quantile: float = 0.9,
) -> float:
    """One decision threshold for both domains, from scores of held-out normal clips.

    For each domain ``d`` a threshold ``t_d`` is estimated, and the result is
    the largest of them:

    - a domain with at least :data:`MIN_FIT` scores: ``t_d`` is the gamma
      ``quantile`` of its scores (:func:`asdflow.calibration.gamma_threshold`,
      the DCASE baseline's rule);
    - a domain with fewer (the two held-out target clips of the quick
      factory): its median score plus the distance from median to threshold of
      the domain with the most scores, ``t_d = median_d + (t_ref -
      median_ref)``: where the domain's normal clips lie comes from its own
      clips, their spread from the other domain.

    Taking the largest keeps the false-alarm rate of each domain near
    ``1 - quantile``; in a domain whose normal clips score lower, fewer
    anomalies are caught than its own threshold would catch. A detector
    whose scores put both domains on one scale (the domain-aware ones) loses
    nothing.

    Parameters
    ----------
    scores : array-like [shape=(n,)]
        Scores of normal clips the detector was not trained on.
    domains : sequence of str
        The domain of each clip.
    quantile : float
        The gamma quantile, in (0, 1).

    Returns
    -------
    float

    Raises
    ------
    ModelError
        For no scores, non-finite scores or a mismatch of lengths.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(list(domains))
    if values.size == 0:
        raise ModelError("cannot fit a threshold to no held-out scores")
    if labels.size != values.size:
        raise ModelError(f"{values.size} held-out scores but {labels.size} domains")
    groups = {d: values[labels == d] for d in sorted(set(labels.tolist()))}
    reference = max(groups, key=lambda d: groups[d].size)
    ref_scores = groups[reference]
    if ref_scores.size >= MIN_FIT:
        ref_threshold = gamma_threshold(ref_scores, quantile)
    else:  # too few clips anywhere for a fit: the empirical quantile of all of them
        return float(np.quantile(values, quantile))
    spread = ref_threshold - float(np.median(ref_scores))
    thresholds = []
    for group in groups.values():
        if group.size >= MIN_FIT:
            thresholds.append(gamma_threshold(group, quantile))
        else:
            thresholds.append(float(np.median(group)) + spread)
    return float(max(thresholds))


def training_domains(items: Sequence[object], domains: Sequence[str] | None = None) -> list[str]:
    """The domain of each training item: ``domains`` if given, else each clip's ``domain``.

    Feature images and vector arrays carry no domain; without ``domains``
    they count as source clips.

    Raises
    ------
    ParameterError
        When ``domains`` has another length than ``items``, or a domain is
        not ``"source"`` or ``"target"``.
    """
    if domains is None:
        domains = [getattr(x, "domain", "source") for x in items]
    domains = [str(d) for d in domains]
    if len(domains) != len(items):
        raise ParameterError(f"{len(items)} training clips but {len(domains)} domains")
    bad = sorted({d for d in domains if d not in ("source", "target")})
    if bad:
        raise ParameterError(f"training domains must be 'source' or 'target', got {bad}")
    return domains
