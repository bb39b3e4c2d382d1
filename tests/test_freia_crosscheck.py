"""Cross-check of :class:`asdflow.flows.ConditionalFlow` against FrEIA itself.

CFLOW-AD (Gudovskiy et al., WACV 2022; github.com/gudovskiy/cflow-ad,
``model.py``) decodes every feature fiber with a FrEIA ``SequenceINN`` of
``AllInOneBlock`` s: a sub-network ``Linear(d, 2d), ReLU, Linear(2d, out)``,
the condition (positional encoding) concatenated to the passive half,
``affine_clamping=1.9``, a ``SOFTPLUS`` global affine and a soft (random
rotation) permutation. asdflow does not depend on FrEIA at run time: it
reimplements that block in :mod:`asdflow.flows` so that the book can tie each
line of the math to a line of code. These tests make sure the
reimplementation computes *the same function* as the original:

* a FrEIA 0.2 decoder is built exactly as CFLOW-AD builds it, in float64,
  for an odd (7: the ceil/floor split matters) and an even (6) channel count,
  with its float32-stored rotations re-orthogonalised in float64 (see
  :func:`_orthogonalize`);
* every trainable FrEIA parameter is moved away from its initial value (at
  initialisation the global scales are 1 and the offsets 0, so those terms
  could not be told apart from their absence), optionally with the log-scale
  rows of the last layer scaled up so that the ``tanh`` clamp saturates;
* the weights are copied into a :class:`~asdflow.flows.ConditionalFlow`, and
  ``z``, the log-determinant, ``log p`` and both inverses are compared to the
  rounding of float64 (:func:`asdflow.tolerance.tolerance`).

FrEIA later changed its clamp: 0.2 computes ``s = 1.9 tanh(0.1 a)``, its
master branch ``s = 1.9 tanh(0.1 a / 1.9)``. The two differ by far more than
rounding wherever ``a`` is not tiny, so the cross-check holds for one formula
only; :func:`test_asdflow_follows_the_freia_0_2_clamp` documents that asdflow
follows 0.2.

Versions: FrEIA 0.2 (PyPI, pinned in the ``test`` extra), CFLOW-AD at its
published ``model.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import version

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdflow.flows import CLAMP, ConditionalFlow, gaussian_log_likelihood
from asdflow.tolerance import tolerance

COND_DIM = 8
N_BLOCKS = 3
N_SAMPLES = 64
F64 = torch.float64

#: CFLOW-AD's ``clamp_alpha``, passed to FrEIA as ``affine_clamping``.
CFLOW_CLAMP = 1.9


def _cflow_subnet(dims_in: int, dims_out: int) -> nn.Sequential:
    """CFLOW-AD's ``subnet_fc``: one hidden layer twice as wide as the input."""
    hidden = 2 * dims_in
    return nn.Sequential(nn.Linear(dims_in, hidden), nn.ReLU(), nn.Linear(hidden, dims_out))


def _cflow_decoder(dim: int, cond_dim: int, n_blocks: int) -> Ff.SequenceINN:
    """A conditional FrEIA flow with CFLOW-AD's settings for every block."""
    decoder = Ff.SequenceINN(dim)
    for _ in range(n_blocks):
        decoder.append(
            Fm.AllInOneBlock,
            cond=0,
            cond_shape=(cond_dim,),
            subnet_constructor=_cflow_subnet,
            affine_clamping=CFLOW_CLAMP,
            global_affine_type="SOFTPLUS",
            permute_soft=True,
        )
    return decoder


def _orthogonalize(w: Tensor) -> Tensor:
    """The orthogonal float64 matrix nearest-ish to ``w`` (QR with a positive ``R`` diagonal).

    FrEIA stores its rotation as a float32 ``w_perm`` and its inverse as the
    separately rounded float32 ``w_perm_inv = w^T``; cast to float64 the pair
    is orthogonal only to float32 precision (FrEIA's own ``rev`` then misses
    ``x`` by about 1e-7). Re-orthogonalising keeps FrEIA's drawn rotation
    while making both directions exact to float64.
    """
    q, r = torch.linalg.qr(w)
    q = q * torch.sign(torch.diagonal(r))
    assert torch.linalg.det(q) > 0  # still a rotation: q is within float32 rounding of w
    return q


