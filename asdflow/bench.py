"""Speed figures of the pipeline's expensive steps (``asdflow bench ...``).

Each ``bench_<what>`` function generates its own input, prints a small table
and returns the figures as a dict, so that a test can run it at a small size
and a person at full size.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from asdflow import cflow, features
from asdflow.cflow import CFlowConfig, CFlowDetector, choose_device
from asdflow.features import FeatureConfig
from asdflow.flows import logsigmoid_loss


def _machine_sounds(n_clips: int, seconds: float, sr: int, seed: int) -> list[np.ndarray]:
    """Machine-like test clips: a humming harmonic series, slow modulation and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    clips = []
    for _ in range(n_clips):
        f0 = rng.uniform(50.0, 400.0)
        harmonics = np.arange(1, 11)
        amplitudes = rng.uniform(0.2, 1.0, size=10) / harmonics
        phases = rng.uniform(0.0, 2 * np.pi, size=10)
        tone = amplitudes @ np.sin(2 * np.pi * f0 * np.outer(harmonics, t) + phases[:, None])
        tone *= 1.0 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * t)
        y = 0.05 * tone + 0.02 * rng.standard_normal(t.size)
        clips.append(y.astype(np.float32))
    return clips


def bench_features(
    *,
    n_clips: int = 32,
    seconds: float = 10.0,
    n_jobs: int | None = None,
    hop_length: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Clips per second of feature extraction: naive, shared, parallel and cached.

    On generated machine-like clips, measures

    - ``naive``: :func:`asdflow.features.naive_feature_image`, one
      standalone librosa call per feature, in this process;
    - ``shared``: :func:`asdflow.features.feature_image` (one STFT, one
      CQT), in this process. Naive and shared run alternately clip by clip,
      so both see the same load from other programs;
    - ``extract``: :func:`asdflow.features.extract` on the clips written as
      16-bit WAV files, with ``n_jobs`` processes and an empty cache
      (reading the files included);
    - ``cached``: the same call again, now answered from the cache.

    Parameters
    ----------
    n_clips : int
        Number of clips.
    seconds : float
        Length of each clip (10 s: a DCASE clip, 313 frames at hop 512).
    n_jobs : int or None
        Processes for ``extract``; ``None`` uses every core.
    hop_length : int or None
        STFT hop in samples (None: the :class:`asdflow.features.FeatureConfig`
        default, 512).
    seed : int
        Seed of the generated clips.

    Returns
    -------
    dict
        ``naive``, ``shared``, ``extract``, ``cached`` in clips per second;
        ``ratio`` = shared / naive; ``cache_speedup`` = cached / extract;
        ``n_jobs``, ``n_clips``, ``seconds``.
    """
    config = features.FeatureConfig()
    if hop_length is not None:
        config = dataclasses.replace(config, hop_length=hop_length)
    n_jobs = n_jobs or features.n_cores()
    clips = _machine_sounds(n_clips, seconds, config.sr, seed)

    features.naive_feature_image(clips[0], config)  # warm-up: imports, first-call costs
    features.feature_image(clips[0], config)
    naive = shared = 0.0
    for y in clips:
        start = time.perf_counter()
        features.naive_feature_image(y, config)
        naive += time.perf_counter() - start
        start = time.perf_counter()
        features.feature_image(y, config)
        shared += time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="asdflow-bench-") as tmp:
        paths = []
        for i, y in enumerate(clips):
            paths.append(Path(tmp) / f"clip_{i:04d}.wav")
            soundfile.write(paths[-1], y, config.sr, subtype="PCM_16")
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        features.extract(paths, config, cache=cache, n_jobs=n_jobs, progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        features.extract(paths, config, cache=cache, n_jobs=n_jobs, progress=False)
        warm = time.perf_counter() - start

    result = {
        "naive": n_clips / naive,
        "shared": n_clips / shared,
        "extract": n_clips / cold,
        "cached": n_clips / warm,
        "ratio": naive / shared,
        "cache_speedup": cold / warm,
        "n_jobs": float(n_jobs),
        "n_clips": float(n_clips),
        "seconds": float(seconds),
    }
    rows = [
        ("(a) naive, one librosa call per feature", "naive"),
        ("(b) feature_image, one process", "shared"),
        (f"(c) extract, {n_jobs} process(es), empty cache", "extract"),
        ("    extract again, from the cache", "cached"),
    ]
    frames = config.n_frames(int(round(seconds * config.sr)))
    print(
        f"feature images of {n_clips} generated clips of {seconds:g} s "
        f"({config.n_rows} x {frames}, hop {config.hop_length})"
    )
    for label, key in rows:
        print(f"  {label:<44} {result[key]:9.2f} clips/s")
    print(f"  ratio b/a = {result['ratio']:.2f}, cache speed-up = {result['cache_speedup']:.0f}x")
    return result


def _feature_like_images(n: int, frames: int, seed: int) -> list[np.ndarray]:
    """Random 158-row images with a steady structure (bands, a pulse), standing in for features."""
    rng = np.random.default_rng(seed)
    rows = np.arange(158)[:, None]
    base = np.sin(rows / 9.0) + (rows % 17 == 0)
    pulse = np.sin(2 * np.pi * np.arange(frames) / 40.0)[None, :]
    return [
        (base + 0.5 * pulse * (rows < 40) + 0.3 * rng.standard_normal((158, frames))).astype(
            np.float32
        )
        for _ in range(n)
    ]


#: Images per encoder pass in CFLOW-AD's training loop (its ``--batch-size`` default).
CFLOW_AD_IMAGE_BATCH = 32


def _naive_fit_seconds(config, images: list[np.ndarray], device) -> float:
    """Seconds of a CFLOW-AD-style loop that re-runs the encoder on every batch of every epoch.

    Same decoders, optimiser, fiber batch and steps as
    :meth:`asdflow.cflow.CFlowDetector.fit`; the only difference is that the
    pyramid is recomputed from the images each epoch (:data:`CFLOW_AD_IMAGE_BATCH`
    images per encoder pass, fibers shuffled within them), as the official
    training loop does.
    """
    encoder = cflow.build_encoder(config).to(device)
    x0 = torch.from_numpy(np.stack(images[:1]))[:, None].expand(-1, 3, -1, -1).to(device)
    channels = [int(out.shape[1]) for out in encoder(x0)]
    decoders = cflow.build_decoders(config, channels).to(device).train()
    optimizer = torch.optim.Adam(decoders.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    conditions: dict[tuple[int, int], torch.Tensor] = {}
    n = config.fiber_batch
    start = time.perf_counter()  # like fit's encode + train: network construction excluded
    for _ in range(config.epochs):
        for first in range(0, len(images), CFLOW_AD_IMAGE_BATCH):
            x = torch.from_numpy(np.stack(images[first : first + CFLOW_AD_IMAGE_BATCH]))
            with torch.no_grad():
                outputs = encoder(x[:, None].expand(-1, 3, -1, -1).contiguous().to(device))
            for scale, out in enumerate(outputs):
                b, _, h, w = out.shape
                if (h, w) not in conditions:
                    conditions[(h, w)] = cflow.fiber_conditions(h, w, config.cond_dim).to(device)
                fibers = cflow.feature_fibers(out)
                cond = conditions[(h, w)].repeat(b, 1)
                order = torch.randperm(fibers.shape[0], generator=generator).to(device)
                for k in range(fibers.shape[0] // n):
                    idx = order[k * n : (k + 1) * n]
                    z, log_det = decoders[scale](fibers[idx], cond[idx])
                    loss = cflow.fiber_loss(z, log_det, logsigmoid_loss)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_train(
    *,
    full: bool = False,
    n_clips: int | None = None,
    seconds: float | None = None,
    epochs: int | None = None,
    naive: bool | None = None,
    device: str | None = None,
    hop_length: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Training and scoring speed of CFlow, and the gain of encoding each clip once.

    Trains :class:`asdflow.cflow.CFlowDetector` on generated 158-row images
    (random data: speed does not depend on the content) and measures

    - the encoder pass over the training images (once per ``fit``);
    - the training epochs, as fibers per second (one optimiser step per 256
      fibers);
    - scoring, as clips per second (encoder, decoders, anomaly map, score);
    - with ``naive``: a loop that re-runs the encoder on every batch of every
      epoch, as the CFLOW-AD code does, with the same decoders and steps;
      ``ratio`` is its time over ``fit``'s (encoding plus training).

    Quick mode (default): :meth:`asdflow.cflow.CFlowConfig.quick` (random
    ResNet-18), 32 clips of 2 s (158 x 63 images at hop 512), 5 epochs, on
    the CPU unless a GPU is present. Full mode (``full=True``, for a GPU):
    the default configuration (WideResNet-50-2, 8 coupling blocks, 25
    epochs) on 1000 clips of 10 s (158 x 313), the size of one DCASE
    machine type. The image width is that of the clip length at
    ``hop_length`` (the feature default, 512, unless given), so the cost of
    the hop can be compared: ``train_ms_per_clip`` is the training time of
    one clip for one epoch.
    The encoder gets random weights there: its speed is that of the
    ImageNet weights, which may not be downloadable. In full mode the naive
    loop is not run (it would take hours); its time is estimated as
    ``fit + (epochs - 1) * encode``.

    Parameters
    ----------
    full : bool
        Full size instead of quick mode.
    n_clips : int, optional
        Training clips (quick: 32; full: 1000).
    seconds : float, optional
        Clip length in seconds (quick: 2; full: 10).
    epochs : int, optional
        Training epochs (quick: 5; full: the configuration's 25).
    naive : bool, optional
        Time the naive loop too (default: in quick mode only).
    device : str, optional
        ``"cpu"``, ``"cuda"``... (default: CUDA if available).
    hop_length : int, optional
        STFT hop that sets the image width (default: the
        :class:`asdflow.features.FeatureConfig` default, 512).
    seed : int
        Seed of the images and the detector.

    Returns
    -------
    dict
        ``encode_s``, ``train_s``, ``fit_s`` (seconds), ``train_ms_per_clip``
        (milliseconds per clip and epoch), ``fibers_per_s``,
        ``score_clips_per_s``, ``naive_s`` and ``ratio`` (NaN when neither
        measured nor estimated), ``estimated`` (1.0 when the naive time is an
        estimate), ``epochs``, ``n_clips``, ``frames``, ``bank_gb``.
    """
    if full:
        config = CFlowConfig(weights="random", seed=seed, holdout=0.0, holdout_target=0.0)
        n_clips, seconds = n_clips or 1000, seconds or 10.0
    else:
        config = CFlowConfig.quick(seed=seed, epochs=5, holdout=0.0, holdout_target=0.0)
        n_clips, seconds = n_clips or 32, seconds or 2.0
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    if naive is None:
        naive = not full
    torch_device = choose_device(device)

    feature_config = FeatureConfig()
    if hop_length is not None:
        feature_config = dataclasses.replace(feature_config, hop_length=hop_length)
    frames = feature_config.n_frames(int(round(seconds * feature_config.sr)))
    images = _feature_like_images(n_clips, frames, seed)
    if full and torch_device.type != "cuda":
        print("warning: full-size training on the CPU takes hours; use a GPU")

    detector = CFlowDetector(config, device=torch_device, progress=True)
    start = time.perf_counter()
    detector.fit(images)
    fit_s = time.perf_counter() - start
    timings = detector.timings_
    n_score = min(len(images), 64)
    detector.progress = False
    detector.score_samples(images[:2])  # warm-up
    start = time.perf_counter()
    detector.score_samples(images[:n_score])
    score_s = time.perf_counter() - start

    encode_s, train_s = timings["encode"], timings["train"]
    ours_s = encode_s + train_s
    naive_s, estimated = float("nan"), 0.0
    if naive:
        naive_s = _naive_fit_seconds(config, images, torch_device)
    elif full:
        naive_s, estimated = ours_s + (config.epochs - 1) * encode_s, 1.0
    result = {
        "encode_s": encode_s,
        "train_s": train_s,
        "fit_s": fit_s,
        "train_ms_per_clip": 1000 * train_s / (config.epochs * n_clips),
        "fibers_per_s": config.epochs * timings["fibers_per_epoch"] / train_s,
        "score_clips_per_s": n_score / score_s,
        "naive_s": naive_s,
        "ratio": naive_s / ours_s,
        "estimated": estimated,
        "epochs": float(config.epochs),
        "n_clips": float(n_clips),
        "frames": float(frames),
        "bank_gb": timings["bank_bytes"] / 1e9,
    }
    mode = "full" if full else "quick"
    print(
        f"CFlow training, {mode} mode: {config.backbone} ({config.weights} weights), "
        f"{config.n_blocks} coupling blocks, {n_clips} clips of 158 x {frames} "
        f"(hop {feature_config.hop_length}), {config.epochs} epochs, on {torch_device}"
    )
    print(f"  encoder pass (once)          {encode_s:9.2f} s   bank {result['bank_gb']:.3f} GB")
    print(
        f"  training                     {train_s:9.2f} s   {result['fibers_per_s']:,.0f} fibers/s"
    )
    print(f"  training per clip and epoch  {result['train_ms_per_clip']:9.2f} ms")
    print(f"  fit in all                   {fit_s:9.2f} s")
    print(f"  scoring                      {result['score_clips_per_s']:9.2f} clips/s")
    if naive or full:
        label = "estimated" if estimated else "measured"
        print(
            f"  naive loop, encoder each epoch ({label}) {naive_s:9.2f} s   "
            f"ratio {result['ratio']:.2f}x"
        )
    return result
