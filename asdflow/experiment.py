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
  chapters, trained on first use.

A run folder holds::

    run.json                                       RunInfo: what was trained, how, on what
    cflow.pt | autoencoder.pt | knn.pt             the detector (one per folder)
    anomaly_score_<machine>_section_00_test.csv    written by score_run
    decision_result_<machine>_section_00_test.csv  written by score_run
    cflow-checkpoint.pt, training.json             only while CFlow training is unfinished

Nothing already written is overwritten unless asked (``overwrite=True``,
``--overwrite``); every file is written to a temporary file and renamed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asdflow import files
from asdflow.detector import (
    MODELS,
    VARIANTS,
    Detector,
    FieldView,
    method_name,
    model_of_config,
    model_spec,
    table_order,
)
from asdflow.detector import DetectorConfig as Config
from asdflow.errors import (
    LayoutError,
    ModelError,
    ParameterError,
    SubmissionError,
)

if TYPE_CHECKING:
    from asdflow.data import Clip
    from asdflow.evaluation import Cell, MachineResult, ResultTable, Truth
    from asdflow.modes import Mode

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
    "parse_settings",
    "read_run_info",
    "reproduce",
    "run_config",
    "run_dir",
    "score_run",
    "train_run",
    "trained_detector",
    "VARIANTS",
]

# MODELS and VARIANTS (the registry, asdflow.detector) are importable from here too.

METHODS = FieldView("method")
"""Column name of each registered model in result tables (a view of :data:`MODELS`)."""

DOMAIN_AWARE_METHOD = VARIANTS["cflow-da"].method
"""Column name of the domain-aware CFlow in result tables."""

DETECTOR_FILES = FieldView("file")
"""File name of the saved detector of each registered model in a run folder."""

RUN_FILE = "run.json"
"""File name of the :class:`RunInfo` record of a run folder."""

CHECKPOINT_FILE = "cflow-checkpoint.pt"
"""CFlow training state, written after every epoch and removed once the detector is saved."""

_TRAINING_FILE = "training.json"

QUICK_TITLE = (
    "quick mode: synthetic data, resnet18 random weights, CPU — not comparable with the report"
)
"""First line of every table computed in quick mode."""

