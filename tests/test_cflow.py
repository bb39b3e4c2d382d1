"""Tests of asdflow.cflow: the pure score math, the fiber bank and the CFlow detector."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asdflow import cflow, storage
from asdflow.calibration import domain_threshold, holdout_split
from asdflow.cflow import (
    CFlowConfig,
    CFlowDetector,
    ScoreConstants,
    aggregate_map,
    anomaly_map,
    encode_fibers,
    fit_score_constants,
    interleave_scales,
    learning_rate_factor,
    log_likelihood_per_dim,
    probability_map,
)
from asdflow.errors import ModelError, ParameterError
from asdflow.tolerance import tolerance

# A tiny detector for the mechanics: 158 x 64 images give 20x8, 10x4 and 5x2
# feature maps with ResNet-18, i.e. 160 + 40 + 10 fibers per image.
TINY = CFlowConfig.quick(n_blocks=2, epochs=2, fiber_batch=64, lr=1e-3, aggregation="max")


def _images(rng: np.random.Generator, n: int, frames: int = 64, *, anomaly: bool = False):
    """Feature-image-like arrays: rows on very different scales, a steady hum, noise."""
    scale = np.geomspace(0.01, 1000.0, 158)[:, None]
    offset = np.linspace(-50.0, 50.0, 158)[:, None]
    out = []
    for _ in range(n):
        image = rng.normal(size=(158, frames))
        image[40:48] += 3.0
        if anomaly:
            image[100:110, frames // 3 : frames // 2] += 6.0
        out.append((offset + scale * image).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def train_images() -> list[np.ndarray]:
    return _images(np.random.default_rng(0), 24)


@pytest.fixture(scope="module")
def test_images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return _images(rng, 5) + _images(rng, 5, anomaly=True)


@pytest.fixture(scope="module")
def fitted(train_images: list[np.ndarray]) -> CFlowDetector:
    return CFlowDetector(TINY, device="cpu", progress=False).fit(train_images)


# -- pure math -------------------------------------------------------------------


def test_log_likelihood_per_dim_at_the_mode():
    z = torch.zeros(3, 5)
    log_det = torch.tensor([0.0, 5.0, -10.0])
    got = log_likelihood_per_dim(z, log_det)
    expected = -0.5 * math.log(2 * math.pi) + log_det / 5
    # float32: a constant, a log-determinant of at most 10 and a division by C
    atol = tolerance(torch.float32, magnitude=float(expected.abs().max()), terms=3)
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def test_learning_rate_schedule():
    total, warmup = 100, 10
    # float64 formulas of a few operations (a cosine among them) on numbers up to 1
    close = {"abs": tolerance(np.float64, terms=4), "rel": 0}
    assert learning_rate_factor(0, total, warmup) == pytest.approx(0.1, **close)
    assert learning_rate_factor(5, total, warmup) == pytest.approx(0.55, **close)
    assert learning_rate_factor(warmup, total, warmup) == pytest.approx(1.0, **close)
    half = pytest.approx((1 + 1e-3) / 2, **close)
    assert learning_rate_factor(55, total, warmup, min_factor=1e-3) == half
    assert learning_rate_factor(total, total, warmup, min_factor=1e-3) == pytest.approx(
        1e-3, **close
    )
    decay = [learning_rate_factor(s, total, warmup) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert learning_rate_factor(0, total, 0) == pytest.approx(1.0, **close)


@pytest.mark.parametrize("n_batches", [[2, 1], [55, 13, 3], [7, 7, 7], [1, 0, 4]])
def test_interleave_scales_spreads_every_scale(n_batches):
    order = interleave_scales(n_batches)
    assert len(order) == sum(n_batches)
    np.testing.assert_array_equal(np.bincount(order, minlength=len(n_batches)), n_batches)
    for scale, n in enumerate(n_batches):
        if n:
            positions = np.flatnonzero(order == scale) / len(order)
            # batch k sits near (k + 0.5) / n of the epoch
            np.testing.assert_allclose(positions, (np.arange(n) + 0.5) / n, atol=1.0 / n + 0.05)
    if n_batches == [2, 1]:
        np.testing.assert_array_equal(order, [0, 1, 0])


def test_probability_map_upsamples_bilinearly_and_sums_scales():
    probs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64) / 4.0
    log_p = [torch.log(probs) + 2.0, torch.full((1, 1, 1), -1.0)]
    got = probability_map(log_p, [2.0, -1.0], (3, 3))
    # scale 0: corners kept, centre = mean of the four; scale 1: exp(0) = 1 everywhere
    expected = torch.tensor([[[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]]]) / 4.0 + 1.0
    # float64: exp, log and a bilinear weighting of four values, then a sum of two scales
    atol = tolerance(torch.float64, magnitude=5.0, terms=6)
    torch.testing.assert_close(got, expected.double(), rtol=0, atol=atol)
    assert got.dtype == torch.float64
    # A position more likely than the constant counts as probability 1, not more.
    above = probability_map([torch.full((1, 1, 1), 800.0)], [0.0], (2, 2))
    assert torch.equal(above, torch.ones((1, 2, 2), dtype=torch.float64))


def test_score_constants_make_training_maps_non_negative():
    rng = np.random.default_rng(2)
    batches = []
    for frames, size in ((8, (158, 64)), (5, (158, 40))):
        log_p = [
            torch.from_numpy(rng.normal(-2.0, 0.5, (3, 20, frames))).float(),
            torch.from_numpy(rng.normal(-4.0, 1.0, (3, 10, -(-frames // 2)))).float(),
        ]
        batches.append((log_p, size))
    constants = fit_score_constants(batches)
    for s in range(2):
        assert constants.scale_max[s] == max(float(b[0][s].max()) for b in batches)
    maps = [anomaly_map(log_p, constants, size) for log_p, size in batches]
    # float64 throughout: map_max is the maximum of the very probability maps subtracted
    # from it, so the smallest anomaly is 0 up to the rounding of a 2-scale sum
    atol = tolerance(torch.float64, magnitude=constants.map_max, terms=2)
    assert min(float(m.min()) for m in maps) == pytest.approx(0.0, abs=atol)
    assert all(float(m.min()) >= -atol for m in maps)
    assert constants.map_max == max(
        float(probability_map(lp, constants.scale_max, sz).max()) for lp, sz in batches
    )


def test_anomaly_map_of_a_clip_does_not_depend_on_its_batch():
    rng = np.random.default_rng(3)
    log_p = [
        torch.from_numpy(rng.normal(-2, 1, (4, 5, 7))),
        torch.from_numpy(rng.normal(-3, 1, (4, 3, 4))),
    ]
    constants = ScoreConstants(scale_max=(0.0, -1.0), map_max=2.0)
    batch = anomaly_map(log_p, constants, (17, 30))
    for i in range(4):
        alone = anomaly_map([p[i : i + 1] for p in log_p], constants, (17, 30))
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=0)
    # lower likelihood somewhere means a higher anomaly map there
    worse = [p.clone() for p in log_p]
    worse[0][0, 2, 3] -= 5.0
    assert anomaly_map(worse, constants, (17, 30))[0].sum() > batch[0].sum()


def test_aggregate_map():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # small whole numbers: the maximum and the mean are exact in float32
    torch.testing.assert_close(aggregate_map(maps, "max"), torch.tensor([5.0, 1.0]), rtol=0, atol=0)
    torch.testing.assert_close(
        aggregate_map(maps, "mean"), torch.tensor([2.0, 1.0]), rtol=0, atol=0
    )
    with pytest.raises(ParameterError, match="aggregation"):
        aggregate_map(maps, "median")


# -- configuration -----------------------------------------------------------------


def test_config_defaults_follow_cflow_ad_and_quick_is_small():
    full = CFlowConfig()
    assert (full.backbone, full.weights, full.n_blocks, full.clamp) == (
        "wide_resnet50_2",
        "imagenet",
        8,
        1.9,
    )
    assert (full.fiber_batch, full.lr, full.min_lr_factor, full.cond_dim) == (256, 2e-4, 1e-3, 128)
    assert full.padding == "reflect"  # CFLOW-AD's encoder pads by reflection
    quick = CFlowConfig.quick()
    assert (quick.backbone, quick.weights, quick.padding) == ("resnet18", "random", "reflect")
    assert quick.epochs < full.epochs
    assert CFlowConfig.quick(epochs=2).epochs == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"aggregation": "median"}, "aggregation must be one of 'max', 'mean', got 'median'"),
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"fiber_batch": 0}, "fiber_batch must be a whole number >= 1"),
        ({"cond_dim": 126}, "cond_dim must be a whole number >= 4 and a multiple of 4, got 126"),
        ({"threshold_quantile": 1.0}, r"threshold_quantile must be a number in \(0, 1\), got 1.0"),
        ({"min_lr_factor": 0.0}, r"min_lr_factor must be a number in \(0, 1\]"),
        ({"n_blocks": 2.5}, "n_blocks must be a whole number >= 1, got 2.5"),
        ({"n_blocks": "8"}, r"n_blocks must be a whole number >= 1, got '8' \(str\)"),
        ({"lr": "fast"}, r"lr must be a number > 0, got 'fast' \(str\)"),
        ({"lr": float("nan")}, "lr must be a number > 0, got nan"),
        ({"epochs": True}, "epochs must be a whole number >= 1, got True"),
        ({"mixed_precision": "yes"}, "mixed_precision must be true or false"),
        ({"backbone": "vgg16"}, "backbone must be one of 'resnet18', 'wide_resnet50_2'"),
        ({"weights": 3}, "weights must be 'imagenet', 'random' or the path"),
        ({"seed": -1}, "seed must be a whole number >= 0, got -1"),
        ({"features": "mel"}, "features must be None, a FeatureConfig or a dict"),
        ({"padding": "circular"}, "padding must be one of 'reflect', 'zeros', got 'circular'"),
    ],
)
def test_config_rejects_bad_values_naming_field_value_and_range(bad, message):
    with pytest.raises(ParameterError, match=f"^CFlowConfig.{message}"):
        CFlowConfig(**bad)


def test_config_takes_json_values():
    """``asdflow train --set`` passes JSON: whole floats, lists and dicts become the declared types."""
    config = CFlowConfig.quick(
        n_blocks=4.0, lr=1, rows=["mel"], features={"n_mels": 128}, weights="random"
    )
    assert config.n_blocks == 4 and isinstance(config.n_blocks, int)
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.rows == ("mel",)
    from asdflow.features import FeatureConfig

    assert config.features == FeatureConfig(n_mels=128)
    assert CFlowConfig.from_dict(config.to_dict()) == config


def test_config_round_trip_with_feature_config():
    from asdflow.features import FeatureConfig

    config = CFlowConfig.quick(features=FeatureConfig(n_samples=32000), aggregation="mean")
    assert CFlowConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError, match="unknown CFlow settings"):
        CFlowConfig.from_dict({**config.to_dict(), "colour": "red"})


# -- the fiber bank -------------------------------------------------------------------


class _PoolEncoder(nn.Module):
    """A deterministic three-scale 'encoder': average pools of the first channel."""

    channels = (2, 3, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = x[:, :1]
        out = []
        for stride, c in zip((8, 16, 32), self.channels, strict=True):
            pooled = F.avg_pool2d(first, stride, ceil_mode=True)
            out.append(torch.cat([pooled * (k + 1) for k in range(c)], dim=1))
        return out


def test_fiber_bank_layout_with_two_image_sizes():
    from asdflow.flows import positional_encoding

    rng = np.random.default_rng(4)
    images = [rng.normal(size=(40, frames)).astype(np.float32) for frames in (72, 40, 72, 40, 72)]
    encoder = _PoolEncoder()
    bank = encode_fibers(encoder, images, cond_dim=8)
    assert bank.image_shapes == [im.shape for im in images]
    assert bank.map_shapes[0] == [(5, 9), (3, 5), (2, 3)]
    assert bank.map_shapes[1] == [(5, 5), (3, 3), (2, 2)]
    assert bank.n_fibers == [
        sum(h * w for h, w in (m[s] for m in bank.map_shapes)) for s in range(3)
    ]
    assert all(f.dtype == torch.float16 for f in bank.fibers)
    for i, image in enumerate(images):
        x = torch.from_numpy(image)[None, None].expand(1, 3, -1, -1)
        maps = encoder(x)
        for s in range(3):
            h, w = bank.map_shapes[i][s]
            start = bank.offsets[s][i]
            stored = bank.fibers[s][start : start + h * w].float()
            # the same pooling of the same image, rounded to float16 alike: identical
            expected = maps[s][0].permute(1, 2, 0).reshape(h * w, -1).half().float()
            torch.testing.assert_close(stored, expected, rtol=0, atol=0)
            cond = bank.cond_table[s][bank.cond_index[s][start : start + h * w]]
            pe = positional_encoding(h, w, 8, dtype=torch.float32)
            torch.testing.assert_close(cond, pe.permute(1, 2, 0).reshape(h * w, 8), rtol=0, atol=0)


# -- the detector ---------------------------------------------------------------------


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The clips ``fitted`` trained on and the clips it held out (feature images: all source)."""
    return holdout_split(["source"] * n, TINY.holdout, TINY.seed)


