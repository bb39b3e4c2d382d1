"""Detectors against hostile inputs: damaged files, wrong machine types, bad training data.

Each test gives one failure the way a user meets it (a file damaged on disk,
a checkpoint cut short by a full disk, the clips of another machine, silent
recordings, an encoder without its weights) and checks the error class, that
the message names the file and says what to do, and that nothing is lost.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asdflow import cflow, storage
from asdflow.baseline import AEConfig, AutoencoderDetector
from asdflow.cflow import CFlowConfig, CFlowDetector
from asdflow.data import Clip
from asdflow.errors import ModelError, ParameterError
from asdflow.files import TEMP_SUFFIX

SR = 16000
N = 2 * SR  # samples per clip
# Tiny: 2-s clips give 158 x 63 feature images (hop 512), i.e. 160 + 40 + 10 fibers each with
# ResNet-18 (1-s clips, 32 frames, are too narrow for the reflect-padded encoder).
TINY = CFlowConfig.quick(n_blocks=1, epochs=1, fiber_batch=32, lr=1e-3, aggregation="max")
TINY_AE = AEConfig.quick(epochs=2, batch_size=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny networks on a busy machine train faster so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_clips(
    root: Path, machine: str, count: int, *, silent: bool = False, seed: int = 0
) -> list[Clip]:
    """``count`` 2-s training clips of ``machine`` in the DCASE layout under ``root``."""
    folder = root / "dev_data" / "raw" / machine / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(N) / SR
    clips = []
    for i in range(count):
        if silent:
            y = np.zeros(N, dtype=np.float32)
        else:
            hum = 0.1 * np.sin(2 * np.pi * rng.normal(200, 2) * t)
            y = (0.05 * rng.normal(size=N) + hum).astype(np.float32)
        path = folder / f"section_00_source_train_normal_{i:04d}_noAttribute.wav"
        sf.write(path, y, SR, subtype="FLOAT")
        clips.append(Clip(path, machine, "00", "source", "train", "normal", i))
    return clips


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, list[Clip]]:
    root = tmp_path_factory.mktemp("hostile")
    return {
        "fan": _write_clips(root, "fan", 8),
        "valve": _write_clips(root, "valve", 2, seed=1),
        "silent": _write_clips(tmp_path_factory.mktemp("silent"), "fan", 3, silent=True),
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def fan_cflow(data, cache) -> CFlowDetector:
    return CFlowDetector(TINY, device="cpu", cache=cache, progress=False).fit(data["fan"])


@pytest.fixture(scope="module")
def fan_ae(data) -> AutoencoderDetector:
    return AutoencoderDetector(TINY_AE, device="cpu", progress=False).fit(data["fan"])


@pytest.fixture(scope="module")
def files(fan_cflow, fan_ae, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    return {"cflow": fan_cflow.save(folder / "cflow.pt"), "ae": fan_ae.save(folder / "ae.pt")}


LOADERS = {"cflow": CFlowDetector.load, "ae": AutoencoderDetector.load}


# -- 1. integrity ------------------------------------------------------------------


def _damaged(raw: bytes, how: str) -> bytes:
    middle = len(raw) // 2
    if how == "zero 4 KB":
        return raw[:middle] + bytes(4096) + raw[middle + 4096 :]
    if how == "flip 64 bytes":
        flipped = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
        return raw[:middle] + flipped + raw[middle + 64 :]
    return raw[:middle]  # truncated


@pytest.mark.parametrize("kind", ["cflow", "ae"])
@pytest.mark.parametrize("how", ["zero 4 KB", "flip 64 bytes", "truncate"])
def test_a_damaged_detector_file_is_refused(files, kind, how, tmp_path):
    path = tmp_path / files[kind].name
    path.write_bytes(_damaged(files[kind].read_bytes(), how))
    with pytest.raises(ModelError) as info:
        LOADERS[kind](path, progress=False)
    message = str(info.value)
    assert str(path) in message and "train it again" in message
    if how == "truncate":  # fails while unzipping
        assert "truncated or damaged" in message
    else:  # the middle of the file is tensor data: it unpacks, and the checksum catches it
        assert "is damaged (checksum mismatch)" in message
    # the intact file still loads
    assert LOADERS[kind](files[kind], progress=False).machine_ == "fan"


def test_the_checksum_covers_every_value_and_ignores_order_and_containers():
    state = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": [1, 2.5, None, "x"]}
    same = {"b": (np.int64(1), np.float64(2.5), None, "x"), "a": state["a"].clone()}
    assert storage.payload_checksum(state) == storage.payload_checksum(same)
    assert storage.payload_checksum({**state, storage.CHECKSUM_KEY: "ignored"}) == (
        storage.payload_checksum(state)
    )
    changes = [
        {**state, "a": state["a"].reshape(3, 2)},  # same bytes, other shape
        {**state, "a": state["a"].float()},  # same values, other dtype
        {**state, "b": [1, 2.5000000000000004, None, "x"]},  # one float64 unit
        {**state, "b": [True, 2.5, None, "x"]},  # True is not 1
    ]
    one_bit = state["a"].clone()
    one_bit.view(torch.int16)[0, 0] ^= 1
    changes.append({**state, "a": one_bit})
    for changed in changes:
        assert storage.payload_checksum(changed) != storage.payload_checksum(state)


def test_a_file_without_checksum_is_refused(files, tmp_path):
    state = torch.load(files["ae"], weights_only=True)
    del state[storage.CHECKSUM_KEY]
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(ModelError, match="has no checksum.*train it again"):
        AutoencoderDetector.load(tmp_path / "old.pt")


# -- 6. atomic writes with the umask's permissions ------------------------------------


def test_detector_files_get_the_umask_permissions_and_leave_no_temporary_file(fan_ae, tmp_path):
    previous = os.umask(0o027)
    try:
        path = fan_ae.save(tmp_path / "ae.pt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640  # not mkstemp's 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["ae.pt"]
    assert not list(tmp_path.glob(f".*{TEMP_SUFFIX}"))


# -- 2. machine types ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cflow", "ae"])
def test_the_machine_type_is_recorded_saved_and_checked_at_load(files, kind):
    detector = LOADERS[kind](files[kind], machine="fan", progress=False)
    assert detector.machine_ == "fan"
    assert torch.load(files[kind], weights_only=True)["machine"] == "fan"
    with pytest.raises(ModelError, match=f"{files[kind]} was trained on fan, not valve"):
        LOADERS[kind](files[kind], machine="valve", progress=False)


def test_clips_of_another_machine_are_refused_at_scoring(fan_cflow, fan_ae, data):
    for detector in (fan_cflow, fan_ae):
        with pytest.raises(ModelError) as info:
            detector.score(data["fan"][:1] + data["valve"][:1])
        message = str(info.value)
        assert "1 of the 2 clips are of valve" in message
        assert str(data["valve"][0].path) in message
        assert "trained on fan" in message
    # the clips of its own machine type still score
    assert np.all(np.isfinite(fan_ae.score(data["fan"][:2])))


def test_training_clips_of_several_machines_are_refused(data):
    mixed = data["fan"][:4] + data["valve"]
    for detector in (
        CFlowDetector(TINY, device="cpu", progress=False),
        AutoencoderDetector(TINY_AE, device="cpu", progress=False),
    ):
        with pytest.raises(ParameterError, match=r"2 machine types \(fan, valve\).*one detector"):
            detector.fit(mixed)


def test_a_detector_trained_on_arrays_has_no_machine_type(tmp_path):
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=(20, 640)).astype(np.float32) for _ in range(4)]
    detector = AutoencoderDetector(AEConfig.quick(epochs=1), progress=False).fit(vectors)
    assert detector.machine_ is None
    path = detector.save(tmp_path / "ae.pt")
    assert AutoencoderDetector.load(path, progress=False).machine_ is None
    with pytest.raises(ModelError, match="records no machine type"):
        AutoencoderDetector.load(path, machine="fan", progress=False)


# -- 3. non-finite training results ---------------------------------------------------


class _Unscaled(torch.nn.Module):
    """An encoder whose features are 2000 times too large, as a ResNet without its weights."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [2000.0 * f for f in self.encoder(x)]


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(158, 40)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("unscaled", [True, False])
def test_non_finite_training_scores_fail_at_fit(monkeypatch, unscaled, tmp_path):
    real_build, real_log_p = cflow.build_encoder, cflow.log_likelihood_per_dim
    if unscaled:
        monkeypatch.setattr(
            cflow.detector,
            "build_encoder",
            lambda config, progress=False: _Unscaled(real_build(config)),
        )

    def overflowing(z, log_det):
        # what the flows give once |z|^2 overflows: -inf, and inf - inf = nan further on
        return torch.full_like(real_log_p(z, log_det), float("-inf"))

    monkeypatch.setattr(cflow.detector, "log_likelihood_per_dim", overflowing)
    detector = CFlowDetector(CFlowConfig.quick(n_blocks=1, epochs=1, fiber_batch=32))
    detector.progress = False
    with pytest.raises(ModelError) as info:
        detector.fit(_images(6))
    message = str(info.value)
    assert "are not finite" in message and "train again" in message
    if unscaled:
        assert "encoder features up to" in message
        assert "without its pretrained weights (weights='random')" in message
        assert "weights='imagenet'" in message
    else:
        assert "lower the learning rate" in message
    assert not hasattr(detector, "threshold_")  # not fitted, nothing to save
    with pytest.raises(ModelError, match="not fitted"):
        detector.save(tmp_path / "cflow.pt")
    assert not (tmp_path / "cflow.pt").exists()


