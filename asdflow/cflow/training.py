"""Training the CFlow decoders: the loop, its checkpoints, and the check of what it learned.

:func:`train_decoders` is CFLOW-AD's training loop over a
:class:`~asdflow.cflow.fibers.FiberBank`: every epoch shuffles the fibers of
each scale, visits the batches of all scales interleaved
(:func:`~asdflow.cflow.scores.interleave_scales`), and takes one Adam step
per batch on the negative log-likelihood
(:func:`~asdflow.cflow.scores.fiber_loss`), with a warm-up and cosine
learning-rate schedule (:func:`~asdflow.cflow.scores.learning_rate_factor`).
After every epoch the whole training state (weights, optimiser, schedule,
gradient scaler, shuffling generator, losses) can be written to a
checkpoint, and a run resumed from it ends where an uninterrupted run would.

:func:`check_finite` refuses a trained detector whose score constants or
training scores are not finite, with the likely cause.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from asdflow import storage
from asdflow.cflow.config import CFlowConfig, _plain
from asdflow.cflow.fibers import FiberBank
from asdflow.cflow.scores import (
    ScoreConstants,
    fiber_loss,
    interleave_scales,
    learning_rate_factor,
)
from asdflow.errors import ModelError
from asdflow.flows import logsigmoid_loss

__all__ = ["CHECKPOINT_VERSION", "check_finite", "read_checkpoint", "train_decoders"]

CHECKPOINT_VERSION = 5
"""Version of the checkpoint layout; a checkpoint of another version is set aside."""

_CHECKPOINT_KIND = "asdflow.cflow.checkpoint"
# Encoder features beyond this size point to an encoder without its pretrained
# weights: trained ImageNet ResNets stay within tens, random ones reach 1e4.
_LARGE_FEATURES = 1e3


def read_checkpoint(checkpoint: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The training state in ``checkpoint``, or None when there is none to resume from.

    A checkpoint that cannot be used (truncated, damaged, of another format
    version, or not a CFlow checkpoint at all) is renamed to
    ``<name>.damaged``, replacing an older one, and a warning names both
    paths: training then starts afresh, and nothing is deleted.
    """
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    path = Path(checkpoint)
    try:
        return storage.load_state(
            path,
            kind=_CHECKPOINT_KIND,
            what="a CFlow checkpoint",
            format_version=CHECKPOINT_VERSION,
            writer="CFlowDetector.fit",
        )
    except ModelError as err:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        warnings.warn(
            f"the checkpoint {path} cannot be used ({err}); it was moved to {aside} and "
            "training starts afresh. Delete that file once you no longer need it.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


@dataclass
class _Optimisation:
    """Everything besides the weights that a resumed training needs: optimiser to generator."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    amp_dtype: torch.dtype | None

    @classmethod
    def start(
        cls, decoders: nn.ModuleList, config: CFlowConfig, total: int, warmup: int, device: Any
    ) -> _Optimisation:
        """Adam with CFLOW-AD's schedule; bfloat16 (or float16) autocast on CUDA if asked."""
        optimizer = torch.optim.Adam(decoders.parameters(), lr=config.lr)

        def factor(step: int) -> float:
            return learning_rate_factor(step, total, warmup, min_factor=config.min_lr_factor)

        amp_dtype = None
        if config.mixed_precision and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
            scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
            generator=torch.Generator().manual_seed(config.seed),
            amp_dtype=amp_dtype,
        )

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])


