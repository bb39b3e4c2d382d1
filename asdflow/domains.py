"""The domain-aware CFlow score: compare a clip with each training domain, keep the closer one.

The report's CFlow learns one density from all training fibers. In DCASE
2024 about 99 % of them come from the source domain, so the normal sound of
the target domain lies where the density is low and target normals score
like anomalies. The official score is a harmonic mean, so that one weak
domain decides it.

What cannot help: normalising the *clip score* per domain (say, subtracting
each domain's mean training score) and taking the minimum over the domains
is an increasing function of that one score, so it can move a threshold but
never change a ranking or an AUC. A mechanism that changes the ranking must
bring in something that differs between the domains *before* the clip is
reduced to one number.

:class:`DomainScorer` brings in the nearest-neighbour distance of the clip's
log-mel statistics to the training clips of each domain (the measure of the
reference detector, :mod:`asdflow.knn`, computed here from the mel rows of
the feature image). For each domain ``d``:

.. math::

    z_d(x) = \\frac{s(x) - \\ell_d}{\\sigma} + \\frac{k_d(x) - 1}{\\kappa},
    \\qquad \\text{score}(x) = \\min_d z_d(x)

- :math:`s(x)`: the CFlow clip score; :math:`\\ell_d`: the median CFlow score
  of the held-out clips of domain ``d``; :math:`\\sigma`: the standard
  deviation of the held-out *source* clips' CFlow scores;
- :math:`k_d(x)`: the distance of the clip's statistics to the nearest
  training clip of domain ``d``, divided by that memory's radius (about 1
  for a normal clip of ``d``); :math:`\\kappa`: the standard deviation of
  that ratio over the source memory's own clips, each left out in turn. The
  memories hold *every* training clip, held-out ones included, as the
  reference detector's do; a held-out clip's own distance is then taken
  with itself left out, so that its score stays that of an unseen clip.

Each domain has its own location (where its normal clips lie), but each
term has one spread, taken from the source domain. A spread estimated from
the target domain's few clips (2 to 5 held-out clips, 4 to 10 in a memory)
is too noisy to divide by: on six seeds of the quick factory, per-domain
spreads of the distance ratio ranged over two orders of magnitude (0.002 to
0.37) and cost the fan 11 points of target AUC against the reference;
with one spread per term, every machine type's target AUC stayed within
1.3 points of the reference's (mean over the six seeds).

A target-domain normal clip gets a high flow score but a small target
distance; an anomaly is far from both memories. The two terms are in units
of their own spread, so neither dominates by its scale. Only the domains of
the *training* clips are used; test clips are scored without theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from asdflow.calibration import MIN_FIT
from asdflow.errors import ModelError
from asdflow.knn import KNNDetector, nearest_distances

__all__ = ["DomainScorer", "image_statistics"]

_FLOOR = 1e-6


def image_statistics(images: Sequence[np.ndarray], rows: slice) -> np.ndarray:
    """Mean and standard deviation over time of the given rows of each feature image.

    Parameters
    ----------
    images : sequence of np.ndarray [shape=(n_rows, frames)]
        Unstandardised feature images (the log-mel rows in dB).
    rows : slice
        The rows to summarise, e.g. ``FeatureConfig().row_groups()["mel"]``.

    Returns
    -------
    np.ndarray [shape=(n, 2 * n_kept), dtype=float64]
    """
    out = []
    for image in images:
        part = np.asarray(image, dtype=np.float64)[rows]
        out.append(np.concatenate([part.mean(axis=1), part.std(axis=1)]))
    return np.stack(out)


def _locations_and_spread(
    values: np.ndarray, domains: np.ndarray, names: Sequence[str]
) -> tuple[dict[str, float], float]:
    """Median per domain, and the standard deviation of the largest domain (the source).

    A domain without values takes the largest domain's median.
    """
    groups = {d: values[domains == d] for d in names}
    reference = max(groups, key=lambda d: groups[d].size)
    if groups[reference].size == 0:
        raise ModelError("no scores to normalise with")
    ref_median = float(np.median(groups[reference]))
    location = {d: float(np.median(g)) if g.size else ref_median for d, g in groups.items()}
    spread = float(np.std(groups[reference])) if groups[reference].size >= MIN_FIT else 1.0
    return location, max(spread, _FLOOR)


@dataclass
class DomainScorer:
    """The fitted parts of the domain-aware score (see the module text).

    Attributes
    ----------
    memory : KNNDetector
        Nearest-neighbour memories of the training clips' statistics, one per domain.
    flow_location : dict of str to float
        Per domain, the median of the held-out clips' CFlow scores.
    flow_spread : float
        The standard deviation of the held-out source clips' CFlow scores.
    memory_spread : float
        The standard deviation of the leave-one-out distance ratios within the
        source memory.
    """

    memory: KNNDetector
    flow_location: dict[str, float]
    flow_spread: float
    memory_spread: float

    @classmethod
    def fit(
        cls,
        train_statistics: np.ndarray,
        train_domains: Sequence[str] | np.ndarray,
        held_flow_scores: np.ndarray,
        held_domains: Sequence[str] | np.ndarray,
    ) -> DomainScorer:
        """Fit the memories to the training clips and the flow normalisation to held-out clips.

        Parameters
        ----------
        train_statistics : np.ndarray [shape=(n_train, dim)]
            :func:`image_statistics` of every training clip (held-out ones included).
        train_domains : sequence of str
            Their domains.
        held_flow_scores : np.ndarray [shape=(n_held,)]
            CFlow scores of the held-out clips (the training clips' own scores
            when nothing was held out).
        held_domains : sequence of str
            Their domains.
        """
        labels = np.asarray(list(train_domains), dtype=str)
        memory = KNNDetector(progress=False).fit(list(train_statistics), domains=list(labels))
        names = list(memory.memories_)
        ratios, ratio_domains = [], []
        for d, stored in memory.memories_.items():
            if len(stored) >= 2:
                ratios.append(nearest_distances(stored, stored, leave_out=True) / memory.radii_[d])
                ratio_domains += [d] * len(stored)
        if ratios:
            _, memory_spread = _locations_and_spread(
                np.concatenate(ratios), np.array(ratio_domains, dtype=str), names
            )
        else:
            memory_spread = 1.0
        location, spread = _locations_and_spread(
            np.asarray(held_flow_scores, dtype=np.float64),
            np.asarray(list(held_domains), dtype=str),
            names,
        )
        return cls(memory, location, spread, memory_spread)

    def domain_scores(
        self, flow_scores: np.ndarray, statistics: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``z_d`` of every clip for every training domain ``d``."""
        distances = self.memory.domain_distances(list(statistics))
        flow = np.asarray(flow_scores, dtype=np.float64)
        return {d: self._z(d, flow, distances[d]) for d in distances}

    def score(self, flow_scores: np.ndarray, statistics: np.ndarray) -> np.ndarray:
        """The domain-aware score: the smallest ``z_d`` of each clip."""
        return np.min(np.stack(list(self.domain_scores(flow_scores, statistics).values())), axis=0)

    def score_training_clips(self, flow_scores: np.ndarray) -> np.ndarray:
        """The score of the clips the memories hold, each with itself left out of them.

        ``flow_scores`` are in the order of the statistics given to
        :meth:`fit`. A clip's nearest neighbour in its own domain's memory is
        then the nearest *other* clip, as for a clip never seen
        (:meth:`asdflow.knn.KNNDetector.left_out_distances`).
        """
        flow = np.asarray(flow_scores, dtype=np.float64)
        distances = self.memory.left_out_distances()
        return np.min(np.stack([self._z(d, flow, distances[d]) for d in distances]), axis=0)

    def _z(self, domain: str, flow: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """``z_d`` from the flow scores and the radius-scaled distances to memory ``d``."""
        return (flow - self.flow_location[domain]) / self.flow_spread + (
            distance - 1.0
        ) / self.memory_spread

    def state(self) -> dict[str, Any]:
        """Plain values and tensors for a detector file (see :meth:`from_state`)."""
        return {
            "memory": self.memory.learned_state(),
            "flow_location": dict(self.flow_location),
            "flow_spread": float(self.flow_spread),
            "memory_spread": float(self.memory_spread),
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> DomainScorer:
        """Inverse of :meth:`state`."""
        return cls(
            KNNDetector.from_state(data["memory"], progress=False),
            {k: float(v) for k, v in data["flow_location"].items()},
            float(data["flow_spread"]),
            float(data["memory_spread"]),
        )