def test_fit_sets_learned_state(fitted: CFlowDetector, train_images):
    assert fitted.channels_ == [128, 256, 512]
    assert len(fitted.decoders_) == 3
    assert len(fitted.losses_) == TINY.epochs and all(np.isfinite(fitted.losses_))
    fit, held = _split(len(train_images))
    assert (fit.size, held.size) == (18, 6)  # a quarter held out
    assert fitted.train_scores_.shape == (18,) and fitted.holdout_scores_.shape == (6,)
    assert fitted.holdout_domains_.tolist() == ["source"] * 6
    assert np.all(fitted.holdout_scores_ >= 0)  # the constants come from these clips
    assert fitted.threshold_ == domain_threshold(
        fitted.holdout_scores_, fitted.holdout_domains_, quantile=0.9
    )
    assert len(fitted.constants_.scale_max) == 3


def test_score_of_a_clip_alone_equals_its_score_in_any_batch(fitted, test_images):
    together = fitted.score(test_images)
    reversed_batch = fitted.score(test_images[::-1])[::-1]
    alone = np.array([fitted.score([image])[0] for image in test_images])
    np.testing.assert_array_equal(alone, together)
    np.testing.assert_array_equal(reversed_batch, together)


def test_training_clips_score_as_during_fit(fitted, train_images):
    # fit scores the training clips from the fiber bank; score() re-runs the encoder
    fit, held = _split(len(train_images))
    trained = [train_images[i] for i in fit[:6]]
    np.testing.assert_array_equal(fitted.score(trained), fitted.train_scores_[:6])
    held_out = [train_images[i] for i in held]
    np.testing.assert_array_equal(fitted.score(held_out), fitted.holdout_scores_)


