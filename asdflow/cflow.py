"""CFlow: a frozen CNN pyramid and conditional normalizing flows that score every position.

The detector of the report (García-de-la-Puente et al., DCASE 2024 Task 2,
section 3), after CFLOW-AD (Gudovskiy et al., WACV 2022):

1. each clip becomes a 158-row feature image (:mod:`asdflow.features`); every
   row is standardised with the mean and standard deviation of the training
   images (:class:`asdflow.features.RowStats`) and the image is repeated on
   three channels;
2. a frozen CNN (:class:`asdflow.encoder.Encoder`) turns it into a pyramid of
   three feature maps (``layer2``, ``layer3``, ``layer4``);
3. at every scale, one conditional flow (:class:`asdflow.flows.ConditionalFlow`)
   learns the density of the *fibers* of the training maps (the ``C``-vector at
   one position), conditioned on the 2-D positional encoding of the position;
4. at test time, the per-dimension log-likelihood ``log p / C`` of every fiber
   becomes a probability map per scale; the maps are upsampled to the image
   size and summed, and the anomaly map is a constant minus that sum. The clip
   score is the maximum (or mean) of the anomaly map.

The pure math of step 4 lives in small functions (:func:`log_likelihood_per_dim`,
:func:`fit_score_constants`, :func:`probability_map`, :func:`anomaly_map`,
:func:`aggregate_map`) and the learning-rate schedule in
:func:`learning_rate_factor`, so that each is testable without training.
:class:`CFlowDetector` ties them to the training loop.

Two departures from the official CFLOW-AD code, both deliberate (the full
list, with the report's unstated choices, is in :class:`CFlowConfig`):

- **Score constants from the training clips.** The official code subtracts
  the maximum log-likelihood *of the test set* before ``exp`` and takes the
  maximum of the summed map *of the test set* as the final constant, so a
  clip's score depends on which other clips are scored with it (cflow-ad
  issue 24, anomalib issue 169). Here both constants are frozen at the end of
  :meth:`CFlowDetector.fit` from the training clips: a clip gets the same
  score alone or in any batch.
- **The encoder runs once per clip.** The encoder is frozen, so its pyramid
  is computed once, kept in float16 (see :class:`FiberBank`) and every epoch
  draws shuffled fiber batches from it. The official loop re-runs the encoder
  on every image batch of every sub-epoch. Each clip goes through the
  encoder alone, so its features do not depend on the clips beside it.

One addition, off by default in full mode: a fixed affine normalisation of
the fibers in front of each flow (:class:`ScaleDecoder`), which quick mode
needs to learn anything in a few epochs (see :meth:`CFlowConfig.quick`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdflow import storage
from asdflow.errors import ModelError, ParameterError

if TYPE_CHECKING:
    from asdflow.data import Clip
    from asdflow.features import FeatureConfig, RowStats

__all__ = [
    "CFlowConfig",
    "CFlowDetector",
    "FiberBank",
    "ScoreConstants",
    "FORMAT_VERSION",
    "log_likelihood_per_dim",
    "learning_rate_factor",
    "interleave_scales",
    "fit_score_constants",
    "probability_map",
    "anomaly_map",
    "aggregate_map",
    "encode_fibers",
    "fiber_normalisation",
    "ScaleDecoder",
    "build_decoders",
    "build_encoder",
    "choose_device",
    "feature_fibers",
    "fiber_conditions",
]

#: Version of the layout of the files written by :meth:`CFlowDetector.save`.
#: Bump it whenever the layout changes; :meth:`CFlowDetector.load` refuses
#: files of any other version.
FORMAT_VERSION = 5

_FILE_KIND = "asdflow.cflow.CFlowDetector"
_CHECKPOINT_KIND = "asdflow.cflow.checkpoint"
_AGGREGATIONS = ("max", "mean")
_FIBER_NORMS = ("standardize", "whiten", "none")
_GROUP = 16  # images handled together (encoded one by one, decoded together)
# Encoder features beyond this size point to an encoder without its pretrained
# weights: trained ImageNet ResNets stay within tens, random ones reach 1e4.
_LARGE_FEATURES = 1e3
_LEARNED = (
    "machine_",
    "row_stats_",
    "n_rows_",
    "channels_",
    "decoders_",
    "constants_",
    "train_scores_",
    "holdout_scores_",
    "holdout_domains_",
    "domain_scorer_",
    "threshold_",
    "losses_",
    "timings_",
)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CFlowConfig:
    """Hyper-parameters of :class:`CFlowDetector`.

    The defaults are full mode: the report's encoder and CFLOW-AD's decoder
    and optimiser settings. :meth:`quick` gives the small CPU settings used by
    the tests, the book and ``asdflow demo``.

    **Where asdflow departs from CFLOW-AD and the report.** The decoder
    (coupling blocks, clamp, global affine, soft permutation, sub-network),
    the log-likelihood, the loss, the positional encoding and the optimiser
    follow CFLOW-AD's code (a test checks the flow against FrEIA 0.2 itself,
    in float64). The feature hop (512, librosa's feature default) and the
    reflect-padded encoder follow what the report most likely ran. The rest
    differs, each time on purpose:

    ===================  ==============================  ====================================
    what                 CFLOW-AD / report               asdflow, and why
    ===================  ==============================  ====================================
    score constants      maxima over the *test* set: a   maxima over held-out training
                         clip's score depends on the     clips, frozen by
                         clips scored with it, and the   :meth:`CFlowDetector.fit`: a clip's
                         constants re-weight the scales  score is its own, and the scales
                                                         are weighted by unseen normal data
    encoder passes       re-run on every image batch of  once per clip; the pyramid is kept
                         every sub-epoch, in float32     as a float16 :class:`FiberBank`
                                                         (relative rounding < 5e-4)
    training length      25 meta-epochs x 8 sub-epochs;  ``epochs`` (25) passes over all
                         fibers shuffled within a batch  fibers of all clips, shuffled across
                         of images                       clips; the report gives no count
    input image          resized to 256 x 256, ImageNet  the 158-row image as it is (the
                         mean and std, random rotation   report: 158 rows, width from the
                         up to 5 degrees in training     duration), rows standardised by
                                                         :class:`~asdflow.features.RowStats`;
                                                         no rotation (it would mix rows)
    precision            float32                         bfloat16 autocast for the decoders
                                                         on CUDA (``mixed_precision``);
                                                         float32 on CPUs and for scoring
    FrEIA clamp          0.2 (PyPI, CFLOW-AD's tested    ``clamp * tanh(0.1 a)`` as in 0.2;
                         commit): ``1.9 tanh(0.1 a)``;   master's form is the same family
                         master since 2023:              with another scale of ``a``
                         ``1.9 tanh(0.1 a / 1.9)``
    threshold            the report's "adaptive          the DCASE baseline's gamma fit, 0.9
                         threshold", not specified       quantile, to *held-out* clips'
                                                         scores (:mod:`asdflow.calibration`)
    ===================  ==============================  ====================================

    Quick mode (:meth:`quick`) departs further, for a CPU and no download:
    random ResNet-18, 4 blocks, 3 epochs, whitened fibers, mean score. The
    book's chapter 4 measures what can be measured of these in quick mode.

    Parameters
    ----------
    backbone : str
        Encoder network, ``"wide_resnet50_2"`` (report) or ``"resnet18"``.
    weights : str
        ``"imagenet"`` (report), ``"random"`` (seeded with ``encoder_seed``)
        or the path of a state-dict file for the backbone.
    padding : {"reflect", "zeros"}
        Padding of the encoder's 7 x 7 and 3 x 3 convolutions: ``"reflect"``
        (CFLOW-AD's encoder, the default) or ``"zeros"`` (torchvision's).
        Reflect padding needs images of at least 33 rows and frames.
    encoder_seed : int
        Seed of the encoder's random weights when ``weights="random"``.
    n_blocks : int
        Coupling blocks per decoder (CFLOW-AD: 8).
    clamp : float
        Bound of each coupling's log-scale (CFLOW-AD's ``clamp_alpha``: 1.9).
    cond_dim : int
        Length of the positional encoding that conditions each fiber (128).
    fiber_batch : int
        Fibers per optimiser step (CFLOW-AD's ``N = 256``).
    lr : float
        Peak Adam learning rate (CFLOW-AD: 2e-4).
    epochs : int
        Passes over all fibers of all training clips. CFLOW-AD's defaults are
        25 "meta epochs" of 8 "sub epochs" (200 passes over the MVTec
        images); the report does not give its count but states 9 minutes of
        training per machine type on average. One pass over a DCASE machine
        type (1000 clips of 10 s, 1050 fibers each with WideResNet-50-2 at
        hop 512) is about 4100 steps of 256 fibers; asdflow takes CFLOW-AD's
        25 as the number of passes (about 103 000 steps). ``asdflow bench train --full`` measures
        what that costs on a given GPU.
    warmup_epochs : float
        Length of the linear warm-up from ``lr / 10`` to ``lr`` (CFLOW-AD: 2).
    min_lr_factor : float
        The cosine decay ends at ``lr * min_lr_factor`` (CFLOW-AD: 1e-3).
    aggregation : str
        How a clip score is taken from its anomaly map: ``"max"`` (CFLOW-AD)
        or ``"mean"``.
    threshold_quantile : float
        Quantile of the gamma distribution fitted to the scores of the
        held-out normal clips that becomes the decision threshold (DCASE
        baseline: 0.9; see :func:`asdflow.calibration.domain_threshold`).
    holdout : float
        Share of the source domain's training clips that the decoders do not
        see (:func:`asdflow.calibration.holdout_split`, seeded by ``seed``):
        their scores give the score constants and the decision threshold,
        which then hold on unseen clips.
    holdout_target : float
        The same for the target domain: half of its few clips (5 of the 10
        of DCASE 2024), which say where target normals score. With both
        fractions 0 the decoders train on every clip, and constants and
        threshold come from the training clips' own, optimistic scores.
    score_batch : int
        Fibers per decoder call when scoring (no gradients: large is fine).
    mixed_precision : bool
        Train the decoders under ``torch.autocast`` (bfloat16, or float16 with
        a gradient scaler where bfloat16 is not supported). Only on CUDA; the
        encoder and scoring always run in float32.
    fiber_norm : {"none", "standardize", "whiten"}
        Fixed affine first layer of every decoder, fitted to the training
        fibers, whose log-determinant is counted (:class:`ScaleDecoder`,
        :func:`fiber_normalisation`): none (CFLOW-AD exactly, the full-mode
        default), per-channel standardisation, or full whitening (the
        quick-mode default, see :meth:`quick`). The model family is the same
        in all three cases; only the starting point of training differs.
    seed : int
        Seed of the decoders' initial weights and of the fiber shuffling.
    features : FeatureConfig or None
        How clips become feature images (None: :class:`asdflow.features.FeatureConfig`
        defaults). Unused when the detector is given feature images directly,
        except to name the row groups of ``rows``.
    rows : tuple of str or None
        Ablation: the row groups (names of :data:`asdflow.features.GROUPS`,
        e.g. ``("mel",)``) kept in the image before the encoder, in the
        image's own order whatever the order given. None (the report) keeps
        all rows. The selection is applied after the row standardisation, at
        fit and at scoring alike, so anomaly maps cover the kept rows only.
    positional_encoding : bool
        Ablation: False conditions every fiber on a vector of zeros instead
        of its 2-D positional encoding, so the decoders cannot tell where a
        fiber comes from (same networks, same ``cond_dim``). True is the
        report's and CFLOW-AD's design.
    domain_aware : bool
        False (the report's CFlow): the clip score is the aggregated anomaly
        map. True: the domain-aware CFlow of :mod:`asdflow.domains`, which
        uses the domain of each *training* clip: the flow score, standardised
        per domain with the held-out clips, plus the nearest-neighbour
        distance of the clip's log-mel statistics (from the image's mel rows)
        to the training clips of that domain; the smaller of the two domains'
        sums is the score. The flows and the anomaly maps are the same.
    """

    backbone: str = "wide_resnet50_2"
    weights: str = "imagenet"
    padding: str = "reflect"
    encoder_seed: int = 0
    n_blocks: int = 8
    clamp: float = 1.9
    cond_dim: int = 128
    fiber_batch: int = 256
    lr: float = 2e-4
    epochs: int = 25
    warmup_epochs: float = 2.0
    min_lr_factor: float = 1e-3
    aggregation: str = "max"
    threshold_quantile: float = 0.9
    holdout: float = 0.1
    holdout_target: float = 0.5
    score_batch: int = 8192
    mixed_precision: bool = True
    fiber_norm: str = "none"
    seed: int = 0
    features: FeatureConfig | None = field(default=None)
    rows: tuple[str, ...] | None = None
    positional_encoding: bool = True
    domain_aware: bool = False

    def __post_init__(self) -> None:
        from asdflow.encoder import BACKBONES, PADDINGS

        owner = "CFlowConfig"
        checked: dict[str, Any] = {
            "backbone": storage.one_of(owner, "backbone", self.backbone, sorted(BACKBONES)),
            "weights": _weights_setting(self.weights),
            "padding": storage.one_of(owner, "padding", self.padding, PADDINGS),
            "encoder_seed": storage.whole_number(owner, "encoder_seed", self.encoder_seed, 0),
            "n_blocks": storage.whole_number(owner, "n_blocks", self.n_blocks),
            "clamp": storage.real_number(owner, "clamp", self.clamp, low=0, low_open=True),
            "cond_dim": storage.whole_number(owner, "cond_dim", self.cond_dim, 4),
            "fiber_batch": storage.whole_number(owner, "fiber_batch", self.fiber_batch),
            "lr": storage.real_number(owner, "lr", self.lr, low=0, low_open=True),
            "epochs": storage.whole_number(owner, "epochs", self.epochs),
            "warmup_epochs": storage.real_number(owner, "warmup_epochs", self.warmup_epochs, low=0),
            "min_lr_factor": storage.real_number(
                owner, "min_lr_factor", self.min_lr_factor, low=0, high=1, low_open=True
            ),
            "aggregation": storage.one_of(owner, "aggregation", self.aggregation, _AGGREGATIONS),
            "threshold_quantile": storage.real_number(
                owner,
                "threshold_quantile",
                self.threshold_quantile,
                low=0,
                high=1,
                low_open=True,
                high_open=True,
            ),
            "holdout": storage.real_number(
                owner, "holdout", self.holdout, low=0, high=1, high_open=True
            ),
            "holdout_target": storage.real_number(
                owner, "holdout_target", self.holdout_target, low=0, high=1, high_open=True
            ),
            "score_batch": storage.whole_number(owner, "score_batch", self.score_batch),
            "mixed_precision": storage.flag(owner, "mixed_precision", self.mixed_precision),
            "fiber_norm": storage.one_of(owner, "fiber_norm", self.fiber_norm, _FIBER_NORMS),
            "seed": storage.whole_number(owner, "seed", self.seed, 0),
            "features": _features_setting(self.features),
            "rows": _rows_setting(self.rows),
            "positional_encoding": storage.flag(
                owner, "positional_encoding", self.positional_encoding
            ),
            "domain_aware": storage.flag(owner, "domain_aware", self.domain_aware),
        }
        if checked["cond_dim"] % 4 != 0:
            raise ParameterError(
                f"CFlowConfig.cond_dim must be a whole number >= 4 and a multiple of 4, got "
                f"{self.cond_dim!r}"
            )
        for name, value in checked.items():  # JSON values become the declared types
            object.__setattr__(self, name, value)

    @classmethod
    def quick(cls, **changes: Any) -> CFlowConfig:
        """Small settings for a CPU: random ResNet-18, 4 blocks, 3 epochs, whitening, mean.

        A quarter of the source clips is held out (``holdout=0.25``: 10 of
        the quick factory's 40, and 2 of its 4 target clips), so that the
        gamma fit of the threshold has 10 source scores, not 4.

        ImageNet weights cannot be downloaded on CI machines, so quick mode
        uses a ResNet-18 with seeded random weights (its pyramid has 128,
        256 and 512 channels). The decoders keep the full design with 4
        coupling blocks instead of 8 and train for 3 passes, and the fibers
        are whitened before the flow (``fiber_norm="whiten"``). Random
        features are strongly correlated across channels; with a few hundred
        steps a flow started at the identity does not learn those
        correlations, and on the quick synthetic factory its scores hardly
        beat chance (source-domain AUC 0.5-0.7), while the whitened flow
        starts from the Gaussian fit of the fibers and separates the
        clearest machine type (valve: source AUC about 0.9).

        Clip scores are the *mean* of the anomaly map: over four seeds on
        the quick factory, the best machine type's source AUC was 0.83-0.97
        with the mean and 0.80-0.97 with the maximum (CFLOW-AD's choice and
        the full-mode default).

        Keyword arguments override single fields, e.g.
        ``CFlowConfig.quick(epochs=2)``.
        """
        settings: dict[str, Any] = {
            "backbone": "resnet18",
            "weights": "random",
            "n_blocks": 4,
            "epochs": 3,
            "warmup_epochs": 1.0,
            "fiber_norm": "whiten",
            "aggregation": "mean",
            "holdout": 0.25,
        }
        settings.update(changes)
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain Python values (nested feature config as a dict)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.features is not None:
            out["features"] = _plain(dataclasses.asdict(self.features))
        return out

    def row_indices(self, n_rows: int) -> np.ndarray:
        """Indices of the image rows the detector keeps (:attr:`rows`), top to bottom.

        Parameters
        ----------
        n_rows : int
            Rows of the input feature images (158 for the report's features).

        Returns
        -------
        np.ndarray [shape=(n_kept,), dtype=int64]
            ``arange(n_rows)`` when ``rows`` is None.

        Raises
        ------
        ModelError
            When ``rows`` is set and the images do not have the rows of
            ``features`` (the recipe that names the groups).
        """
        if self.rows is None:
            return np.arange(n_rows)
        from asdflow.features import FeatureConfig

        recipe = self.features or FeatureConfig()
        if n_rows != recipe.n_rows:
            raise ModelError(
                f"CFlowConfig.rows={self.rows} needs images of {recipe.n_rows} rows (the "
                f"features config), got {n_rows}; pass the FeatureConfig the images were made with"
            )
        groups = recipe.row_groups()
        return np.concatenate(
            [np.arange(s.start, s.stop) for name, s in groups.items() if name in self.rows]
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CFlowConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ModelError`."""
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(
                f"unknown CFlow settings {unknown}: the file was written by another "
                "asdflow version; re-train with this one"
            )
        if data.get("features") is not None:
            from asdflow.features import FeatureConfig

            data["features"] = FeatureConfig(**data["features"])
        return cls(**data)


def _weights_setting(value: Any) -> str:
    """``CFlowConfig.weights`` checked: ``"imagenet"``, ``"random"`` or a path (as a string)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ParameterError(
            f"CFlowConfig.weights must be 'imagenet', 'random' or the path of a state-dict "
            f"file, got {value!r} ({type(value).__name__})"
        )
    return value


def _features_setting(value: Any) -> FeatureConfig | None:
    """``CFlowConfig.features`` checked: None, a FeatureConfig, or its fields as a dict (JSON)."""
    from asdflow.features import FeatureConfig

    if value is None or isinstance(value, FeatureConfig):
        return value
    if isinstance(value, dict):
        try:
            return FeatureConfig(**value)
        except TypeError as err:
            raise ParameterError(
                f"CFlowConfig.features: {err}; give the fields of asdflow.features.FeatureConfig"
            ) from err
    raise ParameterError(
        f"CFlowConfig.features must be None, a FeatureConfig or a dict of its fields, got "
        f"{value!r} ({type(value).__name__})"
    )


def _rows_setting(value: Any) -> tuple[str, ...] | None:
    """``CFlowConfig.rows`` checked: None, or distinct row-group names as a tuple (lists from JSON)."""
    if value is None:
        return None
    from asdflow.features import GROUPS

    rows = (value,) if isinstance(value, str) else value
    if not isinstance(rows, (list, tuple)) or not rows:
        ok = False
    else:
        ok = all(isinstance(r, str) and r in GROUPS for r in rows) and len(set(rows)) == len(rows)
    if not ok:
        raise ParameterError(
            f"CFlowConfig.rows must be None or distinct names of {GROUPS}, got {value!r}"
        )
    return tuple(rows)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively: values that ``torch.load(weights_only=True)`` reads."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# Pure math: log-likelihoods, learning rate, anomaly maps, scores
# ---------------------------------------------------------------------------


def log_likelihood_per_dim(z: Tensor, log_det: Tensor) -> Tensor:
    """Log-likelihood of each fiber divided by its number of channels.

    ``log p / C`` with ``log p = -C/2 ln(2 pi) - ||z||^2 / 2 + log|det J|``
    (:func:`asdflow.flows.gaussian_log_likelihood`). Dividing by ``C`` makes
    the three scales (e.g. 512, 1024 and 2048 channels) comparable.

    Parameters
    ----------
    z : Tensor [shape=(N, C)]
        Flow outputs; computed in float32 whatever their dtype.
    log_det : Tensor [shape=(N,)]
        ``log |det dz/dx|`` per fiber, in nats.

    Returns
    -------
    Tensor [shape=(N,), dtype=float32]
        Nats per dimension.
    """
    from asdflow.flows import gaussian_log_likelihood

    z = z.float()
    return gaussian_log_likelihood(z, log_det.float()) / z.shape[1]


def learning_rate_factor(
    step: int, total_steps: int, warmup_steps: int, *, min_factor: float = 1e-3
) -> float:
    """Learning rate at an optimiser step, as a fraction of the peak rate.

    A linear warm-up from 0.1 to 1 over ``warmup_steps``, then a cosine
    decay from 1 to ``min_factor`` at ``total_steps`` (CFLOW-AD warms up
    from ``lr / 10`` over two meta epochs and decays to ``lr * 0.1**3``).

    Parameters
    ----------
    step : int
        Number of steps already taken (0 for the first step).
    total_steps, warmup_steps : int
        Length of the whole schedule and of the warm-up, in steps.
    min_factor : float
        Final fraction of the peak rate.

    Returns
    -------
    float
        Multiplier of the peak learning rate, in ``[min_factor, 1]``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return 0.1 + 0.9 * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def interleave_scales(n_batches: Sequence[int]) -> np.ndarray:
    """Order in which the fiber batches of the scales are visited in one epoch.

    Batch ``k`` of a scale with ``n`` batches sits at relative position
    ``(k + 0.5) / n`` of the epoch, so every scale is spread evenly over the
    epoch and sees the same stretch of the learning-rate schedule.

    Parameters
    ----------
    n_batches : sequence of int
        Number of fiber batches of each scale.

    Returns
    -------
    np.ndarray [shape=(sum(n_batches),), dtype=int64]
        The scale index of each step.
    """
    keys = [(k + 0.5) / n for n in n_batches for k in range(n)]
    scales = [s for s, n in enumerate(n_batches) for _ in range(n)]
    order = np.argsort(np.asarray(keys, dtype=np.float64), kind="stable")
    return np.asarray(scales, dtype=np.int64)[order]


@dataclass(frozen=True)
class ScoreConstants:
    """The two normalisation constants of the anomaly map, frozen after training.

    Attributes
    ----------
    scale_max : tuple of float
        Per scale, the largest ``log p / C`` over all positions of the
        training clips. Subtracted before ``exp``, so a training position has
        a probability of at most 1 at every scale.
    map_max : float
        The largest summed probability map value over the training clips.
        ``anomaly map = map_max - probability map`` is then at least 0 on
        every training clip.
    """

    scale_max: tuple[float, ...]
    map_max: float


def probability_map(
    log_p: Sequence[Tensor], scale_max: Sequence[float], size: tuple[int, int]
) -> Tensor:
    """Sum over scales of the upsampled, normalised likelihood maps.

    For every scale ``l``: ``exp(min(log_p[l] - scale_max[l], 0))``,
    upsampled bilinearly (corners aligned, as CFLOW-AD) to the image size;
    the result is the sum over scales. The exponent is capped at 0: with
    constants frozen from held-out clips, a position more likely than any
    held-out position (a training clip the flow has fitted closely) counts
    as fully normal, probability 1, instead of overflowing. CFLOW-AD takes
    the constants from the very maps it normalises, so its exponents are
    never positive and the cap changes nothing there.

    Parameters
    ----------
    log_p : sequence of Tensor [shape=(B, H_l, W_l)]
        Log-likelihood per dimension of every position, one tensor per scale.
    scale_max : sequence of float
        The constant subtracted at each scale (:class:`ScoreConstants`).
    size : (int, int)
        Image size ``(rows, frames)``, e.g. ``(158, 313)``.

    Returns
    -------
    Tensor [shape=(B, rows, frames), dtype=float64]
        Between 0 and ``len(log_p)`` for positions as likely as the training data.
    """
    if len(log_p) != len(scale_max):
        raise ModelError(f"got {len(log_p)} log-likelihood maps but {len(scale_max)} constants")
    if not log_p:
        raise ModelError("no log-likelihood maps given")
    total = torch.zeros((), dtype=torch.float64)
    for maps, constant in zip(log_p, scale_max, strict=True):
        prob = torch.exp(torch.clamp(maps.to(torch.float64) - constant, max=0.0))
        up = F.interpolate(prob[:, None], size=tuple(size), mode="bilinear", align_corners=True)
        total = total + up[:, 0]
    return total


def fit_score_constants(
    batches: Sequence[tuple[Sequence[Tensor], tuple[int, int]]],
) -> ScoreConstants:
    """Score constants from the log-likelihood maps of the training clips.

    Parameters
    ----------
    batches : sequence of (log_p, size)
        Each item holds the per-scale maps ``log_p[l]`` of shape
        ``(B, H_l, W_l)`` of a batch of training images of one size, and
        that image size ``(rows, frames)``.

    Returns
    -------
    ScoreConstants
    """
    if not batches:
        raise ModelError("cannot fit score constants to no training clips")
    n_scales = len(batches[0][0])
    scale_max = tuple(max(float(log_p[s].max()) for log_p, _ in batches) for s in range(n_scales))
    map_max = max(float(probability_map(log_p, scale_max, size).max()) for log_p, size in batches)
    return ScoreConstants(scale_max=scale_max, map_max=map_max)


def anomaly_map(
    log_p: Sequence[Tensor], constants: ScoreConstants, size: tuple[int, int]
) -> Tensor:
    """Anomaly map: ``map_max`` minus the probability map (higher = more anomalous).

    Parameters
    ----------
    log_p : sequence of Tensor [shape=(B, H_l, W_l)]
        Log-likelihood per dimension at every position, one tensor per scale.
    constants : ScoreConstants
        Frozen from the training clips.
    size : (int, int)
        Image size ``(rows, frames)``.

    Returns
    -------
    Tensor [shape=(B, rows, frames), dtype=float64]
    """
    return constants.map_max - probability_map(log_p, constants.scale_max, size)


def aggregate_map(maps: Tensor, how: str = "max") -> Tensor:
    """Clip scores from anomaly maps: the maximum or the mean over positions.

    Parameters
    ----------
    maps : Tensor [shape=(B, rows, frames)]
    how : {"max", "mean"}

    Returns
    -------
    Tensor [shape=(B,)]
    """
    flat = maps.reshape(maps.shape[0], -1)
    if how == "max":
        return flat.max(dim=1).values
    if how == "mean":
        return flat.mean(dim=1)
    raise ParameterError(f"aggregation must be one of {_AGGREGATIONS}, got {how!r}")


# ---------------------------------------------------------------------------
# The encoder pyramid as a bank of fibers
# ---------------------------------------------------------------------------


def feature_fibers(features: Tensor) -> Tensor:
    """Feature maps to fibers: one row per image and position, the channels as columns.

    Parameters
    ----------
    features : Tensor [shape=(b, c, h, w)]
        One scale of the encoder pyramid.

    Returns
    -------
    Tensor [shape=(b * h * w, c)]
        Position-major within an image (row ``i * h * w + y * w + x`` is
        image ``i`` at position ``(y, x)``), the order of :func:`fiber_conditions`.

    Examples
    --------
    >>> maps = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    >>> fibers = feature_fibers(maps)
    >>> fibers.shape
    torch.Size([8, 3])
    >>> bool(torch.equal(fibers[5], maps[1, :, 0, 1]))
    True
    """
    b, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(b * h * w, c)


def fiber_conditions(height: int, width: int, dim: int, *, positional: bool = True) -> Tensor:
    """The condition vector of every position of one image, in the order of :func:`feature_fibers`.

    Parameters
    ----------
    height, width : int
        Size of the feature map.
    dim : int
        Length of each condition vector (``CFlowConfig.cond_dim``).
    positional : bool
        False: zeros (the ablation without positional encoding).

    Returns
    -------
    Tensor [shape=(height * width, dim), dtype=float32]
        Row ``y * width + x``: :func:`asdflow.flows.positional_encoding` at ``(y, x)``.

    Examples
    --------
    >>> from asdflow.flows import positional_encoding
    >>> codes = fiber_conditions(2, 3, 8)
    >>> codes.shape
    torch.Size([6, 8])
    >>> bool(torch.equal(codes[4], positional_encoding(2, 3, 8)[:, 1, 1]))
    True
    """
    from asdflow.flows import positional_encoding

    if not positional:
        return torch.zeros(height * width, dim)
    pe = positional_encoding(height, width, dim, dtype=torch.float32)
    return pe.permute(1, 2, 0).reshape(height * width, dim)


def _encoder_input(images: Sequence[np.ndarray]) -> Tensor:
    """Standardised (rows, frames) images to a (B, 3, rows, frames) float32 batch."""
    batch = torch.from_numpy(np.stack(images).astype(np.float32, copy=False))
    return batch[:, None].expand(-1, 3, -1, -1).contiguous()


def _encode_each(
    encoder: nn.Module, images: Sequence[np.ndarray], device: torch.device
) -> list[Tensor]:
    """Encoder pyramid of same-size images, each image run through the encoder alone.

    A convolution's result for one image can differ in the last bits with
    the batch it is computed in; one image per pass makes a clip's features,
    hence its score, independent of the clips scored with it.

    Returns
    -------
    list of Tensor [shape=(B, C_l, H_l, W_l)]
    """
    with torch.no_grad():
        outputs = [encoder(_encoder_input([image]).to(device)) for image in images]
    return [torch.cat([out[s] for out in outputs]) for s in range(len(outputs[0]))]


def _size_batches(images: Sequence[np.ndarray], batch: int) -> Iterator[list[int]]:
    """Indices of images, in batches of at most ``batch`` images of one size."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for members in groups.values():
        for start in range(0, len(members), batch):
            yield members[start : start + batch]


@dataclass
class FiberBank:
    """The encoder pyramid of the training images, stored as fibers.

    Memory: with WideResNet-50-2 and 1000 images of 158 x 313 (10 s at hop
    512) the pyramid holds 1000 x (512 x 20 x 40 + 1024 x 10 x 20 + 2048 x
    5 x 10) = 7.2e8 values: 2.9 GB in float32, 1.4 GB in float16 (twice
    that at hop 256). The bank keeps float16
    (relative rounding error below 5e-4, far below the spread of the
    features), on the GPU when it fits in half the free GPU memory, else in
    CPU memory (the training loop then gathers each batch of 256 fibers on
    the CPU and moves it to the GPU); each step converts its batch to
    float32. The scoring path rounds features to float16 the same way, so a
    training clip scores the same from the bank and from
    :meth:`CFlowDetector.score`.

    Attributes
    ----------
    fibers : list of Tensor [shape=(E_l, C_l), dtype=float16]
        Per scale, all fibers of all images, image after image, positions
        row-major within an image.
    cond_index : list of Tensor [shape=(E_l,), dtype=int64]
        Per scale, the row of ``cond_table[l]`` that conditions each fiber.
    cond_table : list of Tensor [shape=(K_l, cond_dim), dtype=float32]
        Per scale, the positional encodings of every position of every
        feature-map size met.
    offsets : list of np.ndarray [shape=(n + 1,)]
        Per scale, where each image's fibers start in ``fibers[l]``.
    map_shapes : list of list of (int, int)
        Per image, the (H_l, W_l) of its feature map at each scale.
    image_shapes : list of (int, int)
        Per image, its size (rows, frames).
    """

    fibers: list[Tensor]
    cond_index: list[Tensor]
    cond_table: list[Tensor]
    offsets: list[np.ndarray]
    map_shapes: list[list[tuple[int, int]]]
    image_shapes: list[tuple[int, int]]

    @property
    def n_fibers(self) -> list[int]:
        """Number of fibers at each scale."""
        return [int(f.shape[0]) for f in self.fibers]

    @property
    def nbytes(self) -> int:
        """Memory taken by the fibers, in bytes."""
        return sum(f.numel() * f.element_size() for f in self.fibers)


def _probe(
    encoder: nn.Module, image_shape: tuple[int, ...], device: torch.device
) -> tuple[list[int], list[tuple[int, int]]]:
    """Channels and feature-map size (H_l, W_l) of each scale for one image size."""
    with torch.no_grad():
        outputs = encoder(torch.zeros((1, 3, *image_shape), device=device))
    return [int(o.shape[1]) for o in outputs], [(int(o.shape[2]), int(o.shape[3])) for o in outputs]


def encode_fibers(
    encoder: nn.Module,
    images: Sequence[np.ndarray],
    *,
    cond_dim: int = 128,
    positional: bool = True,
    device: torch.device | str = "cpu",
    store: torch.device | str | None = None,
    progress: bool = False,
) -> FiberBank:
    """Run a frozen encoder once over standardised images and keep every fiber.

    Parameters
    ----------
    encoder : nn.Module
        Returns a list of (B, C_l, H_l, W_l) feature maps for a (B, 3, rows,
        frames) batch (:class:`asdflow.encoder.Encoder`).
    images : sequence of np.ndarray [shape=(rows, frames), dtype=float32]
        Standardised feature images (sizes may differ).
    cond_dim : int
        Length of the positional encoding.
    positional : bool
        False: every condition is a vector of zeros (the ablation
        ``CFlowConfig(positional_encoding=False)``).
    device : torch.device or str
        Where the encoder runs.
    store : torch.device or str or None
        Where the bank is kept; None: on ``device`` if it is a GPU with room
        for the bank in half its free memory, else on the CPU.
    progress : bool
        Show a progress bar.

    Returns
    -------
    FiberBank
    """
    from tqdm.auto import tqdm

    if not images:
        raise ModelError("no images to encode")
    device = torch.device(device)
    image_shapes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    shapes_of: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for shape in image_shapes:
        if shape not in shapes_of:
            channels, shapes_of[shape] = _probe(encoder, shape, device)
    map_shapes = [shapes_of[s] for s in image_shapes]
    n_scales = len(channels)

    # Positional-encoding tables: one block of rows per feature-map size.
    cond_table, cond_start = [], []
    for s in range(n_scales):
        starts: dict[tuple[int, int], int] = {}
        rows: list[Tensor] = []
        total = 0
        for shapes in shapes_of.values():
            hw = shapes[s]
            if hw not in starts:
                starts[hw] = total
                rows.append(fiber_conditions(hw[0], hw[1], cond_dim, positional=positional))
                total += hw[0] * hw[1]
        cond_table.append(torch.cat(rows))
        cond_start.append(starts)

    sizes = [np.array([0] + [m[s][0] * m[s][1] for m in map_shapes]) for s in range(n_scales)]
    offsets = [np.cumsum(sz) for sz in sizes]
    nbytes = sum(int(offsets[s][-1]) * channels[s] * 2 for s in range(n_scales))
    if store is None:
        store = torch.device("cpu")
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes < free // 2:
                store = device
    store = torch.device(store)

    fibers = [
        torch.empty((int(offsets[s][-1]), channels[s]), dtype=torch.float16, device=store)
        for s in range(n_scales)
    ]
    cond_index = []
    for s in range(n_scales):
        parts = [
            cond_start[s][m[s]] + torch.arange(m[s][0] * m[s][1], dtype=torch.int64)
            for m in map_shapes
        ]
        cond_index.append(torch.cat(parts).to(store))

    bar = tqdm(total=len(images), desc="encoding", unit="clip", disable=not progress)
    with torch.no_grad():
        for members in _size_batches(images, _GROUP):
            outputs = _encode_each(encoder, [images[i] for i in members], device)
            for s, out in enumerate(outputs):
                flat = feature_fibers(out).to(torch.float16)
                per_image = flat.shape[0] // len(members)
                for j, i in enumerate(members):
                    start = int(offsets[s][i])
                    fibers[s][start : start + per_image] = flat[j * per_image : (j + 1) * per_image]
            bar.update(len(members))
    bar.close()
    for s in range(n_scales):
        if not torch.isfinite(fibers[s]).all():
            raise ModelError(
                f"the encoder's scale-{s} features overflow float16 (|x| > 65504) or are "
                "not finite; check the input images and the encoder weights"
            )
    return FiberBank(
        fibers=fibers,
        cond_index=cond_index,
        cond_table=[t.to(store) for t in cond_table],
        offsets=offsets,
        map_shapes=map_shapes,
        image_shapes=image_shapes,
    )


# ---------------------------------------------------------------------------
# Small helpers: devices, encoders, files
# ---------------------------------------------------------------------------


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


def _fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (float32 bytes, in order)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        value = tensor.detach().to("cpu")
        if value.is_floating_point():
            value = value.float()
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_encoder(config: CFlowConfig, *, progress: bool = False) -> nn.Module:
    """The frozen encoder of ``config``; random weights are drawn from ``encoder_seed``."""
    from asdflow.encoder import Encoder

    return Encoder(
        backbone=config.backbone,
        weights=config.weights,
        padding=config.padding,
        seed=config.encoder_seed,
        progress=progress,
    )


def _read_checkpoint(checkpoint: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The training state in ``checkpoint``, or None when there is none to resume from.

    A checkpoint that cannot be used (truncated, damaged, of another format
    version, or not a CFlow checkpoint at all) is renamed to
    ``<name>.damaged``, replacing an older one, and a warning names both
    paths: training then starts afresh, and nothing is deleted.
    """
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    path = Path(checkpoint)
    try:
        return storage.load_state(
            path,
            kind=_CHECKPOINT_KIND,
            what="a CFlow checkpoint",
            format_version=FORMAT_VERSION,
            writer="CFlowDetector.fit",
        )
    except ModelError as err:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        warnings.warn(
            f"the checkpoint {path} cannot be used ({err}); it was moved to {aside} and "
            "training starts afresh. Delete that file once you no longer need it.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def _decoder_seed(seed: int, scale: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(scale)]).generate_state(1)[0])


class ScaleDecoder(nn.Module):
    """The decoder of one scale: a fixed affine normalisation, then a conditional flow.

    ``x' = (x - mean) W`` is an invertible affine map with the constant
    log-determinant ``log |det W|``, added to the flow's, so :meth:`forward`
    returns the log-determinant of the whole map from the encoder's fibers to
    ``z``: log-likelihoods stay those of the fibers themselves. ``W`` is a
    vector (a diagonal matrix: per-channel standardisation) or a full
    ``(C, C)`` matrix (whitening). With ``mean = 0`` and ``W = 1``
    (``CFlowConfig(fiber_norm="none")``) this is CFLOW-AD's decoder exactly.

    Parameters
    ----------
    flow : ConditionalFlow
    mean : Tensor [shape=(C,)]
    transform : Tensor [shape=(C,) or (C, C)]
        Buffers, saved with the weights, never trained.
    """

    def __init__(self, flow: nn.Module, mean: Tensor, transform: Tensor) -> None:
        super().__init__()
        self.flow = flow
        transform = transform.detach().to(torch.float64)
        if transform.ndim == 1:
            log_det = torch.log(transform.abs()).sum()
        else:
            log_det = torch.linalg.slogdet(transform).logabsdet
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("transform", transform.to(torch.float32).clone())
        self.register_buffer("norm_log_det", log_det.to(torch.float32).reshape(()))

    def normalise(self, x: Tensor) -> Tensor:
        """``(x - mean) W`` for fibers x of shape (N, C)."""
        centred = x - self.mean
        if self.transform.ndim == 1:
            return centred * self.transform
        return centred @ self.transform

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Map fibers (N, C) with conditions (N, cond_dim) to (z (N, C), log_det (N,))."""
        z, log_det = self.flow(self.normalise(x), c)
        return z, log_det + self.norm_log_det


def fiber_normalisation(
    fibers: Tensor,
    how: str = "standardize",
    *,
    floor: float = 1e-3,
    max_fibers: int = 200_000,
    chunk: int = 16384,
) -> tuple[Tensor, Tensor]:
    """The fixed affine map ``x -> (x - mean) W`` fitted to training fibers.

    Parameters
    ----------
    fibers : Tensor [shape=(N, C)]
        Any dtype and device; statistics are accumulated in float64 over at
        most ``max_fibers`` evenly spaced rows.
    how : {"standardize", "whiten", "none"}
        ``"standardize"``: ``W = 1 / std`` per channel. ``"whiten"``: the
        symmetric (ZCA) whitening ``W = V diag((lambda + eps)^-1/2) V^T`` of
        the covariance ``V diag(lambda) V^T``, with ``eps = floor`` times the
        mean eigenvalue. ``"none"``: ``mean = 0``, ``W = 1``.
    floor : float
        Smallest standard deviation (standardize) or relative eigenvalue
        ridge (whiten): a channel that never varies, e.g. a dead ReLU, is
        not divided by zero.

    Returns
    -------
    mean : Tensor [shape=(C,), dtype=float32]
    transform : Tensor [shape=(C,) or (C, C), dtype=float32]
        On the CPU.
    """
    n, dim = fibers.shape
    if how == "none":
        return torch.zeros(dim), torch.ones(dim)
    step = max(1, -(-n // max_fibers))
    rows = torch.arange(0, n, step, device=fibers.device)
    total = torch.zeros(dim, dtype=torch.float64)
    for start in range(0, rows.numel(), chunk):
        total += fibers[rows[start : start + chunk]].to("cpu", torch.float64).sum(dim=0)
    mean = total / rows.numel()
    if how == "standardize":
        squares = torch.zeros(dim, dtype=torch.float64)
        for start in range(0, rows.numel(), chunk):
            part = fibers[rows[start : start + chunk]].to("cpu", torch.float64) - mean
            squares += part.pow(2).sum(dim=0)
        std = (squares / rows.numel()).sqrt().clamp_min(floor)
        return mean.float(), (1.0 / std).float()
    if how == "whiten":
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        centre = mean.to(fibers.device, torch.float32)
        for start in range(0, rows.numel(), chunk):
            part = fibers[rows[start : start + chunk]].float() - centre
            cov += (part.T @ part).to("cpu", torch.float64)
        cov /= rows.numel()
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0.0) + floor * float(eigvals.clamp_min(0.0).mean())
        transform = eigvecs @ torch.diag(eigvals.rsqrt()) @ eigvecs.T
        return mean.float(), transform.float()
    raise ParameterError(f"fiber_norm must be 'standardize', 'whiten' or 'none', got {how!r}")


def build_decoders(
    config: CFlowConfig,
    channels: Sequence[int],
    normalisations: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> nn.ModuleList:
    """One :class:`ScaleDecoder` per scale; placeholder normalisations when None (for loading)."""
    from asdflow.flows import ConditionalFlow

    decoders = []
    for s, c in enumerate(channels):
        flow = ConditionalFlow(
            int(c),
            config.n_blocks,
            config.cond_dim,
            clamp=config.clamp,
            seed=_decoder_seed(config.seed, s),
        )
        if normalisations is not None:
            mean, transform = normalisations[s]
        elif config.fiber_norm == "whiten":
            mean, transform = torch.zeros(int(c)), torch.eye(int(c))
        else:
            mean, transform = torch.zeros(int(c)), torch.ones(int(c))
        decoders.append(ScaleDecoder(flow, mean, transform))
    return nn.ModuleList(decoders)


def _tensors_to_numpy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.numpy() if isinstance(v, Tensor) else v for k, v in data.items()}


def _numpy_to_tensors(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else _plain(v)
        for k, v in data.items()
    }


def _constant_rows(stats: RowStats) -> np.ndarray:
    """Rows whose training values vary by less than ``stats.floor`` of their magnitude.

    The rows :class:`asdflow.features.RowStats` treats as constant; when
    every row is, the training clips are silent (or hold one constant tone
    the features do not see).
    """
    rms = np.sqrt(np.square(stats.mean_) + stats.var_)
    return np.sqrt(stats.var_) <= stats.floor * rms


def _abs_max(fibers: Tensor, chunk: int = 65536) -> float:
    """Largest absolute value of an (N, C) fiber tensor, chunk by chunk (no full copy)."""
    peak = 0.0
    for start in range(0, fibers.shape[0], chunk):
        peak = max(peak, float(fibers[start : start + chunk].float().abs().max()))
    return peak


def _images_hash(images: Sequence[np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------


class CFlowDetector:
    """CFlow anomaly detector: fit on normal clips, score any clip.

    Parameters
    ----------
    config : CFlowConfig or None
        Hyper-parameters (None: full-mode defaults, ``CFlowConfig()``).
    device : str or torch.device or None
        Where the encoder and decoders run (None: CUDA if available, else CPU).
    cache : path or None
        Feature cache folder passed to :func:`asdflow.features.extract` when
        clips are given.
    progress : bool
        Show progress bars.

    Attributes
    ----------
    machine_ : str or None
        Machine type of the training clips (``"fan"``); None when the
        detector was trained on feature images. Clips of another machine type
        are refused by :meth:`score`, and :meth:`load` can check it.
    row_stats_ : RowStats
        Per-row mean and standard deviation of the training images.
    channels_ : list of int
        Channels of the three encoder scales.
    n_rows_ : int
        Rows of the training images as given (158 for the report's
        features), before ``config.rows`` keeps some of them.
    decoders_ : nn.ModuleList of ScaleDecoder
        One decoder per scale: a fixed fiber normalisation and a conditional flow.
    constants_ : ScoreConstants
        Normalisation constants of the anomaly map (from the held-out clips;
        from the training clips when nothing was held out).
    train_scores_ : np.ndarray [shape=(n_fit,)]
        Scores of the clips the decoders were trained on (optimistic).
    holdout_scores_ : np.ndarray [shape=(n_held,)]
        Scores of the held-out training clips (``config.holdout`` and
        ``config.holdout_target``), which the decoders never saw; empty when
        nothing was held out.
    holdout_domains_ : np.ndarray of str [shape=(n_held,)]
        Their domains.
    domain_scorer_ : DomainScorer or None
        With ``config.domain_aware``, the fitted parts of the domain-aware
        score (:mod:`asdflow.domains`); then ``train_scores_``,
        ``holdout_scores_`` and the threshold are domain-aware scores too.
    threshold_ : float
        Decision threshold: :func:`asdflow.calibration.domain_threshold` of
        ``holdout_scores_`` (of ``train_scores_`` when nothing was held out),
        quantile ``config.threshold_quantile``.
    losses_ : list of float
        Mean training loss of each epoch.
    timings_ : dict
        Of the last :meth:`fit` in this session: seconds spent in ``"encode"``
        (one encoder pass over the training images), ``"train"`` (fiber
        normalisation and the epochs run) and ``"constants"`` (training
        scores, constants and threshold), fibers
        trained per epoch (``"fibers_per_epoch"``) and the size of the fiber
        bank in bytes (``"bank_bytes"``). Not saved.

    Examples
    --------
    On clips, ``CFlowDetector(CFlowConfig.quick()).fit(train_clips)``; here on
    12 made-up feature images of 158 rows and 64 frames:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.normal(size=(158, 64)).astype(np.float32) for _ in range(12)]
    >>> config = CFlowConfig.quick(epochs=1, fiber_batch=64)
    >>> det = CFlowDetector(config, progress=False).fit(images)
    >>> scores = det.score(images[:2])
    >>> scores.shape, scores.dtype
    ((2,), dtype('float64'))
    >>> det.anomaly_maps(images[:1]).shape
    (1, 158, 64)
    """

    def __init__(
        self,
        config: CFlowConfig | None = None,
        *,
        device: str | torch.device | None = None,
        cache: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config if config is not None else CFlowConfig()
        self.device = device
        self.cache = cache
        self.progress = progress
        self._encoder: nn.Module | None = None
        self._encoder_fingerprint: str | None = None

    def __repr__(self) -> str:
        state = "fitted" if hasattr(self, "threshold_") else "not fitted"
        return f"CFlowDetector({self.config!r}, {state})"

    # -- inputs ---------------------------------------------------------------

    def _images(
        self,
        data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray,
        *,
        training: bool = False,
    ) -> list[np.ndarray]:
        """Feature images from clips, a list of images or an (n, rows, frames) array."""
        if isinstance(data, np.ndarray):
            if data.ndim != 3:
                raise ModelError(
                    f"expected feature images of shape (n, rows, frames), got {data.shape}; "
                    "wrap a single image in a list"
                )
            items: list[Any] = list(data)
        else:
            items = list(data)
        if not items:
            raise ModelError("no clips or images given")
        if not training:
            storage.check_machine(items, getattr(self, "machine_", None), "this CFlow detector")
        if all(isinstance(x, np.ndarray) for x in items):
            images = [np.asarray(x, dtype=np.float32) for x in items]
        elif any(isinstance(x, np.ndarray) for x in items):
            raise ModelError("mix of feature images and clips: pass one kind only")
        else:
            from asdflow import features

            images = [
                np.asarray(x, dtype=np.float32)
                for x in features.extract(
                    items, self.config.features, cache=self.cache, progress=self.progress
                )
            ]
        rows = {im.shape[0] for im in images}
        if any(im.ndim != 2 for im in images) or len(rows) != 1:
            raise ModelError(
                f"feature images must all be 2-D with the same number of rows, got shapes "
                f"{sorted({im.shape for im in images})[:4]}"
            )
        if not training and hasattr(self, "n_rows_") and rows != {self.n_rows_}:
            raise ModelError(
                f"this detector was trained on images of {self.n_rows_} rows, got {rows.pop()}"
            )
        for i, im in enumerate(images):
            if not np.all(np.isfinite(im)):
                raise ModelError(f"feature image {i} contains NaN or infinite values")
        return images

    def _standardise(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Standardised images, cut to the rows of ``config.rows``: what the encoder sees."""
        keep = self.config.row_indices(self.n_rows_)
        out = [np.asarray(self.row_stats_.transform(im), dtype=np.float32) for im in images]
        if self.config.rows is None:
            return out
        return [np.ascontiguousarray(im[keep]) for im in out]

    def _encoder_module(self) -> nn.Module:
        """The frozen encoder, built on first use and checked against the trained one."""
        if self._encoder is None:
            encoder = build_encoder(self.config, progress=self.progress)
            fingerprint = _fingerprint(encoder)
            if self._encoder_fingerprint is not None and fingerprint != self._encoder_fingerprint:
                raise ModelError(
                    f"the re-created encoder ({self.config.backbone}, weights="
                    f"{self.config.weights!r}, seed {self.config.encoder_seed}) differs from "
                    "the one this detector was trained with (other torch/torchvision version "
                    "or weights file?); re-train the detector in this environment"
                )
            self._encoder_fingerprint = fingerprint
            self._encoder = encoder.to(self._device)
        return self._encoder

    @property
    def _device(self) -> torch.device:
        return choose_device(self.device)

    # -- training -------------------------------------------------------------

    def fit(
        self,
        data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray,
        *,
        domains: Sequence[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        callback: Callable[[int, float], None] | None = None,
    ) -> CFlowDetector:
        """Train the decoders on normal clips and freeze score constants and threshold.

        ``config.holdout`` of the source clips and ``config.holdout_target``
        of the target clips are set aside first
        (:func:`asdflow.calibration.holdout_split`); the row statistics and
        decoders are fitted to the others, and the score constants and the
        decision threshold to the held-out clips' log-likelihoods and scores.

        Parameters
        ----------
        data : sequence of Clip, or sequence of np.ndarray [shape=(rows, frames)], or np.ndarray [shape=(n, rows, frames)]
            Normal training clips of one machine type (recorded as
            ``machine_``), or their feature images (unstandardised).
        domains : sequence of str or None
            ``"source"`` or ``"target"`` per clip; by default each clip's
            ``domain`` (feature images count as source clips).
        checkpoint : path or None
            File for the training state, written atomically after every epoch.
            If it exists when ``fit`` starts, training resumes from it (it must
            come from the same configuration and data) and ends where an
            uninterrupted run would. A checkpoint that cannot be read
            (truncated, damaged) is renamed to ``<name>.damaged`` with a
            ``RuntimeWarning`` naming both paths, and training starts afresh.
        callback : callable or None
            Called as ``callback(epoch, loss)`` after each epoch (1-based) once
            the checkpoint is written.

        Returns
        -------
        self

        Raises
        ------
        ParameterError
            When the clips are of several machine types.
        ModelError
            On silent training clips (every feature row constant), a
            non-finite loss (naming the epoch), too few fibers for one batch,
            non-finite score constants, training scores or threshold (the
            message gives the size of the encoder's features), or a
            checkpoint from other settings or data. Nothing learned is kept.
        """
        from asdflow.calibration import domain_threshold, holdout_split, training_domains
        from asdflow.domains import DomainScorer, image_statistics
        from asdflow.features import RowStats

        cfg = self.config
        items = list(data) if not isinstance(data, np.ndarray) else data
        machine = storage.training_machine(items)
        all_domains = training_domains(items, domains)
        everything = self._images(items, training=True)
        cfg.row_indices(everything[0].shape[0])  # images without the named row groups fail here
        fit_index, held_index = holdout_split(
            all_domains, cfg.holdout, cfg.seed, cfg.holdout_target
        )
        raw = [everything[i] for i in fit_index]
        held_raw = [everything[i] for i in held_index]
        fit_domains = np.array([all_domains[i] for i in fit_index], dtype=str)
        held_domains = np.array([all_domains[i] for i in held_index], dtype=str)
        if cfg.domain_aware:
            # Log-mel statistics of every training clip, the trained ones first, as in scoring.
            statistics = image_statistics(raw + held_raw, self._mel_rows(raw[0].shape[0]))
        del everything
        for name in _LEARNED:  # a failed fit must not leave a half-updated detector
            self.__dict__.pop(name, None)
        stats = RowStats().fit(raw)
        if np.all(_constant_rows(stats)):
            raise ModelError(storage.silent_message(items, machine, "row"))
        self.machine_ = machine
        self.row_stats_ = stats
        self.n_rows_ = int(raw[0].shape[0])
        images = self._standardise(raw)
        held_images = self._standardise(held_raw)
        data_hash = _images_hash(raw)
        del raw, held_raw

        device = self._device
        encoder = self._encoder_module()
        started = time.perf_counter()
        bank = encode_fibers(
            encoder,
            images,
            cond_dim=cfg.cond_dim,
            positional=cfg.positional_encoding,
            device=device,
            progress=self.progress,
        )
        encoded = time.perf_counter()
        self.channels_ = [int(f.shape[1]) for f in bank.fibers]
        for s, n in enumerate(bank.n_fibers):
            if n < cfg.fiber_batch:
                held = f" ({len(held_images)} more clips are held out for the threshold)"
                raise ModelError(
                    f"scale {s} has only {n} training fibers from {len(images)} clips"
                    f"{held if len(held_images) else ''}, fewer than one batch of "
                    f"{cfg.fiber_batch}: use more or longer clips, or a smaller fiber_batch"
                )

        normalisations = [fiber_normalisation(f, cfg.fiber_norm) for f in bank.fibers]
        decoders = build_decoders(cfg, self.channels_, normalisations).to(device)
        self.losses_ = self._train(decoders, bank, device, data_hash, checkpoint, callback)
        self.decoders_ = decoders.eval()
        trained = time.perf_counter()

        train_maps = [(members, log_p, size) for log_p, size, members in self._bank_log_p(bank)]
        held_maps = [
            (members, log_p, size) for log_p, size, members in self._log_p_batches(held_images)
        ]
        # Constants and threshold come from the held-out clips; from the training clips only
        # when nothing was held out (holdout=0, or a single clip per domain).
        calibration = held_maps or train_maps
        constants = fit_score_constants([(log_p, size) for _, log_p, size in calibration])

        def clip_scores(maps: list, n: int) -> np.ndarray:
            out = np.empty(n, dtype=np.float64)
            for members, log_p, size in maps:
                out[members] = aggregate_map(
                    anomaly_map(log_p, constants, size), cfg.aggregation
                ).numpy()
            return out

        train_scores = clip_scores(train_maps, len(images))
        held_scores = clip_scores(held_maps, len(held_images))
        self._check_finite(constants, np.concatenate([train_scores, held_scores]), bank)
        scorer = None
        if cfg.domain_aware:  # the flow scores become domain-aware scores (asdflow.domains)
            reference = (
                (held_scores, held_domains) if held_scores.size else (train_scores, fit_domains)
            )
            scorer = DomainScorer.fit(
                statistics,
                np.concatenate([fit_domains, held_domains]),
                *reference,
            )
            # Training and held-out clips are in the memories: score each with itself left out.
            left_out = scorer.score_training_clips(np.concatenate([train_scores, held_scores]))
            train_scores, held_scores = left_out[: len(images)], left_out[len(images) :]
        if held_scores.size:
            threshold = domain_threshold(held_scores, held_domains, cfg.threshold_quantile)
        else:
            threshold = domain_threshold(train_scores, fit_domains, cfg.threshold_quantile)
        if not math.isfinite(threshold):
            raise ModelError(
                f"the decision threshold fitted to the held-out scores is {threshold}; nothing "
                "was kept: train again with other settings (another seed or more clips)"
            )
        self.constants_ = constants
        self.train_scores_ = train_scores
        self.holdout_scores_ = held_scores
        self.holdout_domains_ = held_domains
        self.domain_scorer_ = scorer
        self.threshold_ = threshold
        self.timings_ = {
            "encode": encoded - started,
            "train": trained - encoded,
            "constants": time.perf_counter() - trained,
            "fibers_per_epoch": float(sum(n - n % cfg.fiber_batch for n in bank.n_fibers)),
            "bank_bytes": float(bank.nbytes),
        }
        return self

    def _check_finite(
        self, constants: ScoreConstants, train_scores: np.ndarray, bank: FiberBank
    ) -> None:
        """Raise :class:`ModelError` unless the score constants and ``train_scores`` are finite.

        A detector whose constants or training scores are NaN or infinite
        would give NaN scores to every clip; training stops here instead of
        saving it. The message reports how large the encoder's features
        are, the usual cause (an encoder without its pretrained weights gives
        features in the tens of thousands, and the flows overflow).
        """
        values = [*constants.scale_max, constants.map_max]
        if all(math.isfinite(v) for v in values) and np.all(np.isfinite(train_scores)):
            return
        if not all(math.isfinite(v) for v in values):
            what = f"score constants (scale maxima {values[:-1]}, map maximum {values[-1]})"
        else:
            bad = int(np.count_nonzero(~np.isfinite(train_scores)))
            what = f"training scores ({bad} of {train_scores.size})"
        peak = max(_abs_max(f) for f in bank.fibers)
        cfg = self.config
        cause = f"encoder features up to {peak:.2g}"
        if peak > _LARGE_FEATURES:
            cause += (
                f": an encoder without its pretrained weights (weights={cfg.weights!r})? Use "
                "weights='imagenet' or a pretrained weights file, or fiber_norm='standardize' "
                "to scale the features before the flows"
            )
        else:
            cause += "; lower the learning rate (lr) or train for fewer epochs"
        raise ModelError(
            f"the {what} of this CFlow detector are not finite ({cause}); nothing was kept: "
            "fix the settings and train again"
        )

    def _train(
        self,
        decoders: nn.ModuleList,
        bank: FiberBank,
        device: torch.device,
        data_hash: str,
        checkpoint: str | os.PathLike[str] | None,
        callback: Callable[[int, float], None] | None,
    ) -> list[float]:
        """The training loop: shuffled fiber batches of every scale, one Adam step each."""
        from tqdm.auto import tqdm

        from asdflow.flows import logsigmoid_loss

        cfg = self.config
        n_batches = [n // cfg.fiber_batch for n in bank.n_fibers]
        order = interleave_scales(n_batches)
        steps_per_epoch = len(order)
        total = steps_per_epoch * cfg.epochs
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

        optimizer = torch.optim.Adam(decoders.parameters(), lr=cfg.lr)

        def factor(step: int) -> float:
            return learning_rate_factor(step, total, warmup, min_factor=cfg.min_lr_factor)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        generator = torch.Generator().manual_seed(cfg.seed)
        amp_dtype = None
        if cfg.mixed_precision and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        losses: list[float] = []
        start_epoch = 0
        signature = {"config": _plain(cfg.to_dict()), "data": data_hash, "n_fibers": bank.n_fibers}
        state = _read_checkpoint(checkpoint)
        if state is not None:
            if state["signature"] != signature:
                raise ModelError(
                    f"checkpoint {checkpoint} was written for other settings or training "
                    "data; delete it or pass another checkpoint path"
                )
            decoders.load_state_dict(state["decoders"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler.is_enabled() and state["scaler"]:
                scaler.load_state_dict(state["scaler"])
            generator.set_state(state["generator"])
            losses = [float(v) for v in state["losses"]]
            start_epoch = int(state["epoch"])

        bar = tqdm(
            total=total,
            initial=start_epoch * steps_per_epoch,
            desc="training CFlow",
            unit="step",
            disable=not self.progress,
        )
        decoders.train()
        for epoch in range(start_epoch, cfg.epochs):
            perms = [
                torch.randperm(n, generator=generator).to(bank.fibers[0].device)
                for n in bank.n_fibers
            ]
            used = [0] * len(n_batches)
            running = torch.zeros((), device=device)
            for step, scale in enumerate(order):
                k = used[scale]
                used[scale] += 1
                idx = perms[scale][k * cfg.fiber_batch : (k + 1) * cfg.fiber_batch]
                x = bank.fibers[scale][idx].to(device, torch.float32, non_blocking=True)
                c = bank.cond_table[scale][bank.cond_index[scale][idx]].to(
                    device, non_blocking=True
                )
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    z, log_det = decoders[scale](x, c)
                loss = fiber_loss(z, log_det, logsigmoid_loss)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                running = running + loss.detach()
                if (step + 1) % 50 == 0 or step + 1 == steps_per_epoch:
                    mean = float(running) / (step + 1)
                    if not math.isfinite(mean):
                        bar.close()
                        raise ModelError(
                            f"non-finite training loss in epoch {epoch + 1} of {cfg.epochs} "
                            f"(step {step + 1}): lower the learning rate or check the "
                            "feature images for extreme values"
                        )
                    bar.set_postfix(epoch=epoch + 1, loss=f"{mean:.4f}")
                bar.update(1)
            losses.append(float(running) / steps_per_epoch)
            if checkpoint is not None:
                storage.save_state(
                    {
                        "kind": _CHECKPOINT_KIND,
                        "format_version": FORMAT_VERSION,
                        "versions": storage.versions(),
                        "signature": signature,
                        "epoch": epoch + 1,
                        "losses": losses,
                        "decoders": decoders.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "generator": generator.get_state(),
                    },
                    Path(checkpoint),
                )
            if callback is not None:
                callback(epoch + 1, losses[-1])
        bar.close()
        return losses

    # -- scoring --------------------------------------------------------------

    def _decode(self, scale: int, fibers: Tensor, cond_table: Tensor, cond_index: Tensor) -> Tensor:
        """Log-likelihood per dimension of (N, C) float16 fibers, as float32 on the CPU.

        Fiber ``i`` is conditioned on ``cond_table[cond_index[i]]``; the
        conditions are gathered chunk by chunk, never for all fibers at once.
        """
        decoder = self.decoders_[scale]
        device = self._device
        step = self.config.score_batch
        out = []
        with torch.no_grad():
            for start in range(0, fibers.shape[0], step):
                x = fibers[start : start + step].to(device, torch.float32)
                c = cond_table[cond_index[start : start + step]].to(device, torch.float32)
                z, log_det = decoder(x, c)
                out.append(log_likelihood_per_dim(z, log_det).cpu())
        return torch.cat(out)

    def _bank_log_p(
        self, bank: FiberBank
    ) -> Iterator[tuple[list[Tensor], tuple[int, int], list[int]]]:
        """Log-likelihood maps of the training images straight from the bank."""
        self.decoders_.eval()
        flat = [
            self._decode(s, bank.fibers[s], bank.cond_table[s], bank.cond_index[s])
            for s in range(len(bank.fibers))
        ]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, shape in enumerate(bank.image_shapes):
            groups.setdefault(tuple(shape), []).append(i)  # type: ignore[arg-type]
        for size, members in groups.items():
            log_p = []
            for s in range(len(flat)):
                h, w = bank.map_shapes[members[0]][s]
                log_p.append(
                    torch.stack(
                        [flat[s][bank.offsets[s][i] : bank.offsets[s][i + 1]] for i in members]
                    ).reshape(len(members), h, w)
                )
            yield log_p, size, members

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ModelError("this CFlowDetector is not fitted: call fit() or load() first")

    def _log_p_batches(
        self, images: Sequence[np.ndarray]
    ) -> Iterator[tuple[list[Tensor], tuple[int, int], list[int]]]:
        """Per batch of same-size images: log-likelihood maps, image size, image indices."""
        from tqdm.auto import tqdm

        cfg = self.config
        encoder = self._encoder_module()
        device = self._device
        self.decoders_.eval()
        conditions: dict[tuple[int, int], Tensor] = {}
        bar = tqdm(total=len(images), desc="scoring", unit="clip", disable=not self.progress)
        for members in _size_batches(images, _GROUP):
            outputs = _encode_each(encoder, [images[i] for i in members], device)
            log_p = []
            for s, out in enumerate(outputs):
                b, _, h, w = out.shape
                if (h, w) not in conditions:
                    conditions[(h, w)] = fiber_conditions(
                        h, w, cfg.cond_dim, positional=cfg.positional_encoding
                    )
                fibers = feature_fibers(out).to(torch.float16)
                index = torch.arange(h * w).repeat(b)
                log_p.append(self._decode(s, fibers, conditions[(h, w)], index).reshape(b, h, w))
            yield log_p, tuple(images[members[0]].shape), members  # type: ignore[misc]
            bar.update(len(members))
        bar.close()

    def score(self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Anomaly score of each clip (higher = more anomalous).

        A clip's score depends on the clip and the trained detector only, not
        on the other clips passed with it.

        Parameters
        ----------
        data : sequence of Clip, or sequence of np.ndarray [shape=(rows, frames)], or np.ndarray [shape=(n, rows, frames)]
            Clips or their (unstandardised) feature images; sizes may differ.

        Returns
        -------
        np.ndarray [shape=(n,), dtype=float64]
            The maximum or mean (``config.aggregation``) of each anomaly map;
            with ``config.domain_aware``, the domain-aware score of
            :class:`asdflow.domains.DomainScorer` built on it.

        Raises
        ------
        ModelError
            For clips of another machine type than ``machine_``, or when a
            score is not finite (a badly trained detector).
        """
        self._check_fitted()
        raw = self._images(data)
        images = self._standardise(raw)
        scores = np.empty(len(images), dtype=np.float64)
        for log_p, size, members in self._log_p_batches(images):
            maps = anomaly_map(log_p, self.constants_, size)
            scores[members] = aggregate_map(maps, self.config.aggregation).numpy()
        if self.domain_scorer_ is not None:
            from asdflow.domains import image_statistics

            statistics = image_statistics(raw, self._mel_rows(raw[0].shape[0]))
            scores = self.domain_scorer_.score(scores, statistics)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise ModelError(
                f"this CFlow detector gives non-finite scores to {bad.size} of {len(scores)} "
                f"clips (the first: clip {bad[0]}); its flows overflow on them. Train it again "
                "with fiber_norm='standardize' or a lower learning rate, and check the clips"
            )
        return scores

    def _mel_rows(self, n_rows: int) -> slice:
        """The log-mel rows of the input images, which the domain-aware score summarises."""
        from asdflow.features import FeatureConfig

        recipe = self.config.features or FeatureConfig()
        if n_rows != recipe.n_rows:
            raise ModelError(
                f"the domain-aware CFlow reads the log-mel rows of the feature images, but the "
                f"images have {n_rows} rows and the features config {recipe.n_rows}; pass the "
                "FeatureConfig the images were made with"
            )
        return recipe.row_groups()["mel"]

    def _one_size_images(
        self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray, method: str
    ) -> list[np.ndarray]:
        """Standardised images of ``data`` for ``method``, which needs them all of one size."""
        self._check_fitted()
        images = self._standardise(self._images(data))
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ModelError(
                f"{method} needs images of one size, got {sorted(shapes)}; "
                "call it separately for each clip length"
            )
        return images

    def log_likelihood_maps(
        self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray
    ) -> list[Tensor]:
        """Per scale, the log-likelihood per dimension ``log p / C`` of every position of each clip.

        These are the maps that :func:`anomaly_map` turns into an anomaly
        map: ``anomaly_map(maps, detector.constants_, size)``, with ``size``
        the image size (``anomaly_maps(data).shape[1:]``), gives
        :meth:`anomaly_maps`. With other constants, e.g. fitted on a test set
        by :func:`fit_score_constants` as the official CFLOW-AD code does,
        they give the scores that choice would produce.

        Parameters
        ----------
        data : sequence of Clip, or sequence of np.ndarray [shape=(rows, frames)], or np.ndarray [shape=(n, rows, frames)]
            Clips or feature images, all of the same size.

        Returns
        -------
        list of 3 Tensors [shape=(n, H_k, W_k), dtype=float32]
            One map per scale (``layer2``, ``layer3``, ``layer4``), on the CPU.
        """
        images = self._one_size_images(data, "log_likelihood_maps")
        out: list[Tensor] = []
        for log_p, _, members in self._log_p_batches(images):
            if not out:  # the first batch tells the map sizes
                out = [torch.empty((len(images), *m.shape[1:]), dtype=torch.float32) for m in log_p]
            for full, part in zip(out, log_p, strict=True):
                full[members] = part.float().cpu()
        return out

    def anomaly_maps(self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Anomaly map of each clip, at the size of its feature image.

        Parameters
        ----------
        data : sequence of Clip, or sequence of np.ndarray [shape=(rows, frames)], or np.ndarray [shape=(n, rows, frames)]
            Clips or feature images, all of the same size.

        Returns
        -------
        np.ndarray [shape=(n, n_kept_rows, frames), dtype=float32]
            ``map_max - sum over scales of exp(min(log p / C - scale_max, 0))``,
            upsampled; at least 0 on the held-out clips the constants come
            from. ``n_kept_rows`` is
            the number of input rows (158) unless ``config.rows`` keeps only
            some row groups (:meth:`CFlowConfig.row_indices` lists them).
        """
        images = self._one_size_images(data, "anomaly_maps")
        out = np.empty((len(images), *images[0].shape), dtype=np.float32)
        for log_p, size, members in self._log_p_batches(images):
            out[members] = anomaly_map(log_p, self.constants_, size).numpy()
        return out

    def predict(self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Decisions: 1 (anomalous) where the score exceeds ``threshold_``, else 0.

        Returns
        -------
        np.ndarray [shape=(n,), dtype=int64]
        """
        self._check_fitted()
        return (self.score(data) > self.threshold_).astype(np.int64)

    # -- files ----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write everything learned to one file (atomically).

        The file holds the configuration, the row statistics, the decoder
        weights, the score constants, the training scores and threshold, the
        training losses, the asdflow and torch versions and the format
        version, as tensors and plain Python values. The encoder is not
        stored: it is re-created from the configuration (ImageNet weights,
        a weights file, or random weights from ``encoder_seed``) and checked
        against a fingerprint of the one used for training.

        Parameters
        ----------
        path : path
            Destination file (conventionally ``*.pt``).

        Returns
        -------
        Path
        """
        self._check_fitted()
        state = {
            "kind": _FILE_KIND,
            "format_version": FORMAT_VERSION,
            "versions": storage.versions(),
            "config": _plain(self.config.to_dict()),
            "machine": self.machine_,
            "encoder_fingerprint": self._encoder_fingerprint,
            "n_rows": self.n_rows_,
            "channels": list(self.channels_),
            "row_stats": _numpy_to_tensors(self.row_stats_.to_dict()),
            "decoders": {k: v.detach().cpu() for k, v in self.decoders_.state_dict().items()},
            "scale_max": list(self.constants_.scale_max),
            "map_max": float(self.constants_.map_max),
            "train_scores": torch.from_numpy(self.train_scores_.copy()),
            "holdout_scores": torch.from_numpy(self.holdout_scores_.copy()),
            "holdout_domains": [str(d) for d in self.holdout_domains_],
            "domain_scorer": None if self.domain_scorer_ is None else self.domain_scorer_.state(),
            "threshold": float(self.threshold_),
            "losses": list(self.losses_),
        }
        storage.save_state(state, Path(path))
        return Path(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        machine: str | None = None,
        device: str | torch.device | None = None,
        cache: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> CFlowDetector:
        """Read a detector written by :meth:`save`.

        Parameters
        ----------
        path : path
        machine : str or None
            The machine type the detector must have been trained on (e.g.
            ``"fan"``); None accepts any.
        device, cache, progress
            As in the constructor (they are not stored in the file).

        Returns
        -------
        CFlowDetector

        Raises
        ------
        ModelError
            If the file is missing, truncated or damaged (checksum mismatch),
            not a CFlow detector, of another format version, or trained on
            another machine type than ``machine``.
        """
        from asdflow.features import RowStats

        data = storage.load_state(
            path,
            kind=_FILE_KIND,
            what="a CFlow detector file",
            format_version=FORMAT_VERSION,
            writer="CFlowDetector.save",
        )
        storage.check_trained_machine(path, data["machine"], machine)
        det = cls(
            CFlowConfig.from_dict(data["config"]), device=device, cache=cache, progress=progress
        )
        det.machine_ = data["machine"]
        det._encoder_fingerprint = data["encoder_fingerprint"]
        det.n_rows_ = int(data["n_rows"])
        det.channels_ = [int(c) for c in data["channels"]]
        det.row_stats_ = RowStats.from_dict(_tensors_to_numpy(data["row_stats"]))
        det.decoders_ = build_decoders(det.config, det.channels_)
        det.decoders_.load_state_dict(data["decoders"])
        det.decoders_.to(det._device).eval()
        det.constants_ = ScoreConstants(
            scale_max=tuple(float(v) for v in data["scale_max"]), map_max=float(data["map_max"])
        )
        det.train_scores_ = data["train_scores"].numpy()
        det.holdout_scores_ = data["holdout_scores"].numpy()
        det.holdout_domains_ = np.array(data["holdout_domains"], dtype=str)
        scorer = data["domain_scorer"]
        if scorer is not None:
            from asdflow.domains import DomainScorer

            scorer = DomainScorer.from_state(scorer)
        det.domain_scorer_ = scorer
        det.threshold_ = float(data["threshold"])
        det.losses_ = [float(v) for v in data["losses"]]
        return det


def fiber_loss(
    z: Tensor, log_det: Tensor, loss: Callable[[Tensor, int], Tensor] | None = None
) -> Tensor:
    """CFLOW-AD's loss of one fiber batch, computed in float32.

    Parameters
    ----------
    z : Tensor [shape=(N, C)]
    log_det : Tensor [shape=(N,)]
    loss : callable or None
        ``loss(log_p, C)``; default :func:`asdflow.flows.logsigmoid_loss`,
        ``mean(-logsigmoid(log p / C))``.

    Returns
    -------
    Tensor [shape=()]
    """
    from asdflow.flows import gaussian_log_likelihood, logsigmoid_loss

    fn = loss if loss is not None else logsigmoid_loss
    z = z.float()
    return fn(gaussian_log_likelihood(z, log_det.float()), z.shape[1])
