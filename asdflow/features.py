"""The 158-row feature image of the report (section 2.1) and its reuse.

A clip becomes one image whose rows are librosa features and whose columns
are time frames (Hann window of 64 ms, hop 32 ms at 16 kHz, centred frames):

======  ===================================  =================================
rows    feature                              computed from
======  ===================================  =================================
0-127   log mel energy, 128 bands (dB)       the STFT, ``|X|**2``
128-139 CQT chroma, 12 pitch classes         the CQT of the waveform
140-146 spectral contrast, 6 bands + 1 (dB)  the STFT, ``|X|``
147-152 tonnetz, 6                           the chroma above
153     RMS                                  the STFT, ``|X|`` (see below)
154     spectral centroid (Hz)               the STFT, ``|X|``
155     spectral bandwidth (Hz)              the STFT, ``|X|``
156     spectral flatness                    the STFT, ``|X|**2``
157     zero-crossing rate                   the waveform
======  ===================================  =================================

Called one by one, each librosa feature recomputes its own STFT and tonnetz
recomputes the CQT. :func:`feature_image` computes the STFT once and the CQT
chroma once and derives every other row from them, which halves the cost
without changing the numbers (one row, RMS, differs on purpose: see
:func:`feature_image`).

:func:`extract` turns a list of clips into images, in parallel over
processes, with an on-disk cache keyed by the configuration and a hash of
each file's bytes (:func:`file_digest`). :class:`RowStats` standardises the rows (their scales range from
0-1 to thousands of Hz) with statistics fitted on the training clips.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeGuard

import librosa
import numpy as np
import soundfile
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from asdflow import files
from asdflow.data import check_sample_rate, display_path, load_audio, open_audio
from asdflow.errors import AudioError, ModelError, ParameterError
from asdflow.files import cache_dir

FEATURES_VERSION = 1
"""Version of the recipe; part of every cache key, so a change of recipe invalidates old entries."""

GROUPS = (
    "mel",
    "chroma",
    "contrast",
    "tonnetz",
    "rms",
    "centroid",
    "bandwidth",
    "flatness",
    "zcr",
)
"""Names of the row groups, top to bottom."""

_N_CHROMA = 12
_N_TONNETZ = 6
_POOL_MIN_CLIPS = 8
"""With ``n_jobs=None``, fewer uncached clips than this are computed in-process (no pool)."""

_LEFTOVER_AGE = 3600.0
"""Seconds after which a temporary file in the cache counts as left by a killed writer.

