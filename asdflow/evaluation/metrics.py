"""The official DCASE 2024 Task 2 metrics: AUC, pAUC, P/R/F1 per domain, harmonic means, the official score."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdflow.errors import ParameterError, SubmissionError
from asdflow.evaluation.truth import DOMAINS, Truth, _check_same_names, _check_unique

if TYPE_CHECKING:
    pass

MAX_FPR = 0.1
"""False-positive rate up to which the pAUC is computed (DCASE 2024 Task 2)."""

EPS = float(np.finfo(float).eps)
"""Floor of every value entering a harmonic mean, and of every denominator of P/R/F1."""

METRICS = ("AUC (source)", "AUC (target)", "pAUC")
"""The three values per machine type and section that enter the official score."""

DECISION_METRICS = (
    "precision (source)",
    "recall (source)",
    "F1 (source)",
    "precision (target)",
    "recall (target)",
    "F1 (target)",
)
"""The decision metrics per domain, as the official evaluator reports them (from the 0/1 decisions)."""


# --------------------------------------------------------------------------
# Metrics on arrays
# --------------------------------------------------------------------------


def _as_arrays(y_true: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]):
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise SubmissionError(f"{y.size} labels but {s.size} scores; give one score per clip.")
    if not np.all(np.isfinite(s)):
        raise SubmissionError("scores contain NaN or infinity; every clip needs a finite score.")
    if not np.all((y == 0) | (y == 1)):
        raise SubmissionError("labels must be 0 (normal) or 1 (anomaly).")
    n_anomalies = int(y.sum())
    if n_anomalies == 0 or n_anomalies == y.size:
        raise SubmissionError(
            f"an AUC needs normal and anomalous clips; got {y.size - n_anomalies} normal and "
            f"{n_anomalies} anomalous."
        )
    return y, s


def auc(y_true: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float]) -> float:
    """Area under the ROC curve (higher score = more anomalous).

    Parameters
    ----------
    y_true : array-like of int [shape=(n,)]
        1 for anomalous clips, 0 for normal ones; both must occur.
    scores : array-like of float [shape=(n,)]
        Anomaly scores.

    Returns
    -------
    float
        In [0, 1]: the probability that a random anomalous clip scores higher
        than a random normal one, ties counting one half.
    """
    # deferred: scikit-learn takes about a second to import
    from sklearn.metrics import roc_auc_score

    y, s = _as_arrays(y_true, scores)
    return float(roc_auc_score(y, s))


def pauc(
    y_true: np.ndarray | Sequence[int],
    scores: np.ndarray | Sequence[float],
    *,
    max_fpr: float = MAX_FPR,
) -> float:
    """Partial AUC up to ``max_fpr``, McClish-standardised as in scikit-learn.

    This is ``sklearn.metrics.roc_auc_score(y_true, scores, max_fpr=max_fpr)``,
    the call of the official evaluator: the area under the ROC curve for
    false-positive rates in [0, max_fpr], rescaled so that chance gives 0.5
    and a perfect detector 1.

    Parameters
    ----------
    y_true : array-like of int [shape=(n,)]
        1 for anomalous clips, 0 for normal ones (all clips of the section).
    scores : array-like of float [shape=(n,)]
        Anomaly scores.
    max_fpr : float
        Upper false-positive rate, 0.1 in DCASE 2024 Task 2.

    Returns
    -------
    float
    """
    # deferred: scikit-learn takes about a second to import
    from sklearn.metrics import roc_auc_score

    y, s = _as_arrays(y_true, scores)
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def domain_auc(
    y_true: np.ndarray | Sequence[int],
    scores: np.ndarray | Sequence[float],
    domains: np.ndarray | Sequence[str],
    domain: str,
) -> float:
    """AUC of one domain: that domain's normal clips against all anomalous clips.

    The DCASE 2024 rule: AUC (source) uses the source normal clips and the
    anomalous clips of *both* domains; AUC (target) the target normal clips
    and again all anomalous clips.

    Parameters
    ----------
    y_true : array-like of int [shape=(n,)]
        1 for anomalous clips, 0 for normal ones.
    scores : array-like of float [shape=(n,)]
        Anomaly scores.
    domains : array-like of str [shape=(n,)]
        ``"source"`` or ``"target"`` per clip.
    domain : str
        The domain whose normal clips enter.

    Returns
    -------
    float
    """
    if domain not in DOMAINS:
        raise SubmissionError(f"domain must be 'source' or 'target', got {domain!r}.")
    y = np.asarray(y_true).astype(int).ravel()
    d = np.asarray(domains).ravel()
    if d.shape != y.shape:
        raise SubmissionError(f"{y.size} labels but {d.size} domains; give one per clip.")
    keep = (d == domain) | (y == 1)
    return auc(y[keep], np.asarray(scores, dtype=np.float64).ravel()[keep])


def precision_recall_f1(
    y_true: np.ndarray | Sequence[int], decisions: np.ndarray | Sequence[int]
) -> tuple[float, float, float]:
    """Precision, recall and F1 score of 0/1 decisions, as the official evaluator.

    ``P = tp / max(tp + fp, eps)``, ``R = tp / max(tp + fn, eps)``,
    ``F1 = 2 P R / max(P + R, eps)``: a detector that flags nothing gets 0,
    not NaN. The evaluator computes them per domain over that domain's
    clips (normal and anomalous): pass those clips only.

    Parameters
    ----------
    y_true : array-like of int [shape=(n,)]
        1 for anomalous clips, 0 for normal ones.
    decisions : array-like of int [shape=(n,)]
        1 where the detector declares an anomaly, else 0.

    Returns
    -------
    precision, recall, f1 : float
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(decisions).ravel()
    if y.shape != p.shape:
        raise SubmissionError(f"{y.size} labels but {p.size} decisions; give one per clip.")
    if not np.all((p == 0) | (p == 1)):
        raise SubmissionError("decisions must be 0 or 1.")
    p = p.astype(int)
    tp = int(np.sum((y == 1) & (p == 1)))
    fp = int(np.sum((y == 0) & (p == 1)))
    fn = int(np.sum((y == 1) & (p == 0)))
    precision = tp / max(tp + fp, EPS)
    recall = tp / max(tp + fn, EPS)
    f1 = 2.0 * precision * recall / max(precision + recall, EPS)
    return float(precision), float(recall), float(f1)


