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

The modules (every name is importable from ``asdflow.evaluation`` itself):
:mod:`~asdflow.evaluation.truth` (ground truth), :mod:`~asdflow.evaluation.metrics`
(AUC, pAUC, F1, official score), :mod:`~asdflow.evaluation.submission` (the
DCASE files) and :mod:`~asdflow.evaluation.tables` (result tables). The
decision threshold is :func:`asdflow.calibration.gamma_threshold`, importable
here too.
"""

from asdflow.calibration import gamma_threshold
from asdflow.evaluation.metrics import (
    DECISION_METRICS,
    EPS,
    MAX_FPR,
    METRICS,
    MachineResult,
    auc,
    best_f1,
    domain_auc,
    evaluate,
    harmonic_mean,
    official_score,
    pauc,
    precision_recall_f1,
)
from asdflow.evaluation.submission import (
    decision_file_name,
    evaluate_submission,
    read_decisions,
    read_scores,
    score_file_name,
    write_decisions,
    write_scores,
    write_submission,
)
from asdflow.evaluation.tables import (
    REPORT_TABLE1,
    SUMMARY_GROUPS,
    Cell,
    ResultTable,
    result_table,
)
from asdflow.evaluation.truth import (
    DOMAINS,
    GROUND_TRUTH_HEADER,
    Truth,
    read_dcase_ground_truth,
    read_ground_truth,
    truth_from_clips,
    write_ground_truth,
)

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
