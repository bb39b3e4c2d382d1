"""Result tables: ours beside the report's Table 1, mean ± sd over seeds, summary rows."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asdflow import files
from asdflow.errors import ParameterError, SubmissionError
from asdflow.evaluation.metrics import METRICS, MachineResult, harmonic_mean, official_score

if TYPE_CHECKING:
    pass

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
            found = [reference.get((m, metric, method)) for m in machines]
            if machines and all(v is not None for v in found):
                means = [v.mean for v in found if v is not None]
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
