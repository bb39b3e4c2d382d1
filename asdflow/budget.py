"""How long each chapter takes in full mode on a free Colab GPU: an estimate, and how it is made.

Full mode runs a chapter on the real DCASE data and a CUDA GPU. The book's
full mode is budgeted (:data:`asdflow.modes.BOOK_MACHINES`,
:data:`asdflow.modes.BOOK_EPOCHS`) so that each chapter finishes within about
:data:`CHAPTER_LIMIT_MINUTES` minutes on the GPU of a free Colab session, an
NVIDIA T4. No T4 was at hand, so the times are estimated, from three kinds of
figures:

1. **Counts** that do not depend on the machine: clips per machine type
   (:data:`asdflow.download.EXPECTED_COUNTS`), fibers per clip and scale, and
   the floating-point operations (FLOPs) and tensor operations of one encoder
   pass and one training step, counted by PyTorch on its ``meta`` device
   (shapes only, nothing is computed: :func:`cflow_step_costs`).
2. **Measurements on this machine** for the work that stays on the CPU in
   Colab too (two CPU cores there): computing a feature image, a log-mel
   spectrogram and a step of chapter 3's small flows (:func:`measure_cpu`).
3. **Assumptions** about the GPU and the network, in :class:`Hardware`: the
   sustained FLOP rate of the training's matrix products, the host-side cost
   of launching one tensor operation (a training step of the decoders is many
   small operations), and the download rate from Zenodo.

A GPU step then takes ``max(FLOPs / rate, operations x launch cost)``: the
GPU computes while Python launches the next operations, and the slower of the
two sets the pace. The assumptions of :data:`COLAB_T4` are on the cautious
side: a sustained rate below the T4's float32 peak (8.1 TFLOP/s; its float16
tensor cores peak at 65) and 10 microseconds per operation. With a GPU,
``asdflow bench train --full`` measures the real figures.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from asdflow.download import EXPECTED_COUNTS
from asdflow.modes import BOOK_EPOCHS

CHAPTER_LIMIT_MINUTES = 20.0
"""The budget of one chapter in full mode on a free Colab GPU, in minutes."""

CLIP_SECONDS = 10.0
"""Length of a development clip of the book's machine types (ToyCar and ToyTrain: 12 s)."""

SOURCE_TRAIN, TARGET_TRAIN = 990, 10
"""Training clips of each domain per development machine type (DCASE 2024 Task 2)."""


@dataclass(frozen=True)
class Hardware:
    """Assumed figures of the machine a chapter runs on.

    Attributes
    ----------
    name : str
    tflops : float
        Sustained rate of the matrix products of training and encoding, in 10^12 FLOP/s.
    launch_seconds : float
        Host-side cost of one tensor operation (Python, dispatch, kernel launch).
    download_mb_per_s : float
        Download rate from Zenodo, in 10^6 bytes per second.
    """

    name: str
    tflops: float
    launch_seconds: float
    download_mb_per_s: float


COLAB_T4 = Hardware(
    "NVIDIA T4 (free Colab)", tflops=6.0, launch_seconds=10e-6, download_mb_per_s=10.0
)
"""Cautious figures for a free Colab session (see the module's text)."""


@dataclass(frozen=True)
class StepCost:
    """FLOPs and tensor operations of one step of work."""

    flops: float
    operations: int

    def seconds(self, hardware: Hardware) -> float:
        """Time of the step: the slower of computing and launching."""
        return max(self.flops / (hardware.tflops * 1e12), self.operations * hardware.launch_seconds)