def best_f1(
    y_true: np.ndarray | Sequence[int],
    scores: np.ndarray | Sequence[float],
    *,
    max_false_alarm: float = 1.0,
) -> tuple[float, float]:
    """The best F1 that any threshold on these scores reaches, with its false-alarm rate.

    Every threshold that flags at most ``max_false_alarm`` of the normal
    clips is tried (a clip is flagged when its score is at least the
    threshold; flagging nothing is allowed). The result bounds what a
    threshold fitted without labels can reach on these clips: when it is
    below the F1 of flagging every clip, no threshold can help, only a
    better ranking. Pass one domain's clips, as for :func:`precision_recall_f1`.

    Parameters
    ----------
    y_true : array-like of int [shape=(n,)]
        1 for anomalous clips, 0 for normal ones (both present).
    scores : array-like of float [shape=(n,)]
        Anomaly scores, higher = more anomalous.
    max_false_alarm : float
        The largest share of normal clips a threshold may flag, in [0, 1].

    Returns
    -------
    f1, false_alarm : float
        The best F1 and the share of normal clips its threshold flags.

    Examples
    --------
    >>> best_f1([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    (0.8, 0.5)
    >>> best_f1([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], max_false_alarm=0.0)
    (0.6666666666666666, 0.0)
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise SubmissionError(f"{y.size} labels but {s.size} scores; give one per clip.")
    if not (np.any(y == 0) and np.any(y == 1)):
        raise SubmissionError("best_f1 needs normal and anomalous clips.")
    if not 0.0 <= max_false_alarm <= 1.0:
        raise ParameterError(f"max_false_alarm must lie in [0, 1], not {max_false_alarm}.")
    best = (0.0, 0.0)  # flagging nothing
    for threshold in np.unique(s):
        flagged = (s >= threshold).astype(int)
        false_alarm = float(np.mean(flagged[y == 0]))
        if false_alarm <= max_false_alarm:
            f1 = precision_recall_f1(y, flagged)[2]
            if f1 > best[0]:
                best = (f1, false_alarm)
    return best


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean with every value floored at :data:`EPS`, as the official evaluator.

    The floor keeps a zero AUC from making the mean undefined: it drives the
    mean towards 0 instead.

    Parameters
    ----------
    values : iterable of float
        Non-empty, finite.

    Returns
    -------
    float
    """
    # deferred: scipy.stats takes about a second to import
    from scipy.stats import hmean

    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise ParameterError("a harmonic mean needs at least one value and only finite values.")
    return float(hmean(np.maximum(array, EPS)))


