"""Tests of the two ablation options of CFlowConfig: kept row groups and positional encoding off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asdflow.cflow import CFlowConfig, CFlowDetector, encode_fibers
from asdflow.errors import ModelError, ParameterError
from asdflow.features import ROW_GROUPS, FeatureConfig
from asdflow.tolerance import tolerance

# Tiny and fast: one epoch of 32-fiber batches on 12 images of 158 x 40 (ResNet-18:
# 20x5, 10x3 and 5x2 feature maps per image, or 16x5, 8x3, 4x2 on the 128 mel rows).
TINY = CFlowConfig.quick(n_blocks=2, epochs=1, fiber_batch=32, lr=1e-3, aggregation="max")
FRAMES = 40


def _images(seed: int, n: int, *, rows: int = 158) -> list[np.ndarray]:
    """Feature-image-like arrays: rows on different scales, a hum in the mel rows, noise."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(0.01, 1000.0, rows)[:, None]
    out = []
    for _ in range(n):
        image = rng.normal(size=(rows, FRAMES))
        image[40:48] += 3.0
        out.append((scale * image).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def train_images() -> list[np.ndarray]:
    return _images(0, 12)


@pytest.fixture(scope="module")
def test_images() -> list[np.ndarray]:
    return _images(1, 3)


@pytest.fixture(scope="module")
def mel_only(train_images) -> CFlowDetector:
    config = CFlowConfig.quick(**{**TINY.to_dict(), "rows": ("mel",)})
    return CFlowDetector(config, device="cpu", progress=False).fit(train_images)


@pytest.fixture(scope="module")
def no_pe_checkpoint(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no_pe") / "checkpoint.pt"


@pytest.fixture(scope="module")
def no_pe(train_images, no_pe_checkpoint) -> CFlowDetector:
    config = CFlowConfig.quick(**{**TINY.to_dict(), "positional_encoding": False})
    detector = CFlowDetector(config, device="cpu", progress=False)
    return detector.fit(train_images, checkpoint=no_pe_checkpoint)


# -- configuration ---------------------------------------------------------------


def test_defaults_are_the_reports_design():
    for config in (CFlowConfig(), CFlowConfig.quick()):
        assert config.rows is None and config.positional_encoding is True
        np.testing.assert_array_equal(config.row_indices(158), np.arange(158))


def test_rows_are_normalised_and_checked():
    assert CFlowConfig.quick(rows=["mel", "zcr"]).rows == ("mel", "zcr")  # JSON lists, --set
    assert CFlowConfig.quick(rows="mel").rows == ("mel",)
    for bad in [(), ("mel", "mel"), ("mfcc",), 3, ["mel", 1]]:
        with pytest.raises(ParameterError, match="CFlowConfig.rows"):
            CFlowConfig.quick(rows=bad)


def test_row_indices_follow_the_image_order_not_the_given_order():
    zcr, mel = ROW_GROUPS["zcr"], ROW_GROUPS["mel"]
    got = CFlowConfig.quick(rows=("zcr", "mel")).row_indices(158)
    np.testing.assert_array_equal(got, np.r_[mel.start : mel.stop, zcr.start : zcr.stop])
    small = FeatureConfig(n_mels=64)  # 94 rows: the groups move with the recipe
    got = CFlowConfig.quick(rows=("chroma",), features=small).row_indices(small.n_rows)
    np.testing.assert_array_equal(got, np.arange(64, 76))
    with pytest.raises(ModelError, match="158 rows"):
        CFlowConfig.quick(rows=("mel",)).row_indices(94)


def test_config_round_trip_keeps_the_ablation_options():
    config = CFlowConfig.quick(rows=("chroma", "tonnetz"), positional_encoding=False)
    again = CFlowConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.rows, tuple)
    # files store tuples as lists (torch.load(weights_only=True), JSON run records)
    as_stored = {**config.to_dict(), "rows": list(config.rows)}
    assert CFlowConfig.from_dict(as_stored) == config
    # a file written before the options existed reads as the report's design
    old = {k: v for k, v in config.to_dict().items() if k not in ("rows", "positional_encoding")}
    assert CFlowConfig.from_dict(old) == CFlowConfig.quick()


# -- rows ------------------------------------------------------------------------


def test_mel_only_maps_cover_the_kept_rows(mel_only, test_images):
    maps = mel_only.anomaly_maps(test_images)
    assert maps.shape == (len(test_images), 128, FRAMES)
    assert mel_only.n_rows_ == 158
    scores = mel_only.score(test_images)
    # the maps are the float64 maps rounded to float32
    atol = tolerance(np.float32, magnitude=float(np.abs(scores).max()))
    np.testing.assert_allclose(maps.max(axis=(1, 2)), scores, rtol=0, atol=atol)
    with pytest.raises(ModelError, match="158 rows"):
        mel_only.score([im[:128] for im in test_images])


def test_row_selection_equals_training_on_the_cut_images(mel_only, train_images, test_images):
    # Standardising per row commutes with cutting rows, so a detector of all
    # rows trained on images cut to the mel rows must be the same detector.
    keep = ROW_GROUPS["mel"]
    cut = CFlowDetector(TINY, device="cpu", progress=False).fit([im[keep] for im in train_images])
    np.testing.assert_array_equal(cut.train_scores_, mel_only.train_scores_)
    np.testing.assert_array_equal(
        cut.anomaly_maps([im[keep] for im in test_images]), mel_only.anomaly_maps(test_images)
    )


def test_save_load_keeps_rows_and_positional_encoding(mel_only, no_pe, test_images, tmp_path):
    for detector in (mel_only, no_pe):
        path = detector.save(tmp_path / "det.pt")
        stored = torch.load(path, weights_only=True)["config"]
        assert stored["rows"] == (None if detector.config.rows is None else ["mel"])
        assert stored["positional_encoding"] == detector.config.positional_encoding
        loaded = CFlowDetector.load(path, device="cpu", progress=False)
        assert loaded.config == detector.config
        np.testing.assert_array_equal(
            loaded.anomaly_maps(test_images), detector.anomaly_maps(test_images)
        )


@pytest.mark.parametrize("change", [{"positional_encoding": True}, {"rows": ("mel",)}])
def test_a_checkpoint_of_other_ablation_settings_is_refused(
    no_pe, no_pe_checkpoint, train_images, change
):
    assert no_pe_checkpoint.is_file()
    other = CFlowConfig.quick(**{**no_pe.config.to_dict(), **change})
    detector = CFlowDetector(other, device="cpu", progress=False)
    with pytest.raises(ModelError, match="other settings"):
        detector.fit(train_images, checkpoint=no_pe_checkpoint)


# -- positional encoding -----------------------------------------------------------


def test_without_positional_encoding_the_condition_is_zero(no_pe, train_images):
    images = no_pe._standardise(train_images[:2])
    bank = encode_fibers(no_pe._encoder_module(), images, cond_dim=128, positional=False)
    for table in bank.cond_table:
        assert table.shape[1] == 128 and float(table.abs().max()) == 0.0
    with_pe = encode_fibers(no_pe._encoder_module(), images, cond_dim=128)
    assert float(with_pe.cond_table[0].abs().max()) > 0.5


def test_without_positional_encoding_log_p_ignores_the_position(no_pe, train_images):
    images = no_pe._standardise(train_images[:2])
    encoder = no_pe._encoder_module()
    zeros = encode_fibers(encoder, images, cond_dim=128, positional=False)
    pe = encode_fibers(encoder, images, cond_dim=128)
    fibers, index = zeros.fibers[0], zeros.cond_index[0]
    moved = index[torch.randperm(index.numel(), generator=torch.Generator().manual_seed(0))]
    # the detector's own conditions: moving every fiber elsewhere changes nothing
    torch.testing.assert_close(
        no_pe._decode(0, fibers, zeros.cond_table[0], moved),
        no_pe._decode(0, fibers, zeros.cond_table[0], index),
        rtol=0,
        atol=0,
    )
    # the same decoders do read a condition when they are given one
    assert not torch.allclose(
        no_pe._decode(0, fibers, pe.cond_table[0], moved),
        no_pe._decode(0, fibers, pe.cond_table[0], index),
    )
    # and the scoring path conditions on zeros too: its maps are those of the zero table
    log_p, _, _ = next(no_pe._log_p_batches(images[:1]))
    h, w = zeros.map_shapes[0][0]
    expected = no_pe._decode(0, fibers[: h * w], zeros.cond_table[0], index[: h * w])
    torch.testing.assert_close(log_p[0][0], expected.reshape(h, w), rtol=0, atol=0)
