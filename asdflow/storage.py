"""Detector files: written atomically, read back with their kind and format version checked.

Both detectors (:mod:`asdflow.cflow`, :mod:`asdflow.baseline`) save one
dictionary of tensors and plain Python values with ``torch.save``; reading it
uses ``torch.load(weights_only=True)``, which refuses arbitrary pickled
objects. Every file records its ``kind`` and ``format_version`` so that a file
of another kind or from an incompatible asdflow is refused with a message
that says what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from asdflow.errors import ModelError


def versions() -> dict[str, str]:
    """Versions recorded in every file: asdflow and torch, as plain strings."""
    from asdflow import __version__

    return {"asdflow": str(__version__), "torch": str(torch.__version__)}


def save_state(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    An interrupted save leaves the previous file (or none), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_state(
    path: str | os.PathLike[str], *, kind: str, what: str, format_version: int, writer: str
) -> dict[str, Any]:
    """Read a file written by :func:`save_state` and check its kind and format version.

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

    Raises
    ------
    ModelError
        Missing or unreadable file, another kind, another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist: expected {what}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many classes
        raise ModelError(
            f"{path} is not a readable file ({type(err).__name__}: {err}); expected {what} "
            f"written by {writer}"
        ) from err
    if not isinstance(data, dict) or data.get("kind") != kind:
        raise ModelError(f"{path} is not {what} (expected kind {kind!r})")
    version = data.get("format_version")
    if version != format_version:
        written = data.get("versions", {}).get("asdflow", "unknown")
        raise ModelError(
            f"{path} has format version {version} (written by asdflow {written}); this asdflow "
            f"reads format version {format_version} only: re-train the detector, or load it "
            f"with asdflow {written}"
        )
    return data