_SCORE_FILE = re.compile(r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _say(message: str, progress: bool) -> None:
    """A status line on stderr between progress bars (only when ``progress``)."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def _is_plain_name(name: str) -> bool:
    """True for a file name without folder parts, e.g. ``"results"`` or ``"table1-quick"``."""
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name)) and ".." not in name


def _check_device(device: str | None) -> None:
    """Refuse a device name torch does not know, or CUDA on a machine without it."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as err:
        raise ParameterError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise ParameterError(
            f"device {device!r} was asked for but no CUDA GPU is available; use cpu"
        )


def hardware(device: str | None = None) -> str:
    """The processor (and GPU, when ``device`` is CUDA) in words, for run records and tables.

    Parameters
    ----------
    device : str or None
        The torch device of the run (None: CUDA if available, else CPU).

    Returns
    -------
    str
        e.g. ``"CPU Intel(R) Xeon(R) ... (2 cores)"`` or
        ``"GPU NVIDIA H100 80GB HBM3; CPU ... (16 cores)"``.
    """
    import torch

    cpu = platform.processor() or platform.machine() or "unknown processor"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    text = f"CPU {cpu} ({cores} cores)"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        text = f"GPU {torch.cuda.get_device_name(torch.device(device))}; {text}"
    return text


def data_fingerprint(clips: Sequence[Clip]) -> str:
    """A hash of the training files: each file's name and a hash of its bytes.

    Regenerating or replacing a file changes the fingerprint, even when its
    size and modification time stay the same, so a cached detector is not
    reused on other data; touching or moving the data folder does not.

    Parameters
    ----------
    clips : sequence of Clip

    Returns
    -------
    str
        32 hexadecimal digits.
    """
    from asdflow.features import file_digest

    digest = hashlib.blake2b(digest_size=16)
    for clip in sorted(clips, key=lambda c: c.path.name):
        digest.update(f"{clip.path.name}\0{file_digest(clip.path)}\n".encode())
    return digest.hexdigest()


def _train_clips(root: str | os.PathLike[str], machine: str) -> list[Clip]:
    """The normal training clips of one machine type (development or additional training set)."""
    from asdflow import data

    clips = data.scan(root, machines=[machine], split="train")
    clips = [clip for clip in clips if clip.label != "anomaly"]
    if not clips:
        raise LayoutError(
            f"no training clips of machine type {machine!r} under {root}; expected "
            f"{root}/dev_data/raw/{machine}/train/*.wav (or eval_data/raw/...)"
        )
    return clips


def _test_clips(root: str | os.PathLike[str], machine: str) -> list[Clip]:
    """The test clips of one machine type, sorted by path."""
    from asdflow import data

    clips = data.scan(root, machines=[machine], split="test")
    if not clips:
        raise LayoutError(
            f"no test clips of machine type {machine!r} under {root}; expected "
            f"{root}/dev_data/raw/{machine}/test/*.wav (or eval_data/raw/...)"
        )
    return clips


# ---------------------------------------------------------------------------
# Settings of a run
# ---------------------------------------------------------------------------


def parse_settings(items: Sequence[str] | None) -> dict[str, Any]:
    """``["n_blocks=2", "lr=1e-4"]`` -> ``{"n_blocks": 2, "lr": 0.0001}``.

    Each value is read as JSON when it parses (numbers, ``true``,
    ``null``...) and kept as a string otherwise. This is the parser of the
    expert option ``--set FIELD=VALUE``.

    Raises
    ------
    AsdflowError
        For an item without ``=``.
    """
    settings: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--set expects FIELD=VALUE, got {item!r} (e.g. --set n_blocks=2)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        settings[key.strip()] = value
    return settings


def run_config(
    model: str,
    root: str | os.PathLike[str],
    machine: str,
    *,
    quick: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    changes: dict[str, Any] | None = None,
) -> Config:
    """The settings of one run: the model's full or quick configuration with seed and epochs.

    For CFlow the feature images of every clip get the machine's nominal
    length (:meth:`asdflow.features.FeatureConfig.with_nominal_length` of its
    training clips), as ``asdflow features`` computes them, so the images
    that command caches are the ones training and scoring ask for.

    Parameters
    ----------
    model : {"cflow", "ae"}
    root : path
        Data root (only the training files' headers are read).
    machine : str
        Machine type.
    quick : bool
        ``CFlowConfig.quick()`` / ``AEConfig.quick()`` instead of the full settings.
    seed : int
        Seed of the run (decoder or network initialisation, shuffling).
    epochs : int or None
        Training epochs instead of the configuration's.
    changes : dict or None
        Other fields to override (expert; see :func:`parse_settings`).

    Returns
    -------
    CFlowConfig or AEConfig

    Raises
    ------
    ModelError
        For an unknown model or field, or a value the configuration refuses.
    LayoutError
        When the machine type has no training clips under ``root``.
    """
    from asdflow import features

    spec = model_spec(model)
    cls = spec.config_class()
    changes = dict(changes or {})
    names = {f.name for f in dataclasses.fields(cls)} - {"features"}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ParameterError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
            f"known fields: {', '.join(sorted(names))}"
        )
    settings: dict[str, Any] = {"seed": int(seed)}
    if spec.feature_images:
        train = _train_clips(root, machine)
        settings["features"] = features.FeatureConfig().with_nominal_length(train)
    if epochs is not None and "epochs" in names:  # the kNN detector has no epochs
        settings["epochs"] = int(epochs)
    settings.update({key: typed_setting(cls, key, value) for key, value in changes.items()})
    try:
        return cls.quick(**settings) if quick else cls(**settings)
    except (TypeError, ValueError) as err:
        if isinstance(err, ParameterError):
            raise
        raise ParameterError(f"invalid {cls.__name__} settings {changes}: {err}") from err


