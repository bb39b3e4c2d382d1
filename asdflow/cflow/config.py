"""The settings of the CFlow detector (:class:`CFlowConfig`), with the report's choices and ours."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from asdflow import storage
from asdflow.encoder import BACKBONES, PADDINGS
from asdflow.errors import ModelError, ParameterError
from asdflow.features import GROUPS, FeatureConfig

if TYPE_CHECKING:
    from asdflow.features import FeatureConfig


_AGGREGATIONS = ("max", "mean")
_FIBER_NORMS = ("standardize", "whiten", "none")


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
