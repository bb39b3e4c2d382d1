"""The DCASE 2024 Task 2 baseline: a dense autoencoder on stacked log-mel frames.

This is the "Baseline" column of the report's Table 1 (García-de-la-Puente
et al., DCASE 2024 Task 2 technical report), the autoencoder of the challenge
organisers (Harada et al., EUSIPCO 2023; code ``nttcslab/dcase2023_task2_baseline_ae``,
which also serves the 2024 task). The steps:

1. **log mel**: 128 mel bands, ``n_fft`` 1024, hop 512, power 2, centred
   frames, ``10 log10(max(mel, eps))`` (:func:`log_mel`);
2. **vectors**: 5 consecutive frames concatenated into one 640-dim vector, one
   vector per frame position, so a clip of ``T`` frames gives ``T - 4``
   vectors (:func:`frame_vectors`);
3. **autoencoder**: Dense 640-128-128-128-128-8-128-128-128-128-640, each
   layer but the last followed by BatchNorm1d (momentum 0.01, eps 1e-3) and
   ReLU (:class:`AENet`), trained with MSE, Adam (lr 1e-3), batches of 256
   vectors, 100 epochs, 10 % of the vectors held out for validation;
4. **scores** (:class:`AutoencoderDetector`):

   - ``"mse"``: the mean squared reconstruction error over all vectors of
     the clip;
   - ``"mahalanobis"``: the residuals ``x - x_hat`` of the training vectors
     are cut into 128-dim blocks (one per stacked frame) and their covariance
     is estimated separately on source and target training clips. A clip's
     mean residual block ``r`` gets the squared Mahalanobis distance
     ``r^T S^-1 r`` under each covariance ``S``; the score is the smaller
     of the two;

5. **decision**: a clip is anomalous when its score exceeds the 0.9 quantile
   of a gamma distribution fitted to the training scores
   (:func:`asdflow.calibration.gamma_threshold`).

What the official code does, and where this module differs (read from
``networks/dcase2023t2_ae/``, ``networks/criterion/mahala.py`` and
``datasets/loader_common.py`` of the repository above):

- the official Mahalanobis score is exactly ``mean(r)^T S^-1 mean(r)`` with
  ``r`` the 128-dim residual blocks of the clip (it averages the matrix
  ``delta S^-1 delta^T`` over both axes, which equals the quadratic form of
  the mean block): no square root, no centring of the test residual;
- the official covariance sums outer products of residual blocks centred
  per training batch and divides by the number of *vectors* minus one
  (five blocks per vector). Here it is the ordinary sample covariance of all
  blocks (centred on their mean, divided by the number of blocks minus one).
  The two differ by about a constant factor, which scales every score alike:
  rankings, AUCs and decisions (the threshold is fitted on the same scale)
  do not change. A tiny ridge (``cov_ridge`` times the mean variance) is
  added before inversion so that a domain with few clips still gives a
  finite distance; the official code inverts without one;
- when training holds no target clip, the target covariance is the source
  one, as in the official code;
- the official gamma fit uses the mean losses of training batches; here it
  uses the scores of the normal training clips, the quantity the threshold
  is compared with.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from asdflow import storage
from asdflow.base import BaseDetector, decide
from asdflow.calibration import domain_threshold, holdout_split, training_domains
from asdflow.data import load_audio
from asdflow.errors import AudioError, ModelError, ParameterError

if TYPE_CHECKING:
    from asdflow.data import Clip

__all__ = [
    "AEConfig",
    "AENet",
    "AutoencoderDetector",
    "FORMAT_VERSION",
    "SCORE_MODES",
    "clip_vectors",
    "extract_vectors",
    "frame_vectors",
    "log_mel",
    "mahalanobis_scores",
    "residual_covariance",
]

#: Version of the layout of the files written by :meth:`AutoencoderDetector.save`;
#: :meth:`AutoencoderDetector.load` refuses any other.
FORMAT_VERSION = 3

SCORE_MODES = ("mse", "mahalanobis")
"""The two scores of the baseline."""

_FILE_KIND = "asdflow.baseline.AutoencoderDetector"
_LEARNED = (
    "machine_",
    "net_",
    "precision_source_",
    "precision_target_",
    "train_scores_",
    "holdout_scores_",
    "holdout_domains_",
    "thresholds_",
    "losses_",
    "val_losses_",
)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AEConfig:
    """Hyper-parameters of :class:`AutoencoderDetector` (defaults: the DCASE baseline).

    Parameters
    ----------
    sr : int
        Sample rate the clips are loaded at, in Hz.
    n_mels, n_fft, hop_length, power : int, int, int, float
        Log-mel settings: 128 bands, 1024-sample window (64 ms), hop 512
        (32 ms), power spectrum.
    n_frames : int
        Consecutive frames per input vector (5, giving 640 dims).
    hidden : int
        Width of the hidden dense layers (128).
    bottleneck : int
        Width of the code layer (8).
    n_hidden : int
        Hidden layers on each side of the code layer (4).
    epochs : int
        Passes over the training vectors (100).
    batch_size : int
        Vectors per optimiser step (256).
    lr : float
        Adam learning rate (1e-3).
    validation_split : float
        Fraction of the training vectors held out to report a validation
        loss (0.1). As in the official code they are used neither for the
        weights nor for the residual covariances.
    score_mode : str
        Default score, ``"mse"`` or ``"mahalanobis"``; each call of
        :meth:`AutoencoderDetector.score_samples` may choose the other.
    threshold_quantile : float
        Quantile of the gamma fit to the held-out scores (0.9; see
        :func:`asdflow.calibration.domain_threshold`).
    holdout : float
        Share of the source domain's training *clips* set aside before
        training (:func:`asdflow.calibration.holdout_split`, seeded by
        ``seed``): the decision thresholds are fitted to their scores, which
        the network never saw.
    holdout_target : float
        The same for the target domain (half of its clips). With both 0 the
        thresholds are fitted to the training clips' own scores, as the
        official code does.
    cov_ridge : float
        Added to the diagonal of each residual covariance, relative to its
        mean variance, before inversion.
    seed : int
        Seed of the initial weights, the validation split and the shuffling.
    """

    sr: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 512
    power: float = 2.0
    n_frames: int = 5
    hidden: int = 128
    bottleneck: int = 8
    n_hidden: int = 4
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    validation_split: float = 0.1
    score_mode: str = "mse"
    threshold_quantile: float = 0.9
    holdout: float = 0.1
    holdout_target: float = 0.5
    cov_ridge: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        owner = "AEConfig"
        checked: dict[str, Any] = {
            name: storage.whole_number(owner, name, getattr(self, name), minimum)
            for name, minimum in (
                ("sr", 1),
                ("n_mels", 1),
                ("n_fft", 1),
                ("hop_length", 1),
                ("n_frames", 1),
                ("hidden", 1),
                ("bottleneck", 1),
                ("n_hidden", 0),
                ("epochs", 1),
                ("batch_size", 2),
                ("seed", 0),
            )
        }
        for name in ("power", "lr"):
            checked[name] = storage.real_number(
                owner, name, getattr(self, name), low=0, low_open=True
            )
        checked["cov_ridge"] = storage.real_number(owner, "cov_ridge", self.cov_ridge, low=0)
        checked["validation_split"] = storage.real_number(
            owner, "validation_split", self.validation_split, low=0, high=1, high_open=True
        )
        checked["holdout"] = storage.real_number(
            owner, "holdout", self.holdout, low=0, high=1, high_open=True
        )
        checked["holdout_target"] = storage.real_number(
            owner, "holdout_target", self.holdout_target, low=0, high=1, high_open=True
        )
        checked["threshold_quantile"] = storage.real_number(
            owner,
            "threshold_quantile",
            self.threshold_quantile,
            low=0,
            high=1,
            low_open=True,
            high_open=True,
        )
        checked["score_mode"] = storage.one_of(owner, "score_mode", self.score_mode, SCORE_MODES)
        for name, value in checked.items():  # JSON values become the declared types
            object.__setattr__(self, name, value)

    @property
    def input_dim(self) -> int:
        """Length of one input vector, ``n_mels * n_frames`` (640)."""
        return self.n_mels * self.n_frames

    @classmethod
    def quick(cls, **changes: Any) -> AEConfig:
        """Settings for a CPU and a few short synthetic clips: the same network, 20 epochs of 64.

        The network starts far from the log-mel values (tens of dB below
        zero) and Adam at lr 1e-3 needs several hundred steps to get there:
        smaller batches give a small data set enough steps. On the quick
        factory of :mod:`asdflow.synth` (44 training clips of 2 s per machine
        type) that is about 700 steps. A quarter of the source clips (and
        half of the target clips) is held out for the thresholds
        (``holdout=0.25``, as ``CFlowConfig.quick``).
        Keyword arguments override single fields, e.g.
        ``AEConfig.quick(epochs=3)``.
        """
        settings: dict[str, Any] = {"epochs": 20, "batch_size": 64, "holdout": 0.25}
        settings.update(changes)
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain Python values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ModelError`."""
        return storage.settings_from_dict(cls, data, "autoencoder")