Other processes may be writing entries into a shared cache at the same time,
without a lock; a temporary file younger than this may be theirs.
"""


def _is_int(value: object) -> TypeGuard[int]:
    """True for an int or NumPy integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class FeatureConfig:
    """How a clip becomes a feature image.

    The defaults are those of the report (section 2.1): 16 kHz, a Hann
    window of 64 ms, centred frames, 128 mel bands, and a hop of 512 samples
    (32 ms). The report says only that the features were "computed with
    librosa" and does not state the hop; every ``librosa.feature`` function
    given ``n_fft=1024`` and no hop uses ``hop_length=512`` (``n_fft // 4``
    is the default of ``librosa.stft`` alone), so 512 is the most likely
    setting. ``hop_length=256`` (16 ms) is a legitimate variant: twice the
    frames, twice the fibers and about twice the training cost.

    Parameters
    ----------
    sr : int
        Sample rate in Hz that clips are loaded (resampled) at.
    n_fft : int
        STFT window length and FFT size, in samples (1024 = 64 ms).
    hop_length : int
        Samples between frames (512 = 32 ms), for the STFT, the CQT chroma
        and the zero-crossing rate alike.
    window : str
        STFT window, any name `scipy.signal.get_window` knows.
    n_mels : int
        Number of mel bands (rows of the mel group).
    n_bands : int
        Number of octave bands of the spectral contrast (the group has
        ``n_bands + 1`` rows; lowest band edge 200 Hz).
    n_samples : int or None
        Length policy. ``None`` keeps each clip's own length, so clips of
        different lengths give images of different widths. An integer is the
        machine's nominal length in samples (see :func:`nominal_length`):
        a longer clip is cropped to its first ``n_samples`` samples, a
        shorter one is extended by repeating it from its start (machine
        sounds are mostly stationary; zero padding would add a stretch of
        silence that no normal recording has). The image then has exactly
        ``1 + n_samples // hop_length`` frames. The policy is part of the
        configuration, so training and test clips go through the same code.

    Examples
    --------
    >>> config = FeatureConfig()
    >>> config.n_rows, config.n_frames(160000)
    (158, 313)
    """

    sr: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    window: str = "hann"
    n_mels: int = 128
    n_bands: int = 6
    n_samples: int | None = None

    def __post_init__(self) -> None:
        for name in ("sr", "n_fft", "hop_length", "n_mels", "n_bands"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ParameterError(
                    f"FeatureConfig.{name}={value!r} is not allowed: use a positive integer"
                )
        if self.n_samples is not None and not _is_int(self.n_samples):
            raise ParameterError(
                f"FeatureConfig.n_samples={self.n_samples!r} is not allowed: use None or an "
                f"integer number of samples of at least n_fft={self.n_fft}"
            )
        if self.n_samples is not None and self.n_samples < self.n_fft:
            raise ParameterError(
                f"FeatureConfig.n_samples={self.n_samples} is shorter than one window "
                f"(n_fft={self.n_fft}); use None or a length of at least {self.n_fft} samples"
            )

    @property
    def n_rows(self) -> int:
        """Number of rows of the image (158 with the defaults)."""
        return self.n_mels + _N_CHROMA + self.n_bands + 1 + _N_TONNETZ + 5

    def n_frames(self, n_samples: int) -> int:
        """Number of frames (image columns) of a clip of ``n_samples`` samples.

        With ``n_samples`` set in the config, that length is used instead.

        Raises
        ------
        ParameterError
            When ``n_samples`` is not an integer of 0 or more.
        """
        if self.n_samples is not None:
            n_samples = self.n_samples
        if not _is_int(n_samples) or n_samples < 0:
            raise ParameterError(
                f"n_samples={n_samples!r} is not a clip length: use an integer of 0 or more"
            )
        return 1 + int(n_samples) // self.hop_length

    def with_nominal_length(self, train_clips: Sequence[Any]) -> FeatureConfig:
        """This config with ``n_samples`` set to the nominal length of ``train_clips``.

        The one place the length policy is fitted: a detector calls it on a
        machine type's training clips and keeps the result for its test
        clips; ``asdflow features`` calls it too, so the images it caches are
        the ones the detector asks for.

        Parameters
        ----------
        train_clips : sequence of Clip or path
            A machine type's training clips (see :func:`nominal_length`).
        """
        return replace(self, n_samples=nominal_length(train_clips, sr=self.sr))

    def row_groups(self) -> dict[str, slice]:
        """The row groups of the image, top to bottom: name -> slice of rows."""
        sizes = (self.n_mels, _N_CHROMA, self.n_bands + 1, _N_TONNETZ, 1, 1, 1, 1, 1)
        groups = {}
        start = 0
        for name, size in zip(GROUPS, sizes, strict=True):
            groups[name] = slice(start, start + size)
            start += size
        return groups


ROW_GROUPS: dict[str, slice] = FeatureConfig().row_groups()
"""Row groups of the default 158-row image: ``{"mel": slice(0, 128), ..., "zcr": slice(157, 158)}``."""


# -- one clip -----------------------------------------------------------------


@contextlib.contextmanager
def _quiet_cqt() -> Iterator[None]:
    """Silence two benign librosa warnings of the CQT chroma.

    The CQT's low octaves run FFTs longer than a short clip, and a silent
    clip has no spectral peak to estimate the tuning from; librosa warns,
    and the result is still defined and finite.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        warnings.filterwarnings("ignore", message="Trying to estimate tuning", category=UserWarning)
        yield


def _fit_length(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Crop ``y`` to ``n_samples`` or extend it by repeating it from its start."""
    if len(y) == n_samples:
        return y
    return np.resize(y, n_samples)


def feature_image(y: np.ndarray, config: FeatureConfig | None = None) -> np.ndarray:
    """The feature image of one clip, rows in the order of :data:`ROW_GROUPS`.

    One STFT (magnitude ``S``) and one CQT chroma are computed; the rows are

    - mel: ``power_to_db(melspectrogram(S=S**2))`` (ref 1, top_db 80);
    - chroma: ``chroma_cqt(y=y, hop_length=hop)`` (tuning estimated from the clip);
    - contrast: ``spectral_contrast(S=S)``;
    - tonnetz: ``tonnetz(chroma=chroma)``, the chroma above;
    - rms: ``rms(S=S)``;
    - centroid, bandwidth: ``spectral_centroid(S=S)``, ``spectral_bandwidth(S=S)``;
    - flatness: ``spectral_flatness(S=S)`` (of the power spectrum);
    - zcr: ``zero_crossing_rate(y, frame_length=n_fft, hop_length=hop)``.

    Each row equals the standalone librosa call on the waveform with the same
    ``n_fft``, ``hop_length`` and ``window``, except RMS: ``rms(y=y)`` takes
    the root mean square of rectangular frames, ``rms(S=S)`` that of the
    Hann-windowed frames the other rows see (by Parseval,
    ``sqrt(mean((w * frame)**2))``; for a stationary signal about
    ``sqrt(3/8)`` = 0.61 times the rectangular value). The windowed value is
    kept because the report states one Hann window for all of its time
    processing, and it comes free from the shared STFT.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono waveform at ``config.sr``, any float dtype.
    config : FeatureConfig, optional
        The recipe; the default is that of the report.

    Returns
    -------
    np.ndarray [shape=(config.n_rows, 1 + n // hop_length), dtype=float32]
        The image; 158 x 626 for a 10 s clip with the defaults. With
        ``config.n_samples`` set, ``n`` is that length (see
        :class:`FeatureConfig`).

    Raises
    ------
    AudioError
        If ``y`` is not one-dimensional, holds NaN or infinity, or is shorter
        than one window (``config.n_fft`` samples; checked before the length
        policy), or if the image would hold NaN or infinity (the message
        names the row groups).
    """
    config = config or FeatureConfig()
    y = np.asarray(y)
    if y.ndim != 1:
        raise AudioError(f"expected a mono waveform (one dimension), got shape {y.shape}")
    if len(y) < config.n_fft:  # checked before the length policy: repeating it would hide it
        raise AudioError(
            f"the clip has {len(y)} samples, shorter than one window of {config.n_fft} "
            f"samples ({config.n_fft / config.sr * 1000:.0f} ms at {config.sr} Hz); "
            "it is too short to analyse: remove it"
        )
    if not np.isfinite(y).all():
        raise AudioError("the waveform holds NaN or infinite samples")
    y = y.astype(np.float32, copy=False)
    if config.n_samples is not None:
        y = _fit_length(y, config.n_samples)

    sr, n_fft, hop = config.sr, config.n_fft, config.hop_length
    S = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, window=config.window, center=True))
    with _quiet_cqt():
        chroma = librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=hop, n_chroma=_N_CHROMA)

    mel = librosa.feature.melspectrogram(S=S**2, sr=sr, n_fft=n_fft, n_mels=config.n_mels)
    centroid = librosa.feature.spectral_centroid(S=S, sr=sr, n_fft=n_fft)
    rows = {
        "mel": librosa.power_to_db(mel),
        "chroma": chroma,
        "contrast": librosa.feature.spectral_contrast(
            S=S, sr=sr, n_fft=n_fft, n_bands=config.n_bands
        ),
        "tonnetz": librosa.feature.tonnetz(chroma=chroma),
        "rms": librosa.feature.rms(S=S, frame_length=n_fft),
        "centroid": centroid,
        "bandwidth": librosa.feature.spectral_bandwidth(S=S, sr=sr, n_fft=n_fft, centroid=centroid),
        "flatness": librosa.feature.spectral_flatness(S=S),
        "zcr": librosa.feature.zero_crossing_rate(
            y, frame_length=n_fft, hop_length=hop, center=True
        ),
    }
    widths = {name: row.shape[-1] for name, row in rows.items()}
    if len(set(widths.values())) != 1:  # a librosa change of framing would land here
        raise AudioError(f"feature groups disagree on the number of frames: {widths}")
    image = np.concatenate([rows[name] for name in GROUPS], axis=0).astype(np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        bad = [name for name, rows in config.row_groups().items() if not finite[rows].all()]
        raise AudioError(
            f"its feature image holds {np.count_nonzero(~finite)} NaN or infinite value(s) in "
            f"the {', '.join(bad)} rows; listen to the clip and remove it if it is damaged, "
            "or report it to the asdflow developers if it sounds normal"
        )
    return image


def naive_feature_image(y: np.ndarray, config: FeatureConfig | None = None) -> np.ndarray:
    """The same image the slow way: one standalone librosa call per feature.

    This is the recipe as the report lists it, each feature computed from the
    waveform on its own: five STFTs (mel, contrast, centroid, bandwidth,
    flatness) and two CQTs (chroma, and tonnetz again). It exists as the
    reference that :func:`feature_image` is tested and benchmarked against;
    its RMS row is ``rms(y=y)`` of rectangular frames.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono waveform at ``config.sr``, at least ``config.n_fft`` samples.
    config : FeatureConfig, optional
        The recipe; ``n_samples`` is ignored.

    Returns
    -------
    np.ndarray [shape=(config.n_rows, 1 + n // hop_length), dtype=float32]
    """
    config = config or FeatureConfig()
    y = np.asarray(y, dtype=np.float32)
    sr, n_fft, hop = config.sr, config.n_fft, config.hop_length
    stft: dict[str, Any] = {"n_fft": n_fft, "hop_length": hop, "window": config.window}
    with _quiet_cqt():
        rows = [
            librosa.power_to_db(
                librosa.feature.melspectrogram(y=y, sr=sr, n_mels=config.n_mels, **stft)
            ),
            librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=hop),
            librosa.feature.spectral_contrast(y=y, sr=sr, n_bands=config.n_bands, **stft),
            librosa.feature.tonnetz(y=y, sr=sr, hop_length=hop),
            librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop),
            librosa.feature.spectral_centroid(y=y, sr=sr, **stft),
            librosa.feature.spectral_bandwidth(y=y, sr=sr, **stft),
            librosa.feature.spectral_flatness(y=y, **stft),
            librosa.feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop),
        ]
    return np.concatenate(rows, axis=0).astype(np.float32)