def test_non_finite_scores_are_refused_at_scoring(fan_cflow, data, monkeypatch):
    monkeypatch.setattr(
        cflow.detector,
        "log_likelihood_per_dim",
        lambda z, log_det: torch.full((z.shape[0],), np.nan),
    )
    with pytest.raises(ModelError, match="non-finite scores to 2 of 2 clips"):
        fan_cflow.score(data["fan"][:2])


def test_non_finite_autoencoder_scores_fail_at_fit(monkeypatch):
    from asdflow import baseline

    monkeypatch.setattr(
        baseline, "mahalanobis_scores", lambda means, precisions: np.full(len(means), np.nan)
    )
    rng = np.random.default_rng(1)
    vectors = [rng.normal(size=(20, 640)).astype(np.float32) for _ in range(4)]
    detector = AutoencoderDetector(AEConfig.quick(epochs=1), progress=False)
    with pytest.raises(ModelError, match=r"mahalanobis training scores \(4 of 4\).*not finite"):
        detector.fit(vectors)
    assert not hasattr(detector, "thresholds_")


# -- 4. silent training clips --------------------------------------------------------


def test_silent_training_clips_are_refused_by_both_detectors(data, cache):
    folder = data["silent"][0].path.parent
    for detector in (
        CFlowDetector(TINY, device="cpu", cache=cache, progress=False),
        AutoencoderDetector(TINY_AE, device="cpu", progress=False),
    ):
        with pytest.raises(ModelError) as info:
            detector.fit(data["silent"])
        message = str(info.value)
        assert "the 3 training clips of fan are silent" in message
        assert f"check the data folder {folder}" in message
        assert not hasattr(detector, "machine_")


