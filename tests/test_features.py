"""asdflow.features: the 158-row image, its row statistics, the cache and the benchmark."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile

from asdflow import features
from asdflow.errors import AudioError, ModelError
from asdflow.features import (
    ROW_GROUPS,
    FeatureConfig,
    RowStats,
    extract,
    feature_image,
    naive_feature_image,
    nominal_length,
)
from asdflow.tolerance import tolerance

SR = 16000
CONFIG = FeatureConfig()
N_BINS = CONFIG.n_fft // 2 + 1
"""Frequency bins of the STFT: the length of the sums behind every spectral row."""


def assert_close_per_row(actual, expected, dtype, *, terms: int = 1, err_msg: str = "") -> None:
    """``|actual - expected| <= tolerance(dtype, magnitude of the row, terms)``, row by row.

    The rows of an image have scales from 0.01 (flatness) to 8000 (Hz), so
    each row gets the tolerance of its own magnitude.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    magnitude = np.abs(expected).max(axis=-1, keepdims=True)
    bound = tolerance(dtype, terms=terms) * magnitude  # tolerance is linear in the magnitude
    excess = np.abs(actual - expected) - bound
    assert (excess <= 0).all(), f"{err_msg}: {np.count_nonzero(excess > 0)} values out of bounds"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240)