def test_anomaly_maps_shape_and_relation_to_scores(fitted, train_images, test_images):
    maps = fitted.anomaly_maps(np.stack(test_images))
    assert maps.shape == (len(test_images), 158, 64)
    assert maps.dtype == np.float32
    scores = fitted.score(test_images)
    # the maps are the float64 maps rounded to float32
    atol = tolerance(np.float32, magnitude=float(np.abs(scores).max()))
    np.testing.assert_allclose(maps.max(axis=(1, 2)), scores, rtol=0, atol=atol)
    # at least 0 on the held-out clips the constants come from, up to the float64 rounding of
    # the 3-scale sum and the float32 rounding of the maps
    _, held = _split(len(train_images))
    floor = tolerance(np.float32, magnitude=fitted.constants_.map_max, terms=3)
    assert fitted.anomaly_maps([train_images[i] for i in held]).min() >= -floor
    assert scores[5:].mean() > scores[:5].mean()  # the bright blob is found even so briefly trained
    np.testing.assert_array_equal(
        fitted.predict(test_images), (scores > fitted.threshold_).astype(int)
    )


def test_log_likelihood_maps_rebuild_the_anomaly_maps(fitted, test_images):
    maps = fitted.log_likelihood_maps(test_images)
    size = test_images[0].shape
    assert [tuple(m.shape) for m in maps] == [
        (len(test_images), h, w) for h, w in [(20, 8), (10, 4), (5, 2)]
    ]
    # the same float32 log-likelihoods through the same functions (float64 maps that
    # anomaly_maps rounds to float32): identical maps
    rebuilt = anomaly_map(maps, fitted.constants_, size).numpy().astype(np.float32)
    np.testing.assert_array_equal(rebuilt, fitted.anomaly_maps(test_images))
    # constants fitted on these maps (the official code's test-set maxima) give other scores
    official = fit_score_constants([(maps, size)])
    assert official != fitted.constants_
    with pytest.raises(ModelError, match="one size"):
        fitted.log_likelihood_maps([test_images[0], test_images[0][:, :40]])


