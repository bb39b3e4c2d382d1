"""Results of run folders: ground truth, the official metrics of their DCASE files, result tables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asdflow import evaluation, files
from asdflow.detector import (
    MODELS,
    VARIANTS,
    table_order,
)
from asdflow.errors import (
    ParameterError,
    SubmissionError,
)
from asdflow.evaluation import (
    DECISION_METRICS,
    METRICS,
    Cell,
    MachineResult,
    ResultTable,
    Truth,
    evaluate_submission,
    result_table,
)
from asdflow.experiment.runs import RunInfo, read_run_info
from asdflow.experiment.settings import (
    _SCORE_FILE,
    QUICK_TITLE,
    _count,
    _is_plain_name,
    _test_clips,
)

# ---------------------------------------------------------------------------
# Ground truth and results
# ---------------------------------------------------------------------------


def ground_truth(
    machine: str,
    *,
    root: str | os.PathLike[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    section: str = "00",
) -> list[Truth]:
    """The ground truth of one machine type's test clips.

    Parameters
    ----------
    machine : str
        Machine type.
    root : path or None
        Data root: labels and domains come from the test file names
        (development set).
    path : path or None
        Instead of ``root``: an asdflow ground-truth CSV
        (:func:`asdflow.evaluation.read_ground_truth`) for a single machine
        type, or a folder holding either
        ``ground_truth_<machine>_section_<ss>_test.csv`` in that format, or
        the official evaluator's ``ground_truth_data/`` and
        ``ground_truth_domain/`` folders.
    section : str
        Section id.

    Returns
    -------
    list of Truth

    Raises
    ------
    SubmissionError
        When neither or both sources are given, or a file is missing or malformed.
    LayoutError
        When ``root`` has no test clips of the machine type.
    """
    if (root is None) == (path is None):
        raise SubmissionError(
            "give the ground truth either as a data root (--root, labels from the file names) "
            "or as a ground-truth file or folder (--ground-truth), not both or neither"
        )
    if root is not None:
        clips = [c for c in _test_clips(root, machine) if c.section == section]
        return evaluation.truth_from_clips(clips)
    path = Path(path)  # type: ignore[arg-type]
    if path.is_file():
        return evaluation.read_ground_truth(path)
    name = f"ground_truth_{machine}_section_{section}_test.csv"
    if (path / "ground_truth_data").is_dir():
        return evaluation.read_dcase_ground_truth(
            path / "ground_truth_data" / name, path / "ground_truth_domain" / name
        )
    if (path / name).is_file():
        return evaluation.read_ground_truth(path / name)
    raise SubmissionError(
        f"no ground truth of {machine!r} in {path}: expected a CSV file, {path / name}, or "
        f"{path}/ground_truth_data/{name} with {path}/ground_truth_domain/{name}"
    )


def _submissions(directory: Path) -> list[tuple[str, str]]:
    """(machine, section) of every anomaly-score file in ``directory``, sorted."""
    found = []
    for entry in sorted(directory.iterdir()):
        match = _SCORE_FILE.match(entry.name)
        if match and entry.is_file():
            found.append((match["machine"], match["section"]))
    return found


def collect_results(
    dirs: Sequence[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    ground_truth_path: str | os.PathLike[str] | None = None,
) -> list[MachineResult]:
    """Evaluate the DCASE files of run folders (or of any folder of DCASE files).

    Every ``anomaly_score_<machine>_section_<ss>_test.csv`` of each folder is
    read with its decision file and checked against the ground truth:
    missing, extra or duplicate file names and non-finite scores are errors
    that name the file. The method and seed of a run folder come from its
    ``run.json``; a folder without one is a method named after the folder.

    Parameters
    ----------
    dirs : sequence of path
        Folders holding DCASE files.
    root, ground_truth_path : path or None
        Where the ground truth comes from (see :func:`ground_truth`).

    Returns
    -------
    list of MachineResult
        One per folder, machine type and section, in folder order.

    Raises
    ------
    SubmissionError
        For a missing folder, a folder without DCASE files, or a bad file.
    """
    if not dirs:
        raise SubmissionError("no folders of DCASE files given")
    found: list[tuple[Path, str, str, RunInfo | None]] = []
    for directory in map(Path, dirs):
        if not directory.is_dir():
            raise SubmissionError(f"{directory} does not exist or is not a folder")
        files = _submissions(directory)
        if not files:
            raise SubmissionError(
                f"{directory} holds no anomaly_score_<machine>_section_00_test.csv; write them "
                f"first: asdflow test {directory} ROOT --machine M"
            )
        info = read_run_info(directory)
        found += [(directory, machine, section, info) for machine, section in files]
    if ground_truth_path is not None and Path(ground_truth_path).is_file():
        kinds = sorted({(machine, section) for _, machine, section, _ in found})
        if len(kinds) > 1:
            raise SubmissionError(
                f"{ground_truth_path} is one ground-truth file but the folders hold "
                f"{len(kinds)} machine types/sections; give a folder with one "
                "ground_truth_<machine>_section_00_test.csv per machine type"
            )
    truths: dict[tuple[str, str], list[Truth]] = {}
    results = []
    for directory, machine, section, info in found:
        if (machine, section) not in truths:
            truths[(machine, section)] = ground_truth(
                machine, root=root, path=ground_truth_path, section=section
            )
        results.append(
            evaluate_submission(
                directory,
                machine,
                truths[(machine, section)],
                section=section,
                method=info.method if info else directory.name,
                seed=info.seed if info else None,
            )
        )
    return results


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """A result table with the lines that say what it is.

    Attributes
    ----------
    table : ResultTable
        Rows machine type x metric, columns methods (values are fractions).
    results : tuple of MachineResult
        The runs the table summarises.
    title : tuple of str
        Lines printed above the table; the first one is :data:`QUICK_TITLE`
        for quick-mode runs.
    notes : tuple of str
        Lines printed below it (hardware, time).
    """

    table: ResultTable
    results: tuple[MachineResult, ...]
    title: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_text(self) -> str:
        """Title, markdown table (values in %) and notes, as printed by the command line."""
        parts = [*self.title, "", self.table.to_markdown().rstrip("\n"), ""]
        parts += list(self.notes)
        return "\n".join(parts).strip("\n") + "\n"

    def to_markdown(self) -> str:
        """The same as a markdown document: title lines as paragraphs, then table and notes."""
        parts = [line + "\n" for line in self.title]
        parts.append(self.table.to_markdown())
        parts += [line + "\n" for line in self.notes]
        return "\n".join(parts)

    def write(
        self, folder: str | os.PathLike[str], *, name: str = "results", overwrite: bool = False
    ) -> tuple[Path, Path]:
        """Write ``<folder>/<name>.csv`` (fractions, full precision) and ``<name>.md``.

        Raises
        ------
        SubmissionError
            When a file exists and ``overwrite`` is False; nothing is written then.
        ParameterError
            When ``name`` is not a plain file name (it would write elsewhere) or
            ``folder`` cannot be written to.
        """
        if not _is_plain_name(name):
            raise ParameterError(
                f"--name must be a plain file name (letters, digits, '.', '-', '_'; no folder), "
                f"got {name!r}; use --out to choose the folder"
            )
        folder = files.writable_folder(folder, "--out folder")
        paths = (folder / f"{name}.csv", folder / f"{name}.md")
        files.refuse_overwrite(
            paths, overwrite=overwrite, error=SubmissionError, hint="or choose another --out/--name"
        )
        files.atomic_write(paths[0], self.table.to_csv())
        files.atomic_write(paths[1], self.to_markdown())
        return paths


def _order_methods(table: ResultTable) -> ResultTable:
    """Columns as in the report's Table 1: each published column beside ours, baseline first."""
    order = []
    for name in table_order():
        method = VARIANTS[name].method if name in VARIANTS else MODELS[name].method
        order += [f"{method} (report)", method]
    known = [m for m in order if m in table.methods]
    rest = [m for m in table.methods if m not in order]
    return dataclasses.replace(table, methods=tuple(known + rest))


