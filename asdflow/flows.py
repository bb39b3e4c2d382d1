"""Normalizing flows: coupling blocks, a conditional flow and its log-likelihood.

A normalizing flow is an invertible map ``z = f(x)`` from data to a latent
space where ``z`` follows a standard Gaussian. The change of variables gives
the density of the data exactly:

.. math::

    \\log p_X(x) = \\log p_Z(f(x)) + \\log \\left|\\det \\frac{\\partial f}{\\partial x}\\right|.

This module builds ``f`` from affine coupling blocks as used by CFLOW-AD
(Gudovskiy et al., WACV 2022), which takes them from FrEIA's
``AllInOneBlock``: :class:`CouplingBlock` is one block, :class:`ConditionalFlow`
a stack of them, optionally conditioned on a vector ``c`` (in CFlow, the
positional encoding of :func:`positional_encoding`).
:func:`gaussian_log_likelihood` and :func:`logsigmoid_loss` turn the flow's
output into a log-likelihood and a training loss. :func:`fit_flow` and
:func:`sample` are a small maximum-likelihood training loop and a sampler for
teaching on 2-D toy data.

Everything here is plain PyTorch and works in float32 and float64
(``flow.double()``).
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import trange

from asdflow.errors import ModelError

__all__ = [
    "CouplingBlock",
    "ConditionalFlow",
    "gaussian_log_likelihood",
    "logsigmoid_loss",
    "positional_encoding",
    "n_parameters",
    "fit_flow",
    "sample",
]

#: Clamp of the coupling's log-scale: ``s = CLAMP * tanh(a_s)``, so every
#: coordinate is scaled by a factor between ``exp(-1.9)`` and ``exp(1.9)``.
#: 1.9 is CFLOW-AD's ``clamp_alpha`` (FrEIA's own default is 2.0).
CLAMP = 1.9

#: Factor applied to the sub-network output before it becomes ``(s, t)``.
#: Small initial coefficients start every block close to the identity.
SUBNET_SCALE = 0.1

#: Factor of the global affine scale ``g = 0.2 * ln(1 + exp(0.5 * gamma))``
#: (FrEIA's SOFTPLUS global affine: 0.1 times a softplus with beta 0.5).
GLOBAL_SCALE = 0.2


def _seed_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed``, or None to use torch's global generator."""
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def _init_linear(layer: nn.Linear, generator: torch.Generator | None) -> None:
    """Re-draw a linear layer's weights like ``nn.Linear`` does, from ``generator``.

    The weight is Kaiming-uniform with ``a = sqrt(5)`` and the bias is uniform
    in ``+-1/sqrt(fan_in)``: the same distribution as PyTorch's default
    initialisation, made reproducible by the generator.
    """
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)