def _count(step) -> StepCost:
    """Run ``step()`` (on meta tensors) and count its FLOPs and dispatched operations."""
    # deferred: torch takes seconds to import; this module's constants serve without it
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class _Operations(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with FlopCounterMode(display=False) as flops, _Operations() as operations:
        step()
    return StepCost(float(flops.get_total_flops()), operations.n)


@lru_cache(maxsize=4)
def encoder_cost(frames: int, rows: int = 158) -> tuple[StepCost, tuple[tuple[int, int, int], ...]]:
    """One clip through the report's encoder (WideResNet-50-2): its cost and its scales.

    Returns
    -------
    cost : StepCost
    scales : tuple of (channels, height, width), one per scale
    """
    # deferred: torch takes seconds to import
    import torch

    from asdflow.cflow import CFlowConfig, build_encoder

    encoder = build_encoder(CFlowConfig(weights="random")).to("meta")
    outputs: list[torch.Tensor] = []

    def step() -> None:
        with torch.no_grad():
            outputs.extend(encoder(torch.zeros((1, 3, rows, frames), device="meta")))

    cost = _count(step)
    return cost, tuple((int(o.shape[1]), int(o.shape[2]), int(o.shape[3])) for o in outputs)


@lru_cache(maxsize=4)
def cflow_step_costs(channels: tuple[int, ...]) -> tuple[StepCost, ...]:
    """One training step (forward, backward, Adam) of the report's decoder of each scale."""
    # deferred: torch takes seconds to import
    import torch

    from asdflow.cflow import CFlowConfig, build_decoders
    from asdflow.flows import gaussian_log_likelihood

    config = CFlowConfig(weights="random")
    costs = []
    for c in channels:
        decoder = build_decoders(config, [c])[0].to("meta")
        optimizer = torch.optim.Adam(decoder.parameters(), lr=config.lr)
        x = torch.zeros((config.fiber_batch, c), device="meta")
        cond = torch.zeros((config.fiber_batch, config.cond_dim), device="meta")

        def step(decoder=decoder, optimizer=optimizer, x=x, cond=cond) -> None:
            z, log_det = decoder(x, cond)
            loss = -gaussian_log_likelihood(z, log_det).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        costs.append(_count(step))
    return tuple(costs)


@lru_cache(maxsize=1)
def ae_step_cost() -> StepCost:
    """One training step of the DCASE baseline autoencoder (:class:`asdflow.baseline.AENet`)."""
    # deferred: torch takes seconds to import
    import torch

    from asdflow.baseline import AEConfig, AENet

    config = AEConfig()
    net = AENet(config.input_dim, config.hidden, 8, config.n_hidden).to("meta")
    optimizer = torch.optim.Adam(net.parameters())
    x = torch.zeros((config.batch_size, config.input_dim), device="meta")

    def step() -> None:
        loss = ((net(x) - x) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _count(step)


@dataclass(frozen=True)
class CPUTimes:
    """Seconds of the CPU work of full mode, measured on this machine (one process)."""

    feature_image: float
    log_mel: float
    toy_flow_step: float


def measure_cpu(repeats: int = 3) -> CPUTimes:
    """Time a 10 s clip's feature image and log-mel spectrogram, and a step of chapter 3's flow.

    The times are CPU seconds of this process (the best of ``repeats``), which
    equal wall-clock seconds on an idle machine for this single-process work.
    """
    # deferred: torch takes seconds to import
    import torch

    from asdflow import baseline, features
    from asdflow.flows import ConditionalFlow, fit_flow

    y = np.random.default_rng(0).normal(0, 0.1, int(CLIP_SECONDS * 16000)).astype(np.float32)

    def best(work) -> float:
        work()  # warm-up
        times = []
        for _ in range(repeats):
            # CPU time of this process, not wall time: a busy machine does not inflate it
            start = time.process_time()
            work()
            times.append(time.process_time() - start)
        return min(times)

    flow = ConditionalFlow(2, n_blocks=8, hidden_factor=64, seed=0)
    points = torch.randn(256 * 4, 2)
    flow_seconds = best(lambda: fit_flow(flow, points, epochs=1, batch_size=256, seed=0)) / 4
    return CPUTimes(
        feature_image=best(lambda: features.feature_image(y)),
        log_mel=best(lambda: baseline.log_mel(y)),
        toy_flow_step=flow_seconds,
    )


@dataclass(frozen=True)
class ChapterWork:
    """What a chapter computes in full mode, per machine type, on a fresh session.

    ``downloads`` is the number of machine types the chapter downloads (None:
    the book's; chapter 1 compares three, chapter 3 needs none). The
    ``shared_*`` fields say how much of the rest an earlier chapter has
    already done when the cache is kept on Google Drive: detectors of the same
    settings, and the feature images of the machine type's clips. The data
    are downloaded again in every session (:func:`asdflow.modes.keep_on_drive`).
    """

    downloads: int | None = None
    feature_images: int = 0
    cflow_trainings: int = 0
    ae_trainings: int = 0
    toy_flow_steps: int = 0
    scored_clips: int = 0
    shared_cflow: int = 0
    shared_ae: int = 0
    shared_features: bool = False


def chapter_work() -> dict[str, ChapterWork]:
    """The full-mode work of every chapter, per machine type."""
    clips = sum(v or 0 for v in EXPECTED_COUNTS["dev"].values())
    test = EXPECTED_COUNTS["dev"]["test"] or 0
    toy_steps = math.ceil(8000 / 256) * (200 + 100)  # chapter 3: 8000 points, 200 + 100 epochs
    return {
        "00_introduction": ChapterWork(),
        "01_machine_sounds": ChapterWork(downloads=3),
        "02_feature_image": ChapterWork(feature_images=clips),
        "03_normalizing_flows": ChapterWork(downloads=0, toy_flow_steps=toy_steps),
        # chapter 4 trains the shared detector (for its Gaussian comparison); its own
        # one-epoch detector of 48 clips costs seconds
        "04_cflow": ChapterWork(
            feature_images=clips, cflow_trainings=1, scored_clips=test, shared_features=True
        ),
        "05_training": ChapterWork(
            feature_images=clips,
            cflow_trainings=1,
            scored_clips=test,
            shared_cflow=1,
            shared_features=True,
        ),
        "06_evaluation": ChapterWork(
            feature_images=clips,
            cflow_trainings=1,
            ae_trainings=1,
            scored_clips=2 * test,
            shared_cflow=1,
            shared_features=True,
        ),
        "07_domain_shift": ChapterWork(
            feature_images=clips,
            cflow_trainings=2,
            ae_trainings=1,
            scored_clips=4 * test,
            shared_cflow=1,
            shared_ae=1,
            shared_features=True,
        ),
        "08_where_is_the_anomaly": ChapterWork(
            feature_images=clips,
            cflow_trainings=3,
            scored_clips=3 * test,
            shared_cflow=1,
            shared_features=True,
        ),
    }


@dataclass(frozen=True)
class ChapterEstimate:
    """Estimated minutes of one chapter in full mode, by stage."""

    chapter: str
    minutes: dict[str, float]
    cached_minutes: float

    @property
    def total(self) -> float:
        """All stages on a fresh session, in minutes."""
        return sum(self.minutes.values())


def download_bytes(n_clips: int, seconds: float = CLIP_SECONDS) -> int:
    """Bytes of ``n_clips`` 16-bit mono WAV files at 16 kHz (a zip of them is about as large)."""
    return n_clips * (44 + 2 * int(seconds * 16000))


def chapter_budget(
    *,
    n_machines: int = 1,
    epochs: int | None = None,
    hardware: Hardware = COLAB_T4,
    cpu: CPUTimes | None = None,
) -> list[ChapterEstimate]:
    """Estimated full-mode minutes of every chapter on a fresh session.

    Parameters
    ----------
    n_machines : int
        Machine types a chapter uses (:data:`asdflow.modes.BOOK_MACHINES`).
    epochs : int or None
        CFlow training passes (None: :data:`asdflow.modes.BOOK_EPOCHS`).
    hardware : Hardware
        The assumed GPU, host and network.
    cpu : CPUTimes or None
        CPU times (None: :func:`measure_cpu` now).

    Returns
    -------
    list of ChapterEstimate
        In book order; stages ``download``, ``features``, ``encoder``,
        ``training``, ``scoring`` and ``toy flows``. ``cached_minutes`` is the
        total when the feature images and detectors of earlier chapters are
        found in the cache (on Drive).
    """
    # deferred: these import torch or librosa, seconds that the module's constants do not need
    from asdflow.baseline import AEConfig
    from asdflow.cflow import CFlowConfig
    from asdflow.features import FeatureConfig

    if epochs is None:
        epochs = dict(BOOK_EPOCHS)["cflow"]
    cpu = cpu or measure_cpu()
    config = CFlowConfig()
    frames = FeatureConfig().n_frames(int(CLIP_SECONDS * 16000))
    encode, scales = encoder_cost(frames)
    steps = cflow_step_costs(tuple(c for c, _, _ in scales))
    n_train = SOURCE_TRAIN + TARGET_TRAIN
    # the decoders do not see the held-out clips (CFlowConfig.holdout, holdout_target)
    n_fit = (
        n_train - round(config.holdout * SOURCE_TRAIN) - round(config.holdout_target * TARGET_TRAIN)
    )

    def epoch_seconds(clips: int) -> float:
        return sum(
            (clips * h * w // config.fiber_batch) * cost.seconds(hardware)
            for (_, h, w), cost in zip(scales, steps, strict=True)
        )

    # scoring: the encoder, then the decoders' forward pass (about a third of a training step)
    forward = sum(
        h * w * cost.flops / config.fiber_batch / 3
        for (_, h, w), cost in zip(scales, steps, strict=True)
    )
    score_per_clip = (encode.flops + forward) / (hardware.tflops * 1e12)
    ae = dataclasses.replace(AEConfig(), epochs=dict(BOOK_EPOCHS).get("ae", AEConfig().epochs))
    ae_vectors = n_train * (frames - ae.n_frames + 1)
    ae_seconds = (
        ae.epochs * math.ceil(ae_vectors / ae.batch_size) * ae_step_cost().seconds(hardware)
    )

    zip_seconds = download_bytes(sum(v or 0 for v in EXPECTED_COUNTS["dev"].values())) / (
        hardware.download_mb_per_s * 1e6
    )
    one_training = n_fit * encode.seconds(hardware) + epochs * epoch_seconds(n_fit)
    estimates = []
    for chapter, work in chapter_work().items():
        downloads = n_machines if work.downloads is None else work.downloads
        per_machine = {  # seconds per machine type of the chapter
            "features": work.feature_images * cpu.feature_image
            + work.ae_trainings * n_train * cpu.log_mel,
            "encoder": work.cflow_trainings * n_fit * encode.seconds(hardware),
            "training": work.cflow_trainings * epochs * epoch_seconds(n_fit)
            + work.ae_trainings * ae_seconds,
            "scoring": work.scored_clips * score_per_clip,
        }
        shared = (
            work.shared_features * work.feature_images * cpu.feature_image
            + work.shared_cflow * one_training
            + work.shared_ae * (ae_seconds + n_train * cpu.log_mel)
        )
        minutes = {
            "download": downloads * zip_seconds / 60,
            **{stage: n_machines * s / 60 for stage, s in per_machine.items()},
            "toy flows": work.toy_flow_steps * cpu.toy_flow_step / 60,
        }
        cached = sum(minutes.values()) - n_machines * shared / 60
        estimates.append(ChapterEstimate(chapter, minutes, cached))
    return estimates


def budget_table(estimates: list[ChapterEstimate]) -> str:
    """A Markdown table of :func:`chapter_budget`'s estimates, one row per chapter."""
    stages = list(estimates[0].minutes)
    lines = [
        "| chapter | " + " | ".join(stages) + " | total | with the Drive cache |",
        "|---|" + "---:|" * (len(stages) + 2),
    ]
    for e in estimates:
        cells = [f"{e.minutes[s]:.1f}" if e.minutes[s] >= 0.05 else "-" for s in stages]
        lines.append(
            f"| {e.chapter} | "
            + " | ".join(cells)
            + f" | **{e.total:.0f}** | {max(e.cached_minutes, 0.0):.0f} |"
        )
    return "\n".join(lines)


__all__ = [
    "CHAPTER_LIMIT_MINUTES",
    "COLAB_T4",
    "CPUTimes",
    "ChapterEstimate",
    "ChapterWork",
    "Hardware",
    "StepCost",
    "ae_step_cost",
    "budget_table",
    "chapter_budget",
    "chapter_work",
    "cflow_step_costs",
    "download_bytes",
    "encoder_cost",
    "measure_cpu",
]