def _describe_runs(results: Sequence[MachineResult]) -> str:
    seeds: dict[str, set] = {}
    for r in results:
        seeds.setdefault(r.method, set()).add(r.seed)
    parts = []
    for method, values in seeds.items():
        n = len(values)
        parts.append(f"{method} {_count(n, 'run')}" + (" (mean ± sd)" if n > 1 else ""))
    return "AUC and pAUC in %; " + ", ".join(parts)


def evaluate_runs(
    dirs: Sequence[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    ground_truth_path: str | os.PathLike[str] | None = None,
    reference: dict[tuple[str, str, str], Cell] | None = None,
    notes: Sequence[str] = (),
) -> Summary:
    """The result table of run folders: per machine type AUC (source/target), pAUC and P/R/F1 per domain.

    Folders of the same method with different seeds give mean ± sd (see
    :func:`asdflow.evaluation.result_table`).

    Parameters
    ----------
    dirs : sequence of path
        Run folders (or folders of DCASE files).
    root, ground_truth_path : path or None
        Ground truth (see :func:`ground_truth`).
    reference : dict or None
        Published cells to show beside ours, e.g.
        :data:`asdflow.evaluation.REPORT_TABLE1`.
    notes : sequence of str
        Lines to print below the table.

    Returns
    -------
    Summary
        Titled :data:`QUICK_TITLE` when any run was trained in quick mode.
    """
    results = collect_results(dirs, root=root, ground_truth_path=ground_truth_path)
    machines = list(dict.fromkeys(r.machine for r in results))
    metrics = (*METRICS, *DECISION_METRICS)
    table = _order_methods(
        result_table(results, reference=reference, machines=machines, metrics=metrics)
    )
    modes = {info.mode for d in dirs if (info := read_run_info(d)) is not None}
    title = [QUICK_TITLE] if "quick" in modes else []
    title.append(_describe_runs(results))
    return Summary(table, tuple(results), tuple(title), tuple(notes))
