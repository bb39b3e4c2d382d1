"""The nearest-neighbour reference detector (asdflow.knn)."""

from __future__ import annotations

import numpy as np
import pytest

from asdflow import data, evaluation
from asdflow.errors import ModelError, ParameterError
from asdflow.knn import KNNConfig, KNNDetector, clip_statistics, nearest_distances


def _gaussian_memories(seed: int = 0):
    rng = np.random.default_rng(seed)
    source = rng.normal(0.0, 1.0, size=(300, 6))
    target = rng.normal(4.0, 1.0, size=(6, 6))
    return rng, source, target


def test_nearest_distances_by_hand():
    memory = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert nearest_distances(np.array([[0.0, 1.0]]), memory) == pytest.approx([1.0])
    assert nearest_distances(memory, memory, leave_out=True) == pytest.approx([5.0, 5.0, 5.0])


def test_radius_puts_a_small_target_memory_on_the_source_scale():
    rng, source, target = _gaussian_memories()
    det = KNNDetector(progress=False).fit(
        [*source, *target], domains=["source"] * 300 + ["target"] * 6
    )
    new_source = det.score(list(rng.normal(0.0, 1.0, size=(200, 6))))
    new_target = det.score(list(rng.normal(4.0, 1.0, size=(200, 6))))
    far = det.score(list(rng.normal(12.0, 1.0, size=(50, 6))))
    # Normal clips of both domains score on one scale (about 1); far-away clips far above.
    ratio = np.median(new_target) / np.median(new_source)
    assert 0.5 < ratio < 2.0
    assert far.min() > max(np.quantile(new_source, 0.99), np.quantile(new_target, 0.99))
    # The radii differ: a memory of 6 clips is sparser than one of 300.
    assert det.radii_["target"] > det.radii_["source"]


def test_training_scores_leave_the_clip_out():
    _, source, target = _gaussian_memories(1)
    det = KNNDetector(progress=False).fit(
        [*source, *target], domains=["source"] * 300 + ["target"] * 6
    )
    assert np.all(det.train_scores_ > 0)  # never the distance of a clip to itself
    standard = (source - det.center_) / det.scale_
    to_others = np.linalg.norm(standard[1:] - standard[0], axis=1).min() / det.radii_["source"]
    to_target = nearest_distances(standard[:1], det.memories_["target"])[0] / det.radii_["target"]
    assert det.train_scores_[0] == pytest.approx(min(to_others, to_target), rel=1e-9)


def test_on_clips_save_load_and_machine(factory, tmp_path):
    clips = data.scan(factory)
    train = [c for c in clips if c.machine == "valve" and c.split == "train"]
    test = [c for c in clips if c.machine == "valve" and c.split == "test"]
    det = KNNDetector(progress=False).fit(train)
    assert det.memories_["source"].shape == (40, 256) and det.memories_["target"].shape == (4, 256)
    scores = det.score(test)
    y = np.array([c.label == "anomaly" for c in test], dtype=int)
    assert evaluation.auc(y, scores) > 0.75  # the valve's faults are evident in the log mel
    loaded = KNNDetector.load(det.save(tmp_path / "knn.pt"), machine="valve", progress=False)
    assert np.array_equal(loaded.score(test), scores)
    assert loaded.threshold_ == det.threshold_
    with pytest.raises(ModelError):
        KNNDetector.load(tmp_path / "knn.pt", machine="fan")
    fan = [c for c in clips if c.machine == "fan" and c.split == "test"]
    with pytest.raises(ModelError):
        det.score(fan)


def test_statistics_and_errors():
    y = np.random.default_rng(0).normal(size=16000).astype(np.float32)
    assert clip_statistics(y).shape == (256,)
    assert clip_statistics(y, KNNConfig(statistics="mean")).shape == (128,)
    with pytest.raises(ParameterError):
        KNNConfig(statistics="median")
    with pytest.raises(ModelError):
        KNNDetector(progress=False).fit([np.zeros(4)])
    with pytest.raises(ModelError):
        KNNDetector(progress=False).fit([np.zeros(4), np.zeros(4)])
    with pytest.raises(ModelError):
        KNNDetector(progress=False).score([np.zeros(4)])
