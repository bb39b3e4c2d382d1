"""Held-out splits and the two-domain threshold (asdflow.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from asdflow.calibration import MIN_FIT, domain_threshold, holdout_split, training_domains
from asdflow.errors import ModelError, ParameterError
from asdflow.evaluation import gamma_threshold


def test_split_is_stratified_seeded_and_complete():
    domains = ["source"] * 40 + ["target"] * 4
    fit, held = holdout_split(domains, 0.25, seed=3)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(44))
    labels = np.array(domains)
    assert (labels[held] == "source").sum() == 10
    assert (labels[held] == "target").sum() == 1
    again = holdout_split(domains, 0.25, seed=3)
    assert np.array_equal(again[1], held)
    other = holdout_split(domains, 0.25, seed=4)
    assert not np.array_equal(other[1], held)


def test_the_target_domain_has_its_own_fraction():
    domains = ["source"] * 40 + ["target"] * 10
    fit, held = holdout_split(domains, 0.1, seed=0, target_fraction=0.5)
    labels = np.array(domains)
    assert (labels[held] == "source").sum() == 4 and (labels[held] == "target").sum() == 5
    fit, held = holdout_split(domains, 0.0, seed=0, target_fraction=0.0)
    assert held.size == 0


def test_split_keeps_lone_clips_and_nothing_at_zero():
    fit, held = holdout_split(["source"] * 5 + ["target"], 0.5, seed=0)
    assert "target" not in np.array(["source"] * 5 + ["target"])[held]
    assert held.size == 2  # round(2.5) == 2 in numpy's rounding
    fit, held = holdout_split(["source"] * 5, 0.0, seed=0)
    assert held.size == 0 and fit.size == 5
    with pytest.raises(ParameterError):
        holdout_split(["source"], 1.0, seed=0)


def test_threshold_of_one_domain_is_the_gamma_rule():
    rng = np.random.default_rng(0)
    scores = rng.gamma(3.0, 1.0, size=50)
    assert domain_threshold(scores, ["source"] * 50) == pytest.approx(gamma_threshold(scores))


def test_threshold_covers_a_shifted_target_domain():
    # Target normals score 5 higher; one held-out target clip must move the threshold there.
    rng = np.random.default_rng(1)
    source = rng.gamma(4.0, 0.5, size=40)
    target_test = 5.0 + rng.gamma(4.0, 0.5, size=2000)
    threshold = domain_threshold(
        np.append(source, np.median(target_test)), ["source"] * 40 + ["target"]
    )
    assert threshold > gamma_threshold(source) + 4.0
    # About 1 - 0.9 of the shifted domain's normals lie above it (the spread comes from the source).
    assert 0.02 < np.mean(target_test > threshold) < 0.25


def test_threshold_is_the_largest_domain_threshold():
    rng = np.random.default_rng(2)
    source, target = rng.gamma(4.0, 0.5, size=30), 1.0 + rng.gamma(4.0, 0.5, size=MIN_FIT + 2)
    both = domain_threshold(
        np.concatenate([source, target]), ["source"] * 30 + ["target"] * target.size
    )
    assert both == pytest.approx(max(gamma_threshold(source), gamma_threshold(target)))


def test_threshold_errors_and_domains():
    with pytest.raises(ModelError):
        domain_threshold([], [])
    with pytest.raises(ModelError):
        domain_threshold([1.0, 2.0], ["source"])
    assert training_domains([1, 2]) == ["source", "source"]
    with pytest.raises(ParameterError):
        training_domains([1, 2], ["source", "other"])