def _batch(bank: FiberBank, scale: int, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """The fibers ``idx`` of one scale (float32) and their conditions, on ``device``."""
    x = bank.fibers[scale][idx].to(device, torch.float32, non_blocking=True)
    c = bank.cond_table[scale][bank.cond_index[scale][idx]].to(device, non_blocking=True)
    return x, c


def train_decoders(
    decoders: nn.ModuleList,
    bank: FiberBank,
    config: CFlowConfig,
    device: torch.device,
    *,
    data_hash: str,
    checkpoint: str | os.PathLike[str] | None = None,
    callback: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> list[float]:
    """Train the decoders of every scale on the fiber bank; the mean loss of each epoch.

    Parameters
    ----------
    decoders : nn.ModuleList
        One decoder per scale (:func:`~asdflow.cflow.decoders.build_decoders`), on ``device``.
    bank : FiberBank
        The training fibers and their conditions.
    config : CFlowConfig
        ``epochs``, ``fiber_batch``, ``lr``, the schedule, ``seed`` and ``mixed_precision``.
    device : torch.device
    data_hash : str
        Identifies the training images: a checkpoint of other data is refused.
    checkpoint : path or None
        Written atomically after every epoch; resumed from when it exists.
    callback : callable or None
        ``callback(epoch, loss)`` after each epoch (1-based), once the checkpoint is written.
    progress : bool
        Show a progress bar of the steps.

    Returns
    -------
    list of float [length=config.epochs]

    Raises
    ------
    ModelError
        On a non-finite loss (naming the epoch and step), or a checkpoint
        written for other settings or data.
    """
    n_batches = [n // config.fiber_batch for n in bank.n_fibers]
    order = interleave_scales(n_batches)
    steps_per_epoch = len(order)
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    run = _Optimisation.start(decoders, config, total, warmup, device)

    losses: list[float] = []
    start_epoch = 0
    signature = {"config": _plain(config.to_dict()), "data": data_hash, "n_fibers": bank.n_fibers}
    state = read_checkpoint(checkpoint)
    if state is not None:
        if state["signature"] != signature:
            raise ModelError(
                f"checkpoint {checkpoint} was written for other settings or training "
                "data; delete it or pass another checkpoint path"
            )
        decoders.load_state_dict(state["decoders"])
        run.restore(state)
        losses = [float(v) for v in state["losses"]]
        start_epoch = int(state["epoch"])

    bar = tqdm(
        total=total,
        initial=start_epoch * steps_per_epoch,
        desc="training CFlow",
        unit="step",
        disable=not progress,
    )
    decoders.train()
    for epoch in range(start_epoch, config.epochs):
        perms = [
            torch.randperm(n, generator=run.generator).to(bank.fibers[0].device)
            for n in bank.n_fibers
        ]
        used = [0] * len(n_batches)
        running = torch.zeros((), device=device)
        for step, scale in enumerate(order):
            k = used[scale]
            used[scale] += 1
            idx = perms[scale][k * config.fiber_batch : (k + 1) * config.fiber_batch]
            x, c = _batch(bank, scale, idx, device)
            with torch.autocast(
                device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None
            ):
                z, log_det = decoders[scale](x, c)
            loss = fiber_loss(z, log_det, logsigmoid_loss)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            running = running + loss.detach()
            if (step + 1) % 50 == 0 or step + 1 == steps_per_epoch:
                mean = float(running) / (step + 1)
                if not math.isfinite(mean):
                    bar.close()
                    raise ModelError(
                        f"non-finite training loss in epoch {epoch + 1} of {config.epochs} "
                        f"(step {step + 1}): lower the learning rate or check the "
                        "feature images for extreme values"
                    )
                bar.set_postfix(epoch=epoch + 1, loss=f"{mean:.4f}")
            bar.update(1)
        losses.append(float(running) / steps_per_epoch)
        if checkpoint is not None:
            state = {"signature": signature, "epoch": epoch + 1, "losses": losses}
            state.update(decoders=decoders.state_dict(), **run.state())
            _write_checkpoint(state, Path(checkpoint))
        if callback is not None:
            callback(epoch + 1, losses[-1])
    bar.close()
    return losses


def _write_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a training state atomically, with its kind, layout version and versions."""
    header = {
        "kind": _CHECKPOINT_KIND,
        "format_version": CHECKPOINT_VERSION,
        "versions": storage.versions(),
    }
    storage.save_state({**header, **state}, path)


def _abs_max(fibers: Tensor, chunk: int = 65536) -> float:
    """Largest absolute value of an (N, C) fiber tensor, chunk by chunk (no full copy)."""
    peak = 0.0
    for start in range(0, fibers.shape[0], chunk):
        peak = max(peak, float(fibers[start : start + chunk].float().abs().max()))
    return peak


def check_finite(
    constants: ScoreConstants, scores: np.ndarray, bank: FiberBank, config: CFlowConfig
) -> None:
    """Raise :class:`~asdflow.errors.ModelError` unless the constants and ``scores`` are finite.

    A detector whose constants or training scores are NaN or infinite
    would give NaN scores to every clip; training stops here instead of
    saving it. The message reports how large the encoder's features are,
    the usual cause (an encoder without its pretrained weights gives
    features in the tens of thousands, and the flows overflow).
    """
    values = [*constants.scale_max, constants.map_max]
    if all(math.isfinite(v) for v in values) and np.all(np.isfinite(scores)):
        return
    if not all(math.isfinite(v) for v in values):
        what = f"score constants (scale maxima {values[:-1]}, map maximum {values[-1]})"
    else:
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        what = f"training scores ({bad} of {scores.size})"
    peak = max(_abs_max(f) for f in bank.fibers)
    cause = f"encoder features up to {peak:.2g}"
    if peak > _LARGE_FEATURES:
        cause += (
            f": an encoder without its pretrained weights (weights={config.weights!r})? Use "
            "weights='imagenet' or a pretrained weights file, or fiber_norm='standardize' "
            "to scale the features before the flows"
        )
    else:
        cause += "; lower the learning rate (lr) or train for fewer epochs"
    raise ModelError(
        f"the {what} of this CFlow detector are not finite ({cause}); nothing was kept: "
        "fix the settings and train again"
    )