@dataclass
class Pair:
    """A FrEIA decoder, the asdflow flow with the same weights, and test data."""

    freia: Ff.SequenceINN
    flow: ConditionalFlow
    x: Tensor
    c: Tensor
    unperturbed_z: Tensor  # FrEIA's output before the parameters were moved
    s_gain: float  # factor on the last layer's log-scale rows (> 1: the clamp saturates)


def _perturb(decoder: Ff.SequenceINN, generator: torch.Generator, s_gain: float) -> None:
    """Move every trainable FrEIA parameter by a random amount, as training would.

    Sub-network weights and biases (both layers) move by about their initial
    size, the raw global scales by 3 standard units (``g`` mostly between
    about 0.4 and 1.6 instead of 1) and the offsets by about 1. ``s_gain`` then multiplies
    the rows of the last layer that produce the log-scale ``a_s``, so that
    ``|0.1 a_s|`` exceeds 1 and ``tanh`` saturates for some entries.
    """
    with torch.no_grad():
        for block in decoder:
            for layer in block.subnet:
                if isinstance(layer, nn.Linear):
                    size = 1.0 / math.sqrt(layer.in_features)  # nn.Linear's init bound
                    for p in (layer.weight, layer.bias):
                        p.add_(size * torch.randn(p.shape, generator=generator, dtype=F64))
            block.global_scale.add_(
                3.0 * torch.randn(block.global_scale.shape, generator=generator, dtype=F64)
            )
            block.global_offset.add_(
                torch.randn(block.global_offset.shape, generator=generator, dtype=F64)
            )
            last = block.subnet[-1]
            n_s = block.splits[1]  # the first floor(C/2) outputs are a_s
            last.weight[:n_s] *= s_gain
            last.bias[:n_s] *= s_gain


def _copy_weights(decoder: Ff.SequenceINN, flow: ConditionalFlow) -> None:
    """Load FrEIA's weights into asdflow's blocks (same layout, other names)."""
    dim = flow.dim
    with torch.no_grad():
        for theirs, ours in zip(decoder, flow.blocks, strict=True):
            ours.subnet.load_state_dict(theirs.subnet.state_dict())  # keys 0.* and 2.*
            ours.gamma.copy_(theirs.global_scale.reshape(dim))
            ours.offset.copy_(theirs.global_offset.reshape(dim))
            ours.rotation.copy_(theirs.w_perm.reshape(dim, dim))


def _build_pair(dim: int, s_gain: float, seed: int) -> Pair:
    # FrEIA draws its subnets from torch's and its rotations (scipy's
    # special_ortho_group) from NumPy's legacy global generator, which it offers
    # no way to replace: seed both, and restore them for the other tests.
    numpy_state = np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)  # noqa: NPY002
        decoder = _cflow_decoder(dim, COND_DIM, N_BLOCKS).double()
    np.random.set_state(numpy_state)  # noqa: NPY002
    with torch.no_grad():
        for block in decoder:
            w = _orthogonalize(block.w_perm.reshape(dim, dim))
            block.w_perm.copy_(w.reshape(block.w_perm.shape))
            block.w_perm_inv.copy_(w.T.reshape(block.w_perm_inv.shape))

    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(N_SAMPLES, dim, generator=generator, dtype=F64)
    c = torch.randn(N_SAMPLES, COND_DIM, generator=generator, dtype=F64)
    with torch.no_grad():
        unperturbed_z, _ = decoder(x, [c])
    _perturb(decoder, generator, s_gain)

    flow = ConditionalFlow(dim, N_BLOCKS, COND_DIM, seed=seed).double()
    _copy_weights(decoder, flow)
    return Pair(decoder, flow, x, c, unperturbed_z, s_gain)


CASES = {
    "odd-C": (7, 1.0),
    "even-C": (6, 1.0),
    "odd-C-saturated": (7, 30.0),
    "even-C-saturated": (6, 30.0),
}


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def pair(request) -> Pair:
    dim, s_gain = CASES[request.param]
    return _build_pair(dim, s_gain, seed=dim)


def _block_inputs(pair: Pair) -> list[Tensor]:
    """The input of every FrEIA block and the final output (``N_BLOCKS + 1`` tensors)."""
    values = [pair.x]
    with torch.no_grad():
        for block in pair.freia:
            (y,), _ = block((values[-1],), c=[pair.c])
            values.append(y)
    return values


