"""What every detector shares: device choice, the fitted check, decisions and detector files.

The three detectors (:class:`asdflow.cflow.CFlowDetector`,
:class:`asdflow.baseline.AutoencoderDetector`, :class:`asdflow.knn.KNNDetector`)
derive from :class:`BaseDetector`. A detector class provides

- ``fit(clips, domains=None)``, which sets ``machine_`` and the threshold;
- ``score_samples(clips)``: one anomaly score per clip, higher = more
  anomalous (the DCASE convention; scikit-learn's outlier detectors use the
  opposite sign);
- ``learned_state()`` and ``from_state(state, ...)``: everything learned, as
  tensors and plain Python values, and back;
- the class attributes ``file_kind``, ``format_version`` and ``file_description``.

and inherits :meth:`~BaseDetector.predict`, :meth:`~BaseDetector.save`,
:meth:`~BaseDetector.load`, the fitted check and the device choice, written
once here.

Examples
--------
A detector of clip loudness, learned from a few numbers:

>>> import numpy as np
>>> class Loudness(BaseDetector):
...     file_kind, format_version, file_description = "loudness", 1, "a loudness file"
...     def __init__(self, config=None, *, device=None, progress=True):
...         self.config, self.device, self.progress = config, device, progress
...     def fit(self, data, *, domains=None):
...         self.machine_, self.mean_ = "fan", float(np.mean(data))
...         self.threshold_ = 1.0
...         return self
...     def score_samples(self, data):
...         self._check_fitted()
...         return np.abs(np.asarray(data, dtype=np.float64) - self.mean_)
>>> det = Loudness().fit([1.0, 2.0, 3.0])
>>> det.score_samples([2.0, 4.5]), det.predict([2.0, 4.5])
(array([0. , 2.5]), array([0, 1]))
>>> Loudness().predict([1.0])
Traceback (most recent call last):
...
asdflow.errors.ModelError: this Loudness is not fitted: call fit(clips) or load(path) first
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from asdflow import storage
from asdflow.errors import ModelError

__all__ = ["BaseDetector", "choose_device", "decide"]

_Self = TypeVar("_Self", bound="BaseDetector")


def choose_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device; None: CUDA when available, else the CPU.

    Examples
    --------
    >>> choose_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Decisions from scores: 1 (anomalous) where a score exceeds ``threshold``, else 0.

    Examples
    --------
    >>> decide(np.array([0.5, 1.0, 1.5]), 1.0)
    array([0, 0, 1])
    """
    return (np.asarray(scores) > threshold).astype(np.int64)


class BaseDetector:
    """Shared behaviour of the detectors; see the module's description for what a subclass adds.

    Attributes
    ----------
    file_kind : str
        The ``"kind"`` entry of its files (a file of another kind is refused).
    format_version : int
        The version of its file layout; raise it when :meth:`learned_state` changes.
    file_description : str
        Its files in messages, with an article: ``"a kNN detector file"``.
    fitted_attribute : str
        The attribute that exists once the detector is fitted.
    """

    file_kind: ClassVar[str]
    format_version: ClassVar[int]
    file_description: ClassVar[str]
    fitted_attribute: ClassVar[str] = "threshold_"

    config: Any
    device: str | torch.device | None
    progress: bool
    machine_: str | None
    threshold_: float

    def __repr__(self) -> str:
        state = "fitted" if hasattr(self, self.fitted_attribute) else "not fitted"
        return f"{type(self).__name__}({self.config!r}, {state})"

    @property
    def _device(self) -> torch.device:
        """The torch device it computes on (see :func:`choose_device`)."""
        return choose_device(self.device)

    def _check_fitted(self) -> None:
        """Raise :class:`~asdflow.errors.ModelError` unless :meth:`fit` or :meth:`load` ran."""
        if not hasattr(self, self.fitted_attribute):
            raise ModelError(
                f"this {type(self).__name__} is not fitted: call fit(clips) or load(path) first"
            )

    # -- scores and decisions -------------------------------------------------

    def score_samples(self, data: Sequence[Any]) -> np.ndarray:
        """Anomaly score of each clip, shape (n,), float64, higher = more anomalous."""
        raise NotImplementedError(f"{type(self).__name__} does not define score_samples")

    def score(self, data: Sequence[Any], **options: Any) -> np.ndarray:
        """The same as :meth:`score_samples`, under its earlier name (older code keeps working)."""
        return self.score_samples(data, **options)

    def predict(self, data: Sequence[Any]) -> np.ndarray:
        """Decisions: 1 (anomalous) where the score exceeds ``threshold_``, else 0.

        Returns
        -------
        np.ndarray [shape=(n,), dtype=int64]
        """
        self._check_fitted()
        return decide(self.score_samples(data), self.threshold_)

    # -- files ----------------------------------------------------------------

    def learned_state(self) -> dict[str, Any]:
        """Configuration, machine type and everything learned, as tensors and plain values."""
        raise NotImplementedError(f"{type(self).__name__} does not define learned_state")

    @classmethod
    def from_state(
        cls: type[_Self],
        data: dict[str, Any],
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> _Self:
        """A fitted detector from :meth:`learned_state` (``device``, ``progress`` as in the constructor)."""
        raise NotImplementedError(f"{cls.__name__} does not define from_state")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted detector to one file, atomically, and return its path.

        The file holds :meth:`learned_state`, the file kind and format version,
        the asdflow and torch versions and a checksum, as tensors and plain
        Python values (readable with ``torch.load(weights_only=True)``).
        """
        self._check_fitted()
        state = {
            "kind": self.file_kind,
            "format_version": self.format_version,
            "versions": storage.versions(),
            **self.learned_state(),
        }
        path = Path(path)
        storage.save_state(state, path)
        return path

    @classmethod
    def load(
        cls: type[_Self],
        path: str | os.PathLike[str],
        *,
        machine: str | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        **options: Any,
    ) -> _Self:
        """Read a detector written by :meth:`save`.

        Parameters
        ----------
        path : path
        machine : str or None
            The machine type the detector must have been trained on (e.g.
            ``"fan"``); None accepts any.
        device, progress, **options
            As in the constructor (they are not stored in the file).

        Raises
        ------
        ModelError
            If the file is missing, truncated or damaged (checksum mismatch),
            of another kind or format version, or trained on another machine
            type than ``machine``.
        """
        data = storage.load_state(
            path,
            kind=cls.file_kind,
            what=cls.file_description,
            format_version=cls.format_version,
            writer=f"{cls.__name__}.save",
        )
        storage.check_trained_machine(path, data["machine"], machine)
        return cls.from_state(data, device=device, progress=progress, **options)
