"""Detector files and detector settings: checked on the way in and on the way out.

Both detectors (:mod:`asdflow.cflow`, :mod:`asdflow.baseline`) save one
dictionary of tensors and plain Python values with ``torch.save``; reading it
uses ``torch.load(weights_only=True)``, which refuses arbitrary pickled
objects. Every file records its ``kind`` and ``format_version`` so that a file
of another kind or from an incompatible asdflow is refused with a message
that says what to do, and a ``checksum`` of everything else it holds
(:func:`payload_checksum`), so that a file damaged on disk or in a copy is
refused instead of giving slightly wrong scores. Files are written with
:func:`asdflow.files.atomic_write`.

:func:`training_machine`, :func:`check_machine` and :func:`silent_message`
are the checks of the training and scored clips both detectors share: one
machine type per detector, and no training set of silent clips.

The last part checks the settings of both detectors' configurations
(:func:`whole_number`, :func:`real_number`, :func:`one_of`, :func:`flag`):
the values may come from JSON (``asdflow train --set``), so a wrong type is
refused with a :class:`~asdflow.errors.ParameterError` that names the field,
the value and what is allowed, instead of a ``TypeError`` deep in training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from asdflow import __version__
from asdflow.errors import ModelError, ParameterError
from asdflow.files import atomic_write

__all__ = [
    "CHECKSUM_KEY",
    "check_machine",
    "check_trained_machine",
    "flag",
    "load_state",
    "one_of",
    "payload_checksum",
    "real_number",
    "save_state",
    "silent_message",
    "training_machine",
    "versions",
    "whole_number",
]

CHECKSUM_KEY = "checksum"
"""Entry of every detector file and checkpoint that holds :func:`payload_checksum`."""


def versions() -> dict[str, str]:
    """Versions recorded in every file: asdflow and torch, as plain strings."""
    return {"asdflow": str(__version__), "torch": str(torch.__version__)}


# ---------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------


def _feed(digest: Any, value: Any) -> None:
    """Add one value to ``digest`` in a canonical, type-tagged form.

    Tensors contribute their dtype, shape and raw bytes; dictionaries their
    items sorted by the canonical form of the key; lists and tuples (which a
    round trip through a file may exchange) their length and items; numbers
    an exact text (``float.hex`` for floats).
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)};".encode())
        if tensor.numel():  # an empty tensor (e.g. no held-out clips) has no bytes to view
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        items = sorted((_canonical(k), v) for k, v in value.items())
        digest.update(f"D{len(items)};".encode())
        for key, item in items:
            digest.update(key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(_canonical(value))


def _canonical(value: Any) -> bytes:
    """Canonical bytes of a plain value (None, bool, int, float, str, bytes)."""
    if value is None:
        return b"N;"
    if isinstance(value, bool):
        return b"B1;" if value else b"B0;"
    if isinstance(value, numbers.Integral):  # int, and NumPy integers alike
        return f"I{int(value)};".encode()
    if isinstance(value, numbers.Real):  # float, and NumPy floats alike
        return f"F{float(value).hex()};".encode()
    if isinstance(value, str):
        data = value.encode("utf-8")
        return f"S{len(data)};".encode() + data
    if isinstance(value, bytes):
        return f"Y{len(value)};".encode() + value
    if isinstance(value, torch.dtype):
        return f"P{value};".encode()
    raise TypeError(f"cannot checksum a value of type {type(value).__name__}: {value!r}")


def payload_checksum(state: dict[str, Any]) -> str:
    """SHA-256 of every entry of ``state`` except :data:`CHECKSUM_KEY`, as hex.

    Parameters
    ----------
    state : dict
        Tensors and plain Python values (nested dictionaries, lists, tuples,
        None, bool, int, float, str), as :func:`save_state` writes them.

    Returns
    -------
    str
        64 hexadecimal digits. Equal for equal contents, whatever the order
        the dictionaries were filled in and whatever device the tensors are on.
    """
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------


def save_state(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Add the checksum of ``state`` and write it with ``torch.save``, atomically.

    The file goes through :func:`asdflow.files.atomic_write`: an interrupted
    save leaves the previous file (or none), never half a file, and the file
    gets the permissions of the umask. ``state`` itself is not changed.

    Parameters
    ----------
    state : dict
        With at least ``"kind"`` and ``"format_version"``.
    path : path

    Returns
    -------
    Path
    """
    stored = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    stored[CHECKSUM_KEY] = payload_checksum(stored)
    return atomic_write(Path(path), lambda file: torch.save(stored, file))


def load_state(
    path: str | os.PathLike[str], *, kind: str, what: str, format_version: int, writer: str
) -> dict[str, Any]:
    """Read a file written by :func:`save_state`; check its checksum, kind and format version.

    Parameters
    ----------
    path : path
        The file.
    kind : str
        The ``"kind"`` entry the file must carry.
    what : str
        Its description for messages, with an article: ``"a CFlow detector file"``.
    format_version : int
        The only format version this asdflow reads.
    writer : str
        What writes such files, for messages: ``"CFlowDetector.save"``.

    Returns
    -------
    dict
        The stored state, checksum included.

    Raises
    ------
    ModelError
        Missing file; a file that cannot be unpacked (truncated, damaged or
        not a torch file) or whose contents do not match their checksum
        (damaged); another kind; another format version. Each message names
        the file and says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist: expected {what}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unzipping and unpickling errors come in many classes
        raise ModelError(
            f"{path} is not a readable file ({type(err).__name__}: {err}): it is truncated or "
            f"damaged, or it is not {what} written by {writer}; train it again"
        ) from err
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not {what} (expected kind {kind!r})")
    stored = data.get(CHECKSUM_KEY)
    if stored is not None and stored != _checksum_or_none(data):
        raise ModelError(f"{path} is damaged (checksum mismatch): train it again")
    if data.get("kind") != kind:
        raise ModelError(f"{path} is not {what} (expected kind {kind!r})")
    version = data.get("format_version")
    if version != format_version:
        written = data.get("versions", {}).get("asdflow", "unknown")
        raise ModelError(
            f"{path} has format version {version} (written by asdflow {written}); this asdflow "
            f"reads format version {format_version} only: re-train the detector, or load it "
            f"with asdflow {written}"
        )
    if stored is None:
        raise ModelError(
            f"{path} has no checksum, so damage to it cannot be detected; it was not written "
            f"by {writer}: train it again"
        )
    return data


def _checksum_or_none(state: dict[str, Any]) -> str | None:
    """:func:`payload_checksum`, or None when the contents hold values it cannot digest."""
    try:
        return payload_checksum(state)
    except TypeError:
        return None


# ---------------------------------------------------------------------------
# Training and scored clips
# ---------------------------------------------------------------------------


def training_machine(items: Sequence[Any]) -> str | None:
    """The machine type of the training clips (their ``machine``), None for arrays.

    Parameters
    ----------
    items : sequence of Clip or of np.ndarray
        Training clips, or feature images / vectors (which name no machine).

    Returns
    -------
    str or None

    Raises
    ------
    ParameterError
        When the clips are of several machine types.
    """
    machines = sorted({str(x.machine) for x in items if hasattr(x, "machine")})
    if len(machines) > 1:
        raise ParameterError(
            f"the training clips are of {len(machines)} machine types ({', '.join(machines)}); "
            "a detector learns one machine type: train one detector per machine type"
        )
    return machines[0] if machines else None


def check_machine(items: Sequence[Any], machine: str | None, detector: str) -> None:
    """Refuse clips of another machine type than the one a detector was trained on.

    Parameters
    ----------
    items : sequence of Clip or of np.ndarray
        The clips to score (arrays name no machine and are not checked).
    machine : str or None
        The detector's ``machine_`` (None: trained on arrays, nothing to check).
    detector : str
        The detector, for the message (``"this CFlow detector"``).

    Raises
    ------
    ModelError
        Naming one clip of another machine type and what to do.
    """
    if machine is None:
        return
    others = [x for x in items if hasattr(x, "machine") and x.machine != machine]
    if others:
        kinds = ", ".join(sorted({str(x.machine) for x in others}))
        raise ModelError(
            f"{len(others)} of the {len(items)} clips are of {kinds} (e.g. {others[0].path}), "
            f"but {detector} was trained on {machine}: score them with a detector trained on "
            f"{kinds}"
        )


def check_trained_machine(
    path: str | os.PathLike[str], trained: str | None, wanted: str | None
) -> None:
    """Refuse a detector file trained on another machine type than ``wanted``.

    Parameters
    ----------
    path : path
        The file, for the message.
    trained : str or None
        The machine type recorded in the file (None: trained on arrays).
    wanted : str or None
        The machine type asked for; None accepts any.

    Raises
    ------
    ModelError
        ``"<path> was trained on fan, not valve: ..."``.
    """
    if wanted is None or trained == wanted:
        return
    if trained is None:
        raise ModelError(
            f"{path} was trained on feature arrays, not on clips, and records no machine type, "
            f"so it cannot be checked to be a detector of {wanted}: load it without machine=, "
            f"or train one on the clips of {wanted}"
        )
    raise ModelError(
        f"{path} was trained on {trained}, not {wanted}: use the detector of {wanted}, or "
        f"train one on the clips of {wanted}"
    )


def silent_message(items: Sequence[Any], machine: str | None, unit: str) -> str:
    """The message of a training set whose features are all constant (silent clips).

    Parameters
    ----------
    items : sequence of Clip or of np.ndarray
    machine : str or None
        :func:`training_machine` of ``items``.
    unit : str
        What was constant, for arrays: ``"row"`` (feature images) or
        ``"dimension"`` (vectors).

    Returns
    -------
    str
        For clips: ``"the 12 training clips of fan are silent (every sample is 0 /
        constant features): check the data folder <folder>"``.
    """
    n = len(items)
    paths = [Path(x.path) for x in items if hasattr(x, "path")]
    if machine is not None and paths:
        folder = Path(os.path.commonpath([str(p.parent) for p in paths]))
        return (
            f"the {n} training clips of {machine} are silent (every sample is 0 / constant "
            f"features): check the data folder {folder}"
        )
    return (
        f"the {n} training arrays are constant (every {unit} holds one value in every array, "
        "as the features of silent clips do): check the clips they were computed from"
    )


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A value for a message, with its type when that is the problem (``'3' (str)``)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


def whole_number(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is a whole number ``>= minimum``.

    Integral floats (``3.0``, as JSON may give them) are accepted; booleans
    and strings are not.

    Parameters
    ----------
    owner : str
        The class the setting belongs to, for messages (``"CFlowConfig"``).
    name : str
        The setting.
    value : object
    minimum : int

    Returns
    -------
    int

    Raises
    ------
    ParameterError
        ``"CFlowConfig.n_blocks must be a whole number >= 1, got 2.5"``.
    """
    number = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        as_float = float(value)
        if math.isfinite(as_float) and as_float.is_integer():
            number = int(as_float)
    if number is None or number < minimum:
        raise ParameterError(
            f"{owner}.{name} must be a whole number >= {minimum}, got {_shown(value)}"
        )
    return number


def real_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the given interval.

    Parameters
    ----------
    owner, name : str
        As in :func:`whole_number`.
    value : object
    low, high : float
        The bounds (infinite: none).
    low_open, high_open : bool
        Whether the bound itself is excluded.

    Returns
    -------
    float

    Raises
    ------
    ParameterError
        ``"CFlowConfig.lr must be a number > 0, got -1.0"``, or
        ``"... in (0, 1), got 'a' (str)"``.
    """
    if math.isinf(low) and math.isinf(high):
        allowed = "a finite number"
    elif math.isinf(high):
        allowed = f"a number {'>' if low_open else '>='} {low:g}"
    elif math.isinf(low):
        allowed = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        allowed = (
            f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        )
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        number = float(value)
        ok = math.isfinite(number)
        ok = ok and (number > low if low_open else number >= low)
        ok = ok and (number < high if high_open else number <= high)
    if not ok:
        raise ParameterError(f"{owner}.{name} must be {allowed}, got {_shown(value)}")
    return number


def one_of(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``.

    Raises
    ------
    ParameterError
        ``"CFlowConfig.aggregation must be one of 'max', 'mean', got 'median'"``.
    """
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        shown = repr(value) if isinstance(value, str) else _shown(value)
        raise ParameterError(f"{owner}.{name} must be one of {listed}, got {shown}")
    return value


def flag(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is a boolean (``true``/``false`` in JSON).

    Raises
    ------
    ParameterError
        ``"CFlowConfig.mixed_precision must be true or false, got 'yes' (str)"``.
    """
    if not isinstance(value, bool):
        raise ParameterError(f"{owner}.{name} must be true or false, got {_shown(value)}")
    return value


def settings_from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """A settings dataclass from its ``to_dict`` form; unknown keys raise :class:`ModelError`.

    ``what`` names the settings in the message, e.g. ``"autoencoder"``.
    """
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ModelError(
            f"unknown {what} settings {unknown}: the file was written by another asdflow "
            "version; re-train with this one"
        )
    return cls(**data)
