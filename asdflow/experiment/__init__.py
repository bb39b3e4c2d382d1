"""Experiments: train, test and compare detectors, one run folder per detector.

This module is the orchestration behind ``asdflow train``, ``asdflow test``,
``asdflow evaluate``, ``asdflow reproduce`` and ``asdflow demo``, and behind the
book chapters that share trained detectors. Each step is one function:

- :func:`run_config` - the settings of a run (quick or full, seed, epochs);
- :func:`train_run` - train a detector on the normal training clips of one
  machine type and save it in a *run folder*, with a :class:`RunInfo` record
  (``run.json``: machine, model, seed, mode, settings, hardware, time);
  CFlow training is checkpointed into the folder after every epoch, so an
  interrupted call resumes where it stopped;
- :func:`load_detector` - read the detector of a run folder back;
- :func:`score_run` - score the machine's test clips and write the two DCASE
  files (anomaly scores and decisions) into the run folder;
- :func:`ground_truth` and :func:`collect_results` - read DCASE files of
  any number of run folders and compute the official metrics;
- :func:`evaluate_runs` - the result table of run folders, as a :class:`Summary`;
- :func:`reproduce` - every machine type x seed x model, resumable, ending in
  the layout of the report's Table 1 with the report's numbers beside ours;
- :func:`trained_detector` - a detector from the shared cache of the book
  chapters, trained on first use with the settings of :func:`mode_config`.

A run folder holds::

    run.json                                       RunInfo: what was trained, how, on what
    cflow.pt | autoencoder.pt | knn.pt             the detector (one per folder)
    anomaly_score_<machine>_section_00_test.csv    written by score_run
    decision_result_<machine>_section_00_test.csv  written by score_run
    cflow-checkpoint.pt, training.json             only while CFlow training is unfinished

Nothing already written is overwritten unless asked (``overwrite=True``,
``--overwrite``); every file is written to a temporary file and renamed.

The modules (every name is importable from ``asdflow.experiment`` itself):

- :mod:`asdflow.experiment.settings` - names of files and columns, the settings of a run;
- :mod:`asdflow.experiment.runs` - run folders: train, load, score;
- :mod:`asdflow.experiment.results` - ground truth, metrics and tables of run folders;
- :mod:`asdflow.experiment.reproduce` - Table 1 and the book's shared detectors.
"""

from asdflow.detector import MODELS, VARIANTS
from asdflow.experiment.reproduce import mode_config, reproduce, trained_detector
from asdflow.experiment.results import (
    Summary,
    collect_results,
    evaluate_runs,
    ground_truth,
)
from asdflow.experiment.runs import (
    RunInfo,
    has_detector,
    is_finished,
    load_detector,
    read_run_info,
    run_dir,
    score_run,
    train_run,
)
from asdflow.experiment.settings import (
    CHECKPOINT_FILE,
    DETECTOR_FILES,
    DOMAIN_AWARE_METHOD,
    METHODS,
    QUICK_TITLE,
    RUN_FILE,
    data_fingerprint,
    hardware,
    parse_settings,
    run_config,
    typed_setting,
)

__all__ = [
    "CHECKPOINT_FILE",
    "DETECTOR_FILES",
    "METHODS",
    "MODELS",
    "QUICK_TITLE",
    "RUN_FILE",
    "DOMAIN_AWARE_METHOD",
    "RunInfo",
    "Summary",
    "collect_results",
    "data_fingerprint",
    "evaluate_runs",
    "ground_truth",
    "hardware",
    "has_detector",
    "is_finished",
    "load_detector",
    "mode_config",
    "parse_settings",
    "read_run_info",
    "reproduce",
    "run_config",
    "run_dir",
    "score_run",
    "train_run",
    "trained_detector",
    "typed_setting",
    "VARIANTS",
]