def _tone_in_noise(rng: np.random.Generator, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    y = 0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.1 * np.sin(2 * np.pi * 660.0 * t)
    return (y + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _chirp(rng: np.random.Generator, seconds: float = 1.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    y = 0.5 * np.sin(2 * np.pi * (100.0 * t + 1500.0 * t**2))
    return (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _clicks(rng: np.random.Generator, seconds: float = 1.5) -> np.ndarray:
    y = 0.01 * rng.standard_normal(int(seconds * SR))
    y[:: SR // 7] = 0.9
    return y.astype(np.float32)


SIGNALS = {"tone": _tone_in_noise, "chirp": _chirp, "clicks": _clicks}


def _write(path: Path, y: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, y, SR, subtype="FLOAT")
    return path


# -- the image ------------------------------------------------------------------


def test_row_groups_tile_the_158_rows_in_design_order() -> None:
    assert list(ROW_GROUPS) == list(features.GROUPS)
    sizes = {name: rows.stop - rows.start for name, rows in ROW_GROUPS.items()}
    assert sizes == {
        "mel": 128,
        "chroma": 12,
        "contrast": 7,
        "tonnetz": 6,
        "rms": 1,
        "centroid": 1,
        "bandwidth": 1,
        "flatness": 1,
        "zcr": 1,
    }
    starts = [rows.start for rows in ROW_GROUPS.values()]
    stops = [rows.stop for rows in ROW_GROUPS.values()]
    assert starts[0] == 0 and stops[-1] == CONFIG.n_rows == 158
    assert starts[1:] == stops[:-1]


@pytest.mark.parametrize("n", [1024, 1500, 16000, 16255, 24000 + 17])
def test_shape_dtype_and_frame_count(rng: np.random.Generator, n: int) -> None:
    y = (0.1 * rng.standard_normal(n)).astype(np.float32)
    image = feature_image(y)
    assert image.shape == (158, 1 + n // 512) == (158, CONFIG.n_frames(n))
    assert image.dtype == np.float32
    assert np.isfinite(image).all()


def test_ten_second_clip_gives_158_by_313() -> None:
    assert CONFIG.hop_length == 512
    assert CONFIG.n_frames(10 * SR) == 313
    assert FeatureConfig(n_samples=12 * SR).n_frames(5) == 376
    # hop 256, the variant: twice the frames
    assert FeatureConfig(hop_length=256).n_frames(10 * SR) == 626


def test_default_hop_is_that_of_every_librosa_feature_called_without_one() -> None:
    # The report names librosa and the 64 ms window, not the hop. librosa's feature
    # functions fall back on hop_length=512; only librosa.stft defaults to n_fft // 4.
    import inspect

    for function in (
        librosa.feature.melspectrogram,
        librosa.feature.chroma_cqt,
        librosa.feature.spectral_contrast,
        librosa.feature.rms,
        librosa.feature.spectral_centroid,
        librosa.feature.spectral_bandwidth,
        librosa.feature.spectral_flatness,
        librosa.feature.zero_crossing_rate,
    ):
        hop = inspect.signature(function).parameters["hop_length"].default
        assert hop == CONFIG.hop_length, function.__name__
    # tonnetz has no hop of its own: it hands it to chroma_cqt (above)
    assert "hop_length" not in inspect.signature(librosa.feature.tonnetz).parameters
    assert inspect.signature(librosa.stft).parameters["hop_length"].default is None


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large:UserWarning")
@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_each_group_equals_its_standalone_librosa_call(
    rng: np.random.Generator, signal: str
) -> None:
    y = SIGNALS[signal](rng)
    image = feature_image(y)
    # No hop given: librosa's own default (512), which is asdflow's default too.
    stft = {"n_fft": 1024, "window": "hann"}
    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_mels=128, **stft)
    chroma = librosa.feature.chroma_cqt(y=y, sr=SR)
    # The standalone calls run the same operations on the same float32 waveform
    # (one STFT, the same sums, in the same order, on this machine): the results
    # differ only by the final rounding to float32 of the image (centroid and
    # bandwidth are float64 in librosa), one rounding per value.
    expected = {
        "mel": librosa.power_to_db(mel),  # dB
        "chroma": chroma,
        "contrast": librosa.feature.spectral_contrast(y=y, sr=SR, **stft),  # dB
        "tonnetz": librosa.feature.tonnetz(y=y, sr=SR),
        "centroid": librosa.feature.spectral_centroid(y=y, sr=SR, **stft),  # Hz
        "bandwidth": librosa.feature.spectral_bandwidth(y=y, sr=SR, **stft),
        "flatness": librosa.feature.spectral_flatness(y=y, **stft),
    }
    for name, reference in expected.items():
        atol = tolerance(np.float32, np.abs(reference).max())
        np.testing.assert_allclose(
            image[ROW_GROUPS[name]], reference, rtol=0, atol=atol, err_msg=name
        )
    # a count of sign changes: exact
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=1024)
    np.testing.assert_array_equal(image[ROW_GROUPS["zcr"]], zcr)


def test_rms_row_is_the_rms_of_hann_windowed_frames(rng: np.random.Generator) -> None:
    # The deliberate difference: rms(S=|STFT|) is, by Parseval, the RMS of the
    # Hann-windowed, zero-padded frame, not of the rectangular frame of rms(y=y).
    y = _tone_in_noise(rng)
    image = feature_image(y)
    padded = np.pad(y.astype(np.float64), 512)
    frames = librosa.util.frame(padded, frame_length=1024, hop_length=CONFIG.hop_length)
    window = librosa.filters.get_window("hann", 1024, fftbins=True)[:, None]
    windowed = np.sqrt(np.mean((window * frames) ** 2, axis=0))
    # float32 STFT, then a float32 sum of the squares of its N_BINS bins (Parseval);
    # the reference is float64 in the time domain
    atol = tolerance(np.float32, windowed.max(), terms=N_BINS)
    np.testing.assert_allclose(image[ROW_GROUPS["rms"]][0], windowed, rtol=0, atol=atol)


def test_rms_row_of_stationary_noise_is_sqrt_3_8_of_the_waveform_rms(
    rng: np.random.Generator,
) -> None:
    y = rng.standard_normal(4 * SR).astype(np.float32)
    ours = feature_image(y)[ROW_GROUPS["rms"]][0, 4:-4]  # frames away from the zero padding
    waveform = librosa.feature.rms(y=y, frame_length=1024, hop_length=CONFIG.hop_length)[0, 4:-4]
    # mean of the periodic Hann window squared is exactly 3/8
    assert np.median(ours / waveform) == pytest.approx(np.sqrt(3 / 8), rel=0.01)


@pytest.mark.parametrize("signal", ["tone", "clicks"])
def test_naive_recipe_gives_the_same_image_but_rms(rng: np.random.Generator, signal: str) -> None:
    y = SIGNALS[signal](rng)
    shared, naive = feature_image(y), naive_feature_image(y)
    others = np.ones(158, dtype=bool)
    others[ROW_GROUPS["rms"]] = False
    # the same float32 operations on the same waveform: one rounding apart at most
    assert_close_per_row(shared[others], naive[others], np.float32, err_msg=signal)
    assert not np.allclose(shared[ROW_GROUPS["rms"]], naive[ROW_GROUPS["rms"]], rtol=0.1)


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [None, 16000])
def test_clip_shorter_than_one_window_is_refused(n_samples: int | None) -> None:
    # also under a length policy, which would otherwise repeat it 16 times
    config = FeatureConfig(n_samples=n_samples)
    with pytest.raises(AudioError, match="1023 samples, shorter than one window of 1024"):
        feature_image(np.zeros(1023, dtype=np.float32), config)
    with pytest.raises(AudioError, match="0 samples"):
        feature_image(np.zeros(0, dtype=np.float32), config)


def test_short_file_error_names_the_file(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.wav", np.zeros(SR, dtype=np.float32))
    short = _write(tmp_path / "tiny_clip.wav", np.zeros(500, dtype=np.float32))
    with pytest.raises(AudioError, match=r"tiny_clip\.wav.*shorter than one window"):
        extract([good, short], cache=False, n_jobs=1, progress=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_refused(bad: float) -> None:
    y = np.zeros(SR, dtype=np.float32)
    y[100] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        feature_image(y)


def test_stereo_array_is_refused() -> None:
    with pytest.raises(AudioError, match="mono"):
        feature_image(np.zeros((2, SR), dtype=np.float32))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda y: np.zeros_like(y), id="silent"),
        pytest.param(lambda y: np.clip(20 * y, -1, 1), id="clipped"),
        pytest.param(lambda y: y + 0.5, id="dc-offset"),
        pytest.param(lambda y: np.full_like(y, 0.5), id="pure-dc"),
        pytest.param(lambda y: np.float32(1e-9) * y, id="nearly-silent"),
    ],
)
def test_degenerate_clips_give_finite_images(rng: np.random.Generator, make) -> None:
    y = make(_tone_in_noise(rng, seconds=1.0)).astype(np.float32)
    image = feature_image(y)
    assert image.shape == (158, 32)
    assert np.isfinite(image).all()


def test_silent_clip_rows_take_their_defined_values() -> None:
    image = feature_image(np.zeros(SR, dtype=np.float32))
    mel_floor = -100.0  # 10 log10(amin), amin = 1e-10, computed in float32
    np.testing.assert_allclose(
        image[ROW_GROUPS["mel"]], mel_floor, atol=tolerance(np.float32, abs(mel_floor))
    )
    for name in ("chroma", "tonnetz", "rms", "centroid", "bandwidth", "zcr"):
        np.testing.assert_array_equal(image[ROW_GROUPS[name]], 0.0, err_msg=name)


# -- length policy -----------------------------------------------------------------


def test_length_policy_crops_and_repeats(rng: np.random.Generator) -> None:
    y = _tone_in_noise(rng, seconds=1.0)
    config = FeatureConfig(n_samples=12000)
    np.testing.assert_array_equal(feature_image(y, config), feature_image(y[:12000]))
    longer = FeatureConfig(n_samples=20000)
    repeated = np.concatenate([y, y[:4000]])
    np.testing.assert_array_equal(feature_image(y, longer), feature_image(repeated))
    assert feature_image(y[:3000], longer).shape == (158, 1 + 20000 // 512)


def test_config_refuses_a_length_below_one_window() -> None:
    with pytest.raises(ValueError, match="shorter than one window"):
        FeatureConfig(n_samples=1000)
    with pytest.raises(ValueError, match="hop_length"):
        FeatureConfig(hop_length=0)


def test_nominal_length_is_the_most_common_then_the_longest(tmp_path: Path) -> None:
    lengths = [16000, 16000, 12000, 8000]
    paths = [_write(tmp_path / f"c{i}.wav", np.zeros(n, np.float32)) for i, n in enumerate(lengths)]
    assert nominal_length(paths) == 16000
    assert CONFIG.with_nominal_length(paths) == FeatureConfig(n_samples=16000)
    assert nominal_length(paths[2:]) == 12000  # a tie goes to the longer
    soundfile.write(tmp_path / "at8k.wav", np.zeros(4000, np.float32), 8000)
    assert nominal_length([tmp_path / "at8k.wav"]) == 8000


# -- row statistics --------------------------------------------------------------


@pytest.fixture(scope="module")
def training_images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    makers = [_tone_in_noise, _chirp, _clicks, _tone_in_noise]
    return [
        feature_image(make(rng, seconds=s))
        for make, s in zip(makers, [1, 1.5, 0.5, 1.2], strict=True)
    ]


def test_standardised_training_images_have_zero_mean_unit_std(training_images) -> None:
    stats = RowStats().fit(training_images)
    z = np.concatenate([stats.transform(image) for image in training_images], axis=1)
    assert stats.n_frames_ == z.shape[1] == sum(image.shape[1] for image in training_images)
    varying = stats.std_ > stats.floor * np.sqrt(stats.mean_**2 + stats.var_)
    assert varying.sum() >= 150  # only rows constant in the training clips are floored
    # z is float64 arithmetic rounded once to float32; its moments are taken in float64,
    # so each is off by at most one float32 rounding of the largest value
    z64 = z.astype(np.float64)
    atol = tolerance(np.float32, np.abs(z64).max(), terms=2)
    np.testing.assert_allclose(z64.mean(axis=1), 0.0, atol=atol)
    np.testing.assert_allclose(z64[varying].std(axis=1), 1.0, atol=atol)


def assert_same_moments(stats: RowStats, mean: np.ndarray, var: np.ndarray, n: int) -> None:
    """Two float64 computations of the row moments by different algorithms (Chan's merge,
    a one-pass NumPy sum): ``n`` roundings of numbers of the size of the row's values
    (of their squares for the variance)."""
    scale = np.sqrt(mean**2 + var)  # root mean square of each row: the size of its values
    for name, ours, theirs, magnitude in (
        ("mean", stats.mean_, mean, scale),
        ("var", stats.var_, var, scale**2),
    ):
        bound = np.array([tolerance(np.float64, m, terms=n) for m in magnitude])
        assert (np.abs(ours - theirs) <= bound).all(), name


def test_statistics_match_numpy_over_all_frames(training_images) -> None:
    stats = RowStats().fit(training_images)
    frames = np.concatenate(training_images, axis=1).astype(np.float64)
    assert_same_moments(stats, frames.mean(axis=1), frames.var(axis=1), frames.shape[1])


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1], [2, 2], [3, 1], [1, 3]])
def test_fit_in_chunks_equals_one_pass(training_images, chunks: list[int]) -> None:
    one_pass = RowStats().fit(training_images)
    streamed = RowStats()
    start = 0
    for size in chunks:
        streamed.partial_fit(iter(training_images[start : start + size]))
        start += size
    assert streamed.n_frames_ == one_pass.n_frames_
    assert_same_moments(streamed, one_pass.mean_, one_pass.var_, one_pass.n_frames_)