def test_scores_of_clips_of_other_lengths(fitted, test_images):
    longer = _images(np.random.default_rng(5), 2, frames=96)
    scores = fitted.score([test_images[0], longer[0], test_images[1], longer[1]])
    # a clip's score does not depend on the clips scored with it: not even in the last bit
    np.testing.assert_array_equal(scores[[0, 2]], fitted.score(test_images[:2]))
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    with pytest.raises(ModelError, match="one size"):
        fitted.anomaly_maps([test_images[0], longer[0]])


def test_padding_reaches_the_encoder_and_changes_the_scores(train_images, test_images, tmp_path):
    config = CFlowConfig.quick(n_blocks=1, epochs=1, fiber_batch=64)
    reflect = CFlowDetector(config, device="cpu", progress=False).fit(train_images)
    zeros_config = dataclasses.replace(config, padding="zeros")
    zeros = CFlowDetector(zeros_config, device="cpu", progress=False).fit(train_images)
    assert reflect._encoder_module().padding == "reflect"
    assert zeros._encoder_module().padding == "zeros"
    # same weights, same decoder seed: only the padding differs, and the scores with it
    assert not np.allclose(reflect.score(test_images), zeros.score(test_images))
    loaded = CFlowDetector.load(zeros.save(tmp_path / "zeros.pt"), device="cpu", progress=False)
    assert loaded.config.padding == "zeros"
    np.testing.assert_array_equal(loaded.score(test_images), zeros.score(test_images))


