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

The modules, in the order of the pipeline (every name is importable from
``asdflow.cflow`` itself):

- :mod:`asdflow.cflow.config` - :class:`CFlowConfig`;
- :mod:`asdflow.cflow.fibers` - encoder, fibers, conditions, :class:`FiberBank`;
- :mod:`asdflow.cflow.decoders` - :class:`ScaleDecoder`, one flow per scale;
- :mod:`asdflow.cflow.scores` - log-likelihoods, loss, schedule, anomaly maps;
- :mod:`asdflow.cflow.training` - the training loop, its checkpoints, the finiteness check;
- :mod:`asdflow.cflow.detector` - :class:`CFlowDetector`, which ties them together.
"""

from asdflow.base import choose_device
from asdflow.cflow.config import CFlowConfig
from asdflow.cflow.decoders import ScaleDecoder, build_decoders, fiber_normalisation
from asdflow.cflow.detector import FORMAT_VERSION, CFlowDetector
from asdflow.cflow.fibers import (
    FiberBank,
    build_encoder,
    encode_fibers,
    feature_fibers,
    fiber_conditions,
)
from asdflow.cflow.scores import (
    ScoreConstants,
    aggregate_map,
    anomaly_map,
    fiber_loss,
    fit_score_constants,
    interleave_scales,
    learning_rate_factor,
    log_likelihood_per_dim,
    probability_map,
)
from asdflow.cflow.training import check_finite, train_decoders

__all__ = [
    "check_finite",
    "train_decoders",
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
    "fiber_loss",
]
