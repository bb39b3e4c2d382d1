"""The CFlow detector: training, score constants, threshold, scoring, saving (:class:`CFlowDetector`)."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from asdflow import features, storage
from asdflow.base import BaseDetector
from asdflow.calibration import domain_threshold, holdout_split, training_domains
from asdflow.cflow.config import CFlowConfig, _plain
from asdflow.cflow.decoders import build_decoders, fiber_normalisation
from asdflow.cflow.fibers import (
    _GROUP,
    FiberBank,
    _encode_each,
    _fingerprint,
    _size_batches,
    build_encoder,
    encode_fibers,
    feature_fibers,
    fiber_conditions,
)
from asdflow.cflow.scores import (
    ScoreConstants,
    aggregate_map,
    anomaly_map,
    fit_score_constants,
    log_likelihood_per_dim,
)
from asdflow.cflow.training import check_finite, train_decoders
from asdflow.domains import DomainScorer, image_statistics
from asdflow.errors import ModelError
from asdflow.features import FeatureConfig, RowStats

if TYPE_CHECKING:
    from asdflow.data import Clip


#: Version of the layout of the files written by :meth:`CFlowDetector.save`.
#: Bump it whenever the layout changes; :meth:`CFlowDetector.load` refuses
#: files of any other version.
FORMAT_VERSION = 5

_FILE_KIND = "asdflow.cflow.CFlowDetector"
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


def _images_hash(images: Sequence[np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------


class CFlowDetector(BaseDetector):
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
        are refused by :meth:`score_samples`, and :meth:`load` can check it.
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
    >>> scores = det.score_samples(images[:2])
    >>> scores.shape, scores.dtype
    ((2,), dtype('float64'))
    >>> det.anomaly_maps(images[:1]).shape
    (1, 158, 64)
    """

    file_kind = _FILE_KIND
    format_version = FORMAT_VERSION
    file_description = "a CFlow detector file"

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
        cfg = self.config
        items: Any = list(data) if not isinstance(data, np.ndarray) else data
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
        self.losses_ = train_decoders(
            decoders,
            bank,
            cfg,
            device,
            data_hash=data_hash,
            checkpoint=checkpoint,
            callback=callback,
            progress=self.progress,
        )
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
        check_finite(constants, np.concatenate([train_scores, held_scores]), bank, cfg)
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

    def _log_p_batches(
        self, images: Sequence[np.ndarray]
    ) -> Iterator[tuple[list[Tensor], tuple[int, int], list[int]]]:
        """Per batch of same-size images: log-likelihood maps, image size, image indices."""
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
            yield log_p, tuple(images[members[0]].shape), members
            bar.update(len(members))
        bar.close()

    def score_samples(self, data: Sequence[Clip] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
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

    def learned_state(self) -> dict[str, Any]:
        """Everything learned, as tensors and plain Python values (see :meth:`from_state`).

        The configuration, the row statistics, the decoder weights, the score
        constants, the training and held-out scores, the threshold and the
        training losses. The encoder is not stored: it is re-created from the
        configuration (ImageNet weights, a weights file, or random weights
        from ``encoder_seed``) and checked against a fingerprint of the one
        used for training.
        """
        self._check_fitted()
        return {
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

    @classmethod
    def from_state(
        cls,
        data: dict[str, Any],
        *,
        device: str | torch.device | None = None,
        progress: bool = True,
        cache: str | os.PathLike[str] | None = None,
    ) -> CFlowDetector:
        """A fitted detector from :meth:`learned_state` (the other arguments as in the constructor)."""
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
            scorer = DomainScorer.from_state(scorer)
        det.domain_scorer_ = scorer
        det.threshold_ = float(data["threshold"])
        det.losses_ = [float(v) for v in data["losses"]]
        return det
