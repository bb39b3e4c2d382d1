"""Every machine type x seed x model, resumable (the report's Table 1), and the book's shared detectors."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asdflow import data, files
from asdflow.detector import (
    MODELS,
    VARIANTS,
    Detector,
    model_spec,
)
from asdflow.detector import DetectorConfig as Config
from asdflow.errors import (
    LayoutError,
    ModelError,
    ParameterError,
)
from asdflow.evaluation import Cell
from asdflow.experiment.results import Summary, evaluate_runs
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
    METHODS,
    _check_device,
    _count,
    _jsonable,
    _say,
    _train_clips,
    data_fingerprint,
    run_config,
)
from asdflow.modes import Mode, cache_dir

# ---------------------------------------------------------------------------
# Reproduce Table 1
# ---------------------------------------------------------------------------


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(wanted))
    return [
        f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now"
        for k in keys
        if saved.get(k) != wanted.get(k)
    ]


def _check_same_run(directory: Path, info: RunInfo, config: Config, mode: str) -> None:
    """Refuse to reuse a run folder that was trained with other settings."""
    wanted = _jsonable(config.to_dict())
    if info.mode != mode or info.config != wanted:
        diffs = [f"mode: {info.mode!r} there, {mode!r} now"] if info.mode != mode else []
        diffs += _differences(info.config, wanted)
        raise ModelError(
            f"{directory} holds a run with other settings ({'; '.join(diffs[:3])}); "
            "choose another --out, or remove that folder to train it again"
        )


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    files.atomic_write(path, text)


def reproduce(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    machines: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    models: Sequence[str] = ("ae", "knn", "cflow"),
    quick: bool = False,
    device: str | None = None,
    epochs: int | None = None,
    changes: dict[str, Any] | None = None,
    reference: dict[tuple[str, str, str], Cell] | None = None,
    name: str = "table1",
    progress: bool = True,
) -> Summary:
    """Train and test every machine type x seed x model, then tabulate (the report's Table 1).

    Each run gets its folder ``out/<model>/<machine>/seed<S>`` (:func:`run_dir`).
    A finished run (detector, ``run.json`` and both DCASE files) is not
    redone; a trained but untested one is only tested; an interrupted CFlow
    training resumes from its checkpoint. A run folder trained with other
    settings or in the other mode is an error, never silently reused. The
    table is written to ``out/<name>.csv`` and ``out/<name>.md`` (only when
    its content changed: these files are derived from the runs).

    Parameters
    ----------
    root : path
        Data root holding the development set.
    out : path
        Folder of all runs.
    machines : sequence of str or None
        Machine types (None: every development machine type under ``root``).
    seeds : sequence of int
        One run per seed (the report: three).
    models : sequence of {"ae", "knn", "cflow", "cflow-da"}
        Which detectors (``"cflow-da"``: the domain-aware CFlow, :data:`VARIANTS`).
    quick : bool
        Quick-mode settings (``CFlowConfig.quick()``, ``AEConfig.quick()``).
    device : str or None
        Torch device (None: CUDA if available).
    epochs : int or None
        Training epochs instead of the configurations' (the trained models).
    changes : dict or None
        Expert overrides, keyed ``"<model>.<field>"``, e.g. ``{"cflow.n_blocks": 2}``.
    reference : dict or None
        Published cells to show beside ours (the command line passes
        :data:`asdflow.evaluation.REPORT_TABLE1`).
    name : str
        Stem of the table files.
    progress : bool
        Progress bars and status lines on stderr.

    Returns
    -------
    Summary
        With the hardware and the training time in its notes.
    """
    start = time.perf_counter()
    _check_device(device)
    models = list(dict.fromkeys(models))
    for key in models:
        if key not in VARIANTS:
            model_spec(key)
    per_model: dict[str, dict[str, Any]] = {m: {} for m in MODELS}
    for key, value in (changes or {}).items():
        model, sep, field_name = key.partition(".")
        if not sep or model not in MODELS:
            raise ParameterError(
                f"setting {key!r} must name its model first, e.g. cflow.n_blocks or ae.epochs"
            )
        per_model[model][field_name] = value
    out = Path(out)
    if machines is None:
        machines = data.machines(root, dataset="dev")
        if not machines:
            raise LayoutError(f"no development machine types under {root}/dev_data/raw/")
    else:
        data.scan(root, machines=list(machines), split="train")  # unknown machine: LayoutError
    machines = list(dict.fromkeys(machines))
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    mode = "quick" if quick else "full"
    plan = [(m, machine, s) for machine in machines for s in seeds for m in models]
    trained = tested = 0
    dirs = []
    for i, (key, machine, seed) in enumerate(plan, start=1):
        variant = VARIANTS[key].settings if key in VARIANTS else {}
        model = VARIANTS[key].model if key in VARIANTS else key
        directory = run_dir(out, key, machine, seed)
        dirs.append(directory)
        config = run_config(
            model,
            root,
            machine,
            quick=quick,
            seed=seed,
            epochs=epochs,
            changes={**per_model[model], **variant},
        )
        method = VARIANTS[key].method if key in VARIANTS else METHODS[model]
        label = f"[{i}/{len(plan)}] {method} {machine} seed {seed}"
        info = read_run_info(directory) if has_detector(directory) else None
        if info is not None:
            _check_same_run(directory, info, config, mode)
        if is_finished(directory, machine):
            _say(f"{label}: finished earlier, reused", progress)
            continue
        if info is None:
            _say(f"{label}: training", progress)
            train_run(
                root,
                machine,
                directory,
                model=model,
                config=config,
                quick=quick,
                device=device,
                overwrite=False,
                progress=progress,
            )
            trained += 1
        _say(f"{label}: testing", progress)
        # A lone DCASE file is the remains of an interrupted test of this same detector.
        score_run(directory, root, machine, device=device, overwrite=True, progress=progress)
        tested += 1

    infos = [info for d in dirs if (info := read_run_info(d)) is not None]
    train_total = sum(info.train_seconds for info in infos)
    test_total = sum(info.test_seconds or 0.0 for info in infos)
    used = sorted({info.hardware for info in infos})
    notes = [
        f"{_count(len(plan), 'run')}: {_count(len(machines), 'machine type')} x "
        f"{_count(len(seeds), 'seed')} x {_count(len(models), 'model')}, in {out}",
        f"training: {train_total / 60:.1f} min in total, {train_total / len(plan) / 60:.2f} min "
        f"per run (report: 9 min per machine type on average); scoring and writing the test "
        f"files: {test_total:.1f} s in total",
        f"hardware: {' | '.join(used)}",
    ]
    summary = evaluate_runs(dirs, root=root, reference=reference, notes=notes)
    _write_if_changed(out / f"{name}.csv", summary.table.to_csv())
    _write_if_changed(out / f"{name}.md", summary.to_markdown())
    this_call = (
        f"this call: {trained} trained, {tested} tested, {len(plan) - tested} reused; "
        f"{time.perf_counter() - start:.1f} s; table in {out / name}.md and .csv"
    )
    return dataclasses.replace(summary, notes=(*summary.notes, this_call))


# ---------------------------------------------------------------------------
# The book's shared detectors
# ---------------------------------------------------------------------------


def mode_config(
    model: str,
    root: str | os.PathLike[str],
    machine: str,
    *,
    mode: Mode,
    seed: int = 0,
    changes: dict[str, Any] | None = None,
) -> Config:
    """The settings a chapter trains with: :func:`run_config` of the mode, with the mode's epochs.

    Quick mode gives the quick configuration; full mode the full configuration
    with the shorter training of :data:`asdflow.modes.BOOK_EPOCHS`, so that a
    chapter fits a Colab session (``asdflow reproduce`` keeps the report's).

    Parameters
    ----------
    model : {"cflow", "ae", "knn"}
    root : path
        Data root.
    machine : str
        Machine type.
    mode : Mode
        From :func:`asdflow.modes.detect_mode`.
    seed : int
        Seed of the run.
    changes : dict or None
        Other fields to override, as in :func:`run_config`.

    Returns
    -------
    CFlowConfig or AEConfig or KNNConfig
    """
    return run_config(
        model,
        root,
        machine,
        quick=mode.quick,
        seed=seed,
        epochs=mode.epochs_of(model),
        changes=changes,
    )


def trained_detector(
    root: str | os.PathLike[str],
    machine: str,
    *,
    model: str = "cflow",
    mode: Mode,
    seed: int = 0,
    config: Config | None = None,
    variant: str | None = None,
    progress: bool = True,
) -> Detector:
    """A detector from the shared cache of the book chapters, trained there on first use.

    The run folder is ``cache_dir()/runs/<mode.name>/<model>/<machine>/seed<seed>/``
    (:func:`asdflow.modes.cache_dir`), or ``.../<model>-<variant>/...`` for a
    named variant such as an ablation, so that it never replaces the default
    detector that other chapters share. When it holds a detector trained with
    the same settings on the same training files, that detector is loaded;
    otherwise (or when the file cannot be used: damaged, or written by an
    asdflow with another file format) one is trained with :func:`train_run`
    and saved there (replacing the outdated one). So the first chapter that needs a detector
    trains it, later chapters reuse it, and a chapter run on an empty cache
    rebuilds it.

    Parameters
    ----------
    root : path
        Data root (from :func:`asdflow.modes.prepare_data`).
    machine : str
        Machine type.
    model : {"cflow", "ae"}
    mode : Mode
        From :func:`asdflow.modes.detect_mode`: chooses quick or full
        settings, the cache folder and the device.
    seed : int
        Seed of the run; it replaces ``config.seed``.
    config : CFlowConfig or AEConfig or None
        Settings (None: :func:`mode_config`).
    variant : str or None
        Name of a non-default setting (letters, digits, ``-`` and ``_``);
        None for the default detector of the mode.
    progress : bool
        Progress bars.

    Returns
    -------
    CFlowDetector or AutoencoderDetector
    """
    model_spec(model)
    if variant is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", variant):
        raise ParameterError(
            f"variant names a folder: use letters, digits, - and _, got {variant!r}"
        )
    folder = model if variant is None else f"{model}-{variant}"
    directory = run_dir(cache_dir() / "runs" / mode.name, folder, machine, seed)
    if config is None:
        config = mode_config(model, root, machine, mode=mode, seed=seed)
    else:
        config = dataclasses.replace(config, seed=int(seed))
    info = read_run_info(directory) if has_detector(directory) else None
    if (
        info is not None
        and info.model == model
        and info.machine == machine
        and info.config == _jsonable(config.to_dict())
        and info.data == data_fingerprint(_train_clips(root, machine))
    ):
        try:
            detector = load_detector(directory, device=mode.device, progress=progress)
        except ModelError as err:  # damaged, or written by another asdflow: it is only a cache
            _say(f"the cached detector cannot be used ({err}); training it again", progress)
        else:
            _say(
                f"{METHODS[model]} of {machine} (seed {seed}) loaded from {files.short_path(directory)}",
                progress,
            )
            return detector
    return train_run(
        root,
        machine,
        directory,
        model=model,
        config=config,
        quick=mode.quick,
        device=mode.device,
        overwrite=True,
        progress=progress,
    )