def _coupling_inputs(block: nn.Module, x: Tensor, c: Tensor) -> Tensor:
    """``0.1 * subnet([x1, c])`` of a FrEIA block: the coefficients before the clamp."""
    x1 = x[:, : block.splits[0]]
    return 0.1 * block.subnet(torch.cat([x1, c], dim=1))


def _largest_value(pair: Pair) -> float:
    """The largest number rounded on the way through the flow (at least 1).

    Block inputs and outputs, and the pre-clamp coefficients ``0.1 a``: the
    size every rounding error of the two implementations is relative to.
    """
    values = _block_inputs(pair)
    with torch.no_grad():
        coefficients = [
            _coupling_inputs(block, v, pair.c)
            for block, v in zip(pair.freia, values[:-1], strict=True)
        ]
    return max(1.0, *(float(v.abs().max()) for v in values + coefficients))


def _forward_terms(dim: int) -> int:
    """Roundings that pile up along the forward pass: per block, the longest dot
    product (the hidden layer, ``2 * (ceil(C/2) + COND_DIM)`` terms) plus the ``C``
    terms of the rotation."""
    d_in = dim - dim // 2 + COND_DIM
    return N_BLOCKS * (2 * d_in + dim)


def test_the_perturbation_exercises_every_term(pair: Pair):
    with torch.no_grad():
        z, log_det = pair.freia(pair.x, [pair.c])
    tol = tolerance(F64, _largest_value(pair), terms=_forward_terms(pair.flow.dim))
    # The weights moved: FrEIA's own output changed.
    assert (z - pair.unperturbed_z).abs().max() > 1e6 * tol
    # The coupling log-scales depend on each sample (the subnets are not ~0).
    assert log_det.std() > 1e-2
    for block in pair.freia:
        g = 0.2 * F.softplus(0.5 * block.global_scale)
        assert (g - 1.0).abs().min() > 1e-3  # no global scale left at 1
        assert block.global_offset.abs().min() > 1e-3  # no offset left at 0


def test_the_clamp_is_exercised(pair: Pair):
    values = _block_inputs(pair)
    with torch.no_grad():
        pre_clamp = torch.cat(
            [
                _coupling_inputs(block, v, pair.c)[:, : block.splits[1]].flatten()
                for block, v in zip(pair.freia, values[:-1], strict=True)
            ]
        ).abs()
    # Below |0.1 a_s| = 0.1 the clamp is nearly linear and would hide a wrong factor.
    assert pre_clamp.max() > 0.2
    if pair.s_gain > 1.0:
        # tanh(1) = 0.76: past 1 the clamp, not the sub-network, sets s, for
        # some entries but not all.
        assert 0 < (pre_clamp > 1.0).sum() < pre_clamp.numel()


def test_forward_matches_freia(pair: Pair):
    with torch.no_grad():
        z_freia, log_det_freia = pair.freia(pair.x, [pair.c])
        z, log_det = pair.flow(pair.x, pair.c)
    # Every rounding is relative to the largest value on the way (>= max |z|).
    size = _largest_value(pair)
    terms = _forward_terms(pair.flow.dim)
    assert size >= float(z_freia.abs().max())
    tol = tolerance(F64, size, terms=terms)
    assert torch.allclose(z, z_freia, rtol=0, atol=tol)
    # log_det sums N_BLOCKS * C terms (s and ln g) computed from values of size <= size.
    assert log_det.shape == log_det_freia.shape == (N_SAMPLES,)
    assert torch.allclose(log_det, log_det_freia, rtol=0, atol=tol)


def test_log_likelihood_matches_freia(pair: Pair):
    dim = pair.flow.dim
    with torch.no_grad():
        z_freia, log_det_freia = pair.freia(pair.x, [pair.c])
        by_hand = -0.5 * dim * math.log(2 * math.pi) - 0.5 * (z_freia**2).sum(1) + log_det_freia
        ours = pair.flow.log_prob(pair.x, pair.c)
        from_freia_output = gaussian_log_likelihood(z_freia, log_det_freia)
    # The same formula on the same numbers: C squares, the constant and log_det.
    same_inputs = tolerance(F64, float(by_hand.abs().max()), terms=dim + 2)
    assert torch.allclose(from_freia_output, by_hand, rtol=0, atol=same_inputs)
    # Through the whole flow: |z|^2 carries the forward pass's rounding at
    # size S times S (d |z|^2 = 2 z dz), over its roundings and the C squares.
    size = _largest_value(pair)
    tol = tolerance(F64, size**2, terms=_forward_terms(dim) + dim)
    assert torch.allclose(ours, by_hand, rtol=0, atol=tol)