def test_constant_arrays_are_refused():
    images = [np.full((158, 40), -100.0, dtype=np.float32) for _ in range(4)]
    with pytest.raises(ModelError, match="4 training arrays are constant"):
        CFlowDetector(TINY, progress=False).fit(images)
    vectors = [np.full((10, 640), -156.5, dtype=np.float32) for _ in range(3)]
    with pytest.raises(ModelError, match="3 training arrays are constant"):
        AutoencoderDetector(TINY_AE, progress=False).fit(vectors)


# -- 5. checkpoints that cannot be read ---------------------------------------------------


class _Stop(Exception):
    pass


def _stop(epoch: int, loss: float) -> None:
    raise _Stop


@pytest.mark.parametrize("how", ["truncate", "flip 64 bytes"])
def test_an_unreadable_checkpoint_is_moved_aside_and_training_starts_afresh(how, tmp_path):
    config = CFlowConfig.quick(n_blocks=1, epochs=2, fiber_batch=32)
    images = _images(6)
    checkpoint = tmp_path / "cflow-checkpoint.pt"
    with pytest.raises(_Stop):
        CFlowDetector(config, device="cpu", progress=False).fit(
            images, checkpoint=checkpoint, callback=_stop
        )
    damaged = _damaged(checkpoint.read_bytes(), how)
    checkpoint.write_bytes(damaged)
    aside = tmp_path / "cflow-checkpoint.pt.damaged"
    aside.write_bytes(b"an older damaged checkpoint")

    epochs = []
    with pytest.warns(RuntimeWarning) as caught:
        detector = CFlowDetector(config, device="cpu", progress=False).fit(
            images, checkpoint=checkpoint, callback=lambda e, loss: epochs.append(e)
        )
    message = " ".join(str(w.message) for w in caught)
    assert f"the checkpoint {checkpoint} cannot be used" in message
    assert f"moved to {aside}" in message and "starts afresh" in message
    assert epochs == [1, 2]  # from the start, not resumed
    assert aside.read_bytes() == damaged  # kept for inspection, the older one replaced
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2  # a new, good checkpoint
    assert np.all(np.isfinite(detector.train_scores_))


def test_a_checkpoint_of_other_settings_is_still_refused(tmp_path):
    config = CFlowConfig.quick(n_blocks=1, epochs=2, fiber_batch=32)
    images = _images(6)
    checkpoint = tmp_path / "cflow-checkpoint.pt"
    with pytest.raises(_Stop):
        CFlowDetector(config, device="cpu", progress=False).fit(
            images, checkpoint=checkpoint, callback=_stop
        )
    before = checkpoint.read_bytes()
    other = CFlowConfig.quick(**{**config.to_dict(), "lr": 1e-4})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "moved aside" warning
        with pytest.raises(ModelError, match="other settings or training data"):
            CFlowDetector(other, device="cpu", progress=False).fit(images, checkpoint=checkpoint)
    assert checkpoint.read_bytes() == before
    assert not (tmp_path / "cflow-checkpoint.pt.damaged").exists()
