"""Evaluation: DCASE 2024 Task 2 metrics, decision thresholds, submission files, tables.

Everything here follows the official evaluator of the challenge
(repository ``nttcslab/dcase2024_task2_evaluator``, script
``dcase2024_task2_evaluator.py``) and the decision rule of the official
baseline (repository ``nttcslab/dcase2023_task2_baseline_ae``, which also
serves the 2024 task). For one machine type and section, with label 1 for
anomalous clips:

- **AUC (source)**: ROC AUC over the source-domain normal clips plus *all*
  anomalous clips of both domains; **AUC (target)** likewise with the
  target-domain normal clips. A normal clip of the other domain never enters.
- **pAUC**: ``sklearn.metrics.roc_auc_score(y, s, max_fpr=0.1)`` over all
  clips of the section. scikit-learn returns the McClish-standardised partial
  AUC, so chance level is 0.5 and a perfect detector scores 1.
- **precision, recall, F1 (source/target)**: from the 0/1 decisions, over
  the clips of that domain only (its normal *and* its anomalous clips), as
  ``tp / max(tp + fp, eps)``, ``tp / max(tp + fn, eps)`` and
  ``2 P R / max(P + R, eps)``.
- **official score**: the harmonic mean of every AUC (source), AUC (target)
  and pAUC over all machine types and sections, each value first floored
  at ``eps``.

``eps`` is the machine epsilon of float64, ``np.finfo(float).eps``, the
``sys.float_info.epsilon`` of the evaluator.

Files (no header, ``\\n`` line ends, one row per test clip, rows matched by
file name): ``anomaly_score_<machine>_section_<ss>_test.csv`` with rows
``<file>.wav,<score>`` and ``decision_result_<machine>_section_<ss>_test.csv``
with rows ``<file>.wav,<0|1>``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdflow import files
from asdflow.calibration import gamma_threshold  # importable here as before
from asdflow.errors import ParameterError, SubmissionError

if TYPE_CHECKING:
    from asdflow.data import Clip

__all__ = [
    "DOMAINS",
    "EPS",
    "GROUND_TRUTH_HEADER",
    "MAX_FPR",
    "DECISION_METRICS",
    "METRICS",
    "REPORT_TABLE1",
    "SUMMARY_GROUPS",
    "Cell",
    "MachineResult",
    "ResultTable",
    "Truth",
    "auc",
    "best_f1",
    "decision_file_name",
    "domain_auc",
    "evaluate",
    "evaluate_submission",
    "gamma_threshold",
    "harmonic_mean",
    "official_score",
    "pauc",
    "precision_recall_f1",
    "read_dcase_ground_truth",
    "read_decisions",
    "read_ground_truth",
    "read_scores",
    "result_table",
    "score_file_name",
    "truth_from_clips",
    "write_decisions",
    "write_ground_truth",
    "write_scores",
    "write_submission",
]

MAX_FPR = 0.1
"""False-positive rate up to which the pAUC is computed (DCASE 2024 Task 2)."""

EPS = float(np.finfo(float).eps)
"""Floor of every value entering a harmonic mean, and of every denominator of P/R/F1."""

DOMAINS = ("source", "target")
"""The two domains of DCASE 2024 Task 2 clips."""

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
# Ground truth
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """The ground truth of one test clip.

    Attributes
    ----------
    file_name : str
        The clip's file name as it appears in the submission files,
        e.g. ``section_00_source_test_normal_0001_vel_4.wav``.
    label : int
        0 for a normal clip, 1 for an anomalous one.
    domain : str
        ``"source"`` or ``"target"``.
    """

    file_name: str
    label: int
    domain: str

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise SubmissionError(
                f"ground truth of {self.file_name!r}: label must be 0 (normal) or 1 (anomaly), "
                f"got {self.label!r}."
            )
        if self.domain not in DOMAINS:
            raise SubmissionError(
                f"ground truth of {self.file_name!r}: domain must be 'source' or 'target', "
                f"got {self.domain!r}."
            )


def _check_unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    duplicates: list[str] = []
    for name in names:
        if name in seen:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        raise SubmissionError(
            f"{what}: {len(duplicates)} duplicate file name(s), e.g. {duplicates[0]!r}; "
            "each clip must appear once."
        )


def truth_from_clips(clips: Sequence[Clip]) -> list[Truth]:
    """Ground truth of labelled clips (development test set).

    Parameters
    ----------
    clips : sequence of asdflow.data.Clip
        Clips whose label (``normal``/``anomaly``) and domain
        (``source``/``target``) are known from their file names.

    Returns
    -------
    list of Truth
        One entry per clip, in the order given, keyed by ``clip.name``.

    Raises
    ------
    SubmissionError
        If a clip's label or domain is unknown (evaluation test clips: read
        their ground truth with :func:`read_dcase_ground_truth`), or two clips
        share a file name.
    """
    truth = []
    for clip in clips:
        if clip.label not in ("normal", "anomaly") or clip.domain not in DOMAINS:
            raise SubmissionError(
                f"{clip.path}: label {clip.label!r} / domain {clip.domain!r} are not known from "
                "the file name; give a ground-truth file instead."
            )
        truth.append(Truth(clip.name, int(clip.label == "anomaly"), clip.domain))
    _check_unique((t.file_name for t in truth), "clips")
    return truth


def _read_rows(path: Path, n_fields: int) -> list[tuple[int, list[str]]]:
    """Rows of a small comma-separated file as (line number, fields); blank lines skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmissionError(f"{path}: file not found.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SubmissionError(f"{path}: cannot read the file ({error}).") from error
    rows = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not value.strip() for value in row):
            continue
        row = [value.strip() for value in row]
        if len(row) != n_fields:
            raise SubmissionError(
                f"{path}, line {number}: expected {n_fields} comma-separated values, "
                f"got {len(row)}: {','.join(row)!r}."
            )
        rows.append((number, row))
    return rows


