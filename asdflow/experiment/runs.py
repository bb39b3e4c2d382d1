"""Run folders: train a detector into one, load it back, score the test clips into DCASE files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import asdflow
from asdflow import files
from asdflow.detector import (
    MODELS,
    Detector,
    ResumableDetector,
    method_name,
    model_of_config,
    model_spec,
)
from asdflow.detector import DetectorConfig as Config
from asdflow.errors import (
    ModelError,
    ParameterError,
    SubmissionError,
)
from asdflow.evaluation import decision_file_name, score_file_name, write_submission
from asdflow.experiment.settings import (
    _TRAINING_FILE,
    CHECKPOINT_FILE,
    DETECTOR_FILES,
    METHODS,
    RUN_FILE,
    _check_device,
    _jsonable,
    _say,
    _test_clips,
    _train_clips,
    data_fingerprint,
    hardware,
    run_config,
)

if TYPE_CHECKING:
    from asdflow.data import Clip

# ---------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """The record of one trained detector, kept as ``run.json`` in its run folder.

    Attributes
    ----------
    machine : str
        Machine type trained on.
    model : str
        ``"cflow"`` or ``"ae"``.
    seed : int
        Seed of the run.
    mode : str
        ``"quick"`` or ``"full"``.
    config : dict
        The configuration, as plain values (``config.to_dict()``).
    data : str
        :func:`data_fingerprint` of the training clips.
    n_train : int
        Number of training clips.
    root : str
        Data root trained on.
    device : str
        Torch device of the training.
    hardware : str
        :func:`hardware` of the training machine.
    train_seconds : float
        Wall time of the training call that finished the detector (a resumed
        run counts only its last part, see ``resumed``).
    resumed : bool
        The training resumed from a checkpoint of an interrupted call.
    versions : dict
        ``asdflow``, ``torch`` and ``python`` versions.
    created : str
        Local time the detector was saved, ISO 8601.
    test_seconds : float or None
        Wall time of :func:`score_run` (scoring and writing), once run.
    n_test : int or None
        Number of test clips scored.
    """

    machine: str
    model: str
    seed: int
    mode: str
    config: dict[str, Any]
    data: str
    n_train: int
    root: str
    device: str
    hardware: str
    train_seconds: float
    resumed: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    test_seconds: float | None = None
    n_test: int | None = None

    @property
    def method(self) -> str:
        """The column name of this run in result tables (``"CFlow"``, ``"Baseline"``, ``"kNN"``...)."""
        return method_name(self.model, self.config)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON values."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def run_dir(out: str | os.PathLike[str], model: str, machine: str, seed: int) -> Path:
    """Run folder of one model, machine type and seed under ``out``: ``out/model/machine/seed<S>``."""
    return Path(out) / model / machine / f"seed{int(seed)}"


def read_run_info(directory: str | os.PathLike[str]) -> RunInfo | None:
    """The :class:`RunInfo` of a run folder, or None when it has no ``run.json``.

    Raises
    ------
    ModelError
        When ``run.json`` exists but cannot be read.
    """
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return RunInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:
        raise ModelError(
            f"{path} is not a readable run record ({err}); remove the folder and train again"
        ) from err


def _write_run_info(directory: Path, info: RunInfo) -> None:
    files.atomic_write(directory / RUN_FILE, json.dumps(info.to_dict(), indent=1) + "\n")


def _detector_path(directory: Path) -> tuple[str, Path] | None:
    """(model, path) of the detector file in ``directory``, or None."""
    for model, spec in MODELS.items():
        if (directory / spec.file).is_file():
            return model, directory / spec.file
    return None


def has_detector(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` holds a saved detector and its ``run.json``."""
    directory = Path(directory)
    return _detector_path(directory) is not None and (directory / RUN_FILE).is_file()


def _submission_paths(directory: Path, machine: str) -> tuple[Path, Path]:
    return directory / score_file_name(machine), directory / decision_file_name(machine)


def is_finished(directory: str | os.PathLike[str], machine: str) -> bool:
    """True when a run folder holds a detector, ``run.json`` and both DCASE files of ``machine``."""
    directory = Path(directory)
    return has_detector(directory) and all(
        p.is_file() for p in _submission_paths(directory, machine)
    )