# -- row standardisation --------------------------------------------------------


class RowStats:
    """Per-row mean and standard deviation of training images, and standardisation.

    Statistics are accumulated in float64 over every frame of every image
    passed to :meth:`partial_fit`, one image at a time (Chan et al.'s
    merge of means and sums of squared deviations), so a training set that
    does not fit in memory can be streamed, and fitting in chunks gives the
    same result as one pass.

    Parameters
    ----------
    floor : float
        Relative floor of the standard deviation. A row whose training
        values barely vary (a constant row, e.g. the chroma of silent
        clips) would otherwise be divided by about zero and blow up on test
        clips. The standard deviation used is
        ``max(std, floor * rms, 1e-6)``, with ``rms`` the root mean square
        of the row's training values: a row varying less than
        ``floor`` (0.1 %) of its own magnitude counts as constant.

    Attributes
    ----------
    mean_ : np.ndarray [shape=(n_rows,), dtype=float64]
        Mean of each row over all training frames.
    var_ : np.ndarray [shape=(n_rows,), dtype=float64]
        Variance of each row over all training frames (``ddof=0``).
    std_ : np.ndarray [shape=(n_rows,), dtype=float64]
        Floored standard deviation, the divisor of :meth:`transform`.
    n_frames_ : int
        Number of frames (image columns) seen.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.normal(5.0, 2.0, size=(158, 100)) for _ in range(3)]
    >>> stats = RowStats().fit(images)
    >>> z = stats.transform(images[0])
    >>> z.shape, z.dtype
    ((158, 100), dtype('float32'))
    """

    _MIN_STD = 1e-6

    def __init__(self, *, floor: float = 1e-3) -> None:
        if (
            isinstance(floor, bool)
            or not isinstance(floor, (int, float, np.integer, np.floating))
            or not 0.0 <= floor < 1.0
        ):
            raise ParameterError(
                f"RowStats floor={floor!r} is not allowed: use a number from 0 up to (not "
                "including) 1, a fraction of each row's magnitude"
            )
        self.floor = float(floor)

    def fit(self, images: np.ndarray | Iterable[np.ndarray]) -> RowStats:
        """Fit the statistics on ``images``, forgetting earlier ones.

        Parameters
        ----------
        images : np.ndarray [shape=(n_rows, t) or (n, n_rows, t)] or iterable of np.ndarray
            One image, a stack of images, or any iterable (e.g. a generator)
            of images of shape ``(n_rows, t_i)``; widths may differ.

        Returns
        -------
        RowStats
            ``self``.
        """
        for name in ("mean_", "var_", "std_", "n_frames_", "_m2"):
            self.__dict__.pop(name, None)
        return self.partial_fit(images)

    def partial_fit(self, images: np.ndarray | Iterable[np.ndarray]) -> RowStats:
        """Add ``images`` (same forms as :meth:`fit`) to the statistics.

        Returns
        -------
        RowStats
            ``self``.
        """
        if isinstance(images, np.ndarray) and images.ndim == 2:
            images = [images]
        for image in images:
            self._merge(np.asarray(image, dtype=np.float64))
        if not hasattr(self, "n_frames_"):
            raise ModelError("RowStats.partial_fit got no images: pass at least one training image")
        return self

    def _merge(self, image: np.ndarray) -> None:
        if image.ndim != 2 or image.shape[1] == 0:
            raise ModelError(
                f"RowStats expects images of shape (n_rows, n_frames), got {image.shape}"
            )
        n_b = image.shape[1]
        mean_b = image.mean(axis=1)
        m2_b = np.square(image - mean_b[:, None]).sum(axis=1)
        if not hasattr(self, "n_frames_"):
            n, mean, m2 = n_b, mean_b, m2_b
        else:
            if image.shape[0] != self.mean_.shape[0]:
                raise ModelError(
                    f"image has {image.shape[0]} rows, the statistics {self.mean_.shape[0]}"
                )
            n_a = self.n_frames_
            n = n_a + n_b
            delta = mean_b - self.mean_
            mean = self.mean_ + delta * (n_b / n)
            m2 = self._m2 + m2_b + np.square(delta) * (n_a * n_b / n)
        self._set(mean, m2, n)

    def _set(self, mean: np.ndarray, m2: np.ndarray, n_frames: int) -> None:
        self.n_frames_ = int(n_frames)
        self.mean_ = mean
        self._m2 = m2
        self.var_ = m2 / n_frames
        rms = np.sqrt(np.square(mean) + self.var_)
        self.std_ = np.maximum(np.sqrt(self.var_), np.maximum(self.floor * rms, self._MIN_STD))

    def transform(self, image: np.ndarray) -> np.ndarray:
        """Standardise each row: ``(image - mean_) / std_``.

        Parameters
        ----------
        image : np.ndarray [shape=(..., n_rows, t)]
            One image or a stack of images.

        Returns
        -------
        np.ndarray [shape=(..., n_rows, t), dtype=float32]
            The standardised image; on the training images each row has
            mean 0 and standard deviation 1 (unless floored).
        """
        if not hasattr(self, "n_frames_"):
            raise ModelError("RowStats is not fitted: call fit() on training images first")
        image = np.asarray(image)
        if image.ndim < 2 or image.shape[-2] != self.mean_.shape[0]:
            raise ModelError(
                f"image of shape {image.shape} does not have the {self.mean_.shape[0]} rows "
                "the statistics were fitted on"
            )
        z = (image - self.mean_[:, None]) / self.std_[:, None]
        return z.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain arrays, for saving with a detector.

        Returns
        -------
        dict
            ``{"mean": float64 (n_rows,), "var": float64 (n_rows,),
            "n_frames": int, "floor": float}``; :meth:`from_dict` restores it.
        """
        if not hasattr(self, "n_frames_"):
            raise ModelError("RowStats is not fitted: nothing to save")
        return {
            "mean": self.mean_.copy(),
            "var": self.var_.copy(),
            "n_frames": self.n_frames_,
            "floor": self.floor,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RowStats:
        """Rebuild statistics saved by :meth:`to_dict` (further ``partial_fit`` works)."""
        try:
            stats = cls(floor=float(state["floor"]))
            mean = np.asarray(state["mean"], dtype=np.float64)
            var = np.asarray(state["var"], dtype=np.float64)
            n_frames = int(state["n_frames"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"not a saved RowStats state ({err}); re-fit the statistics") from err
        if mean.shape != var.shape or mean.ndim != 1 or n_frames <= 0:
            raise ModelError("saved RowStats state is inconsistent; re-fit the statistics")
        stats._set(mean, var * n_frames, n_frames)
        return stats

    def __repr__(self) -> str:
        fitted = f", n_frames_={self.n_frames_}" if hasattr(self, "n_frames_") else ""
        return f"RowStats(floor={self.floor}{fitted})"


# -- many clips: files, cache, processes ------------------------------------------


def _path_of(clip: Any) -> Path:
    """The file of a :class:`asdflow.data.Clip` or of a plain path."""
    return Path(getattr(clip, "path", clip))


def nominal_length(clips: Sequence[Any], *, sr: int = 16000) -> int:
    """The most common length of ``clips``, in samples at ``sr``: a machine's nominal length.

    Read from the file headers (no audio is decoded); a file at another
    sample rate counts with its length after resampling. Ties go to the
    longer length. Fit it on a machine's training clips and put it in
    ``FeatureConfig(n_samples=...)`` for training and test alike.

    Parameters
    ----------
    clips : sequence of Clip or path
        The clips, usually a machine type's training clips.
    sr : int
        Sample rate the clips will be loaded at.

    Returns
    -------
    int
        Length in samples (160000 for a 10 s DCASE clip).

    Raises
    ------
    AudioError
        When there is no clip, or a file cannot be opened or has no audio
        header; the message names the file and why.
    ParameterError
        When ``sr`` is not a positive integer.
    """
    check_sample_rate(sr)
    if not clips:
        raise AudioError("nominal_length needs at least one clip")
    lengths: Counter[int] = Counter()
    for clip in clips:
        path = _path_of(clip)
        with open_audio(path) as file:  # names the file and the cause (permission denied...)
            try:
                info = soundfile.info(file)
            except (RuntimeError, OSError) as err:  # LibsndfileError is a RuntimeError
                reason = getattr(err, "error_string", None) or str(err)
                raise AudioError(
                    f"{display_path(path)}: cannot read the audio header ({reason})"
                ) from err
        lengths[int(np.ceil(info.frames * sr / info.samplerate))] += 1
    return max(lengths, key=lambda n: (lengths[n], n))


def _load(path: Path, sr: int) -> np.ndarray:
    return load_audio(path, sr=sr)


def default_cache() -> Path:
    """Folder of the feature cache: ``<cache_dir()>/features`` (see :func:`asdflow.files.cache_dir`)."""
    return cache_dir() / "features"


def file_digest(path: str | os.PathLike[str]) -> str:
    """A hash of the bytes of a file: 32 hexadecimal digits (BLAKE2b, 128 bits).

    Two files with the same digest have the same content, whatever their
    names, sizes or modification times: an edit that keeps the size and the
    modification time (``touch -r``, a copy from an archive) changes it, a
    ``touch`` or a move does not. Reading and hashing a 10 s, 16 kHz WAV file
    (320 kB) costs well under 1 % of computing its feature image.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str

    Raises
    ------
    AudioError
        When the file does not exist or cannot be read; the message names it
        and the cause ("permission denied", ...).
    """
    digest = hashlib.blake2b(digest_size=16)
    with open_audio(path) as file:
        try:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        except OSError as err:
            raise AudioError(
                f"{display_path(path)}: cannot be read ({err.strerror or err})"
            ) from err
    return digest.hexdigest()


def cache_key(path: str | os.PathLike, config: FeatureConfig) -> str:
    """The cache key of one file under ``config``.

    A hash of the recipe version, the librosa version, the configuration and
    the :func:`file_digest` of the file's bytes. Editing or replacing the
    file, or changing the configuration, gives a new key, even when the
    edit keeps the file's size and modification time; moving, renaming or
    touching the file keeps its entries.

    Raises
    ------
    AudioError
        If the file does not exist or cannot be read.
    """
    identity = {
        "version": FEATURES_VERSION,
        "librosa": librosa.__version__,  # type: ignore[attr-defined]  # set by its lazy loader
        "config": asdict(config),
        "content": file_digest(path),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _read_entry(entry: Path, config: FeatureConfig) -> np.ndarray | None:
    """The cached image, or None if absent or not a valid image (then it is recomputed).

    An entry that cannot be read at all (a folder, a file without read
    permission) counts as absent.
    """
    try:
        image = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):  # missing, unreadable, truncated or not .npy
        return None
    expected_t = None if config.n_samples is None else config.n_frames(config.n_samples)
    if (
        not isinstance(image, np.ndarray)  # an .npz archive loads as NpzFile
        or image.dtype != np.float32
        or image.ndim != 2
        or image.shape[0] != config.n_rows
        or image.shape[1] == 0
        or (expected_t is not None and image.shape[1] != expected_t)
        or not np.isfinite(image).all()
    ):
        return None
    return image


def _write_entry(entry: Path, image: np.ndarray) -> str | None:
    """Write ``image`` to ``entry`` with :func:`asdflow.files.atomic_write`.

    Returns
    -------
    str or None
        None when written; otherwise why not (the entry is a folder, the
        disk is full...): the image is still good, only not cached.
    """
    try:
        files.atomic_write(entry, lambda file: np.save(file, image, allow_pickle=False))
    except ParameterError as err:  # the folder went away or became read-only
        return str(err)
    except OSError as err:
        if entry.is_dir():
            return f"{display_path(entry)} is a folder"
        return err.strerror or str(err)
    return None


@dataclass(frozen=True)
class _Result:
    """What a worker returns for one clip."""

    image: np.ndarray
    n_samples: int
    """Length of the clip as loaded, before the length policy."""
    write_error: str | None
    """Why its cache entry could not be written, or None."""


def _compute(path: Path, config: FeatureConfig, entry: Path | None) -> _Result:
    """Load one file, compute its image and store it in the cache (worker function)."""
    y = _load(path, config.sr)  # its errors name the file already
    try:
        image = feature_image(y, config)
    except AudioError as err:
        raise AudioError(f"{display_path(path)}: {err}") from err
    write_error = None if entry is None else _write_entry(entry, image)
    return _Result(image, len(y), write_error)


def _compute_star(args: tuple[Path, FeatureConfig, Path | None]) -> _Result:
    return _compute(*args)


@functools.cache
def _warm_up() -> None:
    """Compute one small image in this process, once.

    librosa loads most of its modules and compiled functions on first use,
    which takes seconds. Done here before the pool forks, every worker
    inherits them instead of loading them again, in every pool.
    """
    feature_image(np.random.default_rng(0).standard_normal(4096).astype(np.float32))


def _one_thread_per_worker() -> None:
    """Pool initializer: one BLAS thread per worker process.

    The workers already use every core; BLAS threads on top would only
    compete for them (OpenBLAS threads spin while they wait).
    """
    threadpool_limits(limits=1, user_api="blas")


def n_cores() -> int:
    """How many CPU cores this process may use (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_n_jobs(n_jobs: object) -> None:
    """Check the ``n_jobs`` of :func:`extract` (``--jobs`` of ``asdflow features``).

    Raises
    ------
    ParameterError
        Unless ``n_jobs`` is None, -1 or an integer of at least 1.
    """
    if n_jobs is None or (_is_int(n_jobs) and (n_jobs == -1 or n_jobs >= 1)):
        return
    if not _is_int(n_jobs):
        raise ParameterError(
            f"n_jobs={n_jobs!r}: --jobs must be an integer, at least 1 (or -1 for every core)"
        )
    raise ParameterError(
        f"n_jobs={n_jobs}: --jobs must be at least 1 (or -1 for every core); "
        "it is the number of worker processes"
    )


def _open_cache(folder: Path) -> bool:
    """Prepare the cache folder; True when entries can be written into it.

    A folder that cannot be created or written to is not an error: the
    entries it holds are still read, the missing images are computed and not
    stored, and one warning says so. Stale temporary files of writers killed
    more than an hour ago are removed.

    Raises
    ------
    ParameterError
        When ``folder`` is a file or lies under a file.
    """
    shown = display_path(folder)
    fix = "make it writable, or choose another cache folder (cache=..., or ASDFLOW_CACHE)"
    try:
        for parent in (folder, *folder.parents):
            if parent.exists() and not parent.is_dir():
                where = "is a file" if parent == folder else f"lies under the file {parent}"
                raise ParameterError(
                    f"the feature cache {shown} cannot be used: it {where}, not a folder; "
                    "pass another folder as cache=... (or set ASDFLOW_CACHE)"
                )
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "permission denied" if isinstance(err, PermissionError) else err.strerror
        warnings.warn(
            f"the feature cache {shown} cannot be created ({reason}): the features are "
            f"computed but not cached; {fix}",
            stacklevel=3,
        )
        return False
    if not os.access(folder, os.W_OK | os.X_OK):
        warnings.warn(
            f"the feature cache {shown} is not writable (permission denied): the images it "
            f"holds are used, the others are computed but not cached; {fix}",
            stacklevel=3,
        )
        return False
    files.remove_leftovers(folder, older_than=_LEFTOVER_AGE)
    return True


def _length_notice(
    paths: Sequence[Path], results: dict[int, _Result], config: FeatureConfig, n_cached: int
) -> str | None:
    """The one message saying how many computed clips the length policy cut or repeated."""
    if config.n_samples is None:
        return None
    cut = [i for i, result in results.items() if result.n_samples > config.n_samples]
    repeated = [i for i, result in results.items() if result.n_samples < config.n_samples]
    if not cut and not repeated:
        return None
    nominal = f"{config.n_samples / config.sr:g} s ({config.n_samples} samples)"
    parts = []
    if cut:
        verb = "was" if len(cut) == 1 else "were"
        parts.append(
            f"{len(cut)} of {len(results)} clips {verb} longer than the nominal {nominal} and "
            f"{verb} cut to it (e.g. {display_path(paths[min(cut)])})"
        )
    if repeated:
        verb = "was" if len(repeated) == 1 else "were"
        start = "" if cut else f" of {len(results)} clips"
        nominal_again = "" if cut else f" than the nominal {nominal}"
        parts.append(
            f"{len(repeated)}{start} {verb} shorter{nominal_again} and {verb} repeated to "
            f"fill it (e.g. {display_path(paths[min(repeated)])})"
        )
    cached = f" ({n_cached} clips came from the cache and are not counted)" if n_cached else ""
    return "; ".join(parts) + cached


def extract(
    clips: Sequence[Any],
    config: FeatureConfig | None = None,
    *,
    cache: str | os.PathLike | bool | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Feature images of many clips, computed in parallel and cached on disk.

    Parameters
    ----------
    clips : sequence of Clip or path
        :class:`asdflow.data.Clip` records or paths of audio files.
    config : FeatureConfig, optional
        The recipe (default: the report's). Set ``n_samples`` (see
        :func:`nominal_length`) when a machine's clips differ in length.
    cache : path, bool or None
        Folder of the cache entries. ``None`` or ``True``: the default
        folder, :func:`default_cache` (``$ASDFLOW_CACHE/features`` or
        ``~/.cache/asdflow/features``); ``False``: no cache. An entry is one
        ``.npy`` file per clip named by :func:`cache_key` (a hash of the
        file's bytes, so a moved or touched file keeps its entry), written
        with :func:`asdflow.files.atomic_write`; temporary files older than an
        hour (left by killed writers) are removed. An entry that cannot be
        read, or is not a finite float32 image of the expected shape, is
        recomputed and replaced. A read-only cache still serves its entries:
        the other images are computed and not stored (one warning), because
        the cache only saves time and a shared read-only cache is a normal
        set-up; a cache path that is a file is a :class:`ParameterError`.
    n_jobs : int or None
        Worker processes for the clips not in the cache. ``1`` computes in
        this process; ``-1`` uses every core; ``None`` uses every core when
        at least 8 clips are missing from the cache and this process
        otherwise (a pool costs more than it saves on a handful of clips).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    list of np.ndarray [shape=(config.n_rows, t_i), dtype=float32]
        One image per clip, in the order of ``clips``.

    Raises
    ------
    AudioError
        If a file is missing, unreadable (the message says why, e.g.
        "permission denied") or too short, or its image would not be finite;
        the message names it.
    ParameterError
        If ``n_jobs`` is 0 or below (other than -1), or the cache folder is a
        file.

    Warns
    -----
    UserWarning
        Once per call, when the length policy (``config.n_samples``) cut or
        repeated some of the clips computed, with their counts and an
        example; once when the cache folder cannot be written to (its entries
        are still read; the other images are computed, not cached); once when
        some entries could not be written (e.g. an entry that is a folder).
    """
    check_n_jobs(n_jobs)
    config = config or FeatureConfig()
    paths = [_path_of(clip) for clip in clips]
    if cache is False:
        folder = None
    elif cache is None or cache is True:
        folder = default_cache()
    else:
        folder = Path(cache)
    writable = folder is not None and _open_cache(folder)

    images: list[np.ndarray | None] = [None] * len(paths)
    entries: list[Path | None] = [None] * len(paths)
    if folder is not None:
        for i, path in enumerate(paths):
            entry = entries[i] = folder / f"{cache_key(path, config)}.npy"
            images[i] = _read_entry(entry, config)
    todo = [i for i, image in enumerate(images) if image is None]

    if n_jobs is None:
        n_jobs = n_cores() if len(todo) >= _POOL_MIN_CLIPS else 1
    elif n_jobs == -1:
        n_jobs = n_cores()
    n_jobs = max(1, min(n_jobs, len(todo)))

    tasks = [(paths[i], config, entries[i] if writable else None) for i in todo]
    done: dict[int, _Result] = {}
    with tqdm(
        total=len(paths),
        initial=len(paths) - len(todo),
        desc="features",
        unit="clip",
        disable=not progress,
    ) as bar:
        if n_jobs == 1:
            results: Iterable[_Result] = map(_compute_star, tasks)
            for i, result in zip(todo, results, strict=True):
                done[i] = result
                bar.update()
        else:
            if multiprocessing.get_start_method() == "fork":
                _warm_up()
            chunksize = max(1, min(8, len(tasks) // (4 * n_jobs)))
            executor = ProcessPoolExecutor(max_workers=n_jobs, initializer=_one_thread_per_worker)
            try:
                results = executor.map(_compute_star, tasks, chunksize=chunksize)
                for i, result in zip(todo, results, strict=True):
                    done[i] = result
                    bar.update()
            finally:
                executor.shutdown(wait=True, cancel_futures=True)

    for i, result in done.items():
        images[i] = result.image
    notice = _length_notice(paths, done, config, n_cached=len(paths) - len(todo))
    if notice:
        warnings.warn(notice, stacklevel=2)
    failed = [i for i, result in done.items() if result.write_error is not None]
    if failed:  # only writes into a cache folder can fail
        assert folder is not None
        first = min(failed)
        warnings.warn(
            f"{len(failed)} of {len(done)} feature images could not be written into the cache "
            f"{display_path(folder)} ({done[first].write_error}); they were computed but not "
            "cached and will be computed again next time. Remove what is in the way or choose "
            "another cache folder.",
            stacklevel=2,
        )
    return images  # type: ignore[return-value]