def _special_orthogonal(dim: int, generator: torch.Generator | None) -> Tensor:
    """A random rotation: a ``(dim, dim)`` orthogonal float64 matrix with determinant +1.

    QR of a Gaussian matrix, with the signs of ``R``'s diagonal moved into
    ``Q``, is uniform over the orthogonal group; flipping one column when the
    determinant is -1 keeps it uniform over the rotations.
    """
    gauss = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    q = q * signs
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class CouplingBlock(nn.Module):
    """One invertible affine coupling block with a global affine and a rotation.

    The block maps ``x`` (``C`` channels) to ``y`` in four steps:

    1. split ``x`` into ``x1`` (the first ``ceil(C/2)`` channels) and ``x2``
       (the other ``floor(C/2)``);
    2. a sub-network reads ``x1`` and the condition ``c`` and returns
       ``a = 0.1 * subnet([x1, c])``, cut into a log-scale
       ``s = clamp * tanh(a_s)`` and a shift ``t = a_t`` (``floor(C/2)``
       values each); ``x2' = x2 * exp(s) + t`` while ``x1`` passes unchanged;
    3. a global affine ``u = g * [x1, x2'] + b`` with a learned positive scale
       ``g = 0.2 * ln(1 + exp(0.5 * gamma))`` per channel (``gamma`` starts
       where ``g = 1``) and a learned offset ``b`` (starts at 0);
    4. a fixed random rotation ``y = W u`` (orthogonal, determinant +1), so
       that the next block splits different mixtures of the channels (a "soft
       permutation"). ``W`` is a buffer: it is saved with the model but never
       trained.

    **Change of variables.** For an invertible ``f``, the density of
    ``x`` is ``p_X(x) = p_Y(f(x)) |det J_f(x)|``, with ``J_f`` the Jacobian.
    In step 2, ``x1' = x1`` and ``x2'`` depends on ``x2`` only through the
    element-wise ``x2 * exp(s)``: ordered as ``(x1, x2)``, the Jacobian is
    block lower-triangular, ``[[I, 0], [d x2'/d x1, diag(exp(s))]]``, so its
    determinant is the product of the diagonal, ``exp(sum(s))``, however
    complicated the sub-network is. Step 3 is diagonal
    (``det = prod(g)``) and step 4 is a rotation (``det = 1``). Hence

    ``log |det J| = sum(s) + sum(ln g)``,

    computed in ``O(C)`` without ever forming the ``C x C`` Jacobian.

    **Cheap inverse.** ``x1`` leaves step 2 unchanged, so from the output one
    can recompute exactly the same ``s`` and ``t`` and undo the affine map:
    ``x2 = (x2' - t) * exp(-s)``. The sub-network is only ever evaluated
    forwards, never inverted, so it can be any network. Steps 3 and 4 are
    undone by ``u = W^-1 y`` and ``[x1, x2'] = (u - b) / g``.

    Parameters
    ----------
    dim : int
        Number of channels ``C`` of ``x``, at least 2.
    cond_dim : int
        Length of the condition vector ``c`` (0: unconditional block).
    hidden_factor : int
        Width of the sub-network's hidden layer as a multiple of its input
        width ``d_in = ceil(C/2) + cond_dim``. CFLOW-AD uses 2.
    clamp : float
        Bound of the log-scale ``s`` (``|s| < clamp``); CFLOW-AD's 1.9.
    seed : int or None
        Seed of the sub-network's initial weights and of the rotation ``W``.
        None draws both from torch's global generator.

    Attributes
    ----------
    subnet : nn.Sequential
        ``Linear(d_in, hidden_factor * d_in)``, ``ReLU``,
        ``Linear(hidden_factor * d_in, 2 * floor(C/2))``.
    gamma : nn.Parameter [shape=(C,)]
        Raw global scale; ``g = 0.2 * ln(1 + exp(0.5 * gamma))``.
    offset : nn.Parameter [shape=(C,)]
        Global offset ``b``.
    rotation : Tensor [shape=(C, C)]
        The fixed orthogonal mixing matrix ``W`` (a buffer, det +1).

    Notes
    -----
    Drawing ``W`` takes a ``C x C`` QR decomposition: instant for small
    ``C``, around a second or more per block on a CPU for ``C = 2048``.
    """

    rotation: Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        dim: int,
        cond_dim: int = 0,
        *,
        hidden_factor: int = 2,
        clamp: float = CLAMP,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ModelError(f"a coupling block needs at least 2 channels, got dim={dim}")
        if cond_dim < 0 or hidden_factor < 1 or clamp <= 0:
            raise ModelError(
                f"invalid block settings cond_dim={cond_dim}, hidden_factor={hidden_factor}, "
                f"clamp={clamp}: need cond_dim >= 0, hidden_factor >= 1, clamp > 0"
            )
        self.dim = int(dim)
        self.cond_dim = int(cond_dim)
        self.hidden_factor = int(hidden_factor)
        self.clamp = float(clamp)
        self.split = (dim - dim // 2, dim // 2)  # (ceil(C/2), floor(C/2))

        generator = _seed_generator(seed)
        d_in = self.split[0] + self.cond_dim
        hidden = self.hidden_factor * d_in
        self.subnet = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 2 * self.split[1])
        )
        for layer in self.subnet:
            if isinstance(layer, nn.Linear):
                _init_linear(layer, generator)

        # g = 0.2 * ln(1 + exp(0.5 gamma)) = 1  <=>  gamma = 2 ln(exp(5) - 1).
        gamma0 = 2.0 * math.log(math.expm1(1.0 / GLOBAL_SCALE))
        self.gamma = nn.Parameter(torch.full((dim,), gamma0))
        self.offset = nn.Parameter(torch.zeros(dim))
        # Drawn in float64, stored in the default dtype. A float32 rotation cast
        # to float64 later is orthogonal to float32 precision only (|ln det W|
        # about 1e-8), a deviation the log-determinant ignores.
        rotation = _special_orthogonal(dim, generator).to(torch.get_default_dtype())
        self.register_buffer("rotation", rotation)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, cond_dim={self.cond_dim}, clamp={self.clamp}"

    def global_scale(self) -> Tensor:
        """The global affine scale ``g = 0.2 * ln(1 + exp(0.5 * gamma))``, shape (C,), > 0."""
        return GLOBAL_SCALE * F.softplus(0.5 * self.gamma)

    def _coefficients(self, x1: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        """Log-scale ``s`` and shift ``t``, each (N, floor(C/2)), from ``x1`` and ``c``."""
        inputs = x1 if c is None else torch.cat([x1, c], dim=1)
        a = SUBNET_SCALE * self.subnet(inputs)
        a_s, a_t = a.chunk(2, dim=1)
        return self.clamp * torch.tanh(a_s), a_t

    def _check(self, x: Tensor, c: Tensor | None) -> Tensor | None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ModelError(
                f"expected input of shape (N, {self.dim}), got {tuple(x.shape)}; "
                "flatten positions into the batch dimension first"
            )
        if self.cond_dim == 0:
            if c is not None and c.numel() > 0:
                raise ModelError(
                    "this block is unconditional (cond_dim=0) but a condition c was given"
                )
            return None
        if c is None or c.ndim != 2 or c.shape != (x.shape[0], self.cond_dim):
            got = None if c is None else tuple(c.shape)
            raise ModelError(
                f"expected a condition of shape ({x.shape[0]}, {self.cond_dim}), got {got}"
            )
        return c

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map ``x`` to ``y`` and return the log-determinant of the Jacobian.

        Parameters
        ----------
        x : Tensor [shape=(N, C)]
            Input vectors.
        c : Tensor [shape=(N, cond_dim)] or None
            Condition vectors; None for an unconditional block.

        Returns
        -------
        y : Tensor [shape=(N, C)]
            Output vectors.
        log_det : Tensor [shape=(N,)]
            ``log |det dy/dx|`` per sample, in nats.
        """
        c = self._check(x, c)
        x1, x2 = x.split(self.split, dim=1)
        s, t = self._coefficients(x1, c)
        x2 = x2 * torch.exp(s) + t
        g = self.global_scale()
        u = torch.cat([x1, x2], dim=1) * g + self.offset
        y = u @ self.rotation.T
        log_det = s.sum(dim=1) + torch.log(g).sum()
        return y, log_det

    def inverse(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        """Map ``y`` back to ``x``: the exact inverse of :meth:`forward`.

        Parameters
        ----------
        y : Tensor [shape=(N, C)]
            Output vectors of the block.
        c : Tensor [shape=(N, cond_dim)] or None
            The same condition as in the forward pass.

        Returns
        -------
        x : Tensor [shape=(N, C)]
        """
        c = self._check(y, c)
        # Solve u W^T = y instead of multiplying by W: exact even when W was
        # rounded to float32 and the block later cast to float64.
        u = torch.linalg.solve(self.rotation.T, y, left=False)
        u = (u - self.offset) / self.global_scale()
        x1, x2 = u.split(self.split, dim=1)
        s, t = self._coefficients(x1, c)
        x2 = (x2 - t) * torch.exp(-s)
        return torch.cat([x1, x2], dim=1)


class ConditionalFlow(nn.Module):
    """A stack of :class:`CouplingBlock` s: an invertible map with a tractable Jacobian.

    The blocks are applied in order; their log-determinants add up. With a
    standard Gaussian prior on the output, :meth:`log_prob` is the exact
    log-density of the input (see :func:`gaussian_log_likelihood`).

    Parameters
    ----------
    dim : int
        Number of channels ``C`` of the input, at least 2.
    n_blocks : int
        Number of coupling blocks (CFLOW-AD: 8).
    cond_dim : int
        Length of the condition vector (CFLOW-AD: 128); 0 for none.
    clamp : float
        Bound of every block's log-scale (CFLOW-AD's 1.9).
    hidden_factor : int
        Hidden width of each sub-network as a multiple of its input width
        (CFLOW-AD: 2). Larger values help when ``C`` is tiny (2-D examples).
    seed : int or None
        Seed of all initial weights and rotations; each block gets its own
        seed derived from it. None uses torch's global generator.

    Attributes
    ----------
    blocks : nn.ModuleList of CouplingBlock

    Examples
    --------
    >>> import torch
    >>> from asdflow.flows import ConditionalFlow
    >>> flow = ConditionalFlow(6, n_blocks=4, cond_dim=8, seed=0)
    >>> x, c = torch.randn(10, 6), torch.randn(10, 8)
    >>> z, log_det = flow(x, c)
    >>> z.shape, log_det.shape
    (torch.Size([10, 6]), torch.Size([10]))
    >>> torch.allclose(flow.inverse(z, c), x, atol=1e-5)
    True
    """

    def __init__(
        self,
        dim: int,
        n_blocks: int = 8,
        cond_dim: int = 0,
        *,
        clamp: float = CLAMP,
        hidden_factor: int = 2,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ModelError(f"a flow needs at least one block, got n_blocks={n_blocks}")
        self.dim = int(dim)
        self.n_blocks = int(n_blocks)
        self.cond_dim = int(cond_dim)
        self.clamp = float(clamp)
        self.hidden_factor = int(hidden_factor)
        if seed is None:
            seeds: list[int | None] = [None] * n_blocks
        else:
            children = np.random.SeedSequence(int(seed)).spawn(n_blocks)
            seeds = [int(child.generate_state(1)[0]) for child in children]
        self.blocks = nn.ModuleList(
            CouplingBlock(dim, cond_dim, hidden_factor=hidden_factor, clamp=clamp, seed=s)
            for s in seeds
        )

    def _blocks(self) -> list[CouplingBlock]:
        """The coupling blocks, in order (typed: a ModuleList holds any module)."""
        return [cast(CouplingBlock, block) for block in self.blocks]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_blocks={self.n_blocks}, cond_dim={self.cond_dim}"

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data ``x`` to latent ``z``.

        Parameters
        ----------
        x : Tensor [shape=(N, C)]
            Input vectors (in CFlow: feature-map fibers, one per position).
        c : Tensor [shape=(N, cond_dim)] or None
            Condition vectors (in CFlow: the positional encoding of each fiber).

        Returns
        -------
        z : Tensor [shape=(N, C)]
            Latent vectors; standard Gaussian once the flow is trained.
        log_det : Tensor [shape=(N,)]
            ``log |det dz/dx|`` per sample, summed over the blocks, in nats.
        """
        log_det = x.new_zeros(x.shape[0])
        for block in self._blocks():
            x, block_log_det = block(x, c)
            log_det = log_det + block_log_det
        return x, log_det

    def inverse(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Map latent ``z`` back to data ``x`` (blocks inverted in reverse order).

        Parameters
        ----------
        z : Tensor [shape=(N, C)]
        c : Tensor [shape=(N, cond_dim)] or None

        Returns
        -------
        x : Tensor [shape=(N, C)]
        """
        for block in reversed(self._blocks()):
            z = block.inverse(z, c)
        return z

    def log_prob(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Log-density of ``x`` under the flow with a standard Gaussian prior.

        Parameters
        ----------
        x : Tensor [shape=(N, C)]
        c : Tensor [shape=(N, cond_dim)] or None

        Returns
        -------
        log_p : Tensor [shape=(N,)]
            ``log p(x | c)`` in nats per sample (see :func:`gaussian_log_likelihood`).

        Notes
        -----
        Away from the training data the ReLU sub-networks extrapolate
        linearly and the blocks compound their scales, so ``log p`` can fall
        very low there (thousands of nats below typical values for a 2-D
        point just off a two-moons training set). For anomaly detection that
        is the wanted direction; for an average held-out likelihood it means
        a few points can dominate the mean.
        """
        z, log_det = self(x, c)
        return gaussian_log_likelihood(z, log_det)


def gaussian_log_likelihood(z: Tensor, log_det: Tensor) -> Tensor:
    """Log-likelihood of the inputs of a flow from its output and log-determinant.

    ``log p = -C/2 ln(2 pi) - ||z||^2 / 2 + log_det``: the log-density of
    ``z`` under a standard Gaussian in ``C`` dimensions (``||z||^2`` is the
    squared Mahalanobis distance to the prior), plus the change-of-variables
    term.

    Parameters
    ----------
    z : Tensor [shape=(N, C)]
        Flow outputs.
    log_det : Tensor [shape=(N,)]
        ``log |det dz/dx|`` per sample.

    Returns
    -------
    log_p : Tensor [shape=(N,)]
        Log-likelihood per sample, in nats.
    """
    dim = z.shape[1]
    return -0.5 * dim * math.log(2.0 * math.pi) - 0.5 * z.pow(2).sum(dim=1) + log_det


def logsigmoid_loss(log_p: Tensor, dim: int) -> Tensor:
    """CFLOW-AD's training loss: ``mean(-logsigmoid(log_p / dim))``.

    Dividing by the number of channels gives a per-dimension log-likelihood
    of comparable size at every scale; ``-logsigmoid(v) = ln(1 + exp(-v))``
    behaves like ``-v`` for unlikely samples and flattens out for likely
    ones, so the loss stops pushing samples that already fit well.

    Parameters
    ----------
    log_p : Tensor [shape=(N,)]
        Log-likelihoods in nats (:func:`gaussian_log_likelihood`).
    dim : int
        Number of channels ``C`` of the samples.

    Returns
    -------
    loss : Tensor [shape=()]
        Scalar to minimise.
    """
    return -F.logsigmoid(log_p / dim).mean()


def positional_encoding(
    height: int,
    width: int,
    dim: int = 128,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """2-D sine/cosine positional encoding of every position of a feature map.

    The first ``dim/2`` channels encode the column (width, time) and the last
    ``dim/2`` the row (height, feature row). Within each half, channel
    ``2i`` is ``sin(pos * w_i)`` and channel ``2i + 1`` is ``cos(pos * w_i)``
    with ``w_i = exp(-ln(10^4) * 2i / (dim/2))``, ``i = 0 .. dim/4 - 1``,
    the transformer encoding of Vaswani et al. as used by CFLOW-AD.

    Parameters
    ----------
    height, width : int
        Size of the feature map (rows, columns).
    dim : int
        Number of channels, a multiple of 4 (CFLOW-AD: 128).
    dtype, device : optional
        Of the returned tensor (default: torch's default dtype, CPU).

    Returns
    -------
    encoding : Tensor [shape=(dim, height, width)]
        ``encoding[:, i, j]`` is the condition vector of position (row ``i``,
        column ``j``).

    Examples
    --------
    >>> from asdflow.flows import positional_encoding
    >>> pe = positional_encoding(20, 79)
    >>> pe.shape
    torch.Size([128, 20, 79])
    >>> pe[:4, 0, 0].tolist()  # sin(0), cos(0), sin(0), cos(0) of the column code
    [0.0, 1.0, 0.0, 1.0]
    """
    if dim <= 0 or dim % 4 != 0:
        raise ModelError(f"positional encoding size must be a positive multiple of 4, got {dim}")
    if height < 1 or width < 1:
        raise ModelError(f"feature map size must be positive, got {height} x {width}")
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) * torch.arange(0, half, 2, dtype=torch.float64) / half)
    cols = torch.arange(width, dtype=torch.float64)[:, None] * freqs  # (W, dim/4)
    rows = torch.arange(height, dtype=torch.float64)[:, None] * freqs  # (H, dim/4)
    encoding = torch.empty(dim, height, width, dtype=torch.float64)
    encoding[0:half:2] = torch.sin(cols).T[:, None, :]
    encoding[1:half:2] = torch.cos(cols).T[:, None, :]
    encoding[half::2] = torch.sin(rows).T[:, :, None]
    encoding[half + 1 :: 2] = torch.cos(rows).T[:, :, None]
    return encoding.to(dtype=dtype or torch.get_default_dtype(), device=device)