def _versions() -> dict[str, str]:
    # deferred: torch takes seconds to import; this module serves commands that do not need it
    import torch

    return {
        "asdflow": str(asdflow.__version__),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------
# Train, load, test
# ---------------------------------------------------------------------------


def train_run(
    root: str | os.PathLike[str],
    machine: str,
    out: str | os.PathLike[str],
    *,
    model: str = "cflow",
    config: Config | None = None,
    quick: bool = False,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Detector:
    """Train a detector on the normal training clips of one machine type and save it in ``out``.

    Writes ``out/cflow.pt`` or ``out/autoencoder.pt`` (the detector) and
    ``out/run.json`` (:class:`RunInfo`). CFlow training writes its state to
    ``out/cflow-checkpoint.pt`` after every epoch: calling ``train_run``
    again with the same settings after an interruption resumes from there.
    The checkpoint is removed once the detector is saved.

    Parameters
    ----------
    root : path
        Data root (``<root>/dev_data/raw/<machine>/train/*.wav``).
    machine : str
        Machine type.
    out : path
        The run folder (created if needed).
    model : {"cflow", "ae"}
        Which detector; must match ``config`` when both are given.
    config : CFlowConfig or AEConfig or None
        Settings; None: :func:`run_config` (full or quick, seed 0).
    quick : bool
        Quick mode: the default settings are the quick ones, and the run is
        recorded as a quick-mode run.
    device : str or None
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (None: CUDA if available).
    overwrite : bool
        Replace a detector already in ``out``, and discard a checkpoint left
        by an interrupted run with other settings. The new detector is
        trained in the staging folder ``out/.overwrite/`` and replaces the
        old one (whose DCASE files of this machine are removed then, as they
        belong to the old detector) only once it is saved: when training
        fails, the old detector, ``run.json`` and DCASE files are all still
        there. An interrupted ``overwrite`` call resumes from the staging
        folder's checkpoint.
    progress : bool
        Progress bars and status lines on stderr.

    Returns
    -------
    CFlowDetector or AutoencoderDetector
        The fitted detector.

    Raises
    ------
    ModelError
        When ``out`` already holds a detector, or an unfinished run with other
        settings, and ``overwrite`` is False; or when training fails.
    BusyError
        When another process is training or testing in ``out`` (the run
        folder is locked while this call writes into it).
    ParameterError
        When ``out`` is a file, lies under a file or cannot be written to.
    LayoutError
        When the machine type has no training clips under ``root``.
    """
    _check_device(device)
    if config is None:
        model_spec(model)
        config = run_config(model, root, machine, quick=quick)
    elif model_of_config(config).name != model:
        raise ParameterError(f"model {model!r} was asked for with a {type(config).__name__}")
    out = files.writable_folder(out, "run folder")
    with files.folder_lock(out, "run folder"):
        return _train_locked(root, machine, out, model, config, quick, device, overwrite, progress)


_STAGING = ".overwrite"
"""Sub-folder of a run folder where ``--overwrite`` trains until the new detector is saved."""


def _train_locked(
    root: str | os.PathLike[str],
    machine: str,
    out: Path,
    model: str,
    config: Config,
    quick: bool,
    device: str | None,
    overwrite: bool,
    progress: bool,
) -> Detector:
    """The body of :func:`train_run`, run while the run folder is locked."""
    replacing = has_detector(out)
    if replacing and not overwrite:
        info = read_run_info(out)
        what = f"a {info.method} detector of {info.machine}" if info else "a detector"
        raise ModelError(
            f"{out} already holds {what}; nothing was changed. Choose another --out, "
            "or pass --overwrite (overwrite=True) to train it again"
        )
    clips = _train_clips(root, machine)
    fingerprint = data_fingerprint(clips)
    plan = {
        "machine": machine,
        "model": model,
        "config": _jsonable(config.to_dict()),
        "data": fingerprint,
    }
    # The old detector stays untouched until the new one is saved: replacing
    # training happens in a staging sub-folder, moved into place at the end.
    work = out / _STAGING if replacing else out
    work.mkdir(exist_ok=True)
    files.remove_leftovers(work)  # e.g. half a checkpoint of a killed process
    checkpoint = work / CHECKPOINT_FILE
    training_file = work / _TRAINING_FILE
    resumed = False
    if checkpoint.exists():
        try:
            previous = json.loads(training_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == plan:
            resumed = True
        elif overwrite:
            checkpoint.unlink()
        else:
            raise ModelError(
                f"{out} holds an interrupted training with other settings or data "
                f"({checkpoint}); pass --overwrite (overwrite=True) to discard it, or "
                "choose another --out"
            )
    files.atomic_write(training_file, json.dumps(plan, indent=1) + "\n")

    _say(
        f"training {METHODS[model]} on {machine} ({len(clips)} clips, seed {config.seed}) "
        f"into {files.short_path(out)}" + (" - resuming from the checkpoint" if resumed else ""),
        progress,
    )
    spec = model_spec(model)
    detector = spec.detector_class()(config, device=device, progress=progress)
    start = time.perf_counter()
    try:
        if spec.resumable:
            cast(ResumableDetector, detector).fit(clips, checkpoint=checkpoint)
        else:
            detector.fit(clips)
    except BaseException:
        if not checkpoint.exists():  # nothing to resume from: leave no trace
            training_file.unlink(missing_ok=True)
            if work != out:
                with contextlib.suppress(OSError):
                    work.rmdir()
        raise
    seconds = time.perf_counter() - start
    detector.save(work / DETECTOR_FILES[model])

    # deferred: torch takes seconds to import; this module serves commands that do not need it
    import torch

    used = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = RunInfo(
        machine=machine,
        model=model,
        seed=int(config.seed),
        mode="quick" if quick else "full",
        config=plan["config"],
        data=fingerprint,
        n_train=len(clips),
        root=str(Path(root).resolve()),
        device=str(used),
        hardware=hardware(used),
        train_seconds=round(seconds, 3),
        resumed=resumed,
        versions=_versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    _write_run_info(work, info)
    if replacing:
        _replace_run(out, work, machine, DETECTOR_FILES[model])
    checkpoint.unlink(missing_ok=True)
    training_file.unlink(missing_ok=True)
    _say(
        f"saved {files.short_path(out / DETECTOR_FILES[model])} ({seconds:.1f} s of training)",
        progress,
    )
    return detector


def _replace_run(out: Path, work: Path, machine: str, detector_file: str) -> None:
    """Move a new detector and its ``run.json`` from ``work`` over the old run in ``out``.

    The old DCASE files of ``machine`` belong to the old detector and are
    removed first, so a folder never pairs the new detector with old scores;
    a crash between two steps leaves either detector with a run record.
    """
    for path in _submission_paths(out, machine):
        path.unlink(missing_ok=True)
    for name in DETECTOR_FILES.values():
        if name != detector_file:
            (out / name).unlink(missing_ok=True)
    os.replace(work / detector_file, out / detector_file)
    os.replace(work / RUN_FILE, out / RUN_FILE)
    for name in (CHECKPOINT_FILE, _TRAINING_FILE):
        (out / name).unlink(missing_ok=True)
        (work / name).unlink(missing_ok=True)
    files.remove_leftovers(work)
    with contextlib.suppress(OSError):
        work.rmdir()


def load_detector(
    directory: str | os.PathLike[str], *, device: str | None = None, progress: bool = True
) -> Detector:
    """The detector saved in a run folder by :func:`train_run`.

    Raises
    ------
    ModelError
        When the folder does not exist or holds no detector (naming the folder
        and the files looked for), or the file cannot be read.
    """
    directory = Path(directory)
    _check_device(device)
    found = _detector_path(directory)
    if not directory.is_dir() or found is None:
        state = "does not exist" if not directory.is_dir() else "holds no trained detector"
        raise ModelError(
            f"{directory} {state} (looked for {' or '.join(DETECTOR_FILES.values())}); train "
            f"one first: asdflow train ROOT --machine M --out {directory}"
        )
    model, path = found
    return model_spec(model).detector_class().load(path, device=device, progress=progress)


def score_run(
    directory: str | os.PathLike[str],
    root: str | os.PathLike[str],
    machine: str,
    *,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Score the test clips of one machine type and write the two DCASE files into the run folder.

    Decisions are ``score > threshold_`` of the detector (the gamma-fit
    threshold of its training scores).

    Parameters
    ----------
    directory : path
        Run folder holding a detector (see :func:`train_run`).
    root : path
        Data root holding the machine's test clips.
    machine : str
        Machine type; must be the one the detector was trained on.
    device : str or None
        Torch device for scoring.
    overwrite : bool
        Replace existing DCASE files of this machine in the folder.
    progress : bool
        Progress bars and status lines on stderr.

    Returns
    -------
    score_path, decision_path : Path
        ``anomaly_score_<machine>_section_00_test.csv`` and
        ``decision_result_<machine>_section_00_test.csv``.

    Raises
    ------
    ModelError
        When the folder holds no detector, or one of another machine type.
    SubmissionError
        When the files exist and ``overwrite`` is False (checked before
        scoring; nothing is written).
    BusyError
        When another process writes into the run folder.
    """
    directory = Path(directory)
    detector = load_detector(directory, device=device, progress=progress)
    info = read_run_info(directory)
    trained_on = getattr(detector, "machine_", None) or (info.machine if info else None)
    if trained_on is not None and trained_on != machine:
        raise ModelError(
            f"{directory} holds a detector trained on {trained_on!r}, not {machine!r}; "
            f"pass --machine {trained_on} or the run folder of {machine}"
        )
    paths = _submission_paths(directory, machine)
    files.refuse_overwrite(paths, overwrite=overwrite, error=SubmissionError)
    clips = _test_clips(root, machine)
    with files.folder_lock(directory, "run folder"):
        return _score_locked(detector, directory, info, clips, machine, overwrite, progress)


def _score_locked(
    detector: Detector,
    directory: Path,
    info: RunInfo | None,
    clips: list[Clip],
    machine: str,
    overwrite: bool,
    progress: bool,
) -> tuple[Path, Path]:
    """The body of :func:`score_run`, run while the run folder is locked."""
    # deferred: asdflow.base imports torch, which scoring needs but the other commands do not
    from asdflow.base import decide

    _say(
        f"scoring {len(clips)} test clips of {machine} with {files.short_path(directory)}", progress
    )
    start = time.perf_counter()
    scores = detector.score_samples(clips)
    decisions = decide(scores, detector.threshold_)
    written = write_submission(
        directory, machine, [clip.name for clip in clips], scores, decisions, overwrite=overwrite
    )
    if info is not None:
        seconds = round(time.perf_counter() - start, 3)
        _write_run_info(
            directory, dataclasses.replace(info, test_seconds=seconds, n_test=len(clips))
        )
    return written
