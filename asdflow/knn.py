"""A simple, strong reference: the nearest neighbour of a clip's log-mel statistics.

Each clip becomes one vector: the mean and the standard deviation over time
of every band of its log-mel spectrogram (the DCASE baseline's log mel,
:func:`asdflow.baseline.log_mel`: 128 bands, so 256 numbers). The vectors
are standardised with the training clips' statistics. The detector keeps
two *memories*, the source and the target training clips, and scores a clip
by its distance to the nearest clip of each:

.. math::

    s(x) = \\min_{d \\in \\{\\mathrm{source}, \\mathrm{target}\\}}
           \\frac{\\min_{m \\in M_d} \\lVert x - m \\rVert}{r_d}

where :math:`r_d` is the typical nearest-neighbour distance *within* memory
:math:`M_d` (the median over its clips of the distance to the nearest other
clip). Without :math:`r_d` a memory of 10 clips would always be farther
than a memory of 990, and every target clip would look anomalous; with it,
a normal clip of either domain scores about 1. The two distances are divided
by different radii before the minimum is taken, so this changes the ranking
of clips, not only the scale.

The threshold needs no held-out split: each training clip is scored with
itself left out of its memory (leave-one-out), which is what an unseen
normal clip of that domain looks like, and the DCASE gamma rule is applied
to those scores (:func:`asdflow.calibration.domain_threshold`).

Twenty lines of numpy do the work; the rest of the module is the interface
shared with the other detectors (:class:`asdflow.base.BaseDetector`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from asdflow import storage
from asdflow.base import BaseDetector
from asdflow.baseline import AEConfig, log_mel
from asdflow.calibration import domain_threshold, training_domains
from asdflow.data import load_audio
from asdflow.errors import ModelError

if TYPE_CHECKING:
    from asdflow.data import Clip

__all__ = ["FORMAT_VERSION", "KNNConfig", "KNNDetector", "clip_statistics", "nearest_distances"]

FORMAT_VERSION = 1
"""Version of the file :meth:`KNNDetector.save` writes; :meth:`KNNDetector.load` refuses others."""

STATISTICS = ("mean_std", "mean")
"""What each log-mel band contributes: its mean and standard deviation over time, or its mean."""

_FILE_KIND = "asdflow.knn.KNNDetector"
_LEARNED = (
    "machine_",
    "center_",
    "scale_",
    "memories_",
    "radii_",
    "train_scores_",
    "train_domains_",
    "threshold_",
)


@dataclass(frozen=True)
class KNNConfig:
    """Settings of :class:`KNNDetector`; the same in quick and full mode.

    Parameters
    ----------
    sr, n_mels, n_fft, hop_length, power
        Log-mel settings (the DCASE baseline's: 16 kHz, 128 bands, 1024,
        512, power spectrum).
    statistics : {"mean_std", "mean"}
        Per band: mean and standard deviation over time (256 numbers), or the
        mean only (128).
    threshold_quantile : float
        Quantile of the gamma fit to the leave-one-out training scores.
    seed : int
        Recorded with the run; the detector draws no random numbers.
    """

    sr: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 512
    power: float = 2.0
    statistics: str = "mean_std"
    threshold_quantile: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "KNNConfig"
        checked: dict[str, Any] = {
            name: storage.whole_number(owner, name, getattr(self, name), minimum)
            for name, minimum in (
                ("sr", 1),
                ("n_mels", 1),
                ("n_fft", 1),
                ("hop_length", 1),
                ("seed", 0),
            )
        }
        checked["power"] = storage.real_number(owner, "power", self.power, low=0, low_open=True)
        checked["statistics"] = storage.one_of(owner, "statistics", self.statistics, STATISTICS)
        checked["threshold_quantile"] = storage.real_number(
            owner,
            "threshold_quantile",
            self.threshold_quantile,
            low=0,
            high=1,
            low_open=True,
            high_open=True,
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def quick(cls, **changes: Any) -> KNNConfig:
        """The same settings as full mode (there is nothing to make smaller); overrides apply."""
        return cls(**changes)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain Python values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KNNConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ModelError`."""
        return storage.settings_from_dict(cls, data, "kNN")