GROUND_TRUTH_HEADER = ("file_name", "label", "domain")
"""Header of asdflow's ground-truth CSV (see :func:`read_ground_truth`)."""


def read_ground_truth(path: str | os.PathLike[str]) -> list[Truth]:
    """Read asdflow's ground-truth CSV.

    The format is one header line ``file_name,label,domain`` then one row per
    test clip, e.g. ``section_00_0001.wav,1,target``: the file name as in the
    submission files, the label 0 (normal) or 1 (anomaly), and the domain
    ``source`` or ``target``.

    Parameters
    ----------
    path : path-like
        The CSV file.

    Returns
    -------
    list of Truth
        In file order.

    Raises
    ------
    SubmissionError
        If the file is missing, has no such header, a bad row, label or
        domain, or a file name twice.
    """
    path = Path(path)
    rows = _read_rows(path, 3)
    if not rows or tuple(rows[0][1]) != GROUND_TRUTH_HEADER:
        raise SubmissionError(
            f"{path}: the first line must be the header {','.join(GROUND_TRUTH_HEADER)}."
        )
    truth = []
    for number, (name, label, domain) in rows[1:]:
        if label not in ("0", "1"):
            raise SubmissionError(f"{path}, line {number}: label must be 0 or 1, got {label!r}.")
        if domain not in DOMAINS:
            raise SubmissionError(
                f"{path}, line {number}: domain must be source or target, got {domain!r}."
            )
        truth.append(Truth(name, int(label), domain))
    _check_unique((t.file_name for t in truth), str(path))
    return truth


def write_ground_truth(
    path: str | os.PathLike[str], truth: Sequence[Truth], *, overwrite: bool = False
) -> Path:
    """Write ground truth in the format :func:`read_ground_truth` reads.

    Parameters
    ----------
    path : path-like
        Destination CSV file.
    truth : sequence of Truth
        One entry per clip.
    overwrite : bool
        Replace an existing file; by default an existing file is left alone
        and :class:`SubmissionError` is raised.

    Returns
    -------
    Path
        The written file.
    """
    _check_unique((t.file_name for t in truth), "ground truth")
    for t in truth:
        _check_name(t.file_name, "ground truth")
    lines = [",".join(GROUND_TRUTH_HEADER)]
    lines += [f"{t.file_name},{t.label},{t.domain}" for t in truth]
    path = Path(path)
    files.refuse_overwrite([path], overwrite=overwrite, error=SubmissionError)
    files.atomic_write(path, "\n".join(lines) + "\n")
    return path