def test_save_load_gives_identical_scores(fitted, test_images, tmp_path):
    path = fitted.save(tmp_path / "det.pt")
    loaded = CFlowDetector.load(path, device="cpu", progress=False)
    assert loaded.config == fitted.config
    assert loaded.threshold_ == fitted.threshold_
    assert loaded.constants_ == fitted.constants_
    np.testing.assert_array_equal(loaded.train_scores_, fitted.train_scores_)
    np.testing.assert_array_equal(loaded.score(test_images), fitted.score(test_images))
    # the file holds tensors and plain values only
    state = torch.load(path, weights_only=True)
    assert "encoder" not in " ".join(state["decoders"])
    assert state["versions"]["torch"] == str(torch.__version__)


def test_load_refuses_other_format_versions_and_foreign_files(fitted, tmp_path):
    path = fitted.save(tmp_path / "det.pt")
    state = torch.load(path, weights_only=True)
    state["format_version"] = cflow.FORMAT_VERSION + 1
    storage.save_state(state, tmp_path / "future.pt")  # a valid checksum: only the version is off
    with pytest.raises(ModelError, match="format version"):
        CFlowDetector.load(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.pt"):
        CFlowDetector.load(tmp_path / "junk.pt")
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a CFlow detector"):
        CFlowDetector.load(tmp_path / "other.pt")
    with pytest.raises(ModelError, match="does not exist"):
        CFlowDetector.load(tmp_path / "missing.pt")


def test_load_checks_the_recreated_encoder(fitted, test_images, tmp_path):
    path = fitted.save(tmp_path / "det.pt")
    state = torch.load(path, weights_only=True)
    state["encoder_fingerprint"] = "0" * 32
    storage.save_state(state, tmp_path / "tampered.pt")  # with a matching checksum
    loaded = CFlowDetector.load(tmp_path / "tampered.pt", progress=False)
    with pytest.raises(ModelError, match="differs"):
        loaded.score(test_images[:1])


@pytest.mark.slow
def test_resume_after_interruption_ends_like_an_uninterrupted_run(
    train_images, test_images, tmp_path
):
    config = CFlowConfig.quick(n_blocks=2, epochs=3, fiber_batch=64, lr=1e-3)
    reference = CFlowDetector(config, device="cpu", progress=False).fit(train_images)

    class Disconnect(Exception):
        pass

    def stop_after_first_epoch(epoch: int, loss: float) -> None:
        if epoch == 1:
            raise Disconnect

    checkpoint = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(Disconnect):
        CFlowDetector(config, device="cpu", progress=False).fit(
            train_images, checkpoint=checkpoint, callback=stop_after_first_epoch
        )
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    seen = []
    resumed = CFlowDetector(config, device="cpu", progress=False).fit(
        train_images, checkpoint=checkpoint, callback=lambda e, loss: seen.append(e)
    )
    assert seen == [2, 3]
    # the same operations in the same order on the same machine: identical to the last bit
    np.testing.assert_array_equal(resumed.losses_, reference.losses_)
    np.testing.assert_array_equal(resumed.score(test_images), reference.score(test_images))
    assert [p.name for p in checkpoint.parent.iterdir()] == ["checkpoint.pt"]  # no temp files left

    with pytest.raises(ModelError, match="other settings or training data"):
        CFlowDetector(config, device="cpu", progress=False).fit(
            train_images[:-1], checkpoint=checkpoint
        )


def test_non_finite_loss_stops_training_and_names_the_epoch(train_images, monkeypatch):
    real_loss = cflow.fiber_loss
    state = {"broken": False}

    def loss_that_breaks(z, log_det, loss=None):
        value = real_loss(z, log_det, loss)
        return value * float("nan") if state["broken"] else value

    def break_after_first_epoch(epoch: int, loss: float) -> None:
        state["broken"] = True

    monkeypatch.setattr(cflow.training, "fiber_loss", loss_that_breaks)
    with pytest.raises(ModelError, match="epoch 2 of 2"):
        CFlowDetector(TINY, device="cpu", progress=False).fit(
            train_images, callback=break_after_first_epoch
        )


def test_bad_inputs_are_refused(fitted, train_images):
    with pytest.raises(ModelError, match="not fitted"):
        CFlowDetector(TINY).score(train_images[:1])
    with pytest.raises(ModelError, match="no clips"):
        fitted.score([])
    broken = train_images[0].copy()
    broken[3, 4] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        fitted.score([broken])
    with pytest.raises(ModelError, match="158 rows"):
        fitted.score([np.zeros((100, 64), np.float32)])
    with pytest.raises(ModelError, match="shape"):
        fitted.score(np.zeros((158, 64), np.float32))
    with pytest.raises(ModelError, match="fewer than one batch"):
        CFlowDetector(TINY, progress=False).fit(train_images[:2])


# -- the synthetic factory, quick mode ---------------------------------------------------


@pytest.mark.slow
def test_quick_cflow_separates_anomalies_on_the_synthetic_factory(factory, tmp_path_factory):
    from asdflow import data, evaluation, features

    cache = tmp_path_factory.mktemp("cflow-features")
    config = CFlowConfig.quick()
    table = {}
    for machine in data.machines(factory):
        train = data.scan(factory, machines=[machine], split="train")
        test = data.scan(factory, machines=[machine], split="test")
        train_images = features.extract(train, cache=cache, progress=False)
        test_images = features.extract(test, cache=cache, progress=False)
        detector = CFlowDetector(config, device="cpu", progress=False).fit(train_images)
        maps = torch.from_numpy(detector.anomaly_maps(test_images))
        y = np.array([clip.is_anomaly for clip in test], dtype=int)
        domains = [clip.domain for clip in test]
        for how in ("max", "mean"):
            scores = aggregate_map(maps, how).numpy()
            table[machine, how] = (
                evaluation.domain_auc(y, scores, domains, "source"),
                evaluation.domain_auc(y, scores, domains, "target"),
                evaluation.auc(y, scores),
            )
        # the configured aggregation is what score() returns; the maps come back rounded
        # to float32 from float64, so each value is off by at most half a float32 unit
        scores = detector.score(test_images[:3])
        atol = tolerance(np.float32, magnitude=float(maps[:3].abs().max()))
        expected = aggregate_map(maps[:3].double(), config.aggregation).numpy()
        np.testing.assert_allclose(scores, expected, rtol=0, atol=atol)
    print("\nquick CFlow on the synthetic factory: AUC (source, target, all test clips)")
    for (machine, how), aucs in table.items():
        print(f"  {machine:8s} {how:4s} " + "  ".join(f"{v:.3f}" for v in aucs))
    best = max(table[m, config.aggregation][0] for m, how in table if how == config.aggregation)
    assert best >= 0.8


@pytest.mark.slow
def test_bench_train_reports_consistent_figures(capsys):
    from asdflow.bench import bench_train

    result = bench_train(n_clips=26, seconds=2.0, epochs=1, device="cpu")
    assert result["epochs"] == 1 and result["n_clips"] == 26 and result["frames"] == 63
    assert result["fit_s"] >= result["encode_s"] + result["train_s"]
    # 26 images of 158 x 63 with ResNet-18: (160 + 40 + 10) fibers each, whole batches of 256
    fibers_per_epoch = sum(n - n % 256 for n in (26 * 160, 26 * 40, 26 * 10))
    assert result["fibers_per_s"] == pytest.approx(fibers_per_epoch / result["train_s"])
    assert result["train_ms_per_clip"] == pytest.approx(1000 * result["train_s"] / 26)
    assert result["ratio"] == pytest.approx(
        result["naive_s"] / (result["encode_s"] + result["train_s"])
    )
    assert result["score_clips_per_s"] > 0
    assert "ratio" in capsys.readouterr().out


def test_nothing_held_out_fits_on_the_training_scores_and_saves(train_images, tmp_path):
    config = CFlowConfig.quick(n_blocks=1, epochs=1, fiber_batch=64, holdout=0.0)
    det = CFlowDetector(config, device="cpu", progress=False).fit(train_images[:12])
    assert det.holdout_scores_.size == 0 and det.train_scores_.size == 12
    assert det.threshold_ == domain_threshold(det.train_scores_, ["source"] * 12)
    loaded = CFlowDetector.load(det.save(tmp_path / "all.pt"), progress=False)
    assert loaded.holdout_scores_.size == 0 and loaded.threshold_ == det.threshold_
