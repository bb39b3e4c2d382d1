"""The domain-aware CFlow score (asdflow.domains, CFlowConfig(domain_aware=True))."""

from __future__ import annotations

import numpy as np
import pytest

from asdflow import data, evaluation, features
from asdflow.cflow import CFlowConfig, CFlowDetector
from asdflow.domains import DomainScorer, image_statistics
from asdflow.errors import ModelError


def test_image_statistics_are_mean_and_std_of_the_rows():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = image_statistics([image], slice(0, 2))
    assert got.shape == (1, 4)
    np.testing.assert_allclose(got[0], [1.5, 5.5, np.std([0, 1, 2, 3]), np.std([4, 5, 6, 7])])


def test_the_domain_term_changes_the_ranking_a_clip_score_alone_cannot():
    rng = np.random.default_rng(0)
    source = rng.normal(0.0, 1.0, size=(200, 4))
    target = rng.normal(5.0, 1.0, size=(8, 4))
    statistics = np.vstack([source, target])
    domains = ["source"] * 200 + ["target"] * 8
    # Held-out flow scores: target normals score 3 higher than source normals (the collapse).
    held = np.concatenate([rng.normal(1.0, 0.2, 20), rng.normal(4.0, 0.2, 3)])
    scorer = DomainScorer.fit(statistics, domains, held, ["source"] * 20 + ["target"] * 3)
    assert scorer.flow_location["target"] - scorer.flow_location["source"] == pytest.approx(
        3.0, abs=0.5
    )
    # A target-normal clip (high flow score, near the target memory) against a source anomaly
    # (the same flow score, far from both memories): the flow score ties them, the domain term does not.
    target_normal = scorer.score(np.array([4.0]), rng.normal(5.0, 1.0, size=(1, 4)))
    source_anomaly = scorer.score(np.array([4.0]), np.array([[0.0, 0.0, 12.0, -12.0]]))
    assert target_normal[0] < source_anomaly[0]
    per_domain = scorer.domain_scores(np.array([4.0]), rng.normal(5.0, 1.0, size=(1, 4)))
    assert per_domain["target"][0] < per_domain["source"][0]  # it is judged as a target clip


@pytest.fixture(scope="module")
def valve(factory):
    clips = data.scan(factory, machines="valve")
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]
    return train, test


@pytest.mark.slow
def test_domain_aware_detector_on_clips(valve, shared_cache, tmp_path):
    train, test = valve
    config = CFlowConfig.quick(
        features=features.FeatureConfig().with_nominal_length(train), domain_aware=True
    )
    det = CFlowDetector(config, progress=False).fit(train)
    assert det.domain_scorer_ is not None
    assert set(det.domain_scorer_.memory.memories_) == {"source", "target"}
    scores = det.score(test)
    truth = evaluation.truth_from_clips(test)
    result = evaluation.evaluate(truth, scores, machine="valve")
    # Quick mode, valve: both domains' anomalies are found (the reference kNN reaches about 0.9).
    assert min(result.auc_source, result.auc_target) > 0.75, result
    # The threshold is fitted to the held-out clips' domain-aware scores.
    assert det.holdout_scores_.size == 12
    loaded = CFlowDetector.load(det.save(tmp_path / "da.pt"), progress=False)
    np.testing.assert_array_equal(loaded.score(test), scores)
    # The flows alone give the report's score; the domain term re-ranks the clips.
    report = CFlowDetector(
        CFlowConfig.quick(features=config.features, domain_aware=False), progress=False
    ).fit(train)
    assert not np.array_equal(np.argsort(report.score(test)), np.argsort(scores))


def test_domain_aware_needs_the_mel_rows():
    images = [np.random.default_rng(i).normal(size=(40, 64)).astype(np.float32) for i in range(6)]
    config = CFlowConfig.quick(n_blocks=1, epochs=1, fiber_batch=16, domain_aware=True)
    with pytest.raises(ModelError, match="log-mel rows"):
        CFlowDetector(config, progress=False).fit(images)


def test_each_term_has_one_spread_taken_from_the_source_domain():
    rng = np.random.default_rng(1)
    statistics = np.vstack([rng.normal(0.0, 1.0, size=(100, 4)), rng.normal(5.0, 1.0, size=(4, 4))])
    domains = ["source"] * 100 + ["target"] * 4
    source_held = rng.normal(1.0, 0.2, 20)
    # Three held-out target clips with almost no spread: dividing by it would explode z_target.
    held = np.concatenate([source_held, [4.0, 4.0 + 1e-4, 4.0 + 2e-4]])
    scorer = DomainScorer.fit(statistics, domains, held, ["source"] * 20 + ["target"] * 3)
    assert scorer.flow_spread == pytest.approx(np.std(source_held))
    assert scorer.flow_location["target"] == pytest.approx(4.0 + 1e-4)
    # Half a unit above the target normals is 0.5 / 0.2 source spreads, not 0.5 / 1e-4.
    flow = np.array([4.5])
    near_target = rng.normal(5.0, 1.0, size=(1, 4))
    z = scorer.domain_scores(flow, near_target)["target"][0]
    distance = scorer.memory.domain_distances(list(near_target))["target"][0]
    expected = (4.5 - (4.0 + 1e-4)) / np.std(source_held) + (distance - 1.0) / scorer.memory_spread
    assert z == pytest.approx(expected)
    assert abs(z) < 10