def _check_mode(mode: str) -> None:
    if mode not in SCORE_MODES:
        raise ParameterError(f"score_mode must be one of {SCORE_MODES}, got {mode!r}")


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


def log_mel(y: np.ndarray, config: AEConfig | None = None) -> np.ndarray:
    """Log-mel energies of a mono signal, as the DCASE baseline computes them.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono signal at ``config.sr`` Hz.
    config : AEConfig or None
        Settings (None: ``AEConfig()``).

    Returns
    -------
    np.ndarray [shape=(n_mels, 1 + n // hop_length), dtype=float32]
        ``20 / power * log10(max(mel, eps))`` in dB, i.e. ``10 log10`` of
        the power mel spectrogram, with ``eps`` the float64 machine epsilon;
        centred frames.
    """
    cfg = config or AEConfig()
    mel = librosa.feature.melspectrogram(
        y=np.asarray(y, dtype=np.float32),
        sr=cfg.sr,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        power=cfg.power,
    )
    db = 20.0 / cfg.power * np.log10(np.maximum(mel, sys.float_info.epsilon))
    return db.astype(np.float32)


def frame_vectors(spectrogram: np.ndarray, n_frames: int = 5) -> np.ndarray:
    """Stack ``n_frames`` consecutive frames into one vector per frame position.

    Vector ``i`` is the concatenation of frames ``i, i+1, ..., i+n_frames-1``,
    frame after frame: entries ``[t * n_mels, (t + 1) * n_mels)`` hold frame
    ``i + t``.

    Parameters
    ----------
    spectrogram : np.ndarray [shape=(n_mels, T)]
        Log-mel energies.
    n_frames : int
        Frames per vector.

    Returns
    -------
    np.ndarray [shape=(max(T - n_frames + 1, 0), n_mels * n_frames), dtype=float32]
    """
    n_mels, n_time = spectrogram.shape
    n_vectors = n_time - n_frames + 1
    if n_vectors < 1:
        return np.empty((0, n_mels * n_frames), dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(spectrogram.T, n_frames, axis=0)
    # windows: (n_vectors, n_mels, n_frames) -> frame-major vectors.
    return np.ascontiguousarray(windows.transpose(0, 2, 1).reshape(n_vectors, -1), np.float32)


def clip_vectors(y: np.ndarray, config: AEConfig | None = None) -> np.ndarray:
    """The autoencoder's input vectors of one signal: :func:`log_mel` then :func:`frame_vectors`.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono signal at ``config.sr`` Hz.
    config : AEConfig or None

    Returns
    -------
    np.ndarray [shape=(1 + n // hop_length - n_frames + 1, n_mels * n_frames), dtype=float32]
        For a 10 s clip at 16 kHz: 313 frames, 309 vectors of 640 values.
    """
    cfg = config or AEConfig()
    return frame_vectors(log_mel(y, cfg), cfg.n_frames)


def extract_vectors(
    clips: Sequence[Clip], config: AEConfig | None = None, *, progress: bool = True
) -> list[np.ndarray]:
    """Load every clip and compute its vectors (:func:`clip_vectors`).

    Parameters
    ----------
    clips : sequence of asdflow.data.Clip
    config : AEConfig or None
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of np.ndarray [shape=(n_vectors, input_dim), dtype=float32]
        One array per clip.

    Raises
    ------
    AudioError
        If a clip cannot be read or is too short for one vector.
    """
    cfg = config or AEConfig()
    out = []
    for clip in tqdm(clips, desc="log-mel vectors", unit="clip", disable=not progress):
        vectors = clip_vectors(load_audio(clip.path, sr=cfg.sr), cfg)
        if len(vectors) == 0:
            raise AudioError(
                f"{clip.path}: too short for one vector of {cfg.n_frames} frames "
                f"(hop {cfg.hop_length} samples); use clips of at least "
                f"{(cfg.n_frames - 1) * cfg.hop_length} samples."
            )
        out.append(vectors)
    return out


# ---------------------------------------------------------------------------
# The network and the Mahalanobis statistics
# ---------------------------------------------------------------------------


class AENet(nn.Module):
    """Dense autoencoder: input - hidden x n_hidden - bottleneck - hidden x n_hidden - input.

    Every linear layer except the output one is followed by
    ``BatchNorm1d(momentum=0.01, eps=1e-3)`` and ReLU (the bottleneck
    included), as in the DCASE baseline.

    Parameters
    ----------
    input_dim : int
        Length of the input vectors (640).
    hidden : int
        Width of the hidden layers (128).
    bottleneck : int
        Width of the code (8).
    n_hidden : int
        Hidden layers per side (4).
    """

    def __init__(
        self, input_dim: int = 640, hidden: int = 128, bottleneck: int = 8, n_hidden: int = 4
    ) -> None:
        super().__init__()
        widths = [input_dim, *[hidden] * n_hidden, bottleneck, *[hidden] * n_hidden, input_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(widths) - 2:
                layers += [nn.BatchNorm1d(d_out, momentum=0.01, eps=1e-3), nn.ReLU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` [shape=(batch, input_dim)]; returns the same shape."""
        return self.layers(x)


def residual_covariance(blocks: np.ndarray, *, ridge: float = 0.0) -> np.ndarray:
    """Sample covariance of residual blocks, with an optional relative ridge.

    Parameters
    ----------
    blocks : np.ndarray [shape=(n, d)]
        Residual blocks ``x - x_hat`` (``d = n_mels``), ``n >= 2``.
    ridge : float
        Added to the diagonal, times the mean of the diagonal.

    Returns
    -------
    np.ndarray [shape=(d, d), dtype=float64]
    """
    blocks = np.asarray(blocks, dtype=np.float64)
    if blocks.shape[0] < 2:
        raise ModelError("a residual covariance needs at least two residual blocks")
    cov = np.cov(blocks, rowvar=False)
    cov = np.atleast_2d(cov)
    return cov + ridge * float(np.mean(np.diag(cov))) * np.eye(cov.shape[0])


def _all_constant(vectors: Sequence[np.ndarray], floor: float = 1e-3) -> bool:
    """Whether every dimension of the vectors of all clips is constant (silent clips).

    A dimension counts as constant when its standard deviation over every
    vector of every clip is at most ``floor`` times its root mean square, the
    rule :class:`asdflow.features.RowStats` uses for constant rows. Silent
    clips give the log-mel floor (-156.5 dB) in every dimension.
    """
    stacked = np.concatenate([np.asarray(v, dtype=np.float64) for v in vectors])
    mean = stacked.mean(axis=0)
    spread = stacked.std(axis=0)
    return bool(np.all(spread <= floor * np.sqrt(np.square(mean) + np.square(spread))))


def mahalanobis_scores(mean_residuals: np.ndarray, precisions: Sequence[np.ndarray]) -> np.ndarray:
    """Smallest squared Mahalanobis distance of each mean residual from zero.

    Parameters
    ----------
    mean_residuals : np.ndarray [shape=(n_clips, d)]
        Mean residual block of each clip.
    precisions : sequence of np.ndarray [shape=(d, d)]
        Inverse covariances (source, target).

    Returns
    -------
    np.ndarray [shape=(n_clips,), dtype=float64]
        ``min_k r^T P_k r`` per clip.
    """
    r = np.asarray(mean_residuals, dtype=np.float64)
    distances = [
        np.einsum("nd,de,ne->n", r, np.asarray(p, dtype=np.float64), r) for p in precisions
    ]
    return np.min(np.stack(distances), axis=0)


# ---------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------


class AutoencoderDetector(BaseDetector):
    """The DCASE 2024 baseline autoencoder with MSE and Mahalanobis scores.

    Parameters
    ----------
    config : AEConfig or None
        Hyper-parameters (None: the baseline's, ``AEConfig()``).
    device : str or torch.device or None
        Where the network runs (None: CUDA if available, else CPU).
    progress : bool
        Show progress bars (feature extraction, epochs).

    Attributes
    ----------
    machine_ : str or None
        Machine type of the training clips (``"fan"``); None when trained on
        vector arrays. Clips of another machine type are refused by
        :meth:`score_samples`, and :meth:`load` can check it.
    net_ : AENet
        The trained network, in eval mode.
    precision_source_, precision_target_ : np.ndarray [shape=(n_mels, n_mels)]
        Inverse covariances of the residual blocks of the source and target
        training clips.
    train_scores_ : dict of str to np.ndarray [shape=(n_fit,)]
        Scores of the clips the network was trained on, in each mode.
    holdout_scores_ : dict of str to np.ndarray [shape=(n_held,)]
        Scores of the held-out training clips (``config.holdout`` and
        ``config.holdout_target``) in each mode; empty when nothing was held out.
    holdout_domains_ : np.ndarray of str [shape=(n_held,)]
        Their domains.
    thresholds_ : dict of str to float
        Decision threshold of each mode:
        :func:`asdflow.calibration.domain_threshold` of the held-out scores
        (of the training scores when nothing was held out).
    losses_, val_losses_ : list of float
        Mean training and validation MSE of each epoch (``val_losses_`` is
        empty without a validation split).

    Examples
    --------
    On clips, ``AutoencoderDetector(AEConfig.quick()).fit(train_clips)``; here
    on the vectors of 12 made-up clips (:func:`clip_vectors` gives real ones):

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> vectors = [rng.normal(size=(200, 640)).astype(np.float32) for _ in range(12)]
    >>> config = AEConfig.quick(epochs=1, batch_size=256)
    >>> det = AutoencoderDetector(config, progress=False).fit(vectors)
    >>> det.score_samples(vectors[:2], score_mode="mahalanobis").shape
    (2,)
    >>> det.predict(vectors[:2]).tolist() in ([0, 0], [0, 1], [1, 0], [1, 1])
    True
    """

    def __init__(
        self,
        config: AEConfig | None = None,
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config if config is not None else AEConfig()
        self.device = device
        self.progress = progress

    file_kind = _FILE_KIND
    format_version = FORMAT_VERSION
    file_description = "an autoencoder detector file"
    fitted_attribute = "thresholds_"

    @property
    def threshold_(self) -> float:  # type: ignore[override]  # read-only: one per score mode
        """Decision threshold of the configured score mode."""
        self._check_fitted()
        return self.thresholds_[self.config.score_mode]

    # -- inputs ---------------------------------------------------------------

    def _vectors(self, data: Sequence[Clip] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-clip vectors from clips or from precomputed ``(n_vectors, input_dim)`` arrays."""
        items: list[Any] = list(data)
        if not items:
            raise ModelError("no clips or vectors given")
        if all(isinstance(x, np.ndarray) for x in items):
            vectors = [np.asarray(x, dtype=np.float32) for x in items]
        elif any(isinstance(x, np.ndarray) for x in items):
            raise ModelError("mix of vector arrays and clips: pass one kind only")
        else:
            vectors = extract_vectors(items, self.config, progress=self.progress)
        dim = self.config.input_dim
        for i, v in enumerate(vectors):
            if v.ndim != 2 or v.shape[1] != dim or v.shape[0] == 0:
                raise ModelError(
                    f"clip {i}: expected vectors of shape (n >= 1, {dim}), got {v.shape}; "
                    "compute them with asdflow.baseline.clip_vectors and the same AEConfig"
                )
            if not np.all(np.isfinite(v)):
                raise ModelError(f"clip {i}: vectors contain NaN or infinite values")
        return vectors

    @staticmethod
    def _domains(data: Sequence[Any], domains: Sequence[str] | None) -> list[str]:
        return training_domains(data, domains)

    # -- training -------------------------------------------------------------

    def fit(
        self,
        data: Sequence[Clip] | Sequence[np.ndarray],
        *,
        domains: Sequence[str] | None = None,
    ) -> AutoencoderDetector:
        """Train the autoencoder on normal clips, then fit covariances and thresholds.

        Parameters
        ----------
        data : sequence of Clip, or sequence of np.ndarray [shape=(n_vectors, input_dim)]
            Normal training clips of one machine type (recorded as
            ``machine_``), or their vectors (:func:`clip_vectors`).
        domains : sequence of str, optional
            ``"source"`` or ``"target"`` per clip; by default each clip's
            ``domain`` (``"source"`` for vector arrays).

        Returns
        -------
        self

        Raises
        ------
        ParameterError
            When the clips are of several machine types, or ``domains`` is
            bad.
        ModelError
            On silent training clips (every vector dimension constant), a
            non-finite loss (naming the epoch), non-finite training scores or
            thresholds, or bad inputs. Nothing learned is kept.
        """
        cfg = self.config
        all_items: list[Any] = list(data)
        machine = storage.training_machine(all_items)
        all_domains = self._domains(all_items, domains)
        fit_index, held_index = holdout_split(
            all_domains, cfg.holdout, cfg.seed, cfg.holdout_target
        )
        clip_domains = [all_domains[i] for i in fit_index]
        held_domains = np.array([all_domains[i] for i in held_index], dtype=str)
        every_vector = self._vectors(all_items)
        vectors = [every_vector[i] for i in fit_index]
        held_vectors = [every_vector[i] for i in held_index]
        del every_vector
        if _all_constant(vectors):
            raise ModelError(storage.silent_message(all_items, machine, "dimension"))
        for name in _LEARNED:  # a failed fit must not leave a half-updated detector
            self.__dict__.pop(name, None)
        stacked = torch.from_numpy(np.concatenate(vectors))
        n_total = stacked.shape[0]
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(n_total)
        n_val = math.ceil(cfg.validation_split * n_total) if cfg.validation_split > 0 else 0
        if n_total - n_val < 2:
            raise ModelError(
                f"only {n_total} training vectors: need at least two outside the validation "
                "split; use more or longer clips"
            )
        train_index = torch.from_numpy(np.sort(order[n_val:]))
        val_index = torch.from_numpy(np.sort(order[:n_val]))

        device = self._device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = AENet(cfg.input_dim, cfg.hidden, cfg.bottleneck, cfg.n_hidden)
        net = net.to(device)
        train_x = stacked[train_index].to(device)
        val_x = stacked[val_index].to(device)
        self.losses_, self.val_losses_ = self._train(net, train_x, val_x)
        self.net_ = net.eval()

        # Residual statistics from the vectors the weights were fitted on.
        in_train = np.zeros(n_total, dtype=bool)
        in_train[train_index.numpy()] = True
        per_clip = np.split(in_train, np.cumsum([len(v) for v in vectors])[:-1])
        blocks: dict[str, list[np.ndarray]] = {"source": [], "target": []}
        residuals = self._residuals(vectors)
        for domain, r, used in zip(clip_domains, residuals, per_clip, strict=True):
            blocks[domain].append(r[used].reshape(-1, cfg.n_mels))
        source = np.concatenate(blocks["source"]) if blocks["source"] else None
        target = np.concatenate(blocks["target"]) if blocks["target"] else None
        if source is None:
            source, target = target, None
        assert source is not None  # there is at least one training clip
        cov_source = residual_covariance(source, ridge=cfg.cov_ridge)
        cov_target = (
            cov_source if target is None else residual_covariance(target, ridge=cfg.cov_ridge)
        )
        try:
            self.precision_source_ = np.linalg.inv(cov_source)
            self.precision_target_ = np.linalg.inv(cov_target)
        except np.linalg.LinAlgError as err:
            raise ModelError(
                f"a residual covariance cannot be inverted ({err}); raise AEConfig.cov_ridge "
                "or train on more clips"
            ) from err

        train_scores = {mode: self._scores(residuals, mode) for mode in SCORE_MODES}
        held_residuals = self._residuals(held_vectors)
        held_scores = {
            mode: self._scores(held_residuals, mode) if held_residuals else np.empty(0)
            for mode in SCORE_MODES
        }
        for mode in SCORE_MODES:
            scores = np.concatenate([train_scores[mode], held_scores[mode]])
            bad = int(np.count_nonzero(~np.isfinite(scores)))
            if bad:
                peak = max(float(np.abs(v).max()) for v in vectors)
                raise ModelError(
                    f"the {mode} training scores ({bad} of {scores.size}) of this autoencoder "
                    f"are not finite (input vectors up to {peak:.2g}); nothing was kept: lower "
                    "AEConfig.lr, raise AEConfig.cov_ridge, or check the clips"
                )
        if held_domains.size:
            thresholds = {
                mode: domain_threshold(held_scores[mode], held_domains, cfg.threshold_quantile)
                for mode in SCORE_MODES
            }
        else:
            thresholds = {
                mode: domain_threshold(scores, clip_domains, cfg.threshold_quantile)
                for mode, scores in train_scores.items()
            }
        for mode, threshold in thresholds.items():
            if not math.isfinite(threshold):
                raise ModelError(
                    f"the {mode} decision threshold fitted to the held-out scores is "
                    f"{threshold}; nothing was kept: train again with other settings"
                )
        self.machine_ = machine
        self.train_scores_ = train_scores
        self.holdout_scores_ = held_scores
        self.holdout_domains_ = held_domains
        self.thresholds_ = thresholds
        return self

    def _train(self, net: AENet, train_x: Tensor, val_x: Tensor) -> tuple[list[float], list[float]]:
        cfg = self.config
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        generator = torch.Generator().manual_seed(cfg.seed)
        losses: list[float] = []
        val_losses: list[float] = []
        bar = tqdm(
            range(1, cfg.epochs + 1), desc="autoencoder", unit="epoch", disable=not self.progress
        )
        for epoch in bar:
            net.train()
            order = torch.randperm(train_x.shape[0], generator=generator).to(train_x.device)
            total, count = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = train_x[order[start : start + cfg.batch_size]]
                if batch.shape[0] < 2:  # batch norm needs two vectors, as the official loop
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = F.mse_loss(net(batch), batch)
                loss.backward()
                optimizer.step()
                total += loss.item() * batch.shape[0]
                count += batch.shape[0]
            epoch_loss = total / max(count, 1)
            if not math.isfinite(epoch_loss):
                raise ModelError(
                    f"the training loss became {epoch_loss} in epoch {epoch}; lower AEConfig.lr "
                    "or check the input vectors"
                )
            losses.append(epoch_loss)
            postfix = {"loss": f"{epoch_loss:.3g}"}
            if val_x.shape[0] > 0:
                net.eval()
                with torch.no_grad():
                    val_losses.append(float(F.mse_loss(net(val_x), val_x)))
                postfix["val"] = f"{val_losses[-1]:.3g}"
            bar.set_postfix(postfix)
        return losses, val_losses

    # -- scoring --------------------------------------------------------------

    def _residuals(self, vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``x - x_hat`` of every vector of every clip, in eval mode (float32)."""
        net = self.net_.eval()
        device = self._device
        out = []
        with torch.no_grad():
            for v in vectors:
                x = torch.from_numpy(v).to(device)
                out.append((x - net(x)).cpu().numpy())
        return out

    def _scores(self, residuals: Sequence[np.ndarray], mode: str) -> np.ndarray:
        if mode == "mse":
            return np.array([float(np.mean(np.square(r, dtype=np.float64))) for r in residuals])
        n_mels = self.config.n_mels
        means = np.stack([r.reshape(-1, n_mels).astype(np.float64).mean(axis=0) for r in residuals])
        return mahalanobis_scores(means, [self.precision_source_, self.precision_target_])

    def score_samples(
        self, data: Sequence[Clip] | Sequence[np.ndarray], *, score_mode: str | None = None
    ) -> np.ndarray:
        """Anomaly scores, higher = more anomalous.

        Parameters
        ----------
        data : sequence of Clip, or sequence of np.ndarray [shape=(n_vectors, input_dim)]
            Clips or their vectors.
        score_mode : str, optional
            ``"mse"`` or ``"mahalanobis"``; by default ``config.score_mode``.

        Returns
        -------
        np.ndarray [shape=(n_clips,), dtype=float64]
            Mean squared error (dB squared) or smallest squared Mahalanobis
            distance per clip.

        Raises
        ------
        ParameterError
            For an unknown ``score_mode``.
        ModelError
            For clips of another machine type than ``machine_``.
        """
        self._check_fitted()
        mode = score_mode or self.config.score_mode
        _check_mode(mode)
        items: list[Any] = list(data)
        storage.check_machine(items, self.machine_, "this autoencoder")
        return self._scores(self._residuals(self._vectors(items)), mode)

    def predict(
        self, data: Sequence[Clip] | Sequence[np.ndarray], *, score_mode: str | None = None
    ) -> np.ndarray:
        """Decisions: 1 (anomalous) where the score exceeds that mode's threshold, else 0.

        Returns
        -------
        np.ndarray [shape=(n_clips,), dtype=int64]
        """
        mode = score_mode or self.config.score_mode
        return decide(self.score_samples(data, score_mode=mode), self.thresholds_[mode])

    # -- files ----------------------------------------------------------------

    def learned_state(self) -> dict[str, Any]:
        """Everything learned, as tensors and plain Python values (see :meth:`from_state`).

        The configuration, the network weights, both precision matrices, the
        training and held-out scores, the thresholds and the loss curves.
        """
        self._check_fitted()
        return {
            "config": self.config.to_dict(),
            "machine": self.machine_,
            "net": {k: v.detach().cpu() for k, v in self.net_.state_dict().items()},
            "precision_source": torch.from_numpy(self.precision_source_.copy()),
            "precision_target": torch.from_numpy(self.precision_target_.copy()),
            "train_scores": {k: torch.from_numpy(v.copy()) for k, v in self.train_scores_.items()},
            "holdout_scores": {
                k: torch.from_numpy(v.copy()) for k, v in self.holdout_scores_.items()
            },
            "holdout_domains": [str(d) for d in self.holdout_domains_],
            "thresholds": {k: float(v) for k, v in self.thresholds_.items()},
            "losses": list(self.losses_),
            "val_losses": list(self.val_losses_),
        }

    @classmethod
    def from_state(
        cls,
        data: dict[str, Any],
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> AutoencoderDetector:
        """A fitted detector from :meth:`learned_state` (``device``, ``progress`` as in the constructor)."""
        det = cls(AEConfig.from_dict(data["config"]), device=device, progress=progress)
        det.machine_ = data["machine"]
        cfg = det.config
        net = AENet(cfg.input_dim, cfg.hidden, cfg.bottleneck, cfg.n_hidden)
        net.load_state_dict(data["net"])
        det.net_ = net.to(det._device).eval()
        det.precision_source_ = data["precision_source"].numpy()
        det.precision_target_ = data["precision_target"].numpy()
        det.train_scores_ = {k: v.numpy() for k, v in data["train_scores"].items()}
        det.holdout_scores_ = {k: v.numpy() for k, v in data["holdout_scores"].items()}
        det.holdout_domains_ = np.array(data["holdout_domains"], dtype=str)
        det.thresholds_ = {k: float(v) for k, v in data["thresholds"].items()}
        det.losses_ = [float(v) for v in data["losses"]]
        det.val_losses_ = [float(v) for v in data["val_losses"]]
        return det