def test_inverses_match_freia(pair: Pair):
    with torch.no_grad():
        z_freia, _ = pair.freia(pair.x, [pair.c])
        z, _ = pair.flow(pair.x, pair.c)
        x_from_freia_z = pair.flow.inverse(z_freia, pair.c)
        x_from_our_z, _ = pair.freia(z, [pair.c], rev=True)
    # A rounding at size S on the way there is stretched by up to S on the way
    # back (the rule of tests/test_flows.py), over the forward pass's roundings.
    size = _largest_value(pair)
    tol = tolerance(F64, size**2, terms=_forward_terms(pair.flow.dim))
    assert torch.allclose(x_from_freia_z, pair.x, rtol=0, atol=tol)
    assert torch.allclose(x_from_our_z, pair.x, rtol=0, atol=tol)


def _clamp_freia_0_2(a: Tensor) -> Tensor:
    """FrEIA 0.2 (and CFLOW-AD): ``s = 1.9 tanh(0.1 a)``; ``a`` here is already ``0.1 a``."""
    return CFLOW_CLAMP * torch.tanh(a)


def _clamp_freia_master(a: Tensor) -> Tensor:
    """Later FrEIA (master): ``s = 1.9 tanh(0.1 a / 1.9)`` (slope 1 at 0)."""
    return CFLOW_CLAMP * torch.tanh(a / CFLOW_CLAMP)


def _reference_flow(decoder: Ff.SequenceINN, x: Tensor, c: Tensor, clamp) -> tuple[Tensor, Tensor]:
    """The AllInOneBlock forward pass written out by hand, with a chosen clamp."""
    log_det = x.new_zeros(x.shape[0])
    for block in decoder:
        dim = x.shape[1]
        x1, x2 = x.split(block.splits, dim=1)
        a_s, a_t = _coupling_inputs(block, x, c).split([block.splits[1]] * 2, dim=1)
        s = clamp(a_s)
        x2 = x2 * torch.exp(s) + a_t
        g = 0.2 * F.softplus(0.5 * block.global_scale.reshape(dim))
        u = torch.cat([x1, x2], dim=1) * g + block.global_offset.reshape(dim)
        x = u @ block.w_perm.reshape(dim, dim).T
        log_det = log_det + s.sum(1) + torch.log(g).sum()
    return x, log_det


def test_asdflow_follows_the_freia_0_2_clamp():
    assert CLAMP == CFLOW_CLAMP
    pair = _build_pair(7, 1.0, seed=7)  # 0.1 |a_s| up to about 0.6: the formulas differ
    with torch.no_grad():
        z_freia, log_det_freia = pair.freia(pair.x, [pair.c])
        z, log_det = pair.flow(pair.x, pair.c)
        z_0_2, log_det_0_2 = _reference_flow(pair.freia, pair.x, pair.c, _clamp_freia_0_2)
        z_master, log_det_master = _reference_flow(pair.freia, pair.x, pair.c, _clamp_freia_master)
    size = _largest_value(pair)
    tol = tolerance(F64, size, terms=_forward_terms(7))
    # The hand-written 0.2 formula is what the installed FrEIA computes...
    message = f"FrEIA {version('FrEIA')} no longer clamps like 0.2; see the module docstring"
    assert torch.allclose(z_0_2, z_freia, rtol=0, atol=tol), message
    assert torch.allclose(log_det_0_2, log_det_freia, rtol=0, atol=tol)
    # ... and what asdflow computes,
    assert torch.allclose(z, z_0_2, rtol=0, atol=tol)
    assert torch.allclose(log_det, log_det_0_2, rtol=0, atol=tol)
    # while the master formula is off by far more than rounding: a cross-check
    # against FrEIA master would fail.
    assert (z - z_master).abs().max() > 1e6 * tol
    assert (log_det - log_det_master).abs().max() > 1e6 * tol