def read_dcase_ground_truth(
    label_path: str | os.PathLike[str], domain_path: str | os.PathLike[str]
) -> list[Truth]:
    """Read the official evaluator's ground truth of one machine type and section.

    The evaluator keeps two files per machine type, both without header:
    ``ground_truth_data/ground_truth_<machine>_section_00_test.csv`` with rows
    ``<file>.wav,<0 normal|1 anomaly>`` and
    ``ground_truth_domain/ground_truth_<machine>_section_00_test.csv`` with rows
    ``<file>.wav,<0 source|1 target>``.

    Parameters
    ----------
    label_path, domain_path : path-like
        The two files.

    Returns
    -------
    list of Truth
        In the order of ``label_path``.

    Raises
    ------
    SubmissionError
        If a file is missing or malformed, or the two files do not list the
        same clips.
    """
    labels = _read_binary_column(Path(label_path), "label")
    domains = _read_binary_column(Path(domain_path), "domain")
    _check_same_names(Path(domain_path), set(domains), set(labels), "the label file")
    return [Truth(name, label, DOMAINS[domains[name]]) for name, label in labels.items()]


def _read_binary_column(path: Path, what: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for number, (name, value) in _read_rows(path, 2):
        if value not in ("0", "1"):
            raise SubmissionError(f"{path}, line {number}: {what} must be 0 or 1, got {value!r}.")
        if name in values:
            raise SubmissionError(f"{path}, line {number}: {name!r} appears twice.")
        values[name] = int(value)
    if not values:
        raise SubmissionError(f"{path}: the file lists no clips.")
    return values


def _check_same_names(path: Path, got: set[str], expected: set[str], against: str) -> None:
    missing = sorted(expected - got)
    extra = sorted(got - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} clip(s) missing, e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} clip(s) not in {against}, e.g. {extra[0]!r}")
        raise SubmissionError(
            f"{path}: " + "; ".join(parts) + f". The file must list exactly the clips of {against}."
        )


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


# --------------------------------------------------------------------------
# Submission files
# --------------------------------------------------------------------------


def score_file_name(machine: str, section: str = "00") -> str:
    """``anomaly_score_<machine>_section_<section>_test.csv``."""
    return f"anomaly_score_{machine}_section_{section}_test.csv"


def decision_file_name(machine: str, section: str = "00") -> str:
    """``decision_result_<machine>_section_<section>_test.csv``."""
    return f"decision_result_{machine}_section_{section}_test.csv"


def _check_name(name: str, what: str) -> None:
    if not name.endswith(".wav") or any(c in name for c in ',"\n\r/\\'):
        raise SubmissionError(
            f"{what}: {name!r} is not a plain .wav file name (no folder, comma, quote or "
            "line break)."
        )


def _rows_text(names: Sequence[str], values: Sequence[str]) -> str:
    return "".join(f"{name},{value}\n" for name, value in zip(names, values, strict=True))


def _score_strings(path: Path, names: Sequence[str], scores) -> list[str]:
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size != len(names):
        raise SubmissionError(f"{path}: {len(names)} file names but {array.size} scores.")
    if not np.all(np.isfinite(array)):
        bad = names[int(np.flatnonzero(~np.isfinite(array))[0])]
        raise SubmissionError(f"{path}: the score of {bad!r} is NaN or infinite; nothing written.")
    return [repr(float(v)) for v in array]


def _decision_strings(path: Path, names: Sequence[str], decisions) -> list[str]:
    array = np.asarray(decisions).ravel()
    if array.size != len(names):
        raise SubmissionError(f"{path}: {len(names)} file names but {array.size} decisions.")
    ok = (array == 0) | (array == 1)
    if not np.all(ok):
        bad = names[int(np.flatnonzero(~ok)[0])]
        raise SubmissionError(f"{path}: the decision of {bad!r} is not 0 or 1; nothing written.")
    return [str(int(v)) for v in array]


def _check_names(path: Path, names: Sequence[str]) -> None:
    if not names:
        raise SubmissionError(f"{path}: no clips to write.")
    for name in names:
        _check_name(name, str(path))
    _check_unique(names, str(path))


