"""Tests of asdflow.flows: invertibility, exact log-determinants, likelihood, encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from asdflow.errors import ModelError
from asdflow.flows import (
    ConditionalFlow,
    CouplingBlock,
    fit_flow,
    gaussian_log_likelihood,
    logsigmoid_loss,
    n_parameters,
    positional_encoding,
    sample,
)
from asdflow.tolerance import tolerance


@pytest.fixture
def float64_default():
    """Build modules in float64 (so the rotations are orthogonal to float64 precision)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def one_thread():
    """Tiny 2-D models run fastest, and most reproducibly, on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _perturb(module: torch.nn.Module, seed: int, scale: float = 3.0) -> None:
    """Move every parameter away from its initial value, as training would.

    At initialisation g = 1 and the coupling output is small, so a log-det bug
    in either term could hide; random parameters exercise both fully.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _round_trip_tolerance(n_blocks: int, there: torch.Tensor, back: torch.Tensor) -> float:
    """How far ``inverse(forward(x))`` may land from ``x`` by rounding alone.

    Every block rounds at the size S of the largest value on the way, and a
    flow that carries values of size 1 to size S stretches an error in the
    other direction by up to S as well: S**2 times the rounding unit, once
    per block.
    """
    size = max(float(there.abs().max()), float(back.abs().max()), 1.0)
    return tolerance(there.dtype, size**2, terms=n_blocks)


def _data(n: int, dim: int, cond_dim: int, seed: int, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=dtype)
    c = torch.randn(n, cond_dim, generator=generator, dtype=dtype) if cond_dim else None
    return x, c


@pytest.mark.parametrize("dim", [2, 3, 5, 16])
@pytest.mark.parametrize("cond_dim", [0, 4])
def test_inverse_undoes_forward_in_float64(dim, cond_dim):
    flow = ConditionalFlow(dim, 8, cond_dim, seed=1).double()
    _perturb(flow, seed=2, scale=0.5)
    x, c = _data(64, dim, cond_dim, seed=3)
    with torch.no_grad():
        z, _ = flow(x, c)
        x_back = flow.inverse(z, c)
        x_inverse = flow.inverse(x, c)
        z_back, _ = flow(x_inverse, c)
    assert x_back.dtype == torch.float64
    assert torch.allclose(x_back, x, rtol=0, atol=_round_trip_tolerance(8, z, x))
    assert torch.allclose(z_back, x, rtol=0, atol=_round_trip_tolerance(8, x_inverse, x))
    assert not torch.allclose(z, x, atol=1e-2)  # the flow is not the identity


def test_inverse_undoes_forward_in_float32():
    flow = ConditionalFlow(6, 8, 3, seed=0)
    x, c = _data(32, 6, 3, seed=1, dtype=torch.float32)
    with torch.no_grad():
        z = flow(x, c)[0]
        x_back = flow.inverse(z, c)
    assert torch.allclose(x_back, x, rtol=0, atol=_round_trip_tolerance(8, z, x))


@pytest.mark.parametrize("dim", [3, 4, 5])
@pytest.mark.parametrize("cond_dim", [0, 3])
@pytest.mark.parametrize("n_blocks", [1, 4])
def test_log_det_equals_autograd_jacobian(float64_default, dim, cond_dim, n_blocks):
    flow = ConditionalFlow(dim, n_blocks, cond_dim, seed=dim + cond_dim)
    _perturb(flow, seed=7, scale=1.0)
    x, c = _data(5, dim, cond_dim, seed=11)
    _, log_det = flow(x, c)
    for i in range(x.shape[0]):
        ci = None if c is None else c[i : i + 1]
        jac = jacobian(lambda v, ci=ci: flow(v[None], ci)[0][0], x[i])
        sign, log_abs_det = torch.linalg.slogdet(jac)
        assert sign != 0
        # An LU log-determinant is exact to the rounding unit times J's condition number.
        tol = tolerance(jac.dtype, torch.linalg.cond(jac).item(), terms=dim * n_blocks)
        assert log_det[i].item() == pytest.approx(log_abs_det.item(), rel=0, abs=tol)
    # Samples differ, and so do their log-determinants: the test is per sample.
    assert log_det.std() > 1e-3


