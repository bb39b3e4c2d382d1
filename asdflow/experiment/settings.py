"""Names, files and settings shared by the experiment modules: the settings of a run and small helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from asdflow import data, features
from asdflow.detector import (
    VARIANTS,
    FieldView,
    model_spec,
)
from asdflow.detector import DetectorConfig as Config
from asdflow.errors import (
    LayoutError,
    ParameterError,
)
from asdflow.features import file_digest

if TYPE_CHECKING:
    from asdflow.data import Clip

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
    # deferred: torch takes seconds to import; this module serves commands that do not need it
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
    # deferred: torch takes seconds to import; this module serves commands that do not need it
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
    digest = hashlib.blake2b(digest_size=16)
    for clip in sorted(clips, key=lambda c: c.path.name):
        digest.update(f"{clip.path.name}\0{file_digest(clip.path)}\n".encode())
    return digest.hexdigest()


def _train_clips(root: str | os.PathLike[str], machine: str) -> list[Clip]:
    """The normal training clips of one machine type (development or additional training set)."""
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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