def test_fit_accepts_a_stack_and_forgets_earlier_data(rng: np.random.Generator) -> None:
    stack = rng.normal(3.0, 2.0, size=(5, 158, 40))
    stats = RowStats().fit(rng.normal(size=(158, 10)))
    stats.fit(stack)
    assert stats.n_frames_ == 200
    flat = stack.transpose(1, 0, 2).reshape(158, -1)
    assert_same_moments(stats, flat.mean(axis=1), flat.var(axis=1), flat.shape[1])


def test_constant_row_is_floored_not_divided_by_zero(rng: np.random.Generator) -> None:
    images = [rng.normal(size=(158, 30)) for _ in range(3)]
    for image in images:
        image[5] = 2.0  # constant row
        image[6] = 0.0  # all-zero row
    stats = RowStats().fit(images)
    floored = 1e-3 * 2.0  # floor * rms of the row, a few float64 operations
    assert abs(stats.std_[5] - floored) <= tolerance(np.float64, floored, terms=4)
    assert stats.std_[6] == RowStats._MIN_STD
    test = np.full((158, 4), 2.5)
    z = stats.transform(test)
    assert np.isfinite(z).all()
    expected = 0.5 / 2e-3  # rounded once to float32 by transform
    assert abs(z[5, 0] - expected) <= tolerance(np.float32, expected)
    np.testing.assert_array_equal(stats.transform(images[0])[5:7], 0.0)


