"""Tests of asdflow.baseline: the DCASE 2024 autoencoder baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from asdflow import storage
from asdflow.baseline import (
    FORMAT_VERSION,
    SCORE_MODES,
    AEConfig,
    AENet,
    AutoencoderDetector,
    clip_vectors,
    frame_vectors,
    log_mel,
    mahalanobis_scores,
    residual_covariance,
)
from asdflow.data import Clip
from asdflow.errors import ModelError, ParameterError
from asdflow.evaluation import auc
from asdflow.files import TEMP_SUFFIX
from asdflow.tolerance import tolerance

SR = 16000


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: a tiny network on a busy 2-core machine trains much faster so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def machine_sound(rng: np.random.Generator, seconds: float, *, tone: bool = False) -> np.ndarray:
    """A 200 Hz hum in noise; the anomaly adds a loud 3 kHz tone."""
    t = np.arange(int(seconds * SR)) / SR
    y = 0.05 * rng.normal(size=t.size) + 0.1 * np.sin(2 * np.pi * rng.normal(200, 2) * t)
    if tone:
        y += 0.3 * np.sin(2 * np.pi * 3000 * t)
    return y.astype(np.float32)


# ---------------------------------------------------------------- features


@pytest.mark.parametrize("seconds", [10, 12])
def test_vector_shapes_of_dcase_clips(seconds):
    n = seconds * SR
    frames = 1 + n // 512  # centred frames, hop 512
    assert frames == {10: 313, 12: 376}[seconds]
    y = np.random.default_rng(0).normal(size=n).astype(np.float32)
    assert log_mel(y).shape == (128, frames)
    vectors = clip_vectors(y)
    assert vectors.shape == (frames - 4, 640)
    assert vectors.dtype == np.float32


def test_frame_vectors_layout():
    n_mels, n_time = 3, 8
    spectrogram = np.array([[100 * t + m for t in range(n_time)] for m in range(n_mels)], float)
    vectors = frame_vectors(spectrogram, n_frames=5)
    assert vectors.shape == (4, 15)
    for i in range(4):
        for t in range(5):
            # block t of vector i is frame i + t
            np.testing.assert_array_equal(vectors[i, 3 * t : 3 * t + 3], spectrogram[:, i + t])
    assert frame_vectors(spectrogram[:, :4], n_frames=5).shape == (0, 15)


def test_log_mel_is_ten_log10_of_floored_power_mel():
    y = np.random.default_rng(1).normal(size=SR).astype(np.float32)
    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=512, n_mels=128)
    expected = 10 * np.log10(np.maximum(mel, sys.float_info.epsilon))
    # float32 mel energies in dB: both sides round to float32 around values up to |dB|
    atol = tolerance(np.float32, magnitude=float(np.abs(expected).max()), terms=2)
    np.testing.assert_allclose(log_mel(y), expected, rtol=0, atol=atol)
    silent = log_mel(np.zeros(SR, dtype=np.float32))
    floor = 10 * np.log10(sys.float_info.epsilon)  # -156.5 dB, rounded to float32
    np.testing.assert_allclose(silent, floor, rtol=0, atol=tolerance(np.float32, abs(floor)))


# ---------------------------------------------------------------- network and statistics


def test_network_layout():
    net = AENet()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    widths = [linears[0].in_features] + [m.out_features for m in linears]
    assert widths == [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 9
    assert all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)
    layers = list(net.layers)
    assert isinstance(layers[-1], nn.Linear)  # no normalisation or ReLU after the output
    assert sum(isinstance(m, nn.ReLU) for m in layers) == 9
    assert net(torch.zeros(4, 640)).shape == (4, 640)


def test_mahalanobis_by_hand():
    r = np.array([[1.0, 2.0], [3.0, 0.0]])
    identity = np.eye(2)
    scaled = np.diag([0.25, 4.0])
    # identity: 5 and 9; scaled: 0.25 + 16 = 16.25 and 2.25. Smaller of each.
    np.testing.assert_allclose(mahalanobis_scores(r, [identity, scaled]), [5.0, 2.25])


def test_mahalanobis_equals_official_double_average():
    """The official score averages delta P delta^T over both axes: that is mean(delta)^T P mean(delta)."""
    rng = np.random.default_rng(2)
    delta = rng.normal(size=(40, 6))
    a = rng.normal(size=(6, 6))
    precision = a @ a.T + np.eye(6)
    official = np.mean(delta @ precision @ delta.T)
    ours = mahalanobis_scores(delta.mean(axis=0, keepdims=True), [precision])[0]
    # float64, the same sum in another order: quadratic forms of 6 x 6 products of size
    # |delta|^2 |precision|, averaged over 40 x 40 pairs
    magnitude = float(np.abs(delta).max() ** 2 * np.abs(precision).max())
    atol = tolerance(np.float64, magnitude, terms=delta.shape[1] ** 2 + delta.shape[0] ** 2)
    assert ours == pytest.approx(official, rel=0, abs=atol)


def test_residual_covariance():
    blocks = np.random.default_rng(3).normal(size=(50, 4))
    cov = np.cov(blocks, rowvar=False)
    np.testing.assert_array_equal(residual_covariance(blocks), cov)  # np.cov itself
    ridged = residual_covariance(blocks, ridge=0.5)
    # float64: the ridge added to values of size |cov| and subtracted again
    atol = tolerance(np.float64, magnitude=float(np.abs(ridged).max()), terms=2)
    np.testing.assert_allclose(ridged - cov, 0.5 * np.mean(np.diag(cov)) * np.eye(4), atol=atol)


def test_config_checks():
    assert AEConfig().input_dim == 640
    assert AEConfig.quick().epochs < AEConfig().epochs == 100
    with pytest.raises(ParameterError, match="AEConfig.score_mode must be one of 'mse', "):
        AEConfig(score_mode="l1")
    with pytest.raises(ParameterError, match=r"validation_split must be a number in \[0, 1\)"):
        AEConfig(validation_split=1.0)
    with pytest.raises(ParameterError, match="AEConfig.batch_size must be a whole number >= 2"):
        AEConfig(batch_size=1)
    with pytest.raises(ParameterError, match=r"AEConfig.epochs .* got '20' \(str\)"):
        AEConfig(epochs="20")
    with pytest.raises(ParameterError, match="AEConfig.n_hidden must be a whole number >= 0"):
        AEConfig(n_hidden=1.5)
    with pytest.raises(ParameterError, match="AEConfig.lr must be a number > 0, got 0"):
        AEConfig(lr=0)
    assert AEConfig.from_dict(AEConfig.quick().to_dict()) == AEConfig.quick()
    json_like = AEConfig(epochs=20.0, lr=1)  # what JSON may give for --set
    assert isinstance(json_like.epochs, int) and isinstance(json_like.lr, float)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, list[Clip]]:
    """A tiny machine in the DCASE layout: 1-s wav files, normal and with a loud tone."""
    root = tmp_path_factory.mktemp("ae") / "dev_data" / "raw" / "fan"
    rng = np.random.default_rng(4)
    out: dict[str, list[Clip]] = {"train": [], "test": []}
    plan = [("train", "source", "normal", 10), ("train", "target", "normal", 3)]
    plan += [("test", d, label, 4) for d in ("source", "target") for label in ("normal", "anomaly")]
    for split, domain, label, count in plan:
        for i in range(count):
            name = f"section_00_{domain}_{split}_{label}_{i:04d}_noAttribute.wav"
            path = root / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, machine_sound(rng, 1.0, tone=label == "anomaly"), SR, subtype="FLOAT")
            out[split].append(Clip(path, "fan", "00", domain, split, label, i))
    return out


@pytest.fixture(scope="module")
def detector(clips) -> AutoencoderDetector:
    # 13 one-second clips give about 330 training vectors: batches of 32 for enough steps.
    config = AEConfig.quick(batch_size=32)
    return AutoencoderDetector(config, progress=False).fit(clips["train"])


def test_fit_records_training(detector):
    cfg = detector.config
    assert len(detector.losses_) == len(detector.val_losses_) == cfg.epochs
    assert detector.losses_[-1] < detector.losses_[0]
    assert detector.precision_source_.shape == detector.precision_target_.shape == (128, 128)
    # Three target clips: the target covariance is its own, not the source one.
    assert not np.allclose(detector.precision_source_, detector.precision_target_)
    # 2 of the 10 source clips (holdout 0.25) and 2 of the 3 target clips (holdout_target 0.5,
    # rounded) are not trained on.
    assert sorted(detector.holdout_domains_.tolist()) == ["source"] * 2 + ["target"] * 2
    for mode in SCORE_MODES:
        assert detector.train_scores_[mode].shape == (9,)
        held = detector.holdout_scores_[mode]
        assert held.shape == (4,)
        assert np.mean(held <= detector.thresholds_[mode]) >= 0.5


@pytest.mark.parametrize("mode", SCORE_MODES)
def test_loud_tone_scores_higher(detector, clips, mode):
    test = clips["test"]
    scores = detector.score(test, score_mode=mode)
    labels = [int(c.label == "anomaly") for c in test]
    assert scores.shape == (16,) and np.all(np.isfinite(scores))
    # 9 one-second training clips (4 are held out): the tone is found, not always perfectly.
    assert auc(labels, scores) >= 0.85
    decisions = detector.predict(test, score_mode=mode)
    np.testing.assert_array_equal(decisions, scores > detector.thresholds_[mode])
    assert decisions.dtype == np.int64


def test_default_mode_and_vectors_input(detector, clips):
    test = clips["test"]
    from asdflow.data import load_audio

    vectors = [clip_vectors(load_audio(c.path), detector.config) for c in test]
    np.testing.assert_array_equal(detector.score(test), detector.score(vectors, score_mode="mse"))
    assert detector.threshold_ == detector.thresholds_["mse"]


def test_mse_score_is_mean_squared_error(detector, clips):
    from asdflow.data import load_audio

    x = torch.from_numpy(clip_vectors(load_audio(clips["test"][0].path)))
    with torch.no_grad():
        expected = float(torch.mean((detector.net_(x) - x).double() ** 2))
    # the same float32 residuals, squared and averaged in float64 by numpy and by torch
    atol = tolerance(np.float64, magnitude=expected, terms=x.numel())
    assert detector.score(clips["test"][:1])[0] == pytest.approx(expected, rel=0, abs=atol)


def test_save_load_identical_scores(detector, clips, tmp_path):
    path = detector.save(tmp_path / "ae.pt")
    loaded = AutoencoderDetector.load(path, progress=False)
    assert loaded.config == detector.config
    assert loaded.thresholds_ == detector.thresholds_
    for mode in SCORE_MODES:
        np.testing.assert_array_equal(
            loaded.score(clips["test"], score_mode=mode),
            detector.score(clips["test"], score_mode=mode),
        )


def test_load_refuses_other_files(detector, tmp_path):
    path = detector.save(tmp_path / "ae.pt")
    state = torch.load(path, weights_only=True)
    state["format_version"] = FORMAT_VERSION + 1
    storage.save_state(state, tmp_path / "future.pt")  # a valid checksum: only the version is off
    with pytest.raises(ModelError, match="format version"):
        AutoencoderDetector.load(tmp_path / "future.pt")
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not an autoencoder"):
        AutoencoderDetector.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a readable"):
        AutoencoderDetector.load(tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="does not exist"):
        AutoencoderDetector.load(tmp_path / "missing.pt")


def test_seeded_training_is_reproducible():
    rng = np.random.default_rng(5)
    vectors = [rng.normal(size=(30, 640)).astype(np.float32) for _ in range(4)]
    config = AEConfig.quick(epochs=2)

    def losses(seed: int) -> list[float]:
        cfg = AEConfig(**{**config.to_dict(), "seed": seed})
        return AutoencoderDetector(cfg, progress=False).fit(vectors).losses_

    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_misuse_raises(detector):
    with pytest.raises(ModelError, match="not fitted"):
        AutoencoderDetector(AEConfig.quick()).score([np.zeros((3, 640), np.float32)])
    with pytest.raises(ParameterError, match="score_mode"):
        detector.score([np.zeros((3, 640), np.float32)], score_mode="l2")
    with pytest.raises(ModelError, match="640"):
        detector.score([np.zeros((3, 128), np.float32)])
    with pytest.raises(ParameterError, match="domains"):
        AutoencoderDetector(AEConfig.quick()).fit(
            [np.zeros((3, 640), np.float32)], domains=["source", "target"]
        )


def test_written_file_is_readable_without_pickled_code(detector, tmp_path):
    path = detector.save(tmp_path / "ae.pt")
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == FORMAT_VERSION
    assert set(state["thresholds"]) == set(SCORE_MODES)
    assert state["machine"] == "fan"
    assert state["checksum"] == storage.payload_checksum(state)
    assert not list(Path(tmp_path).glob(f".*{TEMP_SUFFIX}"))