def test_log_det_of_a_double_cast_flow_matches_to_float32_rounding():
    # Built in float32 then cast: the rotations are orthogonal to float32
    # precision only, a deviation the analytic log-det ignores (one per
    # channel of every block's rotation).
    flow = ConditionalFlow(4, 8, 2, seed=5).double()
    _perturb(flow, seed=8, scale=1.0)
    x, c = _data(3, 4, 2, seed=9)
    _, log_det = flow(x, c)
    tol = tolerance(torch.float32, terms=8 * 4)
    for i in range(3):
        jac = jacobian(lambda v, i=i: flow(v[None], c[i : i + 1])[0][0], x[i])
        assert log_det[i].item() == pytest.approx(
            torch.linalg.slogdet(jac)[1].item(), rel=0, abs=tol
        )


def test_block_log_det_is_sum_of_log_scales_and_log_global_scales(float64_default):
    block = CouplingBlock(5, 2, seed=0)
    _perturb(block, seed=1)
    x, c = _data(8, 5, 2, seed=2)
    _, log_det = block(x, c)
    x1 = x[:, :3]  # ceil(5 / 2) = 3 channels pass unchanged
    a = 0.1 * block.subnet(torch.cat([x1, c], dim=1))
    s = 1.9 * torch.tanh(a[:, :2])
    g = 0.2 * torch.log1p(torch.exp(0.5 * block.gamma))
    by_hand = s.sum(1) + torch.log(g).sum()
    magnitude = float((s.abs().sum(1).max() + torch.log(g).abs().sum()).detach())
    tol = tolerance(log_det.dtype, magnitude, terms=5)
    assert torch.allclose(log_det, by_hand, rtol=0, atol=tol)


@pytest.mark.parametrize("dim", [2, 3, 7, 64])
def test_global_affine_starts_at_identity(dim):
    block = CouplingBlock(dim, seed=0)
    g = block.global_scale()
    assert g.shape == (dim,)
    assert torch.allclose(
        g, torch.ones(dim), rtol=0, atol=tolerance(g.dtype, terms=3)
    )  # exp, log1p, scale
    assert torch.equal(block.offset, torch.zeros(dim))


@pytest.mark.parametrize("dim", [2, 3, 8, 33])
def test_rotation_is_a_fixed_orthogonal_matrix_with_det_one(dim):
    block = CouplingBlock(dim, 4, seed=3)
    w = block.rotation
    assert w.shape == (dim, dim)
    tol = tolerance(w.dtype, terms=dim)  # orthogonal to the rounding of dim-term dot products
    assert torch.linalg.det(w.double()).item() == pytest.approx(1.0, rel=0, abs=tol)
    assert torch.allclose(w @ w.T, torch.eye(dim), rtol=0, atol=tol)
    assert not w.requires_grad
    assert all(p is not w for p in block.parameters())
    assert "rotation" in block.state_dict()
    assert not torch.allclose(w, torch.eye(dim))  # mixes the channels

    # One optimisation step changes the parameters but not the rotation.
    before = w.clone()
    gamma_before = block.gamma.detach().clone()
    x, c = _data(16, dim, 4, seed=0, dtype=torch.float32)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    y, log_det = block(x, c)
    (-gaussian_log_likelihood(y, log_det).mean()).backward()
    optimizer.step()
    assert torch.equal(block.rotation, before)
    assert not torch.equal(block.gamma, gamma_before)


def test_split_sizes_follow_ceil_and_floor():
    block = CouplingBlock(7, 5, hidden_factor=2)
    first, relu, last = block.subnet
    assert block.split == (4, 3)
    assert (first.in_features, first.out_features) == (4 + 5, 2 * 9)
    assert isinstance(relu, torch.nn.ReLU)
    assert (last.in_features, last.out_features) == (18, 2 * 3)


def test_seed_fixes_initial_weights_and_blocks_differ():
    a = ConditionalFlow(6, 3, 2, seed=42)
    b = ConditionalFlow(6, 3, 2, seed=42)
    c = ConditionalFlow(6, 3, 2, seed=43)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.blocks[0].rotation, c.blocks[0].rotation)
    assert not torch.equal(a.blocks[0].rotation, a.blocks[1].rotation)
    assert not torch.equal(a.blocks[0].subnet[0].weight, a.blocks[1].subnet[0].weight)