# --------------------------------------------------------------------------
# Results of one machine type
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineResult:
    """The scores of one method on one machine type and section (one run).

    Values are fractions in [0, 1] (the report prints percentages). The
    decision-based values are NaN when no decisions were given.

    Attributes
    ----------
    machine : str
    auc_source, auc_target, pauc : float
    precision_source, precision_target : float
    recall_source, recall_target : float
    f1_source, f1_target : float
    method : str
        Name of the detector, e.g. ``"CFlow"``; the column of a result table.
    seed : int or None
        The run, when several seeds are compared.
    section : str
        ``"00"`` in 2024.
    """

    machine: str
    auc_source: float
    auc_target: float
    pauc: float
    precision_source: float = math.nan
    precision_target: float = math.nan
    recall_source: float = math.nan
    recall_target: float = math.nan
    f1_source: float = math.nan
    f1_target: float = math.nan
    method: str = ""
    seed: int | None = None
    section: str = "00"

    def metric(self, name: str) -> float:
        """The value of a name of :data:`METRICS` or :data:`DECISION_METRICS`."""
        return {
            "AUC (source)": self.auc_source,
            "AUC (target)": self.auc_target,
            "pAUC": self.pauc,
            "precision (source)": self.precision_source,
            "recall (source)": self.recall_source,
            "F1 (source)": self.f1_source,
            "precision (target)": self.precision_target,
            "recall (target)": self.recall_target,
            "F1 (target)": self.f1_target,
        }[name]

    def to_dict(self) -> dict[str, float | str | int | None]:
        """The fields as a plain dict (one tidy row)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _align(
    truth: Sequence[Truth],
    values: Mapping[str, float] | np.ndarray | Sequence[float],
    what: str,
) -> np.ndarray:
    """Values in the order of ``truth``: by file name for a mapping, by position otherwise."""
    if isinstance(values, Mapping):
        _check_same_names(Path(what), set(values), {t.file_name for t in truth}, "the ground truth")
        return np.asarray([values[t.file_name] for t in truth], dtype=np.float64)
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size != len(truth):
        raise SubmissionError(
            f"{what}: {array.size} values for {len(truth)} clips; give one per clip, in the "
            "order of the ground truth, or a mapping from file name to value."
        )
    return array


def evaluate(
    truth: Sequence[Truth],
    scores: Mapping[str, float] | np.ndarray | Sequence[float],
    decisions: Mapping[str, int] | np.ndarray | Sequence[int] | None = None,
    *,
    machine: str,
    method: str = "",
    seed: int | None = None,
    section: str = "00",
    max_fpr: float = MAX_FPR,
) -> MachineResult:
    """All DCASE 2024 metrics of one machine type and section.

    Parameters
    ----------
    truth : sequence of Truth
        Ground truth of every test clip of the section
        (:func:`truth_from_clips`, :func:`read_ground_truth`).
    scores : mapping or array-like [shape=(n,)]
        Anomaly scores: a mapping from file name to score (what
        :func:`read_scores` returns) or an array in the order of ``truth``.
    decisions : mapping or array-like [shape=(n,)], optional
        0/1 decisions in the same form; without them precision, recall and
        F1 are NaN.
    machine, method, seed, section
        Copied into the result.
    max_fpr : float
        Upper false-positive rate of the pAUC.

    Returns
    -------
    MachineResult

    Raises
    ------
    SubmissionError
        If scores or decisions do not cover exactly the clips of ``truth``,
        are not finite, decisions are not 0/1, or a domain lacks normal or
        anomalous clips.
    """
    _check_unique((t.file_name for t in truth), "ground truth")
    y = np.asarray([t.label for t in truth], dtype=int)
    domains = np.asarray([t.domain for t in truth])
    s = _align(truth, scores, "scores")
    result = {
        "auc_source": domain_auc(y, s, domains, "source"),
        "auc_target": domain_auc(y, s, domains, "target"),
        "pauc": pauc(y, s, max_fpr=max_fpr),
    }
    if decisions is not None:
        p = _align(truth, decisions, "decisions")
        if not np.all((p == 0) | (p == 1)):
            raise SubmissionError("decisions must be 0 or 1.")
        for domain in DOMAINS:
            mask = domains == domain
            precision, recall, f1 = precision_recall_f1(y[mask], p[mask].astype(int))
            result[f"precision_{domain}"] = precision
            result[f"recall_{domain}"] = recall
            result[f"f1_{domain}"] = f1
    return MachineResult(machine=machine, method=method, seed=seed, section=section, **result)


def official_score(results: Iterable[MachineResult]) -> float:
    """The official DCASE 2024 Task 2 score of a set of machine types.

    The harmonic mean, each value floored at :data:`EPS`, of the AUC (source),
    AUC (target) and pAUC of every machine type and section.

    Parameters
    ----------
    results : iterable of MachineResult
        One per machine type and section (one run of one method).

    Returns
    -------
    float
    """
    values = [r.metric(name) for r in results for name in METRICS]
    return harmonic_mean(values)