def write_scores(
    path: str | os.PathLike[str],
    names: Sequence[str],
    scores: np.ndarray | Sequence[float],
    *,
    overwrite: bool = False,
) -> Path:
    """Write an anomaly-score file: rows ``<file>.wav,<score>``, no header.

    Scores are written with full float64 precision (Python's shortest
    round-trip form), so reading gives back the same numbers.

    Parameters
    ----------
    path : path-like
        Destination, usually ``<dir>/`` + :func:`score_file_name`.
    names : sequence of str [shape=(n,)]
        Clip file names, unique.
    scores : array-like of float [shape=(n,)]
        Finite anomaly scores.
    overwrite : bool
        Replace an existing file. By default an existing file is kept and
        :class:`SubmissionError` raised.

    Returns
    -------
    Path
        The written file (written to a temporary file, then renamed: a crash
        never leaves half a file).
    """
    path = Path(path)
    names = [str(n) for n in names]
    _check_names(path, names)
    text = _rows_text(names, _score_strings(path, names, scores))
    files.refuse_overwrite([path], overwrite=overwrite, error=SubmissionError)
    files.atomic_write(path, text)
    return path


def write_decisions(
    path: str | os.PathLike[str],
    names: Sequence[str],
    decisions: np.ndarray | Sequence[int],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a decision file: rows ``<file>.wav,<0|1>``, no header.

    Parameters are those of :func:`write_scores`, with 0/1 ``decisions``.
    """
    path = Path(path)
    names = [str(n) for n in names]
    _check_names(path, names)
    text = _rows_text(names, _decision_strings(path, names, decisions))
    files.refuse_overwrite([path], overwrite=overwrite, error=SubmissionError)
    files.atomic_write(path, text)
    return path


def write_submission(
    directory: str | os.PathLike[str],
    machine: str,
    names: Sequence[str],
    scores: np.ndarray | Sequence[float],
    decisions: np.ndarray | Sequence[int],
    *,
    section: str = "00",
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write both DCASE files of one machine type and section.

    Both files are checked before either is written: with
    ``overwrite=False`` an existing score *or* decision file stops the call
    before anything is written.

    Parameters
    ----------
    directory : path-like
        Destination folder (created if needed).
    machine : str
        Machine type, part of the file names.
    names, scores, decisions
        As in :func:`write_scores` and :func:`write_decisions`.
    section : str
        Section id.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    score_path, decision_path : Path
    """
    directory = Path(directory)
    score_path = directory / score_file_name(machine, section)
    decision_path = directory / decision_file_name(machine, section)
    names = [str(n) for n in names]
    _check_names(score_path, names)
    score_text = _rows_text(names, _score_strings(score_path, names, scores))
    decision_text = _rows_text(names, _decision_strings(decision_path, names, decisions))
    files.refuse_overwrite([score_path, decision_path], overwrite=overwrite, error=SubmissionError)
    files.atomic_write(score_path, score_text)
    files.atomic_write(decision_path, decision_text)
    return score_path, decision_path


def _read_values(path: Path, expected: Iterable[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, (name, value) in _read_rows(path, 2):
        if name in values:
            raise SubmissionError(
                f"{path}, line {number}: {name!r} appears twice; each clip must appear once."
            )
        values[name] = value
    if not values:
        raise SubmissionError(f"{path}: the file lists no clips.")
    if expected is not None:
        _check_same_names(path, set(values), set(expected), "the ground truth")
    return values


def read_scores(
    path: str | os.PathLike[str], *, expected: Iterable[str] | None = None
) -> dict[str, float]:
    """Read an anomaly-score file.

    Parameters
    ----------
    path : path-like
        A file of rows ``<file>.wav,<score>`` without header.
    expected : iterable of str, optional
        File names the file must list, no more and no fewer (e.g. the names
        of the ground truth).

    Returns
    -------
    dict
        File name to score, in file order.

    Raises
    ------
    SubmissionError
        Naming the file and the problem: missing file, a row without two
        values, a file name twice, a score that is not a finite number, or
        (with ``expected``) missing or extra clips.
    """
    path = Path(path)
    scores: dict[str, float] = {}
    for name, text in _read_values(path, expected).items():
        try:
            value = float(text)
        except ValueError:
            raise SubmissionError(
                f"{path}: the score of {name!r} is {text!r}, not a number."
            ) from None
        if not math.isfinite(value):
            raise SubmissionError(
                f"{path}: the score of {name!r} is {text!r}; scores must be finite numbers."
            )
        scores[name] = value
    return scores


def read_decisions(
    path: str | os.PathLike[str], *, expected: Iterable[str] | None = None
) -> dict[str, int]:
    """Read a decision file (rows ``<file>.wav,<0|1>``).

    Values such as ``1.0`` are accepted as 1 (the official evaluator reads
    them as numbers); anything other than 0 or 1 is an error.

    Parameters and errors are those of :func:`read_scores`.

    Returns
    -------
    dict
        File name to 0 or 1, in file order.
    """
    path = Path(path)
    decisions: dict[str, int] = {}
    for name, text in _read_values(path, expected).items():
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if value not in (0.0, 1.0):
            raise SubmissionError(
                f"{path}: the decision of {name!r} is {text!r}; decisions must be 0 or 1."
            )
        decisions[name] = int(value)
    return decisions


def evaluate_submission(
    directory: str | os.PathLike[str],
    machine: str,
    truth: Sequence[Truth],
    *,
    section: str = "00",
    method: str = "",
    seed: int | None = None,
    max_fpr: float = MAX_FPR,
) -> MachineResult:
    """Read and validate both DCASE files of one machine type, then evaluate them.

    Parameters
    ----------
    directory : path-like
        Folder holding :func:`score_file_name` and :func:`decision_file_name`.
    machine : str
        Machine type.
    truth : sequence of Truth
        Ground truth of every test clip of the section.
    section, method, seed, max_fpr
        As in :func:`evaluate`.

    Returns
    -------
    MachineResult

    Raises
    ------
    SubmissionError
        If a file is missing or malformed, or does not list exactly the
        clips of ``truth``.
    """
    directory = Path(directory)
    names = [t.file_name for t in truth]
    scores = read_scores(directory / score_file_name(machine, section), expected=names)
    decisions = read_decisions(directory / decision_file_name(machine, section), expected=names)
    return evaluate(
        truth,
        scores,
        decisions,
        machine=machine,
        method=method,
        seed=seed,
        section=section,
        max_fpr=max_fpr,
    )


# --------------------------------------------------------------------------
# Result tables
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One table entry: a mean over runs and, for several runs, their standard deviation.

    Attributes
    ----------
    mean : float
        Fraction in [0, 1] for AUC values.
    sd : float or None
        Sample standard deviation (``ddof=1``) over runs; None for a single
        run or when the source does not give it.
    n : int
        Number of runs.
    """

    mean: float
    sd: float | None = None
    n: int = 1

    @classmethod
    def of(cls, values: Sequence[float]) -> Cell:
        """The cell of a list of per-run values."""
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            raise ParameterError("a table cell needs at least one value.")
        sd = float(np.std(array, ddof=1)) if array.size > 1 else None
        return cls(float(np.mean(array)), sd, int(array.size))

    def format(self, *, percent: bool = True, digits: int = 2) -> str:
        """``"69.13 ± 4.87"`` (percent) or ``"0.6913 ± 0.0487"``."""
        scale = 100.0 if percent else 1.0
        text = f"{self.mean * scale:.{digits}f}"
        if self.sd is not None:
            text += f" ± {self.sd * scale:.{digits}f}"
        return text


def _report_rows() -> dict[tuple[str, str, str], Cell]:
    # Table 1 of García-de-la-Puente et al., DCASE 2024 Task 2 technical report
    # (development set, AUC in %, CFlow: mean and sd of three runs).
    baseline = {
        "ToyCar": (0.6698, 0.3375),
        "ToyTrain": (0.7663, 0.4692),
        "bearing": (0.6201, 0.614),
        "fan": (0.6771, 0.5524),
        "gearbox": (0.704, 0.6934),
        "slider": (0.6651, 0.5601),
        "valve": (0.5107, 0.4625),
    }
    cflow = {
        "ToyCar": ((0.6913, 0.0487), (0.5325, 0.0661)),
        "ToyTrain": ((0.6056, 0.0731), (0.613, 0.1124)),
        "bearing": ((0.7406, 0.0319), (0.6609, 0.1173)),
        "fan": ((0.6745, 0.0137), (0.4552, 0.1516)),
        "gearbox": ((0.6496, 0.0221), (0.6252, 0.0414)),
        "slider": ((0.7242, 0.0428), (0.5196, 0.0682)),
        "valve": ((0.7205, 0.0612), (0.5647, 0.0632)),
    }
    cells: dict[tuple[str, str, str], Cell] = {}
    for machine, (source, target) in baseline.items():
        cells[(machine, "AUC (source)", "Baseline (report)")] = Cell(source)
        cells[(machine, "AUC (target)", "Baseline (report)")] = Cell(target)
    for machine, ((source, source_sd), (target, target_sd)) in cflow.items():
        cells[(machine, "AUC (source)", "CFlow (report)")] = Cell(source, source_sd, 3)
        cells[(machine, "AUC (target)", "CFlow (report)")] = Cell(target, target_sd, 3)
    return cells


REPORT_TABLE1: dict[tuple[str, str, str], Cell] = _report_rows()
"""Table 1 of the report, keyed by ``(machine, metric, method)``.

García-de-la-Puente, Pastor-Naranjo, López-Pérez, Piñero and Naranjo,
*Anomalous sound detection in industrial machinery using normalizing
flow-based deep learning*, DCASE 2024 Task 2 technical report, Table 1:
AUC (source) and AUC (target) on the development set, as fractions. Methods
``"Baseline (report)"`` (the DCASE autoencoder, MSE score, a single value)
and ``"CFlow (report)"`` (mean and standard deviation of three runs). The
report gives no pAUC.
"""

SUMMARY_GROUPS = ("arithmetic mean", "harmonic mean", "official score")
"""Row groups below the machine types in a :class:`ResultTable`."""


@dataclass(frozen=True)
class ResultTable:
    """A table laid out like the report's Table 1: rows are (machine, metric), columns methods.

    Build it with :func:`result_table`. Row groups are the machine types,
    each with the rows of ``metrics``, then ``arithmetic mean`` and
    ``harmonic mean`` over the machine types (per metric), then
    ``official score`` (harmonic mean of all values of a run). Summary cells
    are computed per run and then averaged over runs.

    Attributes
    ----------
    methods : tuple of str
        Column names, in order.
    rows : tuple of (str, str)
        ``(group, metric)`` per row, in order; ``metric`` is ``""`` for the
        official score.
    cells : dict
        ``(group, metric, method) -> Cell``; absent entries print empty.
    """

    methods: tuple[str, ...]
    rows: tuple[tuple[str, str], ...]
    cells: dict[tuple[str, str, str], Cell]

    def cell(self, group: str, metric: str, method: str) -> Cell | None:
        """The cell of one row and column, or None when empty."""
        return self.cells.get((group, metric, method))

    def to_markdown(self, *, percent: bool = True, digits: int = 2) -> str:
        """The table as GitHub-flavoured markdown (values in % by default)."""
        unit = " (%)" if percent else ""
        header = ["machine", f"metric{unit}", *self.methods]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        previous = None
        for group, metric in self.rows:
            values = []
            for method in self.methods:
                cell = self.cell(group, metric, method)
                values.append("" if cell is None else cell.format(percent=percent, digits=digits))
            shown = group if group != previous else ""
            previous = group
            lines.append("| " + " | ".join([shown, metric, *values]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """The table as CSV text: ``machine,metric`` then per method its mean and sd.

        Values are fractions at full precision; empty fields mark missing
        values. Line ends are ``\\n``.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["machine", "metric"]
        for method in self.methods:
            header += [method, f"{method} sd"]
        writer.writerow(header)
        for group, metric in self.rows:
            row = [group, metric]
            for method in self.methods:
                cell = self.cell(group, metric, method)
                if cell is None:
                    row += ["", ""]
                else:
                    row += [repr(cell.mean), "" if cell.sd is None else repr(cell.sd)]
            writer.writerow(row)
        return buffer.getvalue()

    def write_csv(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically; refuses to replace a file by default."""
        path = Path(path)
        files.refuse_overwrite([path], overwrite=overwrite, error=SubmissionError)
        files.atomic_write(path, self.to_csv())
        return path


def result_table(
    results: Sequence[MachineResult],
    *,
    reference: Mapping[tuple[str, str, str], Cell] | None = None,
    machines: Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
) -> ResultTable:
    """Summarise runs into a :class:`ResultTable` (mean ± sd over seeds).

    Parameters
    ----------
    results : sequence of MachineResult
        Tidy rows, one per method, machine type, section and seed. Columns
        are the methods in order of first appearance.
    reference : mapping, optional
        Extra published cells keyed ``(machine, metric, method)``, e.g.
        :data:`REPORT_TABLE1`; their methods become extra columns, placed
        first. Their summary rows are computed from the published means when
        every shown machine type has a value.
    machines : sequence of str, optional
        Row order of machine types; by default those of ``results`` in order
        of first appearance (or of ``reference`` when ``results`` is empty).
    metrics : sequence of str
        Rows per machine type, among :data:`METRICS`.

    Returns
    -------
    ResultTable

    Raises
    ------
    AsdflowError
        If two results share method, machine, section and seed.

    Notes
    -----
    A machine cell is the mean ± sample sd over seeds. For each seed the
    arithmetic and harmonic means over the shown machine types and the
    official score are computed first, then averaged over seeds; a method
    that lacks a shown machine type in some run gets no summary cells.
    """
    reference = dict(reference or {})
    runs: dict[str, dict[tuple[int | None, str, str], MachineResult]] = {}
    for result in results:
        key = (result.seed, result.machine, result.section)
        per_method = runs.setdefault(result.method, {})
        if key in per_method:
            raise ParameterError(
                f"two results for method {result.method!r}, machine {result.machine!r}, "
                f"section {result.section!r}, seed {result.seed!r}; give each run once."
            )
        per_method[key] = result

    if machines is None:
        order = [r.machine for r in results] or [key[0] for key in reference]
        machines = list(dict.fromkeys(order))
    reference_methods = list(dict.fromkeys(key[2] for key in reference))
    methods = reference_methods + [m for m in runs if m not in reference_methods]

    cells: dict[tuple[str, str, str], Cell] = {}
    rows: list[tuple[str, str]] = [(m, metric) for m in machines for metric in metrics]
    rows += [(group, metric) for group in SUMMARY_GROUPS[:2] for metric in metrics]
    rows.append(("official score", ""))

    for (machine, metric, method), cell in reference.items():
        if machine in machines and metric in metrics:
            cells[(machine, metric, method)] = cell
    for method in reference_methods:
        for metric in metrics:
            values = [reference.get((m, metric, method)) for m in machines]
            if machines and all(v is not None for v in values):
                means = [v.mean for v in values if v is not None]
                cells[("arithmetic mean", metric, method)] = Cell(float(np.mean(means)))
                cells[("harmonic mean", metric, method)] = Cell(harmonic_mean(means))
        if all(("harmonic mean", metric, method) in cells for metric in METRICS):
            values = [reference[(m, metric, method)].mean for m in machines for metric in METRICS]
            cells[("official score", "", method)] = Cell(harmonic_mean(values))

    for method, per_method in runs.items():
        seeds = list(dict.fromkeys(key[0] for key in per_method))
        for machine in machines:
            for metric in metrics:
                values = [r.metric(metric) for r in per_method.values() if r.machine == machine]
                if values and np.all(np.isfinite(values)):
                    cells[(machine, metric, method)] = Cell.of(values)
        summary: dict[tuple[str, str], list[float]] = {}
        for seed in seeds:
            run = [r for key, r in per_method.items() if key[0] == seed and r.machine in machines]
            if {r.machine for r in run} != set(machines):
                summary = {}
                break
            for metric in metrics:
                values = [r.metric(metric) for r in run]
                if not np.all(np.isfinite(values)):  # decision metrics of runs without decisions
                    continue
                summary.setdefault(("arithmetic mean", metric), []).append(float(np.mean(values)))
                summary.setdefault(("harmonic mean", metric), []).append(harmonic_mean(values))
            summary.setdefault(("official score", ""), []).append(official_score(run))
        for (group, metric), values in summary.items():
            cells[(group, metric, method)] = Cell.of(values)

    return ResultTable(tuple(methods), tuple(rows), cells)