def n_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of scalar parameters of ``module`` (buffers such as rotations excluded).

    Parameters
    ----------
    module : nn.Module
    trainable_only : bool
        Count only parameters with ``requires_grad`` (default) or all of them.

    Returns
    -------
    int
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _as_tensor(data: np.ndarray | Tensor | None, like: Tensor) -> Tensor | None:
    if data is None:
        return None
    return torch.as_tensor(np.asarray(data) if not isinstance(data, Tensor) else data).to(
        dtype=like.dtype, device=like.device
    )


def fit_flow(
    flow: ConditionalFlow,
    data: np.ndarray | Tensor,
    cond: np.ndarray | Tensor | None = None,
    *,
    epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train a flow by maximum likelihood on a small data set (a teaching loop).

    Each epoch shuffles the samples, and every mini-batch takes one Adam step
    on the mean negative log-likelihood ``-mean(log p(x | c))``; the learning
    rate decays from ``lr`` to 0 along a cosine over all steps. The flow is
    trained in place and left in eval mode.

    Parameters
    ----------
    flow : ConditionalFlow
        The flow to train (its dtype and device are used for the data).
    data : array or Tensor [shape=(N, C)]
        Training samples.
    cond : array or Tensor [shape=(N, cond_dim)] or None
        Their conditions, for a conditional flow.
    epochs, batch_size : int
        Passes over the data and samples per step.
    lr : float
        Initial Adam learning rate.
    seed : int
        Seed of the shuffling.
    progress : bool
        Show a progress bar over the epochs.

    Returns
    -------
    losses : list of float [length=epochs]
        Mean negative log-likelihood per sample (nats) of each epoch.
    """
    reference = next(flow.parameters())
    x = _as_tensor(data, reference)
    c = _as_tensor(cond, reference)
    if x is None or x.ndim != 2 or x.shape[1] != flow.dim:
        raise ModelError(f"expected data of shape (N, {flow.dim}), got {np.shape(data)}")
    generator = torch.Generator().manual_seed(int(seed))
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    n_steps = epochs * math.ceil(x.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(n_steps, 1))
    losses = []
    flow.train()
    for _ in trange(epochs, desc="fit flow", disable=not progress):
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            index = order[start : start + batch_size]
            loss = -flow.log_prob(x[index], None if c is None else c[index]).mean()
            if not torch.isfinite(loss):
                raise ModelError(f"non-finite training loss {loss.item()}; lower the learning rate")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * index.numel()
        losses.append(total / x.shape[0])
    flow.eval()
    return losses


@torch.no_grad()
def sample(
    flow: ConditionalFlow,
    n: int,
    cond: Tensor | None = None,
    *,
    seed: int | None = None,
) -> Tensor:
    """Draw samples from a flow: Gaussian draws sent through its inverse.

    Parameters
    ----------
    flow : ConditionalFlow
    n : int
        Number of samples.
    cond : Tensor [shape=(n, cond_dim)] or None
        Conditions, for a conditional flow.
    seed : int or None
        Seed of the Gaussian draws (None: torch's global generator).

    Returns
    -------
    x : Tensor [shape=(n, C)]
        Samples, in the flow's dtype and on its device.
    """
    reference = next(flow.parameters())
    generator = _seed_generator(seed)
    z = torch.randn(n, flow.dim, generator=generator, dtype=reference.dtype)
    return flow.inverse(z.to(reference.device), _as_tensor(cond, reference))
