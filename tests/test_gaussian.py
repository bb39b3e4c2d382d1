"""The per-position Gaussian: exact log-likelihoods, Ledoit-Wolf shrinkage, small samples."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.covariance import ledoit_wolf

from asdflow.errors import ModelError
from asdflow.gaussian import PositionGaussian, ledoit_wolf_shrinkage
from asdflow.tolerance import tolerance


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def gaussian_maps(rng, n, c, h, w, shift=0.0):
    """(n, c, h, w) maps whose fibers at each position follow their own Gaussian."""
    maps = np.empty((n, c, h, w))
    for i in range(h):
        for j in range(w):
            mixing = rng.normal(size=(c, c))
            mean = rng.normal(size=c) + shift * (i - j)
            maps[:, :, i, j] = mean + rng.normal(size=(n, c)) @ mixing
    return torch.from_numpy(maps)


def covariance(model, scale, i, j):
    factor = model.cholesky_[scale][i, j]
    return (factor @ factor.T).numpy()


def test_log_likelihood_matches_scipy(rng):
    maps = gaussian_maps(rng, 300, 4, 2, 3, shift=2.0)
    model = PositionGaussian(shrinkage=0.0, ridge=0.0).fit([maps])
    test = gaussian_maps(rng, 7, 4, 2, 3, shift=2.0)
    log_p = model.log_likelihood_maps([test])[0]
    assert log_p.shape == (7, 2, 3)
    for i in range(2):
        for j in range(3):
            fibers = maps[:, :, i, j].numpy()
            reference = multivariate_normal(fibers.mean(axis=0), np.cov(fibers.T, bias=True))
            expected = reference.logpdf(test[:, :, i, j].numpy()) / 4  # per dimension
            # float32 output of values of size |log p / C|
            tol = tolerance(torch.float32, float(np.abs(expected).max()), terms=4)
            np.testing.assert_allclose(log_p[:, i, j].numpy(), expected, rtol=0, atol=tol)


def test_shrinkage_matches_sklearn_ledoit_wolf(rng):
    maps = gaussian_maps(rng, 12, 6, 2, 2)
    model = PositionGaussian(ridge=0.0, chunk=3).fit([maps])
    for i in range(2):
        for j in range(2):
            expected_cov, expected_alpha = ledoit_wolf(maps[:, :, i, j].numpy())
            assert abs(float(model.shrinkage_[0][i, j]) - expected_alpha) < tolerance(
                torch.float64, terms=12 * 6
            )
            size = float(np.abs(expected_cov).max())
            np.testing.assert_allclose(
                covariance(model, 0, i, j),
                expected_cov,
                rtol=0,
                atol=tolerance(torch.float64, size, terms=12 * 6),
            )


def test_fewer_samples_than_channels_stays_invertible(rng):
    maps = torch.from_numpy(rng.normal(size=(5, 40, 3, 2)))
    model = PositionGaussian().fit([maps])
    assert bool((model.shrinkage_[0] > 0).all())
    for i in range(3):
        for j in range(2):
            sample_cov = np.cov(maps[:, :, i, j].numpy().T, bias=True)
            assert np.linalg.matrix_rank(sample_cov) < 40  # singular without shrinkage
            assert np.linalg.eigvalsh(covariance(model, 0, i, j)).min() > 0
    log_p = model.log_likelihood_maps([torch.from_numpy(rng.normal(size=(3, 40, 3, 2)))])[0]
    assert bool(torch.isfinite(log_p).all())


def test_constant_position_needs_the_ridge(rng):
    maps = torch.from_numpy(rng.normal(size=(10, 3, 1, 2)))
    maps[:, :, 0, 1] = 1.5  # one position never varies
    with pytest.raises(ModelError, match="ridge"):
        PositionGaussian(ridge=0.0).fit([maps])
    log_p = PositionGaussian().fit([maps]).log_likelihood_maps([maps[:2]])[0]
    assert bool(torch.isfinite(log_p).all())


def test_a_fiber_is_likely_only_at_its_own_position(rng):
    # Position (0, 0) centred at +4, position (0, 1) at -4, same spread.
    maps = torch.from_numpy(rng.normal(size=(50, 3, 1, 2)))
    maps[:, :, 0, 0] += 4.0
    maps[:, :, 0, 1] -= 4.0
    model = PositionGaussian().fit([maps])
    swapped = maps[:5].flip(dims=(3,))  # each fiber moved to the other position
    assert bool(
        (model.log_likelihood_maps([maps[:5]])[0] > model.log_likelihood_maps([swapped])[0]).all()
    )


def test_shrinkage_weight_of_a_hand_worked_case():
    # Two samples along one axis: S = diag(1, 0).
    x = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    # S = diag(1, 0), mu = 0.5, d = ((0.5)^2 + (0.5)^2) / 2 = 0.25,
    # b = (sum ||x||^4 / n - ||S||^2) / (n C) = (1 - 1) / 4 = 0, so alpha = 0.
    assert float(ledoit_wolf_shrinkage(x)[0]) == 0.0


@pytest.mark.parametrize(
    "kwargs", [{"shrinkage": 1.5}, {"shrinkage": -0.1}, {"ridge": -1.0}, {"chunk": 0}]
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ModelError):
        PositionGaussian(**kwargs)


def test_bad_inputs_are_refused(rng):
    maps = torch.from_numpy(rng.normal(size=(6, 3, 2, 2)))
    with pytest.raises(ModelError, match="at least 2"):
        PositionGaussian().fit([maps[:1]])
    with pytest.raises(ModelError, match="not fitted"):
        PositionGaussian().log_likelihood_maps([maps])
    model = PositionGaussian().fit([maps])
    with pytest.raises(ModelError, match="scales"):
        model.log_likelihood_maps([maps, maps])
    with pytest.raises(ModelError, match="training image size"):
        model.log_likelihood_maps([maps[:, :, :, :1]])
    with pytest.raises(ModelError, match=r"\(N, C, H, W\)"):
        model.fit([maps[0]])
