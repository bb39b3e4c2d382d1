"""One conditional flow per scale (:class:`ScaleDecoder`) and the fixed fiber normalisation in front of it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from asdflow.cflow.config import CFlowConfig
from asdflow.errors import ParameterError
from asdflow.flows import ConditionalFlow


def _decoder_seed(seed: int, scale: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(scale)]).generate_state(1)[0])


class ScaleDecoder(nn.Module):
    """The decoder of one scale: a fixed affine normalisation, then a conditional flow.

    ``x' = (x - mean) W`` is an invertible affine map with the constant
    log-determinant ``log |det W|``, added to the flow's, so :meth:`forward`
    returns the log-determinant of the whole map from the encoder's fibers to
    ``z``: log-likelihoods stay those of the fibers themselves. ``W`` is a
    vector (a diagonal matrix: per-channel standardisation) or a full
    ``(C, C)`` matrix (whitening). With ``mean = 0`` and ``W = 1``
    (``CFlowConfig(fiber_norm="none")``) this is CFLOW-AD's decoder exactly.

    Parameters
    ----------
    flow : ConditionalFlow
    mean : Tensor [shape=(C,)]
    transform : Tensor [shape=(C,) or (C, C)]
        Buffers, saved with the weights, never trained.
    """

    mean: Tensor  # buffers, registered in __init__
    transform: Tensor
    norm_log_det: Tensor

    def __init__(self, flow: nn.Module, mean: Tensor, transform: Tensor) -> None:
        super().__init__()
        self.flow = flow
        transform = transform.detach().to(torch.float64)
        if transform.ndim == 1:
            log_det = torch.log(transform.abs()).sum()
        else:
            log_det = torch.linalg.slogdet(transform).logabsdet
        self.register_buffer("mean", mean.detach().to(torch.float32).clone())
        self.register_buffer("transform", transform.to(torch.float32).clone())
        self.register_buffer("norm_log_det", log_det.to(torch.float32).reshape(()))

    def normalise(self, x: Tensor) -> Tensor:
        """``(x - mean) W`` for fibers x of shape (N, C)."""
        centred = x - self.mean
        if self.transform.ndim == 1:
            return centred * self.transform
        return centred @ self.transform

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Map fibers (N, C) with conditions (N, cond_dim) to (z (N, C), log_det (N,))."""
        z, log_det = self.flow(self.normalise(x), c)
        return z, log_det + self.norm_log_det


def fiber_normalisation(
    fibers: Tensor,
    how: str = "standardize",
    *,
    floor: float = 1e-3,
    max_fibers: int = 200_000,
    chunk: int = 16384,
) -> tuple[Tensor, Tensor]:
    """The fixed affine map ``x -> (x - mean) W`` fitted to training fibers.

    Parameters
    ----------
    fibers : Tensor [shape=(N, C)]
        Any dtype and device; statistics are accumulated in float64 over at
        most ``max_fibers`` evenly spaced rows.
    how : {"standardize", "whiten", "none"}
        ``"standardize"``: ``W = 1 / std`` per channel. ``"whiten"``: the
        symmetric (ZCA) whitening ``W = V diag((lambda + eps)^-1/2) V^T`` of
        the covariance ``V diag(lambda) V^T``, with ``eps = floor`` times the
        mean eigenvalue. ``"none"``: ``mean = 0``, ``W = 1``.
    floor : float
        Smallest standard deviation (standardize) or relative eigenvalue
        ridge (whiten): a channel that never varies, e.g. a dead ReLU, is
        not divided by zero.

    Returns
    -------
    mean : Tensor [shape=(C,), dtype=float32]
    transform : Tensor [shape=(C,) or (C, C), dtype=float32]
        On the CPU.
    """
    n, dim = fibers.shape
    if how == "none":
        return torch.zeros(dim), torch.ones(dim)
    step = max(1, -(-n // max_fibers))
    rows = torch.arange(0, n, step, device=fibers.device)
    total = torch.zeros(dim, dtype=torch.float64)
    for start in range(0, rows.numel(), chunk):
        total += fibers[rows[start : start + chunk]].to("cpu", torch.float64).sum(dim=0)
    mean = total / rows.numel()
    if how == "standardize":
        squares = torch.zeros(dim, dtype=torch.float64)
        for start in range(0, rows.numel(), chunk):
            part = fibers[rows[start : start + chunk]].to("cpu", torch.float64) - mean
            squares += part.pow(2).sum(dim=0)
        std = (squares / rows.numel()).sqrt().clamp_min(floor)
        return mean.float(), (1.0 / std).float()
    if how == "whiten":
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        centre = mean.to(fibers.device, torch.float32)
        for start in range(0, rows.numel(), chunk):
            part = fibers[rows[start : start + chunk]].float() - centre
            cov += (part.T @ part).to("cpu", torch.float64)
        cov /= rows.numel()
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0.0) + floor * float(eigvals.clamp_min(0.0).mean())
        transform = eigvecs @ torch.diag(eigvals.rsqrt()) @ eigvecs.T
        return mean.float(), transform.float()
    raise ParameterError(f"fiber_norm must be 'standardize', 'whiten' or 'none', got {how!r}")


def build_decoders(
    config: CFlowConfig,
    channels: Sequence[int],
    normalisations: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> nn.ModuleList:
    """One :class:`ScaleDecoder` per scale; placeholder normalisations when None (for loading)."""
    decoders = []
    for s, c in enumerate(channels):
        flow = ConditionalFlow(
            int(c),
            config.n_blocks,
            config.cond_dim,
            clamp=config.clamp,
            seed=_decoder_seed(config.seed, s),
        )
        if normalisations is not None:
            mean, transform = normalisations[s]
        elif config.fiber_norm == "whiten":
            mean, transform = torch.zeros(int(c)), torch.eye(int(c))
        else:
            mean, transform = torch.zeros(int(c)), torch.ones(int(c))
        decoders.append(ScaleDecoder(flow, mean, transform))
    return nn.ModuleList(decoders)