def clip_statistics(y: np.ndarray, config: KNNConfig | None = None) -> np.ndarray:
    """The vector of one signal: per log-mel band, its mean (and standard deviation) over time.

    Returns
    -------
    np.ndarray [shape=(2 * n_mels,) or (n_mels,), dtype=float64]
    """
    cfg = config or KNNConfig()
    mel_config = AEConfig(
        sr=cfg.sr, n_mels=cfg.n_mels, n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=cfg.power
    )
    spectrogram = log_mel(y, mel_config).astype(np.float64)
    parts = [spectrogram.mean(axis=1)]
    if cfg.statistics == "mean_std":
        parts.append(spectrogram.std(axis=1))
    return np.concatenate(parts)


def nearest_distances(
    queries: np.ndarray, memory: np.ndarray, *, leave_out: bool = False
) -> np.ndarray:
    """Euclidean distance from each query vector to its nearest vector of ``memory``.

    With ``leave_out=True`` the queries are the memory itself and each
    vector's distance to itself is skipped (leave-one-out); the memory must
    then hold at least 2 vectors.
    """
    squared = (
        np.sum(queries**2, axis=1)[:, None]
        + np.sum(memory**2, axis=1)[None, :]
        - 2.0 * queries @ memory.T
    )
    distances = np.sqrt(np.maximum(squared, 0.0))
    if leave_out:
        np.fill_diagonal(distances, np.inf)
    return distances.min(axis=1)


