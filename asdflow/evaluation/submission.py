"""The DCASE submission files: anomaly scores and decisions per machine type, written and read back."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdflow import files
from asdflow.errors import SubmissionError
from asdflow.evaluation.metrics import MAX_FPR, MachineResult, evaluate
from asdflow.evaluation.truth import (
    Truth,
    _check_name,
    _check_same_names,
    _check_unique,
    _read_rows,
)

if TYPE_CHECKING:
    pass

# --------------------------------------------------------------------------
# Submission files
# --------------------------------------------------------------------------


def score_file_name(machine: str, section: str = "00") -> str:
    """``anomaly_score_<machine>_section_<section>_test.csv``."""
    return f"anomaly_score_{machine}_section_{section}_test.csv"


def decision_file_name(machine: str, section: str = "00") -> str:
    """``decision_result_<machine>_section_<section>_test.csv``."""
    return f"decision_result_{machine}_section_{section}_test.csv"


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