def test_state_round_trip_and_continued_fit(training_images) -> None:
    first = RowStats().fit(training_images[:2])
    state = first.to_dict()
    assert set(state) == {"mean", "var", "n_frames", "floor"}
    restored = RowStats.from_dict(state)
    np.testing.assert_array_equal(
        restored.transform(training_images[0]), first.transform(training_images[0])
    )
    restored.partial_fit(training_images[2:])
    everything = RowStats().fit(training_images)
    assert_same_moments(restored, everything.mean_, everything.var_, everything.n_frames_)


def test_row_stats_errors(rng: np.random.Generator) -> None:
    with pytest.raises(ModelError, match="not fitted"):
        RowStats().transform(np.zeros((158, 3)))
    stats = RowStats().fit(rng.normal(size=(158, 10)))
    with pytest.raises(ModelError, match="158 rows"):
        stats.transform(np.zeros((100, 3)))
    with pytest.raises(ModelError, match="rows"):
        stats.partial_fit(np.zeros((100, 3)))
    with pytest.raises(ModelError, match="no images"):
        RowStats().fit([])
    with pytest.raises(ModelError, match="not a saved RowStats"):
        RowStats.from_dict({"mean": [0.0]})


# -- extract and its cache -----------------------------------------------------------


@pytest.fixture
def clips(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    makers = [_tone_in_noise, _chirp, _clicks]
    return [
        _write(tmp_path / "audio" / f"clip_{i}.wav", make(rng, 1.0))
        for i, make in enumerate(makers)
    ]


@pytest.fixture
def count_computations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of feature_image made by extract (in-process, n_jobs=1)."""
    calls: list[int] = []
    original = features.feature_image

    def counting(y, config=None):
        calls.append(len(y))
        return original(y, config)

    monkeypatch.setattr(features, "feature_image", counting)
    return calls


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npy"))


def test_extract_matches_feature_image_in_order(clips: list[Path]) -> None:
    images = extract(clips, cache=False, n_jobs=1, progress=False)
    assert len(images) == 3
    for path, image in zip(clips, images, strict=True):
        y, _ = soundfile.read(path, dtype="float32")
        np.testing.assert_array_equal(image, feature_image(y))


def test_extract_accepts_clip_records(clips: list[Path]) -> None:
    from asdflow.data import Clip

    records = [
        Clip(path=p, machine="fan", section="00", domain="source", split="train",
             label="normal", number=i)
        for i, p in enumerate(clips)
    ]  # fmt: skip
    by_record = extract(records, cache=False, n_jobs=1, progress=False)
    by_path = extract(clips, cache=False, n_jobs=1, progress=False)
    for a, b in zip(by_record, by_path, strict=True):
        np.testing.assert_array_equal(a, b)


def test_process_pool_gives_the_same_images(clips: list[Path], tmp_path: Path) -> None:
    pooled = extract(clips, cache=tmp_path / "cache", n_jobs=2, progress=False)
    assert len(_entries(tmp_path / "cache")) == 3  # the workers wrote the entries
    alone = extract(clips, cache=False, n_jobs=1, progress=False)
    for a, b in zip(pooled, alone, strict=True):
        # workers run single-threaded BLAS, which may add the N_BINS terms of the
        # mel and spectral sums in another order
        assert_close_per_row(a, b, np.float32, terms=N_BINS)


def test_second_run_reads_the_cache(clips, tmp_path, count_computations) -> None:
    cache = tmp_path / "cache"
    first = extract(clips, cache=cache, n_jobs=1, progress=False)
    assert len(count_computations) == 3 and len(_entries(cache)) == 3
    second = extract(clips, cache=cache, n_jobs=1, progress=False)
    assert len(count_computations) == 3  # nothing recomputed
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_default_cache_follows_the_environment(clips, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ASDFLOW_CACHE", str(tmp_path / "env-cache"))
    extract(clips[:1], n_jobs=1, progress=False)
    assert len(_entries(tmp_path / "env-cache" / "features")) == 1


def test_changed_file_is_recomputed(clips, tmp_path, rng, count_computations) -> None:
    cache = tmp_path / "cache"
    before = extract(clips, cache=cache, n_jobs=1, progress=False)
    _write(clips[1], _tone_in_noise(rng, 1.0))  # new content, same path and length
    stat = clips[1].stat()
    os.utime(clips[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = extract(clips, cache=cache, n_jobs=1, progress=False)
    assert len(count_computations) == 4  # only the changed file
    assert not np.array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def test_touched_or_moved_file_keeps_its_entry(clips, tmp_path, count_computations) -> None:
    # the key is the content, not the file's name or modification time
    cache = tmp_path / "cache"
    first = extract(clips, cache=cache, n_jobs=1, progress=False)
    stat = clips[0].stat()
    os.utime(clips[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    moved = clips[1].rename(tmp_path / "elsewhere.wav")
    again = extract([clips[0], moved, clips[2]], cache=cache, n_jobs=1, progress=False)
    assert len(count_computations) == 3  # nothing recomputed
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_changed_config_is_recomputed(clips, tmp_path, count_computations) -> None:
    cache = tmp_path / "cache"
    extract(clips, cache=cache, n_jobs=1, progress=False)
    small = FeatureConfig(n_mels=64)
    images = extract(clips, small, cache=cache, n_jobs=1, progress=False)
    assert len(count_computations) == 6
    assert images[0].shape == (94, 32) == (small.n_rows, 32)
    assert len(_entries(cache)) == 6  # both configurations stay cached
    padded = dataclasses.replace(CONFIG, n_samples=20000)
    with pytest.warns(UserWarning, match=r"3 of 3 clips were shorter .* were repeated"):
        assert extract(clips, padded, cache=cache, n_jobs=1, progress=False)[0].shape == (158, 40)
    assert len(count_computations) == 9


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), id="truncated"
        ),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(b"not a numpy file at all"), id="garbage"),
        pytest.param(lambda p: np.save(p, np.full((158, 63), np.nan, np.float32)), id="nan"),
        pytest.param(lambda p: np.save(p, np.zeros((158, 63), np.float64)), id="float64"),
        pytest.param(lambda p: np.save(p, np.zeros((157, 63), np.float32)), id="wrong-rows"),
    ],
)
def test_corrupt_entry_is_recomputed(clips, tmp_path, count_computations, damage) -> None:
    cache = tmp_path / "cache"
    good = extract(clips[:1], cache=cache, n_jobs=1, progress=False)[0]
    (entry,) = _entries(cache)
    damage(entry)
    again = extract(clips[:1], cache=cache, n_jobs=1, progress=False)[0]
    assert len(count_computations) == 2
    np.testing.assert_array_equal(again, good)
    np.testing.assert_array_equal(np.load(entry), good)  # the entry is repaired


def test_wrong_width_entry_is_recomputed_under_a_length_policy(
    clips, tmp_path, count_computations
) -> None:
    cache = tmp_path / "cache"
    config = FeatureConfig(n_samples=16000)
    good = extract(clips[:1], config, cache=cache, n_jobs=1, progress=False)[0]
    (entry,) = _entries(cache)
    np.save(entry, good[:, :-1])
    np.testing.assert_array_equal(
        extract(clips[:1], config, cache=cache, n_jobs=1, progress=False)[0], good
    )
    assert len(count_computations) == 2


def test_interrupted_write_leaves_no_entry(clips, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"

    def interrupted_save(file, array, allow_pickle=False):
        file.write(b"\x93NUMPY partial header")
        raise KeyboardInterrupt

    monkeypatch.setattr(features.np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        extract(clips, cache=cache, n_jobs=1, progress=False)
    assert list(cache.iterdir()) == []  # neither a half entry nor a temporary file
    monkeypatch.undo()
    images = extract(clips, cache=cache, n_jobs=1, progress=False)
    assert len(images) == 3 and len(_entries(cache)) == 3


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="nowhere.wav"):
        extract([tmp_path / "nowhere.wav"], cache=tmp_path / "cache", progress=False)


def test_bad_n_jobs_is_refused(clips: list[Path]) -> None:
    with pytest.raises(ValueError, match="n_jobs"):
        extract(clips, cache=False, n_jobs=0, progress=False)


# -- plot, benchmark, command line ---------------------------------------------------


@pytest.mark.parametrize("per_row", [True, False])
def test_plot_labels_every_row_group(training_images, per_row: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asdflow.plots import plot_feature_image

    image = training_images[0]
    if not per_row:
        image = RowStats().fit(training_images).transform(image)
    ax = plot_feature_image(image, title="one clip", per_row=per_row)
    assert [tick.get_text() for tick in ax.get_yticklabels()] == list(ROW_GROUPS)
    assert ax.get_title() == "one clip"
    seconds = image.shape[1] * CONFIG.hop_length / SR
    assert abs(ax.get_xlim()[1] - seconds) <= tolerance(np.float64, seconds, terms=4)
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="158 rows"):
        plot_feature_image(image[:100])


def test_bench_features_prints_and_returns_all_figures(capsys) -> None:
    from asdflow.bench import bench_features

    result = bench_features(n_clips=2, seconds=1.0, n_jobs=1, seed=0)
    out = capsys.readouterr().out
    for label in ("(a) naive", "(b) feature_image", "(c) extract", "ratio b/a"):
        assert label in out
    for key in ("naive", "shared", "extract", "cached"):
        assert np.isfinite(result[key]) and result[key] > 0
    assert result["ratio"] == pytest.approx(result["shared"] / result["naive"])
    assert result["cache_speedup"] == pytest.approx(result["cached"] / result["extract"])


def test_cli_bench_features(capsys) -> None:
    from asdflow.cli import main

    assert main(["bench", "features", "--clips", "2", "--seconds", "1", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "(a) naive" in out and "(b) feature_image" in out and "(c) extract" in out


def test_cli_features_pads_to_the_nominal_length(tmp_path, rng, monkeypatch, capsys) -> None:
    from asdflow.cli import main

    monkeypatch.setenv("ASDFLOW_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data" / "dev_data" / "raw" / "fan"
    names = {
        "train/section_00_source_train_normal_0001_noAttribute.wav": 1.0,
        "train/section_00_source_train_normal_0002_noAttribute.wav": 1.0,
        "train/section_00_target_train_normal_0001_noAttribute.wav": 0.8,
        "test/section_00_source_test_anomaly_0001_noAttribute.wav": 1.2,
    }
    for name, seconds in names.items():
        _write(folder / name, _tone_in_noise(rng, seconds))
    with pytest.warns(UserWarning, match=r"1 of 4 clips was longer .*; 1 was shorter"):
        assert main(["features", str(tmp_path / "data"), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "fan: 4 clips, images 158 x 32 (nominal length 1 s)" in out
    entries = _entries(tmp_path / "cache" / "features")
    assert len(entries) == 4
    assert {np.load(entry).shape for entry in entries} == {(158, 32)}
