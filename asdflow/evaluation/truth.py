"""Ground truth: which test clips are anomalous and of which domain, read and written as files."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asdflow import files
from asdflow.errors import SubmissionError

if TYPE_CHECKING:
    from asdflow.data import Clip

DOMAINS = ("source", "target")
"""The two domains of DCASE 2024 Task 2 clips."""


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


def _check_name(name: str, what: str) -> None:
    if not name.endswith(".wav") or any(c in name for c in ',"\n\r/\\'):
        raise SubmissionError(
            f"{what}: {name!r} is not a plain .wav file name (no folder, comma, quote or "
            "line break)."
        )