def typed_setting(cls: type, name: str, value: Any) -> Any:
    """``value`` checked against the type of field ``name`` of the configuration class ``cls``.

    The values of ``--set FIELD=VALUE`` arrive as JSON (:func:`parse_settings`):
    this is where they meet the field's annotation. A whole-number field takes
    only whole numbers (``2``, not ``2.5``, ``true`` or ``"abc"``), a real-number
    field any number, a yes/no field ``true``/``false``, a text field any text,
    a tuple field a JSON list (from Python, a list or a tuple); ``null`` only
    where the field allows None.

    Raises
    ------
    ParameterError
        Naming the field, the value and what it must be.
    """
    annotation = next(f.type for f in dataclasses.fields(cls) if f.name == name)
    if not isinstance(
        annotation, str
    ):  # a class written without `from __future__ import annotations`
        annotation = getattr(annotation, "__name__", str(annotation))
    parts = [part.strip() for part in annotation.split("|")]
    optional = "None" in parts
    hint = next((part for part in parts if part != "None"), "None")
    if value is None:
        if optional:
            return None
        what = "a value"
    elif hint == "bool":
        if isinstance(value, bool):
            return value
        what = "true or false"
    elif hint == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        what = "a whole number"
    elif hint == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        what = "a number"
    elif hint == "str":
        if isinstance(value, str):
            return value
        return json.dumps(value)  # e.g. a backbone name that parsed as a number
    elif hint.startswith("tuple["):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        what = 'a JSON list of names, e.g. ["mel","mfcc"]'
    else:
        return value
    raise ParameterError(
        f"--set {name}: {cls.__name__}.{name} must be {what}, got {json.dumps(value)}"
    )


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
    from asdflow.evaluation import decision_file_name, score_file_name

    return directory / score_file_name(machine), directory / decision_file_name(machine)


def is_finished(directory: str | os.PathLike[str], machine: str) -> bool:
    """True when a run folder holds a detector, ``run.json`` and both DCASE files of ``machine``."""
    directory = Path(directory)
    return has_detector(directory) and all(
        p.is_file() for p in _submission_paths(directory, machine)
    )


def _versions() -> dict[str, str]:
    import torch

    import asdflow

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
        f"into {out}" + (" - resuming from the checkpoint" if resumed else ""),
        progress,
    )
    spec = model_spec(model)
    detector = spec.detector_class()(config, device=device, progress=progress)
    start = time.perf_counter()
    try:
        if spec.resumable:
            detector.fit(clips, checkpoint=checkpoint)
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
    _say(f"saved {out / DETECTOR_FILES[model]} ({seconds:.1f} s of training)", progress)
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
    import numpy as np

    from asdflow.evaluation import write_submission

    _say(f"scoring {len(clips)} test clips of {machine} with {directory}", progress)
    start = time.perf_counter()
    scores = detector.score(clips)
    decisions = (scores > detector.threshold_).astype(np.int64)
    written = write_submission(
        directory, machine, [clip.name for clip in clips], scores, decisions, overwrite=overwrite
    )
    if info is not None:
        seconds = round(time.perf_counter() - start, 3)
        _write_run_info(
            directory, dataclasses.replace(info, test_seconds=seconds, n_test=len(clips))
        )
    return written


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
    from asdflow import evaluation

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
    from asdflow.evaluation import evaluate_submission

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
    from asdflow.evaluation import DECISION_METRICS, METRICS, result_table

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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


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
    from asdflow import data

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
        Settings (None: :func:`run_config` of the mode).
    variant : str or None
        Name of a non-default setting (letters, digits, ``-`` and ``_``);
        None for the default detector of the mode.
    progress : bool
        Progress bars.

    Returns
    -------
    CFlowDetector or AutoencoderDetector
    """
    from asdflow.modes import cache_dir

    model_spec(model)
    if variant is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", variant):
        raise ParameterError(
            f"variant names a folder: use letters, digits, - and _, got {variant!r}"
        )
    folder = model if variant is None else f"{model}-{variant}"
    directory = run_dir(cache_dir() / "runs" / mode.name, folder, machine, seed)
    if config is None:
        config = run_config(model, root, machine, quick=mode.quick, seed=seed)
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
            _say(f"{METHODS[model]} of {machine} (seed {seed}) loaded from {directory}", progress)
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