class KNNDetector(BaseDetector):
    """Nearest-neighbour detector on clip-level log-mel statistics, with a memory per domain.

    Parameters
    ----------
    config : KNNConfig or None
    device : str or None
        Unused (numpy on the CPU); accepted so that every detector is made
        the same way.
    progress : bool
        Show a progress bar while reading clips.

    Attributes
    ----------
    machine_ : str or None
        Machine type of the training clips.
    center_, scale_ : np.ndarray [shape=(dim,)]
        Mean and standard deviation of the training vectors (the scale is
        floored, so a constant dimension does not divide by 0).
    memories_ : dict of str to np.ndarray [shape=(n_d, dim)]
        The standardised training vectors of each domain.
    radii_ : dict of str to float
        Median leave-one-out nearest-neighbour distance within each memory.
    train_scores_ : np.ndarray [shape=(n_train,)]
        Leave-one-out scores of the training clips.
    train_domains_ : np.ndarray of str
    threshold_ : float
    """

    def __init__(
        self,
        config: KNNConfig | None = None,
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config if config is not None else KNNConfig()
        self.device = device
        self.progress = progress

    file_kind = _FILE_KIND
    format_version = FORMAT_VERSION
    file_description = "a kNN detector file"

    def _vectors(self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """One statistics vector per clip (or the given vectors, checked)."""
        items = list(data)
        if not items:
            raise ModelError("no clips or vectors given")
        if all(isinstance(x, np.ndarray) for x in items):
            vectors = np.stack([np.asarray(x, dtype=np.float64).ravel() for x in items])
        elif any(isinstance(x, np.ndarray) for x in items):
            raise ModelError("mix of vectors and clips: pass one kind only")
        else:
            vectors = np.stack(
                [
                    clip_statistics(load_audio(clip.path, sr=self.config.sr), self.config)
                    for clip in tqdm(items, desc="log-mel statistics", disable=not self.progress)
                ]
            )
        if not np.all(np.isfinite(vectors)):
            raise ModelError("clip statistics contain NaN or infinite values")
        if hasattr(self, "center_") and vectors.shape[1] != self.center_.size:
            raise ModelError(
                f"vectors of {vectors.shape[1]} values, but this detector was trained on "
                f"{self.center_.size}"
            )
        return vectors

    def fit(
        self,
        data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray,
        *,
        domains: Sequence[str] | None = None,
    ) -> KNNDetector:
        """Store the standardised training vectors per domain and fit the threshold.

        Parameters
        ----------
        data : sequence of Clip, or of np.ndarray [shape=(dim,)]
            Normal training clips of one machine type, or their vectors
            (:func:`clip_statistics`).
        domains : sequence of str or None
            Per clip; by default each clip's ``domain`` (vectors: source).

        Returns
        -------
        self

        Raises
        ------
        ModelError
            For fewer than 2 training clips, or silent clips (every
            dimension constant).
        """
        items = list(data)
        machine = storage.training_machine(items)
        labels = np.array(training_domains(items, domains), dtype=str)
        if len(items) < 2:
            raise ModelError("a nearest-neighbour detector needs at least 2 training clips")
        for name in _LEARNED:
            self.__dict__.pop(name, None)
        vectors = self._vectors(items)
        spread = vectors.std(axis=0)
        if np.all(spread == 0):
            raise ModelError(storage.silent_message(items, machine, "dimension"))
        center = vectors.mean(axis=0)
        scale = np.maximum(spread, 1e-3 * max(float(spread.max()), 1e-12))
        standard = (vectors - center) / scale
        memories = {d: standard[labels == d] for d in ("source", "target") if np.any(labels == d)}
        radii = {}
        for d, memory in memories.items():
            if len(memory) >= 2:
                radii[d] = float(np.median(nearest_distances(memory, memory, leave_out=True)))
        if not radii:  # one clip per domain: no within-memory distance anywhere
            radii = {d: 1.0 for d in memories}
        fallback = float(np.median(list(radii.values())))
        radii = {d: max(radii.get(d, fallback), 1e-12) for d in memories}
        self.machine_ = machine
        self.center_ = center
        self.scale_ = scale
        self.memories_ = memories
        self.radii_ = radii
        self.train_domains_ = labels
        train_scores = np.min(np.stack(list(self.left_out_distances().values())), axis=0)
        self.train_scores_ = train_scores
        self.threshold_ = domain_threshold(train_scores, labels, self.config.threshold_quantile)
        return self

    def left_out_distances(self) -> dict[str, np.ndarray]:
        """Per domain memory, each training clip's radius-scaled distance, itself left out.

        The training clips in the order :meth:`fit` was given them; a clip of
        domain ``d`` is compared with the *other* clips of memory ``d``, so
        that it scores as an unseen clip would (infinite where that memory
        holds nothing else). The minimum over the domains is
        ``train_scores_``.
        """
        out = {}
        for other, memory in self.memories_.items():
            ratio = np.full(len(self.train_domains_), np.inf)
            for d, queries in self.memories_.items():  # memory d holds the clips of d, in order
                if other == d and len(memory) < 2:
                    continue
                distance = nearest_distances(queries, memory, leave_out=other == d)
                ratio[self.train_domains_ == d] = distance / self.radii_[other]
            out[other] = ratio
        return out

    def score_samples(self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Anomaly score of each clip: the smaller radius-scaled distance to the two memories.

        Returns
        -------
        np.ndarray [shape=(n,), dtype=float64]
            About 1 for normal clips of either domain, larger for anomalies.
        """
        return np.min(np.stack(list(self.domain_distances(data).values())), axis=0)

    def domain_distances(
        self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per domain memory: each clip's nearest-neighbour distance divided by that memory's radius.

        :meth:`score_samples` is the minimum over the domains; the domain-aware
        CFlow (:mod:`asdflow.domains`) combines the two with its flow score
        before taking the minimum.
        """
        self._check_fitted()
        items = list(data)
        storage.check_machine(items, self.machine_, "this kNN detector")
        standard = (self._vectors(items) - self.center_) / self.scale_
        return {
            d: nearest_distances(standard, memory) / self.radii_[d]
            for d, memory in self.memories_.items()
        }

    def learned_state(self) -> dict[str, Any]:
        """Configuration and everything learned, as tensors and plain values (see :meth:`from_state`)."""
        self._check_fitted()
        return {
            "config": self.config.to_dict(),
            "machine": self.machine_,
            "center": torch.from_numpy(self.center_.copy()),
            "scale": torch.from_numpy(self.scale_.copy()),
            "memories": {d: torch.from_numpy(m.copy()) for d, m in self.memories_.items()},
            "radii": {d: float(r) for d, r in self.radii_.items()},
            "train_scores": torch.from_numpy(self.train_scores_.copy()),
            "train_domains": [str(d) for d in self.train_domains_],
            "threshold": float(self.threshold_),
        }

    @classmethod
    def from_state(
        cls,
        data: dict[str, Any],
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> KNNDetector:
        """A fitted detector from :meth:`learned_state`."""
        det = cls(KNNConfig.from_dict(data["config"]), device=device, progress=progress)
        det.machine_ = data["machine"]
        det.center_ = data["center"].numpy()
        det.scale_ = data["scale"].numpy()
        det.memories_ = {d: m.numpy() for d, m in data["memories"].items()}
        det.radii_ = {d: float(r) for d, r in data["radii"].items()}
        det.train_scores_ = data["train_scores"].numpy()
        det.train_domains_ = np.array(data["train_domains"], dtype=str)
        det.threshold_ = float(data["threshold"])
        return det