@pytest.mark.parametrize(
    ("dim", "cond_dim", "n_blocks"),
    [
        (2, 0, 8),
        (7, 3, 8),
        (128, 128, 8),
        (512, 128, 1),
        (1024, 128, 1),
        pytest.param(2048, 128, 1, marks=pytest.mark.slow),  # a 2048 x 2048 QR
    ],
)
def test_parameter_count_follows_the_block_formula(dim, cond_dim, n_blocks):
    # Per block: Linear(d_in, 2 d_in) + Linear(2 d_in, 2 floor(C/2)) + gamma and b (2C).
    d_in = dim - dim // 2 + cond_dim
    hidden = 2 * d_in
    out = 2 * (dim // 2)
    per_block = d_in * hidden + hidden + hidden * out + out + 2 * dim
    flow = ConditionalFlow(dim, n_blocks, cond_dim, seed=0)
    assert n_parameters(flow) == n_blocks * per_block
    assert n_parameters(flow, trainable_only=False) == n_blocks * per_block
    flow.blocks[0].gamma.requires_grad_(False)
    assert n_parameters(flow) == n_blocks * per_block - dim


def test_condition_changes_the_output():
    flow = ConditionalFlow(4, 2, 3, seed=0)
    _perturb(flow, seed=1, scale=1.0)
    x, c = _data(10, 4, 3, seed=2, dtype=torch.float32)
    with torch.no_grad():
        z1, _ = flow(x, c)
        z2, _ = flow(x, c + 1.0)
    assert not torch.allclose(z1, z2, atol=1e-3)


def test_bad_shapes_and_missing_condition_raise():
    flow = ConditionalFlow(4, 2, 3, seed=0)
    x, c = _data(10, 4, 3, seed=0, dtype=torch.float32)
    with pytest.raises(ModelError, match="condition"):
        flow(x)
    with pytest.raises(ModelError, match=r"\(10, 3\)"):
        flow(x, c[:, :2])
    with pytest.raises(ModelError, match=r"\(N, 4\)"):
        flow(x[:, :3], c)
    with pytest.raises(ModelError, match="unconditional"):
        ConditionalFlow(4, 2, seed=0)(x, c)
    with pytest.raises(ModelError, match="at least 2"):
        CouplingBlock(1)


def test_gaussian_log_likelihood_matches_torch_distribution():
    z, _ = _data(20, 6, 0, seed=4)
    log_det = torch.linspace(-2, 3, 20, dtype=torch.float64)
    prior = torch.distributions.MultivariateNormal(
        torch.zeros(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64)
    )
    expected = prior.log_prob(z) + log_det
    size = float(z.pow(2).sum(1).max() + log_det.abs().max()) + 3 * math.log(2 * math.pi)
    tol = tolerance(z.dtype, size, terms=6)
    assert torch.allclose(gaussian_log_likelihood(z, log_det), expected, rtol=0, atol=tol)
    origin = gaussian_log_likelihood(torch.zeros(1, 6), torch.zeros(1))
    tol = tolerance(origin.dtype, 3 * math.log(2 * math.pi), terms=2)
    assert origin.item() == pytest.approx(-3 * math.log(2 * math.pi), rel=0, abs=tol)


def test_logsigmoid_loss_values():
    log_p = torch.tensor([-300.0, 0.0, 40.0, 1000.0], dtype=torch.float64)
    v = log_p.numpy() / 20
    expected = np.mean(np.log1p(np.exp(-v)))
    tol = tolerance(log_p.dtype, np.abs(v).max(), terms=len(v))
    assert logsigmoid_loss(log_p, 20).item() == pytest.approx(expected, rel=0, abs=tol)
    # Very likely samples contribute almost nothing, unlikely ones about -log_p / C.
    assert logsigmoid_loss(torch.tensor([1e4]), 10).item() < tolerance(torch.float32)
    tol = tolerance(torch.float32, 1e3, terms=2)
    assert logsigmoid_loss(torch.tensor([-1e4]), 10).item() == pytest.approx(1e3, rel=0, abs=tol)


def test_positional_encoding_shape_and_known_values():
    height, width, dim = 5, 7, 16
    pe = positional_encoding(height, width, dim)
    assert pe.shape == (dim, height, width)
    assert pe.dtype == torch.get_default_dtype()
    half = dim // 2
    # Position 0: sin(0) = 0 on even channels, cos(0) = 1 on odd ones.
    assert torch.equal(pe[0:half:2, 0, 0], torch.zeros(half // 2))
    assert torch.equal(pe[1:half:2, 0, 0], torch.ones(half // 2))
    assert torch.equal(pe[half::2, 0, 0], torch.zeros(half // 2))
    assert torch.equal(pe[half + 1 :: 2, 0, 0], torch.ones(half // 2))
    # Frequency of channel pair i: exp(-ln(1e4) 2i / (dim/2)); i = 0 is 1 rad per step.
    tol = tolerance(pe.dtype, 6)  # angles up to 6 rad, rounded to the rounding unit
    for i in range(half // 2):
        w = math.exp(-math.log(1e4) * 2 * i / half)
        assert pe[2 * i, 3, 6].item() == pytest.approx(math.sin(6 * w), rel=0, abs=tol)
        assert pe[2 * i + 1, 3, 6].item() == pytest.approx(math.cos(6 * w), rel=0, abs=tol)
        assert pe[half + 2 * i, 3, 6].item() == pytest.approx(math.sin(3 * w), rel=0, abs=tol)
        assert pe[half + 2 * i + 1, 3, 6].item() == pytest.approx(math.cos(3 * w), rel=0, abs=tol)


def test_positional_encoding_halves_vary_along_one_axis_each():
    pe = positional_encoding(6, 9, 128)
    width_half, height_half = pe[:64], pe[64:]
    assert torch.equal(width_half, width_half[:, :1, :].expand_as(width_half))
    assert torch.equal(height_half, height_half[:, :, :1].expand_as(height_half))
    assert (width_half[:, 0, 1:] != width_half[:, 0, :1]).any(dim=0).all()
    assert (height_half[:, 1:, 0] != height_half[:, :1, 0]).any(dim=0).all()
    # Every position gets its own code.
    codes = pe.reshape(128, -1).T
    assert torch.cdist(codes, codes).add(torch.eye(54) * 10).min() > 1e-3


def test_positional_encoding_options_and_errors():
    pe = positional_encoding(2, 3, 8, dtype=torch.float64)
    assert pe.dtype == torch.float64
    with pytest.raises(ModelError, match="multiple of 4"):
        positional_encoding(2, 3, 6)
    with pytest.raises(ModelError, match="positive"):
        positional_encoding(0, 3, 8)


def test_sample_is_seeded_and_inverts_gaussian_draws():
    flow = ConditionalFlow(3, 4, seed=0)
    a = sample(flow, 50, seed=1)
    b = sample(flow, 50, seed=1)
    assert a.shape == (50, 3)
    assert torch.equal(a, b)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(flow(a)[0], z, rtol=0, atol=_round_trip_tolerance(4, a, z))


def _energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance between two samples (0 when they come from one distribution)."""
    cross = torch.cdist(a, b).mean()
    return (2 * cross - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()


@pytest.mark.slow
def test_flow_learns_two_moons_better_than_a_gaussian(one_thread):
    from scipy.stats import multivariate_normal
    from sklearn.datasets import make_moons

    points, _ = make_moons(3000, noise=0.07, random_state=0)
    train, held_out = points[:2000], points[2000:]
    mean, std = train.mean(0), train.std(0)
    train, held_out = (train - mean) / std, (held_out - mean) / std

    # With 2-D data the sub-network sees one number: widen it for this example.
    flow = ConditionalFlow(2, 8, hidden_factor=64, seed=0)
    losses = fit_flow(flow, train, epochs=60, batch_size=200, lr=1e-2, seed=0)
    assert len(losses) == 60
    assert losses[-1] < losses[0] - 0.5

    held = torch.tensor(held_out, dtype=torch.float32)
    with torch.no_grad():
        flow_ll = flow.log_prob(held).mean().item()
    gauss = multivariate_normal(train.mean(0), np.cov(train.T))
    gauss_ll = gauss.logpdf(held_out).mean()
    assert flow_ll > gauss_ll + 0.3

    # Samples from the flow land on the moons; Gaussian samples fill the gaps.
    flow_samples = sample(flow, 1000, seed=1)
    gauss_samples = torch.tensor(gauss.rvs(1000, random_state=1), dtype=torch.float32)
    assert torch.isfinite(flow_samples).all()
    assert _energy_distance(flow_samples, held) < 0.5 * _energy_distance(gauss_samples, held)
    nearest_flow = torch.cdist(flow_samples, held).min(dim=1).values.mean()
    nearest_gauss = torch.cdist(gauss_samples, held).min(dim=1).values.mean()
    assert nearest_flow < 0.6 * nearest_gauss
