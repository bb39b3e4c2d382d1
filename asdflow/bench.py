"""Speed figures of the pipeline's expensive steps (``asdflow bench ...``).

Each ``bench_<what>`` function generates its own input, prints a small table
and returns the figures as a dict, so that a test can run it at a small size
and a person at full size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


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
    *, n_clips: int = 32, seconds: float = 10.0, n_jobs: int | None = None, seed: int = 0
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
        Length of each clip (10 s: a DCASE clip, 626 frames).
    n_jobs : int or None
        Processes for ``extract``; ``None`` uses every core.
    seed : int
        Seed of the generated clips.

    Returns
    -------
    dict
        ``naive``, ``shared``, ``extract``, ``cached`` in clips per second;
        ``ratio`` = shared / naive; ``cache_speedup`` = cached / extract;
        ``n_jobs``, ``n_clips``, ``seconds``.
    """
    import soundfile

    from asdflow import features

    config = features.FeatureConfig()
    n_jobs = n_jobs or features._n_cores()
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
    print(f"feature images of {n_clips} generated clips of {seconds:g} s ({config.n_rows} rows)")
    for label, key in rows:
        print(f"  {label:<44} {result[key]:9.2f} clips/s")
    print(f"  ratio b/a = {result['ratio']:.2f}, cache speed-up = {result['cache_speedup']:.0f}x")
    return result
